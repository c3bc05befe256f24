"""What a run's conf (the trigger form) may name: models files, model files, builders.

Whoever can trigger the DAG is not trusted with the workers: a models file names files for a
worker to read and a `builder: module:callable` for it to import and call. So a run's models
file, and every file its entries name (imported `path`, `reference.inputs` / `outputs`, an
SLA's evaluation arrays: every path field of a `ModelSpec`, nested records included), must
resolve (symlinks followed) inside one of the models folders, and every builder must be a
module under one of the builder prefixes:

* `RELCERT_MODELS_DIRS`: folders separated by `os.pathsep` (relative ones against the
  project), default the project's `include/`;
* `RELCERT_BUILDER_PREFIXES`: module prefixes separated by commas, default
  `pipeline.build.examples` (a prefix matches itself and its submodules). A builder's
  attribute path may not name private attributes, and the callable it resolves to must be
  defined under a prefix too (not merely imported into an allowed module).

The DAG's `prepare` checks these (`pipeline.orchestrate.validate_conf`) before any models
file is read, and each build task checks again before it imports anything. `relcert build
--models FILE` does not: the CLI runs in the operator's own shell, with the operator's rights.
This module imports nothing heavy; `check_builder_callables` imports the builder modules.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BUILDER_PREFIXES",
    "ENV_BUILDER_PREFIXES",
    "ENV_MODELS_DIRS",
    "UntrustedInput",
    "builder_prefixes",
    "check_builder_callables",
    "check_models_file",
    "check_specs",
    "models_dirs",
]

ENV_MODELS_DIRS = "RELCERT_MODELS_DIRS"
ENV_BUILDER_PREFIXES = "RELCERT_BUILDER_PREFIXES"
DEFAULT_BUILDER_PREFIXES = ("pipeline.build.examples",)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class UntrustedInput(ValueError):
    """A run names a file outside the models folders or a builder outside the prefixes."""


def models_dirs() -> tuple[Path, ...]:
    """The folders a run's models files and model files may lie in (resolved)."""
    raw = os.environ.get(ENV_MODELS_DIRS, "")
    entries = [e for e in raw.split(os.pathsep) if e.strip()] or [str(PROJECT_ROOT / "include")]
    folders = []
    for entry in entries:
        path = Path(entry.strip()).expanduser()
        folders.append((path if path.is_absolute() else PROJECT_ROOT / path).resolve())
    return tuple(folders)


def builder_prefixes() -> tuple[str, ...]:
    """The module prefixes a run's builders may come from."""
    raw = os.environ.get(ENV_BUILDER_PREFIXES, "")
    prefixes = tuple(p.strip().rstrip(".") for p in raw.split(",") if p.strip())
    return prefixes or DEFAULT_BUILDER_PREFIXES


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == folder or path.is_relative_to(folder) for folder in folders)


def _folders_text(folders: Sequence[Path]) -> str:
    return os.pathsep.join(map(str, folders))


def check_models_file(value: str | os.PathLike[str]) -> Path:
    """The models file `value` names (relative to the project), resolved; UntrustedInput if
    it lies outside the models folders or is not a file. Nothing is read."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else PROJECT_ROOT / path).resolve()
    folders = models_dirs()
    if not _inside(path, folders):
        raise UntrustedInput(
            f"{text!r} resolves to {path}, outside the models folders "
            f"({ENV_MODELS_DIRS}={_folders_text(folders)}): a run may only use a models "
            f"file from those folders (an operator adds a folder to {ENV_MODELS_DIRS} where "
            "the DAG's tasks run)"
        )
    if not path.is_file():
        raise UntrustedInput(f"{text!r}: {path} does not exist or is not a file")
    return path


def _paths(record: Any, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(dotted field name, path) of every Path field of a dataclass, nested ones included."""
    for spec_field in dataclasses.fields(record):
        value = getattr(record, spec_field.name)
        name = f"{prefix}{spec_field.name}"
        if isinstance(value, Path):
            yield name, value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _paths(value, f"{name}.")


def _check_builder_name(where: str, builder: str, prefixes: Sequence[str]) -> None:
    module, _, attrs = builder.partition(":")
    allowed = any(module == p or module.startswith(p + ".") for p in prefixes)
    if not allowed:
        raise UntrustedInput(
            f"{where}: builder {builder!r} is not under the builder prefixes "
            f"({ENV_BUILDER_PREFIXES}={','.join(prefixes)}): a run may only use builders "
            f"from those modules (an operator adds a prefix to {ENV_BUILDER_PREFIXES})"
        )
    private = [a for a in attrs.split(".") if not a or a.startswith("_")]
    if private:
        raise UntrustedInput(
            f"{where}: builder {builder!r} names a private attribute {private[0]!r}; "
            "expected 'module:callable' with public names"
        )


def check_specs(specs: Iterable[Any]) -> None:
    """Every file the models file's entries name lies in the models folders, and every
    builder is under the builder prefixes (by name; nothing is imported)."""
    folders, prefixes = models_dirs(), builder_prefixes()
    for spec in specs:
        where = f"{spec.models_file}: model {spec.name!r}"
        for name, path in _paths(spec):
            if name == "models_file":
                continue
            resolved = path.expanduser().resolve()
            if not _inside(resolved, folders):
                shown = str(path) if resolved == path else f"{path} resolves to {resolved},"
                raise UntrustedInput(
                    f"{where}: {name} {shown} outside the models folders "
                    f"({ENV_MODELS_DIRS}={_folders_text(folders)}): put the file in one of them"
                )
        if spec.builder is not None:
            _check_builder_name(where, spec.builder, prefixes)


def check_builder_callables(specs: Iterable[Any]) -> None:
    """Import each builder (its module is under a prefix) and check the callable is defined
    under a prefix too, not a function imported from elsewhere into an allowed module."""
    from pipeline.build.builder import resolve_builder

    prefixes = builder_prefixes()
    for spec in specs:
        if spec.builder is None:
            continue
        where = f"{spec.models_file}: model {spec.name!r}"
        _check_builder_name(where, spec.builder, prefixes)
        target = resolve_builder(spec)
        home = getattr(target, "__module__", None) or ""
        if not any(home == p or home.startswith(p + ".") for p in prefixes):
            raise UntrustedInput(
                f"{where}: builder {spec.builder!r} is defined in {home or 'no module'!r}, "
                f"not under the builder prefixes ({ENV_BUILDER_PREFIXES}={','.join(prefixes)})"
            )
