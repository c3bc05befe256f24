"""The stage registry, contracts and context: one declaration that the DAG, CLI, gates,
certification and report all follow, and contracts checked where results are written and
read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.gates import TABLES
from pipeline.metrics import KNOWN_METRICS, METRICS
from pipeline.names import Status
from pipeline.stages import STAGES, run_stage
from pipeline.stages.common import RunDir, StageError, StaleAttempt
from pipeline.stages.context import StageContext
from pipeline.targets import DEFAULT_TARGETS_FILE, load_targets

pytestmark = pytest.mark.stage

PROJECT = Path(__file__).resolve().parents[2]


def test_metric_list_measures_and_targets_file_agree() -> None:
    from pipeline.stages.certify import MEASURES

    assert set(MEASURES) == set(METRICS), "every metric has exactly one measurement"
    declared = [t["name"] for t in yaml.safe_load(DEFAULT_TARGETS_FILE.read_text())["targets"]]
    assert set(declared) <= set(KNOWN_METRICS)
    for target in load_targets().values():
        metric = METRICS[target.name]
        assert (target.direction, target.category, target.unit) == (
            metric.direction,
            metric.category,
            metric.unit,
        ), target.name


def test_every_stage_is_declared_once_and_resolves() -> None:
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    for spec in STAGES:
        assert callable(spec.load_runner()), spec.name
        assert TABLES[spec.gate] is spec.gated_table
        assert spec.gated_table.path.startswith(f"stages/{spec.name}/")
        assert all(before in names[: names.index(spec.name)] for before in spec.after)


def test_the_dag_and_the_cli_iterate_the_registry() -> None:
    import argparse

    from pipeline.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    stage_cmd = sub.choices["stage"]
    name_arg = next(a for a in stage_cmd._actions if a.dest == "name")
    assert list(name_arg.choices) == [s.name for s in STAGES]
    dag_text = (PROJECT / "dags" / "model_release_certification.py").read_text()
    for spec in STAGES[1:]:  # wired from the registry, not spelled out in the DAG file
        assert f'"{spec.task_id}"' not in dag_text and f'"{spec.name}"' not in dag_text


def test_a_summary_that_breaks_its_contract_is_refused_when_written(tmp_path: Path) -> None:
    ctx = StageContext.open(tmp_path / "run", "load")
    with pytest.raises(StageError, match="missing key 'warmup_s'"):
        ctx.write_summary({"overall": {"requests": 3}})
    assert not (tmp_path / "run/stages/load/summary.json").exists()


def test_a_table_missing_a_contract_column_is_refused_when_written(tmp_path: Path) -> None:
    ctx = StageContext.open(tmp_path / "run", "integration")
    with pytest.raises(StageError, match=r"missing column.*'status'"):
        ctx.write_table("checks", [{"check": "x", "model": "m", "passed": True}])


def test_summaries_of_another_attempt_are_never_read(run_dir: Path) -> None:
    run = RunDir.of(run_dir)
    old = StageContext.open(run, "certify")
    old.write_summary(
        {
            "criteria": 0,
            "met": 0,
            "unmet": [],
            "certification_passed": True,
            "by_category": {},
            "by_status": {},
        }
    )
    assert run.read_summary("certify")["attempt_id"] == old.attempt_id
    stale = (run.root / "stages/certify/summary.json").read_bytes()
    new_id = run.start_attempt()
    # the earlier attempt's evidence is moved aside, never deleted, and no longer read
    assert (run.root / "attempts" / old.attempt_id / "stages/certify/summary.json").exists()
    assert run.read_summary("certify") is None
    # a stale file put back in place is refused, not read as this attempt's
    (run.root / "stages/certify").mkdir(parents=True)
    (run.root / "stages/certify/summary.json").write_bytes(stale)
    with pytest.raises(StaleAttempt, match=f"not the current attempt {new_id}"):
        run.read_summary("certify")


def test_a_task_of_an_earlier_attempt_refuses_to_write(run_dir: Path) -> None:
    run = RunDir.of(run_dir)
    first = run.attempt_id()
    run.start_attempt()
    with pytest.raises(StaleAttempt, match=f"belongs to attempt {first}"):
        StageContext.open(run, "integration", attempt_id=first)


def test_certified_latency_excludes_the_warm_up(run_dir: Path, mini_profile) -> None:
    import pandas as pd

    run_stage("integration", run_dir, "mini")
    run_stage("load", run_dir, "mini")
    requests = pd.read_csv(run_dir / "stages/load/requests.csv")
    measured = requests[~requests["warmup"]]
    assert requests["warmup"].any(), "the mini profile discards a warm-up"
    summary = json.loads((run_dir / "stages/load/summary.json").read_text())
    assert summary["warmup_s"] == mini_profile.warmup_s
    assert summary["overall"]["requests"] == len(measured)
    run_stage("certify", run_dir, "mini")
    criteria = pd.read_csv(run_dir / "stages/certify/criteria.csv").set_index("name")
    for name in ("average_inference_latency_ms", "p95_latency_ms"):
        assert criteria.loc[name, "samples"] == len(measured) < len(requests), name
    injected = pd.read_csv(run_dir / "stages/load/injection.csv")
    # the success rate also counts the error test's requests (each against its declaration)
    assert criteria.loc["success_rate", "samples"] == len(measured) + len(injected)
    mean = criteria.loc["average_inference_latency_ms", "measured"]
    assert mean == pytest.approx(measured["latency_ms"].mean())


def test_a_failed_stage_names_its_error_in_the_criteria_it_leaves_unmeasured(
    run_dir: Path, mini_profile
) -> None:
    import pandas as pd

    (run_dir / "models/routing_classifier.onnx").write_bytes(b"not a model")
    with pytest.raises(StageError, match="models failed to load"):
        run_stage("load", run_dir, "mini")
    run_stage("certify", run_dir, "mini")
    criteria = pd.read_csv(run_dir / "stages/certify/criteria.csv").set_index("name")
    p95 = criteria.loc["p95_latency_ms"]
    assert p95["status"] == Status.NOT_RUN and not p95["met"]
    assert "the load stage failed: load: models failed to load" in p95["detail"]
    assert "routing_classifier" in p95["detail"]  # names the model that failed
