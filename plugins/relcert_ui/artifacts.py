"""The certification runs in the artifacts store, and safe paths into them.

Layout (ARCHITECTURE.md section 4): `<artifacts root>/<dag_id>/<run_key>/` holding
`conf.json` (written when the run starts), `report.json` + `report.html` (final report),
`data_docs/` (GX Data Docs) and `package/<name>-<version>.zip` (when the decision allows).

The root is the pipeline's artifacts store (`RELCERT_ARTIFACTS`, `pipeline.storage`): on a
local store (a plain path or a `file://` URL) paths are `pathlib.Path`s; on any other store
(`s3://...`) they are `UPath`s read through the same fsspec filesystem as the tasks write.

Every path handed out by this module is resolved (symlinks included, on a local store) and
checked to lie inside the run folder's expected sub-folder, itself inside the artifacts root.
Anything else raises `BadPath` (malformed request: HTTP 400) or `NotFound` (HTTP 404). Run
keys and relative paths are validated before they are joined, so no `..`, absolute or hidden
part ever reaches the store. This module imports neither Airflow nor FastAPI;
`pipeline.orchestrate` and `pipeline.storage` are imported lazily.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.names import APPROVED, DAG_ID, MAX_REASON_CHARS, NOT_APPROVED
from pipeline.names import CONDITIONAL_APPROVAL as CONDITIONAL

# (criterion name in report.json, label, default unit)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("p99_latency_ms", "p99 latency", "ms"),
    ("sustained_throughput_rps", "Sustained throughput", "req/s"),
    ("memory_usage_mb", "Memory", "MB"),
)

# the service's interface SLAs (criteria of category `interface`) and its availability,
# listed in one column, each with its verdict
INTERFACE_CATEGORY = "interface"
AVAILABILITY = "availability"

_LOG = logging.getLogger(__name__)

# the folder names `pipeline.orchestrate.run_key` can produce
_RUN_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# sub-folders of a run that may be served file by file (the report links into them)
SERVED_DIRS = ("data_docs", "gates", "stages", "package")


class BadPath(ValueError):
    """The requested path is malformed (absolute, `..`, bad run key): HTTP 400."""


class NotFound(LookupError):
    """No such run or file inside the artifacts root (or it escapes it): HTTP 404."""


def _store() -> Any:
    from pipeline.storage import ArtifactStore

    return ArtifactStore.from_location()


@contextlib.contextmanager
def consistent(run_key: str, dag_id: str = DAG_ID, store: Any = None) -> Iterator[None]:
    """Read a run the way the tasks' pulls do (`pipeline.storage.ArtifactStore.reading`): an
    upload whose task was killed after committing it is finished first, and on a local store
    no upload is applied while the block reads. So the view never shows half of a task's
    upload (a new report.json beside the old package, say). NotFound, logged, when an
    unfinished upload cannot be finished by this process (e.g. the store is read-only here)."""
    from pipeline.storage import StoreError

    store = store or _store()
    location = store.run_location(dag_id, run_key)
    entered = False
    try:
        with store.reading(location):
            entered = True
            yield
    except StoreError as exc:
        if entered:
            raise
        _LOG.warning("relcert view: run %s/%s not shown: %s", dag_id, run_key, exc)
        raise NotFound("this run is being written; try again") from None


def artifacts_root() -> Path:
    """The artifacts store's root (`$RELCERT_ARTIFACTS` or `<project>/artifacts`): a Path on
    a local store, else a UPath on the store's fsspec filesystem (listings re-read)."""
    from pipeline.storage import ArtifactStore

    store = ArtifactStore.from_location()
    if store.is_local:
        return Path(store.fs_root)
    from upath import UPath

    with contextlib.suppress(Exception):  # object-store listings are cached per process
        store.fs.invalidate_cache()
    return UPath(store.root)


def _local(path: Any) -> bool:
    """A path of a local store (pathlib); otherwise a UPath of an object store."""
    return isinstance(path, Path)


def _mtime(path: Any) -> float:
    """Modification (or creation) time as a timestamp; OSError when missing."""
    if _local(path):
        return path.stat().st_mtime
    info = path.fs.info(path.path)
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value).timestamp()
    return 0.0


