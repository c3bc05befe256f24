"""The baseline of a run: the release a candidate is compared with.

Chosen in the artifact store (`pipeline.storage.ArtifactStore`, a plain path or any fsspec
URL), so every worker and the UI see the same answer:

* a **pinned** run when one is pinned (`relcert baseline pin RUN_KEY`): recorded in
  `<root>/<dag_id>/baseline.json`, written atomically (a rename on a local store, one put
  on an object store); only an APPROVED run can be pinned;
* otherwise the **most recent APPROVED run** of the same DAG with the same set of model
  names and the same profile whose snapshot date is *earlier* than the candidate's: a
  backfill compares each date with the release before it, never with a later one. Ties
  (a date certified twice) go to the latest report.

The candidate's snapshot date, profile and models come from its conf.json (written when
the run starts); a stored run's decision, model versions, profile and host from its
report.json (`conf.json` fills what an older report lacks).

A comparison is only meaningful on the same profile and a comparable host: the same CPU
count and CPU model (`check_comparable`). The CPU model is read from /proc/cpuinfo
("model name"), since `platform.processor()` is often empty on Linux; a run that did not
record it cannot be shown comparable, and is reported as such.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import platform
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_text
from pipeline.names import APPROVED, DAG_ID
from pipeline.storage import ArtifactStore, StoreError

__all__ = [
    "PIN_FILE",
    "Baseline",
    "BaselineError",
    "Comparability",
    "HostIdentity",
    "Pin",
    "RunRecord",
    "check_comparable",
    "cpu_model",
    "find_baseline",
    "host_identity",
    "list_runs",
    "pin_baseline",
    "read_pin",
    "read_run",
    "unpin_baseline",
]

#: the pinned baseline of a DAG, beside its run folders: <root>/<dag_id>/baseline.json
PIN_FILE = "baseline.json"
_REPORT = "report.json"
_CONF = "conf.json"
_CPUINFO = Path("/proc/cpuinfo")


class BaselineError(RuntimeError):
    """A baseline cannot be pinned or read as asked; the message says which run and why."""


# --------------------------------------------------------------------------- host
def cpu_model(cpuinfo: str | os.PathLike[str] = _CPUINFO) -> str | None:
    """This machine's CPU model ("model name" of /proc/cpuinfo; other systems:
    `platform.processor()`), or None when nothing names it."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor().strip() or None


