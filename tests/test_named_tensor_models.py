"""Text models certified stage by stage: a two-input transformer (ONNX, int64 input_ids +
attention_mask, dynamic batch and sequence, two outputs) and a single-input int64 token model
(TorchScript and ONNX), each imported through a models file in the tensor form and certified
alone by `relcert stage ...` (every stage), then `relcert report`.

The targets file is written for them: the default targets, with the p99 of a model's own
/v2 endpoint at 300 ms (the defaults' 30 ms is the example models' interface SLA; these are
interactive text models served on a shared CPU). The profile is the quick one with the infra
stage's HTTP load at 400 req/s for 5 s (2,000 requests, the 1,000 a p99 needs twice over):
its 1,000 req/s is sized for the 20 us example models, and a sub-millisecond transformer on a
busy 2-core machine falls behind it (sizing workloads from a model's cost is issue 21 item 4,
not this test's subject)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.stages.registry import STAGE_NAMES
from tests.quick_profile import quick_profiles
from tests.text_models import SENTIMENT, bag_entry, write_models_file

pytestmark = pytest.mark.e2e

SNAPSHOT = "2026-01-15"
ENTRIES = {
    "sentiment": SENTIMENT,
    "bag_script": bag_entry("torchscript"),
    "bag_graph": bag_entry("onnx"),
}


def _targets_file(folder: Path) -> Path:
    """The default targets with a 300 ms p99 per model endpoint."""
    from pipeline.targets import DEFAULT_TARGETS_FILE

    doc = yaml.safe_load(Path(DEFAULT_TARGETS_FILE).read_text())
    for target in doc["targets"]:
        if target["name"] == "endpoint_p99_latency_ms":
            target["target"] = 300
    path = folder / "text-targets.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _certify(user: Path, name: str, tmp_path: Path) -> tuple[int, dict, Path]:
    from pipeline.cli import main

    models_file = write_models_file(user, f"{name}-{tmp_path.name}", ENTRIES[name])
    run = tmp_path / "artifacts" / "model_release_certification" / name
    with quick_profiles(tmp_path) as profiles, pytest.MonkeyPatch.context() as patch:
        text = profiles.read_text()
        quick_infra = "infra: {rates: [1000], duration_s: 5.0, warmup_s: 0.2}"
        assert quick_infra in text
        profiles.write_text(text.replace(quick_infra, quick_infra.replace("1000", "400")))
        patch.setenv("RELCERT_TARGETS_FILE", str(_targets_file(tmp_path)))
        for stage in STAGE_NAMES:
            args = ["stage", stage, "--run-dir", str(run)]
            if stage == "build":
                args += ["--date", SNAPSHOT, "--models", str(models_file)]
            if main(args) != 0 and stage in ("load", "stress", "infra"):
                # a measurement disturbed by a busy shared machine (the load generator fell
                # behind) is invalid, not wrong: measure once more (as tests/report does)
                main(args)  # a failed gate is then the report's to judge
        code = main(["report", "--run-dir", str(run)])
    return code, json.loads((run / "report.json").read_text()), run


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_a_text_model_is_certified_through_every_stage(
    name: str, text_models: Path, tmp_path: Path
) -> None:
    import shutil

    user = tmp_path / "user"  # a copy: the shared text models are read-only
    shutil.copytree(text_models.parent / "user", user)
    code, report, run = _certify(user, name, tmp_path)
    assert code == 0 and report["decision"] == "APPROVED", report["reasons"]
    criteria = {c["name"]: c for c in report["criteria"]}
    for metric in ("p99_latency_ms", "sustained_throughput_rps", "success_rate"):
        row = criteria[f"{metric}[{name}]"]
        assert row["status"] == "measured" and row["met"], row
    endpoint = criteria[f"endpoint_p99_latency_ms[{name}]"]
    assert endpoint["status"] == "measured" and endpoint["threshold"] == 300
    parity = criteria[f"parity_max_abs_diff[{name}]"]
    assert parity["status"] == "measured" and parity["met"]
    for stage in STAGE_NAMES:  # every stage ran and wrote its summary
        assert (run / "stages" / stage / "summary.json").is_file(), stage
    build = pd.read_csv(run / "stages/build/models.csv")
    assert build["loaded"].all() and build["outputs_finite"].all()
    checks = pd.read_csv(run / "stages/integration/checks.csv").set_index("check")
    assert checks.loc["batching", "status"] == "measured" and checks.loc["batching", "passed"]
    assert checks.loc["end_to_end", "passed"]
    infra = pd.read_csv(run / "stages/infra/checks.csv").set_index("check")
    for check in ("model_metadata", "golden_requests", "golden_batch", "invalid_request_400"):
        assert infra.loc[check, "passed"], (check, infra.loc[check, "detail"])
    load = pd.read_csv(run / "stages/load/requests.csv")
    assert (load["model"] == name).all() and load["success"].mean() > 0.99
    if name == "sentiment":
        quality = criteria["model_quality[sentiment]"]
        assert quality["status"] == "measured" and quality["measured"] == 1.0
        assert quality["samples"] == 48 and "output logits" in quality["detail"]
        assert "logits [-1, 3], pooled [-1, 16]" in infra.loc["model_metadata", "detail"]
