"""Readiness assessment by group (functional, performance, reliability, operational).

Every item is checked from an artifact of the run: {item, passed, evidence, detail}, where
`evidence` is the file (relative to the run folder) the check read. `passed` is None when the
artifact that could decide it does not exist (e.g. the infra stage did not run): "not
checked", never a silent pass. The original plan set several of these to a constant True.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.report.collect import STAGE_TABLES, as_bool, as_float, read_csv, read_json
from pipeline.report.decision import APPROVED, CONDITIONAL_APPROVAL
from pipeline.stages.registry import DATA_DOCS_INDEX, GATES_DIR, summary_contract

__all__ = ["GROUPS", "PACKAGE_ITEM", "package_item", "readiness"]

GROUPS = ("functional", "performance", "reliability", "operational")

PACKAGE_ITEM = "deployment package can be generated"
_PERFORMANCE_CATEGORIES = ("latency", "throughput", "concurrency", "memory", "cache", "interface")
_RELIABILITY_CATEGORIES = ("reliability",)


def _item(
    item: str,
    passed: bool | None,
    evidence: str | None,
    detail: str,
    status: str | None = None,
) -> dict[str, Any]:
    """One readiness item: measured (passed True or False from an artifact), not run (its
    artifact was never produced) or not applicable (the reason is the detail)."""
    if status is None:
        status = "measured" if passed is not None else "not_run"
    return {
        "item": item,
        "status": status,
        "passed": passed,
        "evidence": evidence,
        "detail": detail,
    }


def _rows_check(
    root: Path,
    item: str,
    table: str,
    select: Callable[[dict[str, str]], bool],
    column: str = "passed",
    missing: str = "",
) -> dict[str, Any]:
    """Passed when the table has selected rows and `column` is True on all of them."""
    rows = read_csv(root, table)
    if rows is None:
        return _item(item, None, None, missing or f"not checked: {table} is missing")
    chosen = [r for r in rows if select(r)]
    if not chosen:
        return _item(item, False, table, "no matching rows in the table")
    good = [r for r in chosen if as_bool(r.get(column)) is True]
    return _item(item, len(good) == len(chosen), table, f"{len(good)}/{len(chosen)} rows {column}")


def _check_prefix(prefix: str) -> Callable[[dict[str, str]], bool]:
    return lambda row: str(row.get("check", "")).startswith(prefix)


def _criteria_item(
    item: str, criteria: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, Any] | None:
    chosen = [c for c in criteria if c["name"] in names]
    if not chosen:
        return None
    met = [c for c in chosen if c["met"]]
    evidence = chosen[0]["evidence"]["table"]
    detail = "; ".join(
        f"{c['name']} {'met' if c['met'] else 'NOT met'} ({c['rule']})" for c in chosen
    )
    return _item(item, len(met) == len(chosen), evidence, detail)


def _functional(root: Path, criteria: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checks = STAGE_TABLES["integration"]
    items = [
        _rows_check(
            root,
            "every model file loads, verifies its checksum and warms up",
            checks,
            _check_prefix("model_load"),
        ),
        _rows_check(
            root,
            "exported models: checksums verified",
            STAGE_TABLES["build"],
            lambda r: True,
            "sha256_verified",
        ),
        _rows_check(
            root,
            "exported models load in the engine",
            STAGE_TABLES["build"],
            lambda r: True,
            "loaded",
        ),
        _rows_check(
            root,
            "exported models serve finite outputs",
            STAGE_TABLES["build"],
            lambda r: True,
            "outputs_finite",
        ),
        _rows_check(
            root,
            "end-to-end inference returns the expected output shapes",
            checks,
            _check_prefix("end_to_end"),
        ),
        _rows_check(
            root, "requests submitted together are batched", checks, _check_prefix("batching")
        ),
        _rows_check(
            root,
            "TorchScript, ONNX, batched, single and cached outputs agree",
            checks,
            _check_prefix("parity_"),
        ),
    ]
    workflow = _rows_check(
        root,
        "cross-model workflow (routing -> quality -> conversion request -> validation)",
        checks,
        _check_prefix("cross_model_workflow"),
    )
    rows = read_csv(root, checks) or []
    skipped = [
        r
        for r in rows
        if r.get("check") == "cross_model_workflow" and r.get("status") == "not_applicable"
    ]
    if skipped:
        workflow = _item(
            workflow["item"], None, checks, str(skipped[0]["detail"]), "not_applicable"
        )
    items.append(workflow)
    quality = [c for c in criteria if c.get("metric") == "model_quality"]
    measured = [c for c in quality if c.get("status") != "not_applicable"]
    if measured:
        sla = _criteria_item(
            "model quality SLAs on each model's evaluation set",
            criteria,
            tuple(c["name"] for c in measured),
        )
        items.append(sla)
    for c in quality:
        if c.get("status") == "not_applicable":
            items.append(
                _item(f"{c['name']}: quality evidence", None, None, c["detail"], "not_applicable")
            )
    return items


def _performance(root: Path, criteria: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    items = [
        _item(
            c["rule"],
            bool(c["met"] and c["valid"]),
            c["evidence"]["table"],
            (f"measured {c['measured']:.4g}" if c["measured"] is not None else "not measured")
            + f"; {c['detail']}",
        )
        for c in criteria
        if c["category"] in _PERFORMANCE_CATEGORIES
    ]
    items.append(
        _rows_check(
            root,
            "every load scenario is valid (stable windows, enough samples)",
            STAGE_TABLES["load"],
            lambda r: True,
            "valid",
        )
    )
    return items


def _reliability(root: Path, criteria: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    items = [
        _item(c["rule"], bool(c["met"] and c["valid"]), c["evidence"]["table"], c["detail"])
        for c in criteria
        if c["category"] in _RELIABILITY_CATEGORIES
    ]
    table = STAGE_TABLES["stress"]
    rows = read_csv(root, table)
    if rows is None:
        items.append(
            _item(
                "stress tests survived and recovered",
                None,
                None,
                f"not checked: {table} is missing (the stress stage did not run)",
            )
        )
        return items
    for row in rows:
        survived, recovered = as_bool(row.get("survived")), as_bool(row.get("recovered"))
        items.append(
            _item(
                f"stress: {row.get('test')} survived and recovered",
                survived is True and recovered is True,
                table,
                f"survived {survived}, recovered {recovered}, success rate "
                f"{as_float(row.get('success_rate'))}",
            )
        )
    lost = sum(int(as_float(r.get("lost")) or 0) for r in rows)
    items.append(
        _item(
            "no request lost under stress",
            bool(rows) and lost == 0,
            table,
            f"{lost} lost over {len(rows)} tests",
        )
    )
    return items


def _monitoring(root: Path) -> dict[str, Any]:
    item = "monitoring exposes engine metrics"
    infra = read_csv(root, STAGE_TABLES["infra"])
    metric_rows = [r for r in infra or [] if "metrics" in str(r.get("check", ""))]
    if metric_rows:
        ok = all(as_bool(r.get("passed")) is True for r in metric_rows)
        return _item(
            item,
            ok,
            STAGE_TABLES["infra"],
            f"{len(metric_rows)} metrics check(s) of the HTTP service",
        )
    load_summary = summary_contract("load").path
    summary = read_json(root, load_summary)
    if summary is None:
        return _item(item, None, None, "not checked: the load and infra stages did not run")
    stats = summary.get("engine_stats") or {}
    submitted, completed = stats.get("submitted"), stats.get("completed")
    ok = isinstance(submitted, int) and submitted > 0 and completed == submitted
    return _item(
        item,
        ok,
        load_summary,
        f"engine counters reported by the engine process: submitted {submitted}, completed "
        f"{completed}, cache hits {stats.get('cache_hits')}, rejected {stats.get('rejected')}",
    )


def _operational(root: Path, decision: str, gates: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = [_monitoring(root)]
    infra = read_csv(root, STAGE_TABLES["infra"])
    health = [
        r
        for r in infra or []
        if any(word in str(r.get("check", "")) for word in ("health", "readiness", "liveness"))
    ]
    if health:
        items.append(
            _item(
                "health endpoints answer (ready, live)",
                all(as_bool(r.get("passed")) is True for r in health),
                STAGE_TABLES["infra"],
                f"{len(health)} health check(s)",
            )
        )
    else:
        items.append(
            _item(
                "health endpoints answer (ready, live)",
                None,
                None,
                "not checked: the infra stage did not run or has no health checks",
            )
        )
    sums = (root / "models/SHA256SUMS").is_file()
    info = read_json(root, "models/model_info.json") or {}
    files = [
        f for e in info.values() if isinstance(e, dict) for f in (e.get("files") or {}).values()
    ]
    checksummed = (
        sums and bool(files) and all(isinstance(f, dict) and f.get("sha256") for f in files)
    )
    items.append(
        _item(
            "model files are checksummed (model_info.json, SHA256SUMS)",
            checksummed,
            "models/SHA256SUMS" if sums else None,
            f"{len(files)} model file(s); SHA256SUMS {'present' if sums else 'missing'}",
        )
    )
    seeds = [
        (e.get("training_data") or {}).get("seed")
        for e in info.values()
        if isinstance(e, dict) and e.get("source") == "built"
    ]
    dated = bool(info) and all(
        isinstance(e, dict) and e.get("snapshot_date") for e in info.values()
    )
    items.append(
        _item(
            "models are reproducible: snapshot date and seeds recorded",
            (dated and all(s is not None for s in seeds)) if info else None,
            "models/model_info.json" if info else None,
            f"{len(seeds)} built model(s) with seeds; snapshot date recorded: {dated}",
        )
    )
    docs = (root / DATA_DOCS_INDEX).is_file()
    items.append(
        _item(
            "every gate's validation is recorded with Data Docs",
            bool(gates) and docs,
            DATA_DOCS_INDEX if docs else None,
            f"{len(gates)} gate result(s) in {GATES_DIR}/; "
            f"Data Docs {'present' if docs else 'missing'}",
        )
    )
    items.append(package_item(decision, None))
    return items


def package_item(decision: str, package: str | None) -> dict[str, Any]:
    """The readiness item for the deployment package: passed only once a package was
    really written (`set_package` updates it); not applicable when the decision rules one
    out; not run until the package step ran."""
    if package:
        return _item(PACKAGE_ITEM, True, package, f"written: {package} (decision {decision})")
    if decision not in (APPROVED, CONDITIONAL_APPROVAL):
        return _item(
            PACKAGE_ITEM,
            None,
            None,
            f"not applicable: the decision is {decision}, so no package is written",
            "not_applicable",
        )
    return _item(
        PACKAGE_ITEM,
        None,
        None,
        "not run yet: the package step runs after the report (its result updates this item)",
    )


def readiness(
    root: Path,
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Any],
    decision: str,
) -> dict[str, list[dict[str, Any]]]:
    """The four readiness groups, each a list of {item, passed, evidence, detail}."""
    return {
        "functional": _functional(root, criteria),
        "performance": _performance(root, criteria),
        "reliability": _reliability(root, criteria),
        "operational": _operational(root, decision, gates),
    }