@dataclass(frozen=True)
class HostIdentity:
    """What makes two hosts comparable (CPU count and model) and what names the host."""

    cpu_count: int | None
    cpu_model: str | None
    hostname: str | None = None
    platform: str | None = None

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any] | None) -> HostIdentity:
        """From a host-facts mapping (a stage summary's `host`, report.json's environment)."""
        facts = facts or {}
        count = facts.get("cpu_count")
        return cls(
            cpu_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
            cpu_model=facts.get("cpu_model") or None,
            hostname=facts.get("hostname") or None,
            platform=facts.get("platform") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_identity() -> HostIdentity:
    """This machine (the lead adds `cpu_model` to the stages' host facts from here)."""
    from pipeline.scaleout import worker_hostname

    return HostIdentity(
        cpu_count=os.cpu_count(),
        cpu_model=cpu_model(),
        hostname=worker_hostname(),
        platform=platform.platform(),
    )


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunRecord:
    """What the baseline search needs of a stored run (from report.json and conf.json).

    `decision` is None for a run without a report (still running, or failed early).
    `models` maps model name -> version (None when the report does not say).
    """

    run_key: str
    run_id: str
    location: str
    decision: str | None
    snapshot_date: str | None
    profile: str | None
    models: Mapping[str, str | None]
    host: HostIdentity
    generated_at: str | None = None

    @property
    def model_names(self) -> frozenset[str]:
        return frozenset(self.models)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = dict(self.models)
        return out


def _read_json(store: ArtifactStore, location: str) -> Any:
    """The parsed JSON at `location`, None when the file is missing; BaselineError when it
    is not JSON."""
    try:
        raw = store.read_bytes(location)
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BaselineError(f"{location} is not valid JSON: {exc}") from None


def _dag_location(store: ArtifactStore, dag_id: str) -> str:
    return store.join(store.root, dag_id)


def _report_host(report: Mapping[str, Any]) -> HostIdentity:
    """The host the run was measured on: the load stage's (environment.hosts[measured_on]),
    else environment's own cpu_count / cpu_model."""
    env = report.get("environment")
    env = env if isinstance(env, dict) else {}
    hosts = env.get("hosts") if isinstance(env.get("hosts"), dict) else {}
    measured = hosts.get(env.get("measured_on")) if env.get("measured_on") else None
    facts = dict(env)
    if isinstance(measured, dict):
        facts.update({k: v for k, v in measured.items() if v is not None})
    return HostIdentity.from_facts(facts)


def _report_models(report: Mapping[str, Any], conf: Mapping[str, Any]) -> dict[str, str | None]:
    models: dict[str, str | None] = {}
    for entry in report.get("models") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            models.setdefault(entry["name"], entry.get("version"))
    if not models:  # no report yet: the names the run was started with
        names = conf.get("models") or []
        models = {name: None for name in names if isinstance(name, str)}
    return models


def read_run(store: ArtifactStore, run_key: str, *, dag_id: str = DAG_ID) -> RunRecord | None:
    """The record of one stored run; None when it has neither report.json nor conf.json."""
    location = store.run_location(dag_id, run_key)
    report = _read_json(store, store.join(location, _REPORT))
    conf = _read_json(store, store.join(location, _CONF))
    if report is None and conf is None:
        return None
    report = report if isinstance(report, dict) else {}
    conf = conf if isinstance(conf, dict) else {}
    report_conf = report.get("conf") if isinstance(report.get("conf"), dict) else {}
    env = report.get("environment") if isinstance(report.get("environment"), dict) else {}
    snapshot = conf.get("snapshot_date") or report_conf.get("snapshot_date")
    snapshot = snapshot or (env.get("snapshot_date") if isinstance(env, dict) else None)
    return RunRecord(
        run_key=run_key,
        run_id=str(report.get("run_id") or conf.get("run_id") or run_key),
        location=location,
        decision=report.get("decision"),
        snapshot_date=str(snapshot) if isinstance(snapshot, str) else None,
        profile=report.get("profile") or conf.get("profile"),
        models=_report_models(report, conf),
        host=_report_host(report),
        generated_at=report.get("generated_at"),
    )


def list_runs(store: ArtifactStore, *, dag_id: str = DAG_ID) -> list[RunRecord]:
    """Every run folder of the DAG with a report.json or conf.json (in run-key order)."""
    base = store.fs_path(_dag_location(store, dag_id))
    with contextlib.suppress(Exception):  # not every filesystem caches listings
        store.fs.invalidate_cache(base)
    try:
        entries = store.fs.ls(base, detail=True)
    except FileNotFoundError:
        return []
    keys = sorted(
        posixpath.basename(entry["name"].rstrip("/"))
        for entry in entries
        if entry.get("type") == "directory"
    )
    runs = []
    for key in keys:
        try:
            record = read_run(store, key, dag_id=dag_id)
        except (BaselineError, StoreError):  # one unreadable run never hides the others
            continue
        if record is not None:
            runs.append(record)
    return runs


# --------------------------------------------------------------------------- pins
@dataclass(frozen=True)
class Pin:
    """A pinned baseline: which run, when, by whom, and why."""

    run_key: str
    run_id: str
    pinned_at: str
    pinned_by: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pin_location(store: ArtifactStore, dag_id: str) -> str:
    return store.join(store.root, dag_id, PIN_FILE)


def read_pin(store: ArtifactStore, *, dag_id: str = DAG_ID) -> Pin | None:
    """The pinned baseline of the DAG, or None."""
    location = _pin_location(store, dag_id)
    data = _read_json(store, location)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_key"), str):
        raise BaselineError(f"{location}: expected an object with a run_key, got {data!r}")
    return Pin(
        run_key=data["run_key"],
        run_id=str(data.get("run_id") or data["run_key"]),
        pinned_at=str(data.get("pinned_at") or ""),
        pinned_by=data.get("pinned_by"),
        reason=str(data.get("reason") or ""),
    )


def _write_json(store: ArtifactStore, location: str, data: Mapping[str, Any]) -> None:
    text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
    path = store.fs_path(location)
    if store.is_local:  # a temp file beside it, renamed over it
        atomic_write_text(path, text)
    else:  # one put per object: readers see the old pin or the new one
        store.fs.pipe_file(path, text.encode("utf-8"))


def whoami() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def pin_baseline(
    store: ArtifactStore, run_key: str, *, dag_id: str = DAG_ID, reason: str = ""
) -> Pin:
    """Pin `run_key` as the DAG's baseline. Refused (BaselineError) for a run that does not
    exist or has no report, and for a run whose decision is not APPROVED."""
    try:
        record = read_run(store, run_key, dag_id=dag_id)
    except StoreError as exc:
        raise BaselineError(f"cannot pin {run_key!r}: {exc}") from None
    where = _dag_location(store, dag_id)
    if record is None:
        raise BaselineError(f"cannot pin {run_key!r}: no such run in {where}")
    if record.decision is None:
        raise BaselineError(
            f"cannot pin {run_key!r}: the run has no report.json yet (not finished, or it "
            "failed before its report); only an APPROVED run can be a baseline"
        )
    if record.decision != APPROVED:
        raise BaselineError(
            f"cannot pin {run_key!r}: its decision is {record.decision}; only an APPROVED "
            "run can be a baseline"
        )
    pin = Pin(
        run_key=run_key,
        run_id=record.run_id,
        pinned_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        pinned_by=whoami(),
        reason=reason,
    )
    _write_json(store, _pin_location(store, dag_id), pin.to_dict())
    return pin


def unpin_baseline(store: ArtifactStore, *, dag_id: str = DAG_ID) -> Pin | None:
    """Remove the pin (the automatic choice applies again); returns the removed pin."""
    pin = read_pin(store, dag_id=dag_id)
    if pin is not None:
        with contextlib.suppress(FileNotFoundError):
            store.fs.rm_file(store.fs_path(_pin_location(store, dag_id)))
    return pin


# --------------------------------------------------------------------------- baseline
@dataclass(frozen=True)
class Baseline:
    """The baseline of a run (`run`), or None with the reason there is none.

    `pinned`: chosen by a pin. `considered`: APPROVED runs of the DAG that were looked at.
    `notes`: anything the report should say (e.g. a pinned run with other models).
    """

    run: RunRecord | None
    pinned: bool
    reason: str
    considered: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def found(self) -> bool:
        return self.run is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.to_dict() if self.run else None,
            "pinned": self.pinned,
            "reason": self.reason,
            "considered": self.considered,
            "notes": list(self.notes),
        }


