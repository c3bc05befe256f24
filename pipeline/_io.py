"""Small file helpers shared by every part of relcert: atomic writes and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
    "sha256_stream",
    "write_sha256sums",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def sha256_stream(handle: Any, sink: Any = None, chunk_size: int = 1 << 20) -> tuple[str, int]:
    """Hex sha256 and size of what a binary file object yields, read in chunks; each chunk
    is also written to `sink` if given (hash while copying)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(chunk_size):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return sha256_stream(handle, chunk_size=chunk_size)[0]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    Readers see either the old file or the complete new one, never a partial write.
    On error the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def write_sha256sums(folder: str | os.PathLike[str], name: str = "SHA256SUMS") -> Path:
    """Write `sha256sum`-compatible checksums of every file under `folder` (sorted)."""
    root = Path(folder)
    lines = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != name):
        if file.name.startswith("."):
            continue
        lines.append(f"{sha256_file(file)}  {file.relative_to(root).as_posix()}")
    return atomic_write_text(root / name, "\n".join(lines) + "\n")
