"""`relcert report` and `relcert package` finish a run folder made stage by stage with
`relcert stage`, with the same report and the same package bytes as the DAG's tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.targets import DEFAULT_TARGETS_FILE

pytestmark = pytest.mark.e2e


def test_stage_by_stage_to_the_same_package_as_the_dag_task(
    certified_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.orchestrate import package

    assert main(["report", "--run-dir", str(certified_run)]) == 0
    report = json.loads((certified_run / "report.json").read_text())
    assert report["decision"] == "APPROVED"
    assert "==> decision: APPROVED" in capsys.readouterr().out

    assert main(["package", "--run-dir", str(certified_run)]) == 0
    zips = sorted((certified_run / "package").glob("*.zip"))
    assert [z.name for z in zips] == ["relcert-service-1.0.20260115.zip"]
    by_cli = zips[0].read_bytes()
    report = json.loads((certified_run / "report.json").read_text())
    assert report["package"] == "package/relcert-service-1.0.20260115.zip"

    # the DAG's deployment_package task, on the same run folder in the artifacts store
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELCERT_ARTIFACTS", str(certified_run.parent.parent))
        result = package({"run_dir": str(certified_run)})
    assert Path(result["package"]) == zips[0]
    assert zips[0].read_bytes() == by_cli
    assert json.loads((certified_run / "report.json").read_text())["image"] is None


def test_a_run_that_fails_its_targets_is_not_approved_and_gets_no_package(
    certified_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = certified_run
    strict = tmp_path / "targets.yaml"
    text = Path(DEFAULT_TARGETS_FILE).read_text()
    strict.write_text(text.replace("target: 300", "target: 0.001", 1))
    assert "target: 0.001" in strict.read_text()  # p99_latency_ms, tightened beyond reach

    assert main(["stage", "certify", "--run-dir", str(run), "--targets", str(strict)]) == 3
    assert main(["report", "--run-dir", str(run), "--targets", str(strict)]) == 20
    assert json.loads((run / "report.json").read_text())["decision"] == "NOT_APPROVED"
    capsys.readouterr()

    assert main(["package", "--run-dir", str(run)]) == 20
    err = capsys.readouterr().err
    assert "refused" in err and "'NOT_APPROVED'" in err and "APPROVED or CONDITIONAL" in err
    assert not (run / "package").exists()


def test_report_and_package_name_a_missing_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["report", "--run-dir", str(missing)]) == 1
    assert f"--run-dir {missing}: no such run folder" in capsys.readouterr().err
    assert main(["package", "--run-dir", str(tmp_path)]) == 1  # a folder, but no report
    assert "report.json is missing" in capsys.readouterr().err


def test_a_report_of_an_earlier_attempt_never_releases_a_package(
    certified_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.stages.common import RunDir

    assert main(["report", "--run-dir", str(certified_run)]) == 0
    approved = (certified_run / "report.json").read_bytes()
    run = RunDir.of(certified_run)
    old = run.attempt_id()
    run.start_attempt()  # the run is cleared: the approved attempt's evidence moves aside
    assert (certified_run / "attempts" / old / "report.json").read_bytes() == approved
    (certified_run / "report.json").write_bytes(approved)  # a stale report put back
    capsys.readouterr()
    assert main(["package", "--run-dir", str(certified_run)]) == 1
    err = capsys.readouterr().err
    assert f"is from attempt {old}" in err and "current attempt" in err
    assert not (certified_run / "package").exists()
    # and re-reporting the new attempt, with nothing measured, cannot approve it
    assert main(["report", "--run-dir", str(certified_run)]) == 20
    report = json.loads((certified_run / "report.json").read_text())
    assert report["decision"] == "NOT_APPROVED" and report["readiness_score"] == 0.0
