"""requirements.txt of the service image: exact pins copied from the repo's constraints.txt."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.package.errors import PackageError

__all__ = ["SERVICE_PACKAGES", "repo_root", "service_requirements"]

#: what `python -m pipeline.serve` imports (torch only for TorchScript models)
SERVICE_PACKAGES = (
    "numpy",
    "onnxruntime",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus-client",
    "psutil",
    "pyyaml",
)
OPTIONAL_PACKAGES = ("orjson",)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def repo_root() -> Path:
    import pipeline

    return Path(pipeline.__file__).resolve().parent.parent


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def service_requirements(model_format: str, constraints: Path | None = None) -> str:
    """The pinned lines the service needs, exactly as constraints.txt writes them."""
    path = constraints or repo_root() / "constraints.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the pinned constraints: {exc}") from None
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[_normalise(match.group(1))] = line.strip()
    wanted = list(SERVICE_PACKAGES) + (["torch"] if model_format == "torchscript" else [])
    missing = [name for name in wanted if _normalise(name) not in pins]
    if missing:
        raise PackageError(
            f"{path}: no exact pin (name==version) for {', '.join(missing)}, which the "
            "service needs"
        )
    wanted += [name for name in OPTIONAL_PACKAGES if _normalise(name) in pins]
    lines = [pins[_normalise(name)] for name in sorted(wanted, key=_normalise)]
    header = (
        "# Runtime requirements of relcert-service (python -m pipeline.serve), pinned\n"
        f"# exactly as in the project's constraints.txt; model format: {model_format}.\n"
    )
    return header + "\n".join(lines) + "\n"
