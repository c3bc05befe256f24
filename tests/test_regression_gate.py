"""The regression gate: this run against the last approved release of the same models.

One approved baseline is certified stage by stage (the functions the DAG's tasks call, with
`relcert stage` and `relcert report`) in an artifacts store of the test's own. Then:

- the baseline itself had no baseline: every comparison not applicable, with the reason,
  and it is still APPROVED (not applicable never passes or fails);
- the same model again (A/A): compared, measured, no regression;
- the model made twice as slow under the same name: NOT_APPROVED, the reason naming the
  model, the metric, the baseline, the ratio and its interval;
- the same slow run with its regressions waived (with a justification): at most
  CONDITIONAL_APPROVAL, the waiver and who gave it in the report;
- a pinned baseline is the one compared with.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.build.export import export_onnx
from tests.quick_profile import quick_profiles

pytestmark = pytest.mark.e2e


DAG = "model_release_certification"
STAGES = ("build", "integration", "load", "stress", "infra", "certify", "regression")


class _Matmuls(torch.nn.Module):
    """`steps` products of a 384 x 384 matrix per call, whatever the batch (a graph cannot
    sleep): the compute time grows with `steps`; the answers hardly depend on it."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.steps = steps
        self.w = torch.nn.Parameter(torch.rand(384, 384) / 384)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w + (x * 0).sum()  # not a constant the exporter could fold; no effect
        for _ in range(self.steps):
            w = w @ self.w
        return self.head(x) + 1e-3 * w.mean()  # each row's answer is its own


def _export(steps: int, path: Path) -> None:
    export_onnx(_Matmuls(steps), torch.rand(2, 8), path, "x", "y")


def _models_file(folder: Path, stem: str, file: str) -> Path:
    path = folder / f"{stem}.yaml"
    entry = {"name": "scorer", "path": file, "version": stem}
    path.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    return path


def _certify(store: Path, key: str, date: str, models_file: Path, stages=STAGES) -> dict:
    """Run `stages` then the report for run `key` of the store; report.json's data."""
    from pipeline.cli import main

    run = store / DAG / key
    for stage in stages:
        args = ["stage", stage, "--run-dir", str(run)]
        if stage == "build":
            args += ["--date", date, "--models", str(models_file)]
        main(args)  # a failed gate is the report's to judge
    main(["report", "--run-dir", str(run)])
    return json.loads((run / "report.json").read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The user's models (the release and a copy twice as slow) and an approved baseline."""
    root = tmp_path_factory.mktemp("regression")
    user = root / "user"
    user.mkdir()
    _export(3, user / "release.onnx")
    _export(6, user / "slower.onnx")
    store = root / "artifacts"
    mp = pytest.MonkeyPatch()
    mp.setenv("RELCERT_MODELS_DIRS", str(user))
    mp.setenv("RELCERT_ARTIFACTS", str(store))
    try:
        with quick_profiles(root):
            baseline = _certify(
                store, "baseline", "2026-03-01", _models_file(user, "release", "release.onnx")
            )
            yield {"root": root, "user": user, "store": store, "baseline": baseline, "mp": mp}
    finally:
        mp.undo()


def _regression_html(run: Path) -> str:
    """The "Against the baseline" section of a run's report.html."""
    page = (run / "report.html").read_text()
    return page.split('<section id="regression">', 1)[1].split("</section>", 1)[0]


def _rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["regression"]["rows"]}


def test_without_a_baseline_every_comparison_is_not_applicable_and_approval_stands(world):
    report = world["baseline"]
    assert report["decision"] == "APPROVED", report["reasons"]
    section = report["regression"]
    assert section["ran"] and section["baseline_run"] is None
    assert "no APPROVED run" in section["reason"]
    rows = section["rows"]
    assert rows and all(r["status"] == "not_applicable" for r in rows)
    assert all("no APPROVED run" in r["detail"] for r in rows)
    assert {"latency_p99_ms[scorer]", "compute_time_ms[scorer]", "capacity_rps"} <= {
        r["name"] for r in rows
    }
    assert any(r.startswith("No regression comparison") for r in report["reasons"])
    assert report["gates"]["regression"]["success"] is True
    # the report says so once, with the rule, and lists the comparisons a baseline would get
    # (one line per metric), instead of a row per comparison repeating the same sentence
    section = _regression_html(world["store"] / DAG / "baseline")
    assert 'class="comparison"' not in section
    assert section.count("no APPROVED run") == 1
    assert "A change is a regression only when it exceeds its allowance" in section
    planned = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td>", section)
    assert len(planned) == len({r["metric"] for r in rows})
    assert ("compute_time_ms", "scorer") in planned and (
        "capacity_rps",
        "the mix, scorer",
    ) in planned
    assert "(missing)" not in section  # no evidence named that a run without baseline lacks


