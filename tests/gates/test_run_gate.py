"""run_gate with real Great Expectations: tables that pass, tables that fail, what is recorded."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.gates import GateError, GateFailed, GateResult, raise_for_gate, run_gate
from pipeline.targets import Targets
from tests.gates.helpers import write_table

pytestmark = pytest.mark.unit

TableFactory = Callable[[str], pd.DataFrame]


def gate_json(result: GateResult) -> dict:
    return json.loads(result.path.read_text())


def record(result: GateResult, text: str) -> dict:
    matches = [e for e in result.expectations if text in e["meaning"]]
    assert len(matches) == 1, [e["meaning"] for e in result.expectations]
    return matches[0]


@pytest.mark.parametrize("stage", ["build", "integration", "load", "stress", "infra"])
def test_good_table_passes(stage: str, run_dir: Path, stage_table: TableFactory) -> None:
    write_table(run_dir, stage, stage_table(stage))
    result = run_gate(stage, run_dir)
    assert result.success, result.failed
    assert result.failed == ()
    assert result.path == run_dir.resolve() / "gates" / f"{stage}.json"
    raise_for_gate(result)  # no exception


# (stage, row, column, bad value, meaning of the expectation that must fail)
VIOLATIONS = [
    ("load", 1, "p99_ms", 400.0, "p99 latency of every scenario <= 360 ms (target 300 ms +20%)"),
    ("load", 0, "error_rate", 0.02, "error rate of every scenario <= 0.015 (target 0.01 +50%)"),
    ("load", 2, "valid", False, "valid is True for every scenario"),
    ("load", 0, "mean_ms", 34.0, "mean latency of every scenario <= 33 ms (target 30 ms +10%)"),
    ("load", 0, "p95_ms", 120.0, "p95 latency of every scenario <= 115 ms (target 100 ms +15%)"),
    ("load", 1, "peak_rss_mb", 600.0, "peak RSS of every scenario <= 525 MB (target 500 MB +5%)"),
    ("load", 1, "p99_ms", math.nan, "p99_ms is present for every scenario"),
    ("build", 0, "sha256_verified", False, "sha256_verified is True for every exported model"),
    ("build", 1, "parity_passed", False, "parity_passed is True for every exported model whose"),
    ("build", 1, "parity_status", "invalid", "parity is measured or not applicable"),
    ("build", 2, "outputs_finite", False, "outputs_finite is True for every exported model"),
    ("build", 1, "loaded", False, "loaded is True for every exported model"),
    ("build", 3, "parity_max_abs_diff", 1e-3, "parity max |diff| of every exported model"),
    ("build", 3, "parity_max_abs_diff", -1.0, "parity max |diff| of every exported model"),
    ("build", 0, "version", math.nan, "version is present for every exported model"),
    ("integration", 0, "passed", False, "passed is True for every measured check"),
    ("integration", 0, "status", "invalid", "every check was measured or is not applicable"),
    ("integration", 1, "passed", False, "passed is True for every measured check"),
    ("integration", 4, "measured", 3.5, "initialisation time of every initialization check"),
    ("integration", 3, "measured", math.nan, "measured is present for every initialization"),
    ("integration", 0, "check", math.nan, "check is present for every check"),
    ("stress", 1, "lost", 1, "no request is lost in any stress test"),
    ("stress", 0, "survived", False, "survived is True for every stress test"),
    ("stress", 2, "recovered", False, "recovered is True for every stress test"),
    ("infra", 1, "passed", False, "passed is True for every measured check"),
]


@pytest.mark.parametrize(("stage", "row", "column", "value", "meaning"), VIOLATIONS)
def test_violation_fails_with_the_right_expectation(
    stage: str,
    row: int,
    column: str,
    value: object,
    meaning: str,
    run_dir: Path,
    stage_table: TableFactory,
) -> None:
    table = stage_table(stage)
    if isinstance(value, bool | str):
        table[column] = table[column].astype(object)
    table.loc[row, column] = value
    write_table(run_dir, stage, table)

    result = run_gate(stage, run_dir)

    assert not result.success
    assert len(result.failed) == 1, result.failed
    assert result.failed[0].startswith(meaning)
    written = gate_json(result)
    assert written["success"] is False
    assert written["failed"] == list(result.failed)
    with pytest.raises(GateFailed, match=f"gate '{stage}' failed") as caught:
        raise_for_gate(result)
    assert caught.value.stage == stage and caught.value.failed == result.failed


def test_gate_json_records_observed_values_and_offending_rows(
    run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("load")
    table.loc[1, "p99_ms"] = 400.0
    write_table(run_dir, "load", table)

    result = run_gate("load", run_dir)
    written = gate_json(result)

    assert set(written) == {
        "stage",
        "attempt_id",
        "success",
        "table",
        "row_count",
        "suite_name",
        "expectations",
        "failed",
    }
    assert written["stage"] == "load" and written["success"] is False
    assert written["table"] == "stages/load/scenarios.csv"
    assert written["row_count"] == 3 and written["suite_name"] == "relcert_load"
    assert written["expectations"] == list(result.expectations)
    assert written["expectations"][0]["observed_value"] == 3  # row count

    p99 = record(result, "p99 latency")
    assert p99["success"] is False
    assert p99["observed_value"] == 400.0  # the worst scenario
    assert p99["unexpected_count"] == 1
    assert p99["unexpected_examples"] == [{"row": 1, "scenario": "burst", "p99_ms": 400.0}]
    assert p99["kwargs"] == {"column": "p99_ms", "max_value": 360.0}
    assert p99["target"] == "p99_latency_ms"
    mean = record(result, "mean latency")
    assert mean["success"] is True and mean["observed_value"] == 25.0


def test_gate_json_is_deterministic_and_strict_json(
    run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("integration")  # has NaN measurements
    write_table(run_dir, "integration", table)
    first = run_gate("integration", run_dir).path.read_bytes()
    second = run_gate("integration", run_dir).path.read_bytes()
    assert first == second
    assert b"NaN" not in first
    json.loads(first)


def test_certification_rechecks_measurements_independently_of_met(
    run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("certify")
    p99 = table.index[table["name"] == "p99_latency_ms"][0]
    table.loc[p99, "measured"] = 361.0  # over 360, while `met` still claims True
    write_table(run_dir, "certify", table)

    result = run_gate("certify", run_dir)

    assert result.failed == ("measured p99_latency_ms <= 360 ms (target 300 ms +20%)",)
    assert record(result, "measured p99_latency_ms")["observed_value"] == 361.0


def test_certification_passes_and_needs_one_row_per_target(
    run_dir: Path, stage_table: TableFactory, targets: Targets
) -> None:
    table = stage_table("certify")
    write_table(run_dir, "certify", table)
    assert run_gate("certify", run_dir).success

    write_table(run_dir, "certify", table[table["name"] != "cache_hit_rate"])
    result = run_gate("certify", run_dir)
    planned = len(table)
    assert result.failed == (
        f"stages/certify/criteria.csv has one row per planned criterion ({planned} rows)",
        f"the criteria are exactly the {planned} planned from {targets.source} and the run's "
        "models",
    )


@pytest.mark.parametrize(
    "column,value,failed",
    [
        ("met", False, "met is True for every measured criterion"),
        (
            "status",
            "invalid",
            "every criterion was measured or is not applicable (none invalid or not run)",
        ),
        (
            "status",
            "not_run",
            "every criterion was measured or is not applicable (none invalid or not run)",
        ),
    ],
)
def test_certification_fails_when_a_criterion_is_not_met_invalid_or_not_run(
    column: str, value, failed: str, run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("certify")
    table.loc[0, column] = value
    result = run_gate("certify", run_dir, table=table)
    assert result.failed == (failed,)


def test_a_not_applicable_criterion_neither_passes_nor_fails_the_gate(
    run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("certify")
    table.loc[0, ["status", "measured", "met"]] = ["not_applicable", float("nan"), False]
    assert run_gate("certify", run_dir, table=table).success


def test_rows_of_another_attempt_fail_the_gate(run_dir: Path, stage_table: TableFactory) -> None:
    from pipeline.stages.common import RunDir

    write_table(run_dir, "stress", stage_table("stress"))
    assert run_gate("stress", run_dir).success
    RunDir(run_dir).start_attempt()  # the run restarts; the old table moves aside
    (run_dir / "stages/stress").mkdir(parents=True)
    old = (run_dir / "attempts").glob("*/stages/stress/tests.csv")
    (run_dir / "stages/stress/tests.csv").write_bytes(next(old).read_bytes())
    result = run_gate("stress", run_dir)
    assert not result.success
    assert any("is from this attempt" in f for f in result.failed)


def test_tightened_target_fails_a_previously_passing_table(
    run_dir: Path, stage_table: TableFactory, targets: Targets
) -> None:
    write_table(run_dir, "load", stage_table("load"))  # worst p99 is 300 ms
    assert run_gate("load", run_dir, targets=targets).success

    tightened = targets.with_overrides({"p99_latency_ms": 200})  # threshold 240 ms
    result = run_gate("load", run_dir, targets=tightened)
    assert result.failed == ("p99 latency of every scenario <= 240 ms (target 200 ms +20%)",)


def test_data_docs_index_links_every_gate_of_the_run(
    run_dir: Path, stage_table: TableFactory
) -> None:
    write_table(run_dir, "load", stage_table("load"))
    write_table(run_dir, "stress", stage_table("stress"))
    load = run_gate("load", run_dir)
    stress = run_gate("stress", run_dir)
    run_gate("load", run_dir)  # a re-run replaces its earlier result

    index = run_dir.resolve() / "data_docs" / "index.html"
    assert load.data_docs_index == stress.data_docs_index == index
    html = index.read_text()
    assert "relcert_load" in html and "relcert_stress" in html
    pages = sorted(p.relative_to(index.parent) for p in index.parent.glob("validations/**/*.html"))
    assert [p.parts[1] for p in pages] == ["relcert_load", "relcert_stress"], pages
    assert all(any(d.iterdir()) for d in index.parent.glob("validations/**/") if d.is_dir())
    assert sorted(p.name for p in (run_dir / "gates").iterdir()) == ["load.json", "stress.json"]


def test_nothing_is_written_outside_the_run_folder(
    tmp_path: Path, run_dir: Path, stage_table: TableFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    write_table(run_dir, "build", stage_table("build"))
    before = {p for p in tmp_path.rglob("*") if run_dir not in p.parents}

    run_gate("build", os.path.relpath(run_dir))

    assert list(cwd.iterdir()) == []  # in particular no gx/ folder
    assert {p for p in tmp_path.rglob("*") if run_dir not in p.parents} == before
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".gx",
        "attempt.json",
        "data_docs",
        "gates",
        "stages",
    ]


def test_in_memory_table_is_validated_without_a_file(
    run_dir: Path, stage_table: TableFactory
) -> None:
    result = run_gate("stress", run_dir, table=stage_table("stress"))
    assert result.success
    assert not (run_dir / "stages").exists()


def test_missing_table_names_the_stage_and_path(run_dir: Path) -> None:
    with pytest.raises(GateError, match=r"gate 'load': table not found: expected stages/load/"):
        run_gate("load", run_dir)


def test_missing_column_names_the_column_and_table(
    run_dir: Path, stage_table: TableFactory
) -> None:
    write_table(run_dir, "load", stage_table("load").drop(columns=["p99_ms"]))
    with pytest.raises(
        GateError, match=r"stages/load/scenarios\.csv is missing column\(s\) 'p99_ms'"
    ):
        run_gate("load", run_dir)
    assert not (run_dir / "gates").exists()


def test_non_numeric_measurement_fails_and_reports_why(
    run_dir: Path, stage_table: TableFactory
) -> None:
    table = stage_table("load")
    table["p99_ms"] = table["p99_ms"].astype(object)
    table.loc[0, "p99_ms"] = "fast"
    result = run_gate("load", run_dir, table=table)
    p99 = record(result, "p99 latency")
    assert p99["success"] is False and p99["observed_value"] is None
    assert "exception" in p99


def test_unknown_stage_is_refused(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown gate stage 'deploy'"):
        run_gate("deploy", run_dir)
