"""What every stage shares: the run folder's layout and attempts, atomic table writes,
request inputs."""

from __future__ import annotations

import datetime as dt
import io
import json
import platform
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import atomic_write_json, atomic_write_text
from pipeline.stages.contracts import ATTEMPT_COLUMN, ContractError

__all__ = [
    "ATTEMPT_FILE",
    "ModelDefect",
    "RunDir",
    "StageError",
    "StaleAttempt",
    "check_row",
    "input_pool",
    "model_names",
    "serving_keys",
    "write_table",
]

#: the model format the load, stress and infra stages exercise (integration checks both)
SERVING_FORMAT = "onnx"


class StageError(RuntimeError):
    """A stage could not run (missing inputs, a model that does not load, ...)."""


class ModelDefect(StageError):
    """The model itself is at fault (a build refusal, a model file that does not load):
    running the task again cannot help, so the DAG does not retry it."""


class StaleAttempt(StageError):
    """Evidence or a task belongs to another attempt of the run than the current one."""


#: the run folder's record of its current attempt
ATTEMPT_FILE = "attempt.json"
#: where earlier attempts' evidence is moved (never deleted)
ATTEMPTS_DIR = "attempts"


def new_attempt_id() -> str:
    """A fresh attempt id: UTC time (sortable) and random bits (unique)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class RunDir:
    """The artifact folder of one run (ARCHITECTURE.md section 4)."""

    root: Path

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        return cls(Path(path).resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    def stage(self, name: str) -> Path:
        folder = self.root / "stages" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def model_info(self) -> dict[str, Any]:
        path = self.models / "model_info.json"
        if not path.exists():
            raise StageError(f"{path} is missing: run the build stage first")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------ attempts
    def attempt_id(self, create: bool = True) -> str | None:
        """The run's current attempt (`attempt.json`); a folder without one gets one now
        (unless `create` is False: then None)."""
        path = self.root / ATTEMPT_FILE
        try:
            return str(json.loads(path.read_text())[ATTEMPT_COLUMN])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            raise StageError(f"{path} is not a relcert attempt record") from None
        if not create:
            return None
        return self._write_attempt(new_attempt_id())

    def start_attempt(self, attempt_id: str | None = None) -> str:
        """Begin a new attempt of this run: everything an earlier attempt left in the folder
        moves to `attempts/<its id>/` (evidence is kept, never read as this attempt's)."""
        old = self.attempt_id(create=False)
        leftovers = (
            [p for p in self.root.iterdir() if p.name != ATTEMPTS_DIR] if self.root.is_dir() else []
        )
        if leftovers:
            aside = self.root / ATTEMPTS_DIR / (old or f"unrecorded-{new_attempt_id()}")
            aside.mkdir(parents=True, exist_ok=True)
            for path in leftovers:
                shutil.move(str(path), str(aside / path.name))
        return self._write_attempt(attempt_id or new_attempt_id())

    def _write_attempt(self, attempt_id: str) -> str:
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        atomic_write_json(
            self.root / ATTEMPT_FILE, {ATTEMPT_COLUMN: attempt_id, "started_at": started}
        )
        return attempt_id

    # ------------------------------------------------------------------ failures
    def record_stage_error(
        self, stage: str, message: str, attempt_id: str | None = None, part: str | None = None
    ) -> Path:
        """Record why a stage (or one `part` of it, e.g. one model's build) failed
        (stages/<stage>/error[-<part>].json), so certification, the report and the view can
        say what failed instead of "did not run"."""
        name = f"error-{part}.json" if part else "error.json"
        return atomic_write_json(
            self.stage(stage) / name,
            {
                "stage": stage,
                "part": part,
                ATTEMPT_COLUMN: attempt_id or self.attempt_id(),
                "error": message,
            },
        )

    def clear_stage_error(self, stage: str, part: str | None = None) -> None:
        name = f"error-{part}.json" if part else "error.json"
        (self.root / "stages" / stage / name).unlink(missing_ok=True)

    def stage_error(self, stage: str) -> str | None:
        """This attempt's failure messages of `stage` (every part), if it recorded any."""
        folder = self.root / "stages" / stage
        attempt = self.attempt_id(create=False)
        messages = []
        for path in sorted(folder.glob("error*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if data.get(ATTEMPT_COLUMN) == attempt and data.get("error"):
                messages.append(str(data["error"]))
        return "; ".join(messages) or None

    # ------------------------------------------------------------------ summaries
    def write_summary(self, stage: str, summary: dict[str, Any]) -> Path:
        """Write a stage's summary.json after checking it against the stage's contract."""
        from pipeline.stages.registry import summary_contract

        data = _jsonable(summary)
        summary_contract(stage).check(data)
        return atomic_write_json(self.stage(stage) / "summary.json", data)

    def read_summary(self, stage: str, attempt_id: str | None = None) -> dict[str, Any] | None:
        """A stage's summary.json when it exists, follows its contract and belongs to
        `attempt_id` (default: the current attempt); None when the stage left none.
        Raises StageError for a summary that breaks its contract or is another attempt's."""
        from pipeline.stages.registry import summary_contract

        path = self.root / "stages" / stage / "summary.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StageError(f"{path} is not valid JSON: {exc}") from None
        try:
            summary_contract(stage).check(data)
        except ContractError as exc:
            raise StageError(str(exc)) from None
        wanted = attempt_id or self.attempt_id(create=False)
        if data[ATTEMPT_COLUMN] != wanted:
            raise StaleAttempt(
                f"stages/{stage}/summary.json is from attempt {data[ATTEMPT_COLUMN]}, not the "
                f"current attempt {wanted}"
            )
        return data


def host_facts() -> dict[str, Any]:
    """Which machine ran a stage (results say where they were measured)."""
    import os

    from pipeline.regression.baseline import cpu_model
    from pipeline.scaleout import worker_hostname

    return {
        "hostname": worker_hostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def check_row(
    check: str,
    model: str,
    passed: bool,
    measured: float = float("nan"),
    unit: str = "",
    limit: float = float("nan"),
    detail: str = "",
    status: str = "measured",
    fmt: str = "",
    samples: int = 1,
) -> dict[str, Any]:
    """One row of a checks table (integration, infra): the gates' contract columns.

    `status` (pipeline.names.Status): a not-applicable check records why in `detail` and
    is written with passed False; it neither passes nor fails the gate."""
    from pipeline.names import Status

    status = Status(status)
    return {
        "check": check,
        "model": model,
        "format": fmt,
        "status": str(status),
        "passed": bool(passed) and status == Status.MEASURED,
        "measured": float(measured),
        "samples": int(samples),
        "unit": unit,
        "limit": float(limit),
        "detail": detail,
    }


def write_table(rows: list[dict[str, Any]] | Any, path: Path) -> Path:
    """Write rows (or a DataFrame) as CSV, atomically."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def model_names(info: dict[str, Any]) -> list[str]:
    return sorted(info)


def serving_keys(info: dict[str, Any], fmt: str = SERVING_FORMAT) -> dict[str, str]:
    """name -> engine key for the serving format (falls back to the format a model has)."""
    keys = {}
    for name, entry in sorted(info.items()):
        files = entry.get("files") or {}
        chosen = fmt if fmt in files else next(iter(sorted(files)), None)
        if chosen is None:
            raise StageError(f"model {name!r} has no model files in model_info.json")
        keys[name] = f"{name}_{chosen}"
    return keys


def input_pool(
    run: RunDir, info: dict[str, Any], name: str, count: int, seed: int
) -> np.ndarray | list[dict[str, np.ndarray]]:
    """`count` realistic request inputs for model `name`, made from its own spec: an array of
    rows for a single-tensor model, a list of mappings input name -> array for a model of
    named tensors (see pipeline/stages/inputs.py)."""
    from pipeline.stages.inputs import model_requests

    return model_requests(run.models, info[name], count, seed)
