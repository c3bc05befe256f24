"""Read what the stages and gates wrote into a run folder, for the report.

Every value here comes from a file of the run (or, for library versions, from the installed
distributions); nothing is assumed. Missing files are reported as missing, never replaced by a
default that looks like a measurement. Paths in the result are relative to the run folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.names import Status
from pipeline.report.decision import GATE_OF_STAGE, STAGE_ORDER
from pipeline.stages.common import RunDir, StageError
from pipeline.stages.contracts import ATTEMPT_COLUMN
from pipeline.stages.registry import DATA_DOCS_DIR, DATA_DOCS_INDEX, GATES_DIR, STAGES
from pipeline.stages.registry import stage as stage_spec
from pipeline.stages.registry import table as table_contract

__all__ = [
    "CERTIFY_GATE",
    "CRITERIA_TABLE",
    "STAGE_TABLES",
    "criteria_rows",
    "current_attempt",
    "environment",
    "finite_number",
    "gate_statuses",
    "jsonable",
    "models",
    "performance_analysis",
    "read_csv",
    "read_json",
    "stage_errors",
    "stage_ran",
    "stages_section",
    "summaries",
]

CRITERIA_TABLE = table_contract("certify", "criteria").path
#: the gate that checks the criteria table again
CERTIFY_GATE = stage_spec("certify").gate_path

#: stage -> its gated table (from the stage registry)
STAGE_TABLES = {s.name: s.gated_table.path for s in STAGES}

#: library versions recorded in the environment section (distribution names)
PACKAGES = (
    "torch",
    "onnxruntime",
    "great_expectations",
    "apache-airflow",
    "numpy",
    "pandas",
    "matplotlib",
    "relcert",
)

#: the summary fields shown as a stage's excerpt (nested keys with dots); others: scalars
_EXCERPTS: dict[str, tuple[str, ...]] = {
    "build": ("snapshot_date", "rows", "build_seconds"),
    "integration": ("profile", "checks", "passed", "failed", "initialization_s"),
    "load": (
        "profile",
        "overall",
        "capacity.max_sustained_rps",
        "capacity.capped",
        "capacity.trials",
        "peak.throughput_rps",
        "concurrency.supported_users",
        "concurrency.levels_tested",
        "cache.hit_rate",
        "cache.requests",
        "memory.peak_rss_mb",
        "memory.pool_reuse_ratio",
        "calibration",
        "engine_init_s",
    ),
    "stress": (
        "profile",
        "scale",
        "survived",
        "recovered",
        "total",
        "lost",
        "all_survived",
        "all_recovered",
        "engine_peak_rss_mb",
        "engine_exit_code",
    ),
    "infra": (
        "profile",
        "checks",
        "failed",
        "max_body_bytes",
        "peak_rss_mb",
        "mean_cpu_percent",
        "validation.seconds",
        "availability.value",
        "availability.probes",
        "availability.requests",
        "availability.restarts",
    ),
    "certify": ("criteria", "met", "unmet", "certification_passed", "by_category"),
}
_SECONDS_KEYS = ("seconds", "wall_s", "build_seconds")


# --------------------------------------------------------------------------- reading files
def jsonable(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists, keys -> str."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    if callable(item):
        return jsonable(item())
    return str(value)


def read_json(root: Path, relative: str) -> dict[str, Any] | None:
    """The JSON object at `relative`, or None when it is missing or unreadable."""
    try:
        data = json.loads((root / relative).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def current_attempt(root: Path) -> str | None:
    """The run's current attempt (attempt.json), None for a folder that has none."""
    try:
        return RunDir(root).attempt_id(create=False)
    except StageError:
        return None


