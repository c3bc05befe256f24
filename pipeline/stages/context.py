"""`StageContext`: everything a stage runner receives, in one record.

Every runner has the same signature, `run(ctx: StageContext) -> dict` (its summary). The
context holds the run folder and its current attempt, the profile, the run's effective
targets, and the progress callback; it writes the stage's tables and summary through their
contracts, stamped with the attempt, and reads other stages' results of the same attempt
only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.profiles import Profile, load_profile
from pipeline.stages.common import RunDir, StageError, StaleAttempt, host_facts, write_table
from pipeline.stages.contracts import ATTEMPT_COLUMN, ContractError
from pipeline.stages.registry import Stage, stage, table
from pipeline.targets import Targets

__all__ = ["StageContext", "run_targets"]


def _quiet(_: str) -> None:
    pass


def run_targets(run: RunDir, targets_file: str | Path | None = None) -> Targets:
    """The run's effective targets: the run's own `targets.yaml` (written when the run
    started: overrides and each model's own values applied), else `targets_file` or the
    project's targets file with each built model's own values (model_info.json; tightening
    only). A missing or malformed file is an error (TargetsError), never a default."""
    import dataclasses
    import json

    from pipeline.targets import load_targets

    own = run.root / "targets.yaml"
    if targets_file is None and own.exists():
        return dataclasses.replace(load_targets(own), source="targets.yaml")
    targets = load_targets(targets_file)
    try:
        info = json.loads((run.models / "model_info.json").read_text())
    except (OSError, ValueError):
        return targets
    for name, entry in sorted(info.items()):
        if isinstance(entry, dict) and entry.get("targets"):
            targets = targets.with_model_overrides(name, entry["targets"])
    return targets


@dataclass(frozen=True)
class StageContext:
    """One stage's run: where, which attempt, how long (profile) and against what (targets)."""

    run: RunDir
    stage: Stage
    attempt_id: str
    profile: Profile
    targets: Targets
    snapshot_date: str | None = None
    models_file: Path | None = None
    progress: Callable[[str], None] = _quiet
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(
        cls,
        run_dir: str | Path | RunDir,
        stage_name: str,
        profile: Profile | str = "smoke",
        *,
        targets: Targets | None = None,
        attempt_id: str | None = None,
        snapshot_date: dt.date | str | None = None,
        models_file: str | Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> StageContext:
        """A context for `stage_name` on `run_dir`. `attempt_id` (from the DAG's `prepare`)
        must be the run's current attempt: a task of an earlier attempt refuses to write."""
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.of(run_dir)
        spec = stage(stage_name)
        current = run.attempt_id()
        if attempt_id is not None and attempt_id != current:
            raise StaleAttempt(
                f"{stage_name}: this task belongs to attempt {attempt_id}, but the run's "
                f"current attempt is {current} (the run was restarted): not writing"
            )
        if isinstance(snapshot_date, dt.date):
            snapshot_date = snapshot_date.isoformat()
        return cls(
            run=run,
            stage=spec,
            attempt_id=current,
            profile=load_profile(profile) if isinstance(profile, str) else profile,
            targets=targets if targets is not None else run_targets(run),
            snapshot_date=snapshot_date,
            models_file=Path(models_file) if models_file else None,
            progress=progress or _quiet,
        )

    # ------------------------------------------------------------------ conveniences
    @property
    def folder(self) -> Path:
        """stages/<this stage>/ (created on first use)."""
        return self.run.stage(self.stage.name)

    def say(self, line: str) -> None:
        self.progress(line)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    # ------------------------------------------------------------------ writing
    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]] | Any) -> Path:
        """Write stages/<stage>/<name>.csv: its contract's columns present, every row
        stamped with this attempt."""
        import pandas as pd

        contract = table(self.stage.name, name)
        frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if frame.empty and not len(frame.columns):
            frame = pd.DataFrame(columns=[c for c in contract.column_names if c != ATTEMPT_COLUMN])
        frame[ATTEMPT_COLUMN] = self.attempt_id
        try:
            contract.check_columns(list(frame.columns))
        except ContractError as exc:
            raise StageError(str(exc)) from None
        return write_table(frame, self.run.root / contract.path)

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write stages/<stage>/summary.json with the keys every summary has (stage, attempt,
        profile, host, seconds) after checking it against the stage's contract."""
        full = {
            "host": host_facts(),
            **summary,
            "stage": self.stage.name,
            ATTEMPT_COLUMN: self.attempt_id,
            "profile": self.profile.name,
            "seconds": float(summary.get("seconds", self.seconds())),
        }
        try:
            self.run.write_summary(self.stage.name, full)
        except ContractError as exc:
            raise StageError(str(exc)) from None
        return full

    # ------------------------------------------------------------------ reading
    def summary_of(self, stage_name: str) -> dict[str, Any] | None:
        """Another stage's summary of this attempt (None when that stage left none)."""
        return self.run.read_summary(stage_name, self.attempt_id)

    def table_of(self, stage_name: str, name: str) -> Any:
        """Another stage's table of this attempt as a DataFrame (None when missing); rows
        of other attempts are an error, not data."""
        import pandas as pd

        contract = table(stage_name, name)
        path = self.run.root / contract.path
        if not path.exists():
            return None
        frame = pd.read_csv(path, dtype=dict.fromkeys(contract.string_columns, str))
        try:
            contract.check_columns(list(frame.columns))
        except ContractError as exc:
            raise StageError(str(exc)) from None
        stale = frame[frame[ATTEMPT_COLUMN] != self.attempt_id]
        if len(stale):
            raise StaleAttempt(
                f"{contract.path}: {len(stale)} row(s) from attempt "
                f"{stale[ATTEMPT_COLUMN].iloc[0]}, not the current attempt {self.attempt_id}"
            )
        return frame