def _pinned(
    store: ArtifactStore, pin: Pin, run_key: str, names: frozenset[str], dag_id: str
) -> Baseline:
    if pin.run_key == run_key:
        return Baseline(None, True, f"the pinned baseline {pin.run_key} is this run itself")
    record = read_run(store, pin.run_key, dag_id=dag_id)
    if record is None or record.decision != APPROVED:
        state = "is gone" if record is None else f"is {record.decision or 'without a report'}"
        return Baseline(
            None,
            True,
            f"the pinned baseline {pin.run_key} {state}: no baseline "
            "(unpin it, or pin another APPROVED run)",
        )
    notes = []
    if names and record.model_names != names:
        only_here = sorted(names - record.model_names)
        only_there = sorted(record.model_names - names)
        notes.append(
            f"the pinned run certified other models (only in this run: {only_here or '-'}; "
            f"only in the baseline: {only_there or '-'}): those have no baseline"
        )
    return Baseline(
        record,
        True,
        f"pinned baseline {pin.run_key} (pinned {pin.pinned_at}"
        + (f" by {pin.pinned_by}" if pin.pinned_by else "")
        + (f": {pin.reason}" if pin.reason else "")
        + ")",
        considered=1,
        notes=tuple(notes),
    )


def find_baseline(
    store: ArtifactStore,
    run_key: str,
    *,
    dag_id: str = DAG_ID,
    snapshot_date: str | dt.date | None = None,
    model_names: frozenset[str] | set[str] | list[str] | None = None,
    profile: str | None = None,
) -> Baseline:
    """The baseline of run `run_key` (see the module doc). The candidate's snapshot date,
    model names and profile default to its conf.json's; pass them to override."""
    candidate = read_run(store, run_key, dag_id=dag_id)
    if isinstance(snapshot_date, dt.date):
        snapshot_date = snapshot_date.isoformat()
    date = snapshot_date or (candidate.snapshot_date if candidate else None)
    names = frozenset(model_names) if model_names is not None else None
    if names is None:
        names = candidate.model_names if candidate else frozenset()
    profile = profile or (candidate.profile if candidate else None)

    pin = read_pin(store, dag_id=dag_id)
    if pin is not None:
        return _pinned(store, pin, run_key, names, dag_id)
    if not date:
        return Baseline(None, False, f"run {run_key} has no snapshot date: no baseline")
    if not names:
        return Baseline(None, False, f"run {run_key} names no models: no baseline")

    approved = [r for r in list_runs(store, dag_id=dag_id) if r.decision == APPROVED]
    approved = [r for r in approved if r.run_key != run_key]
    eligible = [
        r
        for r in approved
        if r.snapshot_date
        and r.snapshot_date < date
        and r.model_names == names
        and (profile is None or r.profile == profile)
    ]
    if not eligible:
        same = f" and profile {profile}" if profile else ""
        return Baseline(
            None,
            False,
            f"no APPROVED run of {dag_id} with models {sorted(names)}{same} and a snapshot "
            f"date before {date} ({len(approved)} APPROVED run(s) looked at)",
            considered=len(approved),
        )
    best = max(eligible, key=lambda r: (r.snapshot_date or "", r.generated_at or "", r.run_key))
    return Baseline(
        best,
        False,
        f"the last APPROVED run before {date}: {best.run_key} (snapshot {best.snapshot_date})",
        considered=len(approved),
    )


# --------------------------------------------------------------------------- comparable
@dataclass(frozen=True)
class Comparability:
    """Whether a candidate may be compared with its baseline; `reasons` when not."""

    comparable: bool
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"comparable": self.comparable, "reasons": list(self.reasons)}


def check_comparable(
    baseline: RunRecord, *, profile: str | None, host: HostIdentity
) -> Comparability:
    """Same profile, same CPU count and same CPU model; otherwise not comparable, and why.
    A side that did not record a fact cannot be shown comparable on it."""
    reasons = []
    if not profile or not baseline.profile:
        reasons.append("the profile of the candidate or the baseline is not recorded")
    elif profile != baseline.profile:
        reasons.append(f"profile {profile} vs the baseline's {baseline.profile}")
    theirs = baseline.host
    for label, mine, other in (
        ("CPU count", host.cpu_count, theirs.cpu_count),
        ("CPU model", host.cpu_model, theirs.cpu_model),
    ):
        if mine is None or other is None:
            side = "this run" if mine is None else f"the baseline {baseline.run_key}"
            reasons.append(f"{label} not recorded by {side}")
        elif mine != other:
            reasons.append(f"{label} {mine} vs the baseline's {other}")
    return Comparability(not reasons, tuple(reasons))