def _number(value: Any) -> float | None:
    """`pipeline.report.collect.finite_number` (imported here: the plugin loads light)."""
    from pipeline.report.collect import finite_number

    return finite_number(value)


def run_key_for(run_id: str) -> str:
    """The run folder name of an Airflow run id (`pipeline.orchestrate.run_key`)."""
    from pipeline.orchestrate import run_key

    return run_key(run_id)


def dag_dir(dag_id: str = DAG_ID) -> Path:
    return artifacts_root() / dag_id


def check_run_key(run_key: str) -> str:
    """`run_key` if it is a folder name `run_key_for` could have produced, else BadPath."""
    if not isinstance(run_key, str) or not _RUN_KEY_RE.match(run_key) or ".." in run_key:
        raise BadPath("invalid run key")
    if run_key_for(run_key) != run_key:
        raise BadPath("invalid run key")
    return run_key


def _inside(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _resolve_existing(path: Path) -> Path:
    if not _local(path):  # an object store: no symlinks; `..` is normalised away
        try:
            resolved = path.resolve()
            if resolved.exists():
                return resolved
        except (OSError, ValueError) as exc:
            raise NotFound("not found") from exc
        raise NotFound("not found")
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # missing, symlink loop, permission
        raise NotFound("not found") from exc


def run_dir(run_key: str, dag_id: str = DAG_ID) -> Path:
    """The resolved folder of a run; NotFound unless it exists inside `<root>/<dag_id>`."""
    check_run_key(run_key)
    root = _resolve_existing(artifacts_root())
    base = _resolve_existing(root / dag_id)
    if not _inside(base, root):
        raise NotFound("not found")
    folder = _resolve_existing(base / run_key)
    if folder == base or not _inside(folder, base) or not folder.is_dir():
        raise NotFound("not found")
    with consistent(run_key, dag_id):  # an interrupted upload is finished before any read
        pass
    return folder


def check_relative(rel: str) -> PurePosixPath:
    """A relative POSIX path without `..`, hidden parts, backslashes or NUL; else BadPath."""
    if not isinstance(rel, str) or "\x00" in rel or "\\" in rel:
        raise BadPath("invalid path")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise BadPath("absolute paths are not allowed")
    pure = PurePosixPath(rel)
    for part in pure.parts:
        if part == ".." or part.startswith("."):
            raise BadPath("invalid path")
    return pure


def resolve_in_run(run_key: str, subdir: str, rel: str, *, index: str = "index.html") -> Path:
    """A file inside `<run>/<subdir>/` (a folder maps to its `index`); BadPath or NotFound."""
    if subdir not in SERVED_DIRS:
        raise NotFound("not found")
    pure = check_relative(rel)
    folder = run_dir(run_key)
    base = _resolve_existing(folder / subdir)
    if not _inside(base, folder) or not base.is_dir():
        raise NotFound("not found")
    target = _resolve_existing(base.joinpath(*pure.parts))
    if target.is_dir():
        target = _resolve_existing(target / index)
    if target == base or not _inside(target, base) or not target.is_file():
        raise NotFound("not found")
    return target


def run_file(run_key: str, name: str) -> Path:
    """A top-level file of a run (`report.html`, `report.json`); NotFound if missing/escaping."""
    if name not in ("report.html", "report.json", "conf.json"):
        raise NotFound("not found")
    folder = run_dir(run_key)
    target = _resolve_existing(folder / name)
    if not _inside(target, folder) or not target.is_file():
        raise NotFound("not found")
    return target


class _JsonCache:
    """Parsed JSON files keyed by path and validated by (mtime, size): the certifications list
    re-reads every run's report.json and conf.json on each page load, and most never change.

    Entries are shared between callers: treat returned dicts as read-only."""

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[tuple[float, int], dict[str, Any] | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.parses = 0

    def get(self, key: str, signature: tuple[float, int]) -> tuple[bool, dict[str, Any] | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != signature:
                return False, None
            self._entries.move_to_end(key)
            self.hits += 1
            return True, entry[1]

    def put(self, key: str, signature: tuple[float, int], data: dict[str, Any] | None) -> None:
        with self._lock:
            self.parses += 1
            self._entries[key] = (signature, data)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "parses": self.parses}


_json_cache = _JsonCache()


def json_cache_stats() -> dict[str, int]:
    """Entries, hits and parses of the parsed-JSON cache (how much work page loads did)."""
    return _json_cache.stats()


def _signature(path: Any) -> tuple[float, int]:
    """(mtime, size) of a file; FileNotFoundError when it is missing."""
    if _local(path):
        st = path.stat()
        return float(st.st_mtime_ns), int(st.st_size)
    info = path.fs.info(path.path)
    return _mtime(path), int(info.get("size") or 0)


def read_json(path: Path) -> tuple[dict[str, Any] | None, bool]:
    """(data, present): data is None when the file is missing or not a JSON object.

    Parsed once per (path, mtime, size): an unchanged file is not read again."""
    key = str(path)
    try:
        signature = _signature(path)
    except FileNotFoundError:
        _json_cache.forget(key)
        return None, False
    except OSError:
        return None, True
    found, data = _json_cache.get(key, signature)
    if found:
        return data, True
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, False
    except OSError:
        return None, True
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    data = parsed if isinstance(parsed, dict) else None
    _json_cache.put(key, signature, data)
    return data, True


def package_file(folder: Path, report: dict[str, Any] | None) -> Path | None:
    """The run's deployment package zip inside `<run>/package/`, or None.

    The path recorded in report.json wins; without one, a zip in `package/` counts only when
    the decision allows a package (a NOT_APPROVED run never offers one).
    """
    if report is None:
        return None
    decision = report.get("decision")
    try:
        base = _resolve_existing(folder / "package")
    except NotFound:
        return None
    if not _inside(base, folder):
        return None
    candidates: list[Path] = []
    recorded = report.get("package")
    if isinstance(recorded, str) and recorded:
        path = Path(recorded)
        if not path.is_absolute():
            candidates.append(folder / recorded)
        elif _local(folder):  # an older run recorded an absolute local path
            candidates.append(path)
    elif decision in (APPROVED, CONDITIONAL):
        try:
            zips = [p for p in base.glob("*.zip") if not p.name.startswith(".")]
            zips.sort(key=_mtime, reverse=True)
        except OSError:
            zips = []
        candidates.extend(zips)
    for candidate in candidates:
        try:
            resolved = _resolve_existing(candidate)
        except NotFound:
            continue
        inside = _inside(resolved, base) and resolved != base and resolved.is_file()
        if inside and resolved.suffix == ".zip" and decision != NOT_APPROVED:
            return resolved
    return None


@dataclass
class RunSummary:
    """One certification run as the certifications page shows it."""

    run_key: str
    run_id: str
    snapshot_date: str | None = None
    profile: str | None = None
    reason: str | None = None
    status: str = "running"  # "certified" (report present), "running", "unreadable"
    decision: str | None = None
    readiness_score: float | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    gates: dict[str, bool | None] = field(default_factory=dict)
    has_report_html: bool = False
    has_data_docs: bool = False
    package: str | None = None  # file name of the zip in package/
    started: float = 0.0  # mtime of conf.json (or the folder): orders runs of one date
    why: list[str] = field(default_factory=list)  # the decision's first reasons
    relaxed: list[str] = field(default_factory=list)  # targets relaxed for this run
    baseline: str | None = None  # run key of the baseline it was compared with
    regressions: int | None = None  # unwaived regressions against it (None: not compared)
    regression_note: str = ""  # no baseline / not comparable: why; waived: which
    #: the interface SLAs and availability: [{name, measured, unit, threshold, direction,
    #: status, met, detail}] in the report's order
    interface: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sort_key(self) -> tuple[str, float, str]:
        return (self.snapshot_date or "", self.started, self.run_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "run_id": self.run_id,
            "snapshot_date": self.snapshot_date,
            "profile": self.profile,
            "reason": self.reason,
            "status": self.status,
            "decision": self.decision,
            "readiness_score": self.readiness_score,
            "models": self.models,
            "metrics": self.metrics,
            "gates": self.gates,
            "package": self.package,
            "why": self.why,
            "relaxed": self.relaxed,
            "baseline": self.baseline,
            "regressions": self.regressions,
            "regression_note": self.regression_note,
            "interface": self.interface,
        }


def _models(report: dict[str, Any] | None, conf: dict[str, Any] | None) -> list[dict[str, Any]]:
    """[{name, version, formats}] from report.json (one entry per format), else conf.json."""
    merged: dict[str, dict[str, Any]] = {}
    entries = (report or {}).get("models")
    if isinstance(entries, list) and entries:
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("name"):
                continue
            name = str(entry["name"])
            version = entry.get("version")
            item = merged.setdefault(
                f"{name}\x00{version}", {"name": name, "version": version, "formats": []}
            )
            fmt = entry.get("format")
            if fmt and str(fmt) not in item["formats"]:
                item["formats"].append(str(fmt))
        return list(merged.values())
    names = (conf or {}).get("models")
    if isinstance(names, list):
        return [
            {
                "name": str(n.get("name") if isinstance(n, dict) else n),
                "version": None,
                "formats": [],
            }
            for n in names
            if n
        ]
    return []


def _metrics(report: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    by_name: dict[str, dict[str, Any]] = {}
    criteria = report.get("criteria")
    if isinstance(criteria, list):
        for row in criteria:
            if isinstance(row, dict) and isinstance(row.get("name"), str):
                by_name.setdefault(row["name"], row)
    elif isinstance(criteria, dict):  # tolerate {name: row}
        by_name = {k: v for k, v in criteria.items() if isinstance(v, dict)}
    out: dict[str, dict[str, Any] | None] = {}
    for name, _label, unit in METRICS:
        row = by_name.get(name)
        if row is None:
            out[name] = None
            continue
        met, valid = row.get("met"), row.get("valid")
        out[name] = {
            "measured": _number(row.get("measured")),
            "unit": row.get("unit") or unit,
            "met": met if isinstance(met, bool) else None,
            "valid": valid if isinstance(valid, bool) else None,
            "target": _number(row.get("target")),
            "threshold": _number(row.get("threshold")),
            "rule": row.get("rule") if isinstance(row.get("rule"), str) else None,
        }
    return out


def _interface(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The interface criteria and availability of report.json, each with its verdict."""
    criteria = report.get("criteria")
    if not isinstance(criteria, list):
        return []
    out = []
    for row in criteria:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        metric = row.get("metric") or row["name"].split("[")[0]
        if row.get("category") != INTERFACE_CATEGORY and metric != AVAILABILITY:
            continue
        met = row.get("met")
        out.append(
            {
                "name": row["name"],
                "measured": _number(row.get("measured")),
                "unit": str(row.get("unit") or ""),
                "threshold": _number(row.get("threshold")),
                "direction": str(row.get("direction") or ""),
                "status": str(row.get("status") or ""),
                "met": met if isinstance(met, bool) else None,
                "detail": str(row.get("detail") or "")[:400],
            }
        )
    return out


def _gates(report: dict[str, Any]) -> dict[str, bool | None]:
    gates = report.get("gates")
    out: dict[str, bool | None] = {}
    if isinstance(gates, dict):
        for stage, value in gates.items():
            success = value.get("success") if isinstance(value, dict) else value
            out[str(stage)] = success if isinstance(success, bool) else None
    return out


def summarize(folder: Path) -> RunSummary:
    """A RunSummary of one run folder (never raises on a malformed or missing file)."""
    conf, _ = read_json(folder / "conf.json")
    report, report_present = read_json(folder / "report.json")
    try:
        started = _mtime(folder / "conf.json")
    except OSError:
        started = _mtime(folder) if _local(folder) else 0.0
    report_conf = (report or {}).get("conf")
    report_conf = report_conf if isinstance(report_conf, dict) else {}
    conf = conf or {}

    def pick(*values: Any) -> str | None:
        for value in values:
            if value not in (None, ""):
                return str(value)
        return None

    summary = RunSummary(
        run_key=folder.name,
        run_id=pick((report or {}).get("run_id"), conf.get("run_id")) or folder.name,
        snapshot_date=pick(report_conf.get("snapshot_date"), conf.get("snapshot_date")),
        profile=pick((report or {}).get("profile"), conf.get("profile")),
        reason=_capped(pick(report_conf.get("reason"), conf.get("reason"))),
        models=_models(report, conf),
        started=started,
        has_report_html=(folder / "report.html").is_file(),
        has_data_docs=(folder / "data_docs" / "index.html").is_file(),
    )
    if report is None:
        summary.status = "unreadable" if report_present else "running"
        return summary
    summary.status = "certified"
    decision = report.get("decision")
    summary.decision = str(decision) if decision else None
    summary.readiness_score = _number(report.get("readiness_score"))
    summary.metrics = _metrics(report)
    summary.interface = _interface(report)
    summary.gates = _gates(report)
    package = package_file(folder, report)
    summary.package = package.name if package else None
    reasons = report.get("reasons")
    if isinstance(reasons, list) and summary.decision != APPROVED:
        summary.why = [str(r) for r in reasons[:3]]
    relaxed = report.get("relaxed_targets")
    if isinstance(relaxed, list):
        summary.relaxed = [_relaxed_text(r) for r in relaxed if isinstance(r, dict)]
    _regression(summary, report.get("regression"))
    return summary


def _capped(reason: str | None) -> str | None:
    """A run's reason as a row shows it: runs from before the cap (MAX_REASON_CHARS, checked
    when a run starts) may hold a longer one."""
    if reason is None or len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "\u2026"


def _regression(summary: RunSummary, section: Any) -> None:
    """The run's comparison with its baseline (report.json "regression")."""
    if not isinstance(section, dict):
        summary.regression_note = "not compared (report without a regression section)"
        return
    if not section.get("ran"):
        summary.regression_note = str(section.get("reason") or "not compared")
        return
    summary.baseline = section.get("baseline_run") or None
    counts = section.get("counts") if isinstance(section.get("counts"), dict) else {}
    if summary.baseline and section.get("comparable") and counts.get("measured"):
        summary.regressions = int(counts.get("regressions") or 0)
        waived = section.get("waived") or []
        summary.regression_note = f"{len(waived)} waived" if waived else ""
    else:
        comparability = section.get("comparability") or {}
        reasons = comparability.get("reasons") if isinstance(comparability, dict) else None
        summary.regression_note = "; ".join(reasons or []) or str(section.get("reason") or "")


def _relaxed_text(entry: dict[str, Any]) -> str:
    who = f" ({entry['model']})" if entry.get("model") else ""
    return f"{entry.get('metric')}{who}: {entry.get('declared')} -> {entry.get('effective')}"


def list_runs(dag_id: str = DAG_ID) -> list[RunSummary]:
    """Every run folder of the DAG, newest first (snapshot date, then start time)."""
    try:
        root = _resolve_existing(artifacts_root())
        base = _resolve_existing(root / dag_id)
    except NotFound:
        return []
    if not _inside(base, root) or not base.is_dir():
        return []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    runs = []
    store = _store()
    for entry in entries:
        try:
            check_run_key(entry.name)
        except BadPath:
            continue
        try:
            folder = _resolve_existing(entry)
        except NotFound:
            continue
        if not folder.is_dir() or not _inside(folder, base) or folder == base:
            continue
        try:
            with consistent(entry.name, dag_id, store):
                summary = summarize(folder)
        except NotFound:
            summary = RunSummary(run_key=entry.name, run_id=entry.name, status="unreadable")
            summary.why = ["an interrupted upload into this run is not finished yet"]
        except OSError:
            continue
        summary.run_key = entry.name
        runs.append(summary)
    runs.sort(key=lambda r: r.sort_key, reverse=True)
    return runs


#: page sizes the certifications list accepts (a bound, so one request stays cheap)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class RunPage:
    """One page of the runs list, newest first."""

    runs: list[RunSummary]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def page_of_runs(
    runs: list[RunSummary], page: int = 1, page_size: int = DEFAULT_PAGE_SIZE
) -> RunPage:
    """Runs `(page-1)*page_size ...` of `runs` (pages count from 1; past the end: empty)."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadPath(f"page_size must be in 1..{MAX_PAGE_SIZE}")
    if page < 1:
        raise BadPath("page must be >= 1")
    start = (page - 1) * page_size
    return RunPage(runs[start : start + page_size], len(runs), page, page_size)
