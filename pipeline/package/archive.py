"""Reproducible zip archives: the same files give the same bytes, on every build.

Entries are sorted, every entry has the same timestamp (never the wall clock), fixed unix
permissions (0644, 0755 for scripts), ZIP_DEFLATED at a fixed level and no extra fields.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from collections.abc import Iterable, Mapping

__all__ = ["EPOCH", "sha256sums_text", "zip_bytes"]

#: The earliest timestamp a zip can hold; used when the run gives no snapshot date.
EPOCH = dt.date(1980, 1, 1)
COMPRESS_LEVEL = 9
_FILE_MODE = 0o100644
_SCRIPT_MODE = 0o100755


def zip_bytes(
    files: Mapping[str, bytes], *, date: dt.date = EPOCH, executable: Iterable[str] = ()
) -> bytes:
    """The zip of `files` (entry name -> content) as bytes, identical for identical inputs."""
    if date < EPOCH:
        raise ValueError(f"zip timestamps start at {EPOCH}, got {date}")
    scripts = set(executable)
    unknown = scripts - set(files)
    if unknown:
        raise ValueError(f"executable entries not in the archive: {sorted(unknown)}")
    stamp = (date.year, date.month, date.day, 0, 0, 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            if name.startswith("/") or ".." in name.split("/") or name.endswith("/"):
                raise ValueError(f"unsafe zip entry name {name!r}")
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.create_system = 3  # unix, so external_attr holds the permissions
            info.external_attr = (_SCRIPT_MODE if name in scripts else _FILE_MODE) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.extra = b""
            archive.writestr(info, files[name], compresslevel=COMPRESS_LEVEL)
    return buffer.getvalue()


def sha256sums_text(files: Mapping[str, bytes]) -> str:
    """`sha256sum -c`-compatible lines for `files` (relative name -> content), sorted."""
    lines = [f"{hashlib.sha256(files[name]).hexdigest()}  {name}" for name in sorted(files)]
    return "\n".join(lines) + "\n"