def read_csv(root: Path, relative: str) -> list[dict[str, str]] | None:
    """Rows of a CSV table as strings (exactly as written), or None when missing. A table
    stamped with attempt ids yields only the current attempt's rows (None when it holds
    none: another attempt's evidence is not this run's)."""
    try:
        with open(root / relative, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    if rows and ATTEMPT_COLUMN in rows[0]:
        attempt = current_attempt(root)
        rows = [r for r in rows if r.get(ATTEMPT_COLUMN) == attempt]
        return rows or None
    return rows


def as_bool(text: Any) -> bool | None:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return None


def finite_number(value: Any) -> float | None:
    """`value` as a finite float (a number or numeric text); None for None, booleans, NaN,
    infinities and anything float() refuses."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_float(text: Any) -> float | None:
    """The number in a CSV cell (parsed with float(), so it round-trips), None if empty/NaN."""
    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- stages and gates
def _summary(root: Path, stage: str) -> dict[str, Any] | None:
    """This attempt's summary of `stage`, following its contract; None otherwise."""
    try:
        return RunDir(root).read_summary(stage)
    except StageError:
        return None


def stage_ran(root: Path, stage: str) -> bool:
    """A stage ran when it left this attempt's summary or gated table in the run folder."""
    if _summary(root, stage) is not None:
        return True
    table = STAGE_TABLES.get(stage)
    return bool(table and read_csv(root, table))


def stage_errors(root: Path) -> dict[str, str]:
    """stage -> the message it failed with in this attempt (stages/<stage>/error.json)."""
    run = RunDir(root)
    return {s: e for s in STAGE_ORDER if (e := run.stage_error(s))}


def summaries(root: Path) -> dict[str, dict[str, Any]]:
    """stage -> its summary.json of this attempt, for every stage that left one."""
    found = {}
    for stage in STAGE_ORDER:
        summary = _summary(root, stage)
        if summary is not None:
            found[stage] = summary
    return found


def gate_statuses(root: Path) -> dict[str, dict[str, Any]]:
    """gate -> {stage, success, failed, path, table, expectations, passed, data_docs} for every
    gates/<gate>.json of the run (an unreadable file counts as a failed gate)."""
    gates: dict[str, dict[str, Any]] = {}
    docs = DATA_DOCS_INDEX if (root / DATA_DOCS_INDEX).is_file() else None
    stage_of = {gate: stage for stage, gate in GATE_OF_STAGE.items()}
    folder = root / GATES_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    order = {gate: i for i, gate in enumerate(GATE_OF_STAGE.values())}
    attempt = current_attempt(root)
    for file in sorted(files, key=lambda f: (order.get(f.stem, len(order)), f.stem)):
        gate = file.stem
        relative = f"{GATES_DIR}/{file.name}"
        payload = read_json(root, relative)
        if payload is not None and payload.get(ATTEMPT_COLUMN) != attempt:
            continue  # another attempt's verdict is not this run's
        if payload is None:
            status = {"success": False, "failed": [f"{relative} is not readable JSON"]}
            expectations: list[Any] = []
        else:
            expectations = [e for e in payload.get("expectations") or [] if isinstance(e, dict)]
            status = {
                "success": payload.get("success") is True,
                "failed": [str(f) for f in payload.get("failed") or []],
            }
        gates[gate] = {
            "stage": stage_of.get(gate, gate),
            **status,
            "path": relative,
            "table": (payload or {}).get("table"),
            "row_count": (payload or {}).get("row_count"),
            "expectations": len(expectations),
            "passed": sum(1 for e in expectations if e.get("success") is True),
            "data_docs": docs,
            "data_docs_validation": _validation_page(root, gate),
        }
    return gates


def _validation_page(root: Path, gate: str) -> str | None:
    """The gate's latest validation page in the Data Docs (a re-run replaces the earlier)."""
    folder = root / DATA_DOCS_DIR / "validations" / f"relcert_{gate}"
    pages = sorted(folder.glob("*/*/*.html")) if folder.is_dir() else []
    return pages[-1].relative_to(root).as_posix() if pages else None


def stages_section(
    root: Path,
    expected: Iterable[str],
    found: Mapping[str, Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """stage -> {ran, expected, seconds, table, summary_path, gate, summary (excerpt)}."""
    expected = list(expected)
    names = [s for s in STAGE_ORDER if s in expected or stage_ran(root, s)]
    names += [s for s in expected if s not in names]
    names += [s for s in found if s not in names]
    section = {}
    errors = stage_errors(root)
    for stage in names:
        summary = found.get(stage) or {}
        ran = stage_ran(root, stage)
        seconds = next(
            (as_float(summary[k]) for k in _SECONDS_KEYS if as_float(summary.get(k)) is not None),
            None,
        )
        table = STAGE_TABLES.get(stage)
        gate = GATE_OF_STAGE.get(stage, stage)
        section[stage] = {
            "ran": ran,
            "error": errors.get(stage),
            "expected": stage in expected,
            "seconds": seconds,
            "table": table if table and (root / table).is_file() else None,
            "summary_path": stage_spec(stage).summary.path if stage in found else None,
            "gate": gate if gate in gates else None,
            "summary": jsonable(_excerpt(stage, summary)),
        }
    return section


def _excerpt(stage: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    keys = _EXCERPTS.get(stage)
    if keys is None:
        return {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = summary
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            out[key] = node
    return out


# --------------------------------------------------------------------------- criteria
def _evidence_gate(source: str) -> str | None:
    parts = source.split("/")
    if len(parts) >= 2 and parts[0] == "stages" and parts[1] in GATE_OF_STAGE:
        return stage_spec(parts[1]).gate_path
    return None


def _measure_sources() -> dict[str, str]:
    """metric -> the table or summary its measurement reads."""
    from pipeline.metrics import MODEL_QUALITY
    from pipeline.stages.certify import MEASURES, QUALITY_MEASURE

    sources = {name: source for name, (_, source) in MEASURES.items()}
    sources[MODEL_QUALITY] = QUALITY_MEASURE[1]
    return sources


def criteria_rows(root: Path, targets: Any) -> list[dict[str, Any]]:
    """One row per criterion: the certify table's record (target, threshold, status,
    measured, met), in the order of the run's plan (pipeline.criteria.plan: each target for
    the mix and per model, then each model's quality SLA), then any other rows of the table.
    A planned criterion without a row (the certify stage did not run) is not run."""
    from pipeline.criteria import plan
    from pipeline.targets import Target

    table = read_csv(root, CRITERIA_TABLE)
    by_name = {row.get("name"): row for row in table or []}
    info = read_json(root, "models/model_info.json") or {}
    planned = {p.name: p for p in plan(targets, info)} if targets is not None else {}
    names = list(planned) + [n for n in by_name if n and n not in planned]
    sources = _measure_sources()
    rows = []
    for name in names:
        row = by_name.get(name)
        wanted = planned.get(name)
        declared_target = wanted.target if wanted is not None else None
        metric = (wanted.metric if wanted else None) or (row or {}).get("metric") or name
        model = (wanted.model if wanted else None) or (row or {}).get("model") or None
        if row is not None:
            direction = row.get("direction") or (declared_target and declared_target.direction)
            target = Target(
                name=name,
                category=row.get("category") or "",
                target=as_float(row.get("target")) or 0.0,
                tolerance=as_float(row.get("tolerance")) or 0.0,
                direction="max" if direction == "max" else "min",
                unit=row.get("unit") or (declared_target.unit if declared_target else ""),
            )
            measured = as_float(row.get("measured"))
            source = row.get("source") or sources.get(metric, "")
            met, valid = as_bool(row.get("met")) is True, as_bool(row.get("valid")) is True
            status = row.get("status") or str(Status.NOT_RUN)
            samples = int(as_float(row.get("samples")) or 0)
            detail = row.get("detail") or ""
            threshold = as_float(row.get("threshold"))
            threshold = target.threshold if threshold is None else threshold
        else:
            from pipeline.criteria import placeholder_target

            target = declared_target or placeholder_target(wanted)
            measured, met, valid, samples = None, False, False, 0
            status = str(Status.NOT_RUN)
            source = sources.get(metric, "")
            threshold = target.threshold
            detail = (
                "not measured: the certify stage did not run"
                if table is None
                else f"not measured: {CRITERIA_TABLE} has no row for this criterion"
            )
        margin = target.margin(measured)
        rows.append(
            {
                "name": name,
                "metric": metric,
                "model": model,
                "category": target.category,
                # what was measured, from the code that measured it, in this run
                "description": detail,
                "rule": target.describe(),
                "target": target.target,
                "threshold": threshold,
                "direction": target.direction,
                "tolerance": target.tolerance,
                "unit": target.unit,
                "measured": measured,
                "margin": None if math.isnan(margin) else margin,
                "status": status,
                "met": met,
                "valid": valid,
                "samples": samples,
                "min_samples": int(as_float((row or {}).get("min_samples")) or 0),
                "detail": detail,
                "evidence": {
                    "table": source or None,
                    "gate": _evidence_gate(source) if source else None,
                    "criteria_table": CRITERIA_TABLE,
                    "certification_gate": CERTIFY_GATE,
                },
            }
        )
    return rows


# --------------------------------------------------------------------------- models, env
def models(root: Path, found: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model file: name, format, version, sha256 (+ whether the build stage
    verified it and whether the load stage served it)."""
    info = read_json(root, "models/model_info.json") or {}
    verified = {
        (r.get("model"), r.get("format")): as_bool(r.get("sha256_verified"))
        for r in read_csv(root, STAGE_TABLES["build"]) or []
    }
    served = set((found.get("load") or {}).get("engine_config", {}).get("models") or [])
    out = []
    for name, entry in sorted(info.items()):
        if not isinstance(entry, dict):
            continue
        for fmt, file in sorted((entry.get("files") or {}).items()):
            file = file if isinstance(file, dict) else {}
            path = f"models/{file.get('path')}" if file.get("path") else None
            out.append(
                {
                    "name": name,
                    "format": fmt,
                    "version": entry.get("version"),
                    "sha256": file.get("sha256"),
                    "bytes": file.get("bytes"),
                    "source": entry.get("source"),
                    "model_type": entry.get("model_type"),
                    "snapshot_date": entry.get("snapshot_date"),
                    "path": path if path and (root / path).is_file() else None,
                    "sha256_verified": verified.get((name, fmt)),
                    "served": f"{name}_{fmt}" in served,
                }
            )
    return out


def _package_version(name: str) -> str | None:
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def environment(root: Path, found: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Where the measurements were taken (hosts from the stage summaries), library versions,
    and the seeds and snapshot date of the models (model_info.json)."""
    hosts = {stage: s["host"] for stage, s in found.items() if isinstance(s.get("host"), dict)}
    measured_on = next((s for s in ("load", "stress", "integration") if s in hosts), None)
    measured_on = measured_on or next(iter(hosts), None)
    host = hosts.get(measured_on, {}) if measured_on else {}
    distinct = {json.dumps(h, sort_keys=True) for h in hosts.values()}
    info = read_json(root, "models/model_info.json") or {}
    seeds = {
        name: (e.get("training_data") or {}).get("seed")
        for name, e in sorted(info.items())
        if isinstance(e, dict)
    }
    dates = sorted({str(e.get("snapshot_date")) for e in info.values() if isinstance(e, dict)})
    build_libs = {name: e.get("build") for name, e in sorted(info.items()) if isinstance(e, dict)}
    return jsonable(
        {
            "python": host.get("python"),
            "platform": host.get("platform"),
            "cpu_count": host.get("cpu_count"),
            "cpu_model": host.get("cpu_model"),
            "hostname": host.get("hostname"),
            "measured_on": measured_on,
            "same_host_for_all_stages": len(distinct) <= 1,
            "hosts": hosts,
            "packages": {name: _package_version(name) for name in PACKAGES},
            "model_build": build_libs,
            "seeds": seeds,
            "snapshot_date": dates[0] if len(dates) == 1 else (dates or None),
            "engine_config": (found.get("load") or {}).get("engine_config"),
        }
    )


# --------------------------------------------------------------------------- performance
def performance_analysis(root: Path, criteria: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Target vs load-test vs certification figures (the plan's performance analysis).

    `test_figure` is the worst value over the closed-loop load scenarios (scenarios.csv; for
    throughput the highest scenario rate, which closed-loop users bound), `certified` the
    criterion's measurement."""
    by_name = {c["name"]: c for c in criteria}
    scenarios = read_csv(root, STAGE_TABLES["load"]) or []

    def worst(column: str, rows: list[dict[str, str]], highest: bool) -> float | None:
        values = [v for v in (as_float(r.get(column)) for r in rows) if v is not None]
        if not values:
            return None
        return max(values) if highest else min(values)

    plan = (
        ("average_inference_latency_ms", "mean_ms", scenarios, True, STAGE_TABLES["load"]),
        ("p95_latency_ms", "p95_ms", scenarios, True, STAGE_TABLES["load"]),
        ("p99_latency_ms", "p99_ms", scenarios, True, STAGE_TABLES["load"]),
        ("sustained_throughput_rps", "throughput_rps", scenarios, True, STAGE_TABLES["load"]),
        ("memory_usage_mb", "peak_rss_mb", scenarios, True, STAGE_TABLES["load"]),
        ("error_rate", "error_rate", scenarios, True, STAGE_TABLES["load"]),
    )
    rows = []
    for name, column, table, highest, source in plan:
        criterion = by_name.get(name)
        if criterion is None:
            continue
        rows.append(
            {
                "metric": name,
                "category": criterion["category"],
                "unit": criterion["unit"],
                "target": criterion["target"],
                "threshold": criterion["threshold"],
                "test_figure": worst(column, table, highest),
                "test_figure_is": f"{'max' if highest else 'min'} of {column} over {source}",
                "test_source": source if table else None,
                "certified": criterion["measured"],
                "met": criterion["met"],
            }
        )
    return rows


# --------------------------------------------------------------------------- baseline
def _ratio_phrase(row: Mapping[str, Any]) -> str:
    ratio, low, high = (as_float(row.get(k)) for k in ("ratio", "ci_low", "ci_high"))
    if row.get("metric") == "quality":
        base, cand = as_float(row.get("baseline_value")), as_float(row.get("candidate_value"))
        if base is None or cand is None:
            return "no value"
        return f"{cand - base:+.4f} points ({cand:.4g} vs {base:.4g})"
    text = "no ratio" if ratio is None else f"{ratio:.3g}x"
    if low is not None and high is not None:
        text += f" (interval {low:.3g}x to {high:.3g}x)"
    p_value = as_float(row.get("p_value"))
    if p_value is not None:
        text += f", p = {p_value:.2g}"
    return text


def regression_sentence(row: Mapping[str, Any], baseline: str) -> str:
    """`latency_p99_ms[m]: regressed against the baseline <run>: 2.1x (interval ...), p = ...;
    allowed +25%. <detail>`: the model, the metric, the baseline, the ratio and its evidence."""
    allowance = as_float(row.get("allowance"))
    allowed = ""
    if allowance is not None:
        allowed = (
            f"; a drop of at most {allowance:g} allowed"
            if row.get("metric") == "quality"
            else f"; at most {allowance:.0%} allowed"
        )
    model = f" of model {row['model']}" if row.get("model") else " of the mix"
    return (
        f"{row.get('name')}: {row.get('metric')}{model} regressed against the baseline "
        f"{baseline}: {_ratio_phrase(row)}{allowed}. {row.get('detail') or ''}".strip()
    )


def regression(root: Path) -> dict[str, Any] | None:
    """The regression stage's comparisons of this attempt with its baseline, for the report:
    the baseline, whether it was comparable, the rows, and one sentence per regression
    (unwaived) and per waiver. None when the stage did not run."""
    summary = _summary(root, "regression")
    rows = read_csv(root, STAGE_TABLES["regression"])
    if summary is None and rows is None:
        return None
    summary = summary or {}
    baseline = summary.get("baseline") or {}
    run = baseline.get("run") or {}
    key = run.get("run_key") or "none"
    rows = rows or []
    for row in rows:
        row["waived"] = as_bool(row.get("waived")) is True
        row["passed"] = as_bool(row.get("passed")) is True
    regressed = [r for r in rows if r.get("verdict") == "regression"]
    return {
        "baseline": baseline,
        "baseline_run": run.get("run_key"),
        "baseline_location": run.get("location"),
        "comparable": bool(summary.get("comparable")),
        "comparability": summary.get("comparability"),
        "reason": baseline.get("reason"),
        "allowances": summary.get("allowances"),
        "knees": summary.get("knees") or {},
        "waiver": summary.get("waiver"),
        "counts": {
            "comparisons": len(rows),
            "measured": sum(r.get("status") == "measured" for r in rows),
            "not_applicable": sum(r.get("status") == "not_applicable" for r in rows),
            "regressions": sum(not r["waived"] for r in regressed),
            "waived": sum(r["waived"] for r in regressed),
            "improvements": sum(r.get("verdict") == "improvement" for r in rows),
        },
        "regressions": [regression_sentence(r, key) for r in regressed if not r["waived"]],
        "waived": [regression_sentence(r, key) for r in regressed if r["waived"]],
        "rows": rows,
    }