def test_the_same_model_again_is_compared_and_not_a_regression(world):
    report = _certify(
        world["store"],
        "same-again",
        "2026-03-02",
        _models_file(world["user"], "release-again", "release.onnx"),
        stages=("build", "integration", "load", "regression"),
    )
    section = report["regression"]
    assert section["baseline_run"] == "baseline" and section["comparable"], section
    rows = _rows(report)
    measured = [r for r in rows.values() if r["status"] == "measured"]
    assert len(measured) >= 5, rows
    assert rows["compute_time_ms[scorer]"]["status"] == "measured"
    assert rows["latency_p50_ms[scorer]"]["status"] == "measured"
    assert not section["regressions"], section["regressions"]
    assert all(r["verdict"] != "regression" for r in rows.values())
    # the evidence the report draws is kept with this run
    run = world["store"] / DAG / "same-again"
    assert (run / "stages/regression/latency_quantiles.csv").is_file()
    assert "baseline_latency" in (run / "report.html").read_text()
    # with a baseline, the table of comparisons, and links to the evidence of both runs
    section = _regression_html(run)
    assert section.count('<tr class="comparison"') == len(rows)
    for name in ("comparisons", "latency_quantiles", "capacity_trials"):
        assert f'href="stages/regression/{name}.csv"' in section, name


@pytest.fixture(scope="module")
def slower(world) -> dict:
    with quick_profiles(world["root"]):
        return _certify(
            world["store"],
            "slower",
            "2026-03-03",
            _models_file(world["user"], "slower", "slower.onnx"),
        )


def test_a_model_twice_as_slow_is_not_approved_naming_the_regression(world, slower):
    report = slower
    assert report["decision"] == "NOT_APPROVED"
    assert report["reasons"][0].startswith("Not approved: "), report["reasons"]
    assert "regression(s) against the baseline" in report["reasons"][0]
    compute = _rows(report)["compute_time_ms[scorer]"]
    assert compute["verdict"] == "regression" and not compute["passed"], compute
    assert compute["ratio"] and float(compute["ratio"]) > 1.5
    sentence = next(r for r in report["reasons"] if r.startswith("compute_time_ms[scorer]"))
    assert "of model scorer regressed against the baseline baseline" in sentence
    assert "x (interval " in sentence and "allowed" in sentence
    assert report["gates"]["regression"]["success"] is False
    # the absolute targets alone would have approved it: the change is what failed
    assert all(c["met"] or c["status"] == "not_applicable" for c in report["criteria"])


def test_a_waived_regression_is_at_most_conditional_and_names_the_waiver(world, slower):
    from pipeline.cli import main

    run = world["store"] / DAG / "slower-waived"
    shutil.copytree(world["store"] / DAG / "slower", run)
    waiver = {
        # every speed comparison, for the mix and the model (bare metric names)
        "criterion": ["compute_time_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"],
        "justification": "the new ranking head costs twice the compute; agreed with search",
        "by": "release-manager",
    }
    (run / "conf.json").write_text(json.dumps({"waive_regression": waiver}))
    with quick_profiles(world["root"]):
        main(["stage", "regression", "--run-dir", str(run)])
        main(["report", "--run-dir", str(run)])
    report = json.loads((run / "report.json").read_text())
    assert report["decision"] == "CONDITIONAL_APPROVAL", report["reasons"]
    rows = _rows(report)
    # the stage measured again: whatever regressed this time was named by the waiver
    again = [r for r in rows.values() if r["verdict"] == "regression"]
    assert rows["compute_time_ms[scorer]"] in again
    assert all(r["waived"] and r["passed"] for r in again)
    cap = next(r for r in report["reasons"] if r.startswith("Waived regression"))
    assert "release-manager" in cap and "agreed with search" in cap
    assert report["gates"]["regression"]["success"] is True


def test_a_pinned_baseline_is_the_one_compared_with(world, slower):
    from pipeline.cli import main
    from pipeline.regression.baseline import unpin_baseline
    from pipeline.storage import ArtifactStore

    # a newer approved release exists (the same model, certified again) ...
    with quick_profiles(world["root"]):
        newer = _certify(
            world["store"],
            "newer-release",
            "2026-03-04",
            _models_file(world["user"], "release-newer", "release.onnx"),
        )
    assert newer["decision"] == "APPROVED", newer["reasons"]
    assert newer["regression"]["baseline_run"] == "baseline"
    # ... but the team pinned the first one: a later candidate is compared with that
    main(["baseline", "pin", "baseline", "--reason", "the release in production"])
    try:
        run = world["store"] / DAG / "after-pin"
        shutil.copytree(world["store"] / DAG / "slower", run)
        info_path = run / "models" / "model_info.json"
        info = json.loads(info_path.read_text())
        for entry in info.values():  # a candidate dated after the newer release
            entry["snapshot_date"] = "2026-03-05"
        info_path.write_text(json.dumps(info))
        with quick_profiles(world["root"]):
            main(["stage", "regression", "--run-dir", str(run)])
        summary = json.loads((run / "stages/regression/summary.json").read_text())
        assert summary["baseline"]["pinned"] is True
        assert summary["baseline"]["run"]["run_key"] == "baseline"
        assert "the release in production" in summary["baseline"]["reason"]
    finally:
        unpin_baseline(ArtifactStore.from_location(str(world["store"])))
