"""Assemble per-model build parts into one models folder.

The DAG builds each model in its own mapped task (`build_models(..., only=[name])` into
`<run>/parts/<name>/`); this step merges the parts into `<run>/models/` with one
`model_info.json` and one `SHA256SUMS`, atomically (built beside, then swapped in).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline._io import replace_durably, sha256_file, write_sha256sums
from pipeline.build.errors import BuildError
from pipeline.build.model_info import write_model_info

__all__ = ["assemble_models"]


def assemble_models(
    parts: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Merge model folders `parts` into `out_dir`; returns the merged model_info."""
    out = Path(out_dir).absolute()
    merged: dict[str, Any] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.assemble-", dir=out.parent))
    try:
        for part in map(Path, parts):
            info_path = part / "model_info.json"
            if not info_path.exists():
                raise BuildError(f"build part {part} has no model_info.json (did its build fail?)")
            info = json.loads(info_path.read_text())
            for name, entry in info.items():
                if name in merged:
                    raise BuildError(f"model {name!r} appears in two build parts")
                for fmt, file in (entry.get("files") or {}).items():
                    source = part / file["path"]
                    if sha256_file(source) != file.get("sha256"):
                        raise BuildError(
                            f"model {name!r}: {source} does not match its recorded sha256 "
                            f"({fmt}); the part was modified after its build"
                        )
                for file in sorted(p for p in part.rglob("*") if p.is_file()):
                    rel = file.relative_to(part)
                    if rel.name in ("model_info.json", "SHA256SUMS"):
                        continue
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
                merged[name] = entry
        write_model_info(tmp, merged)
        write_sha256sums(tmp)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, backup)
            replace_durably(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            replace_durably(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return merged
