"""Small file helpers shared by every part of relcert: atomic writes and checksums.

An atomic write is durable too: the file is fsynced before it is renamed over its target,
and the directory that holds the rename is fsynced after it (`replace_durably`), so after a
power loss a write the caller saw finish is there, not only its data. Folders the write
creates are made durable the same way (`makedirs_durably`)."""

from __future__ import annotations

import contextlib
import errno
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
    "fsync_dir",
    "makedirs_durably",
    "replace_durably",
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


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory `path` durable (renames into it, files created in or
    removed from it). Filesystems that cannot fsync a directory are skipped."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # e.g. some network filesystems: nothing more can be done here
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def makedirs_durably(path: str | os.PathLike[str]) -> Path:
    """`mkdir -p path`, each folder it creates made durable in its parent (fsync)."""
    folder = Path(path)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:  # made meanwhile by another process: durable by its maker
            if created.is_dir():
                continue
            raise
        fsync_dir(created.parent)
    return Path(path)


def replace_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """`os.replace(source, target)`, then fsync the directory holding `target` (and the one
    that held `source`, when another): once this returns the rename survives a crash."""
    os.replace(source, target)
    target_dir = os.path.dirname(os.path.abspath(target))
    fsync_dir(target_dir)
    source_dir = os.path.dirname(os.path.abspath(source))
    if source_dir != target_dir:
        fsync_dir(source_dir)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    Readers see either the old file or the complete new one, never a partial write; once
    the block exits the new file is durable (file and directory fsynced). On error the
    temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    makedirs_durably(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        replace_durably(tmp, target)
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
