"""Certify any model: models files that list only models relcert has never seen, run end to
end, approved when healthy and refused, naming the right criterion, when not.

- a third-party ONNX model shipped inside a package of the lock (onnx's backend test data:
  a ConvTranspose2d with a 4-D input and its batch fixed at 1), with its published input
  and output as the reference, through `relcert run` (the DAG, dag.test);
- the same kind of models we make, stage by stage with the CLI and `relcert report` (the
  functions the DAG's tasks call): an image classifier with a fixed batch of 1, a 4-D input
  and an evaluation set; a TorchScript-only import; a float64 ONNX model;
- an evaluation set whose labels the model gets wrong: NOT_APPROVED naming its quality;
- a fast and a deliberately slow model: NOT_APPROVED naming the slow one's latency, not the
  mix's;
- a model the build refuses: its own message in the report's reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.stages.registry import STAGE_NAMES
from tests.quick_profile import quick_profiles

pytestmark = pytest.mark.e2e


SNAPSHOT = "2026-01-15"
ALL_STAGES = STAGE_NAMES  # every stage the DAG runs


def _third_party() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend/test/data/pytorch-converted/test_ConvTranspose2d"


def _pb_to_npy(source: Path, target: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(source.read_bytes())
    array = numpy_helper.to_array(tensor)
    np.save(target, array)
    return array


def _export_onnx(module, example, path: Path, dynamic: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None,
            opset_version=17,
        )


class _Slow(torch.nn.Module):
    """About 3 ms of matrix products per call, whatever the batch (a graph cannot sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.rand(384, 384) / 384)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w * x.mean()
        for _ in range(6):
            w = w @ self.w
        return self.head(x) + w.mean()


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder of model files, evaluation sets and models files."""
    root = tmp_path_factory.mktemp("user-models")
    torch.manual_seed(3)
    # an image classifier: 4-D input, batch fixed at 1, 3 classes, with an evaluation set
    image = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
        torch.nn.Softmax(dim=-1),
    ).eval()
    _export_onnx(image, torch.rand(1, 3, 16, 16), root / "image.onnx", dynamic=False)
    x = np.random.default_rng(0).random((64, 3, 16, 16), dtype=np.float32)
    with torch.inference_mode():
        labels = image(torch.from_numpy(x)).argmax(dim=1).numpy()
    np.save(root / "eval_x.npy", x)
    np.save(root / "eval_y.npy", labels)
    np.save(root / "eval_wrong_y.npy", (labels + 1) % 3)  # labels the model gets wrong
    # TorchScript only
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 2), torch.nn.Tanh()))
    torch.jit.save(scripted, str(root / "scripted.pt"))
    # float64 ONNX
    precise = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Sigmoid()).double()
    _export_onnx(precise, torch.rand(2, 6, dtype=torch.float64), root / "precise.onnx")
    # a fast and a slow model of the same shape
    _export_onnx(torch.nn.Linear(8, 2), torch.rand(2, 8), root / "fast.onnx")
    _export_onnx(_Slow(), torch.rand(2, 8), root / "slow.onnx")
    # a model that answers NaN: the build refuses it
    nan = torch.nn.Sequential(torch.nn.Linear(4, 1))
    with torch.no_grad():
        nan[0].bias.fill_(float("nan"))
    _export_onnx(nan, torch.rand(2, 4), root / "nan.onnx")
    # the third-party model and its published reference input and output
    third = _third_party()
    (root / "conv_transpose.onnx").write_bytes((third / "model.onnx").read_bytes())
    _pb_to_npy(third / "test_data_set_0/input_0.pb", root / "conv_in.npy")
    _pb_to_npy(third / "test_data_set_0/output_0.pb", root / "conv_out.npy")
    return root


def _models_file(folder: Path, name: str, *entries: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"models": list(entries)}, sort_keys=False))
    return path


IMAGE = {
    "name": "image_classifier",
    "path": "image.onnx",
    "version": "2.0.0",
    "class_names": ["cat", "dog", "bird"],
    "sla": {
        "metric": "accuracy",
        "threshold": 0.9,
        "evaluation": {"inputs": "eval_x.npy", "labels": "eval_y.npy"},
    },
}


def _staged(
    user: Path, models_file: Path, tmp_path: Path, stages=ALL_STAGES
) -> tuple[int, dict, Path]:
    """Run `relcert stage` for each of `stages`, then `relcert report`: (exit, report, run)."""
    from pipeline.cli import main

    run = tmp_path / "artifacts" / "model_release_certification" / models_file.stem
    with quick_profiles(tmp_path):
        for stage in stages:
            args = ["stage", stage, "--run-dir", str(run)]
            if stage == "build":
                args += ["--date", SNAPSHOT, "--models", str(models_file)]
            main(args)  # a failed gate is the report's to judge
        code = main(["report", "--run-dir", str(run)])
    return code, json.loads((run / "report.json").read_text()), run


def _unzip(run: Path, member: str) -> str:
    import zipfile

    [package] = sorted((run / "package").glob("*.zip"))
    with zipfile.ZipFile(package) as archive:
        return next(archive.read(n).decode() for n in archive.namelist() if n.endswith(member))


def _criteria(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["criteria"]}


def _assert_certified_on_its_own(report: dict, model: str) -> None:
    criteria = _criteria(report)
    for metric in ("p99_latency_ms", "sustained_throughput_rps", "success_rate"):
        row = criteria[f"{metric}[{model}]"]
        assert row["status"] == "measured" and row["met"], row
    assert report["decision"] == "APPROVED", report["reasons"]


def test_a_third_party_model_is_approved_through_the_dag(
    user: Path, tmp_path: Path, airflow_home: Path
) -> None:
    models_file = _models_file(
        user,
        "third_party",
        {
            "name": "conv_transpose",
            "path": "conv_transpose.onnx",
            "version": "onnx-backend-test",
            "reference": {"inputs": "conv_in.npy", "outputs": "conv_out.npy", "atol": 1e-4},
        },
    )
    with quick_profiles(tmp_path) as profiles:
        env = {
            **os.environ,
            "RELCERT_ARTIFACTS": str(tmp_path / "artifacts"),
            "RELCERT_AIRFLOW_HOME": str(airflow_home),
            "RELCERT_MODELS_DIRS": str(user),
            "RELCERT_PROFILES_FILE": str(profiles),
        }
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "run",
                "--date",
                SNAPSHOT,
                "--conf",
                json.dumps({"models_file": str(models_file), "reason": "third-party model"}),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("==> report: "))
    report = json.loads((Path(line.split(": ", 1)[1]).parent / "report.json").read_text())
    _assert_certified_on_its_own(report, "conv_transpose")
    criteria = _criteria(report)
    quality = criteria["model_quality[conv_transpose]"]
    assert quality["status"] == "not_applicable" and "no quality evidence" in quality["detail"]
    assert any("no quality evidence" in r["description"] for r in report["risks"])
    parity = criteria["parity_max_abs_diff[conv_transpose]"]
    assert parity["status"] == "measured" and "parity_eager_build" in parity["detail"]
    assert report["package"], "an approved third-party model is packaged"


def test_an_image_model_with_a_fixed_batch_of_one_is_approved(user: Path, tmp_path: Path):
    code, report, run = _staged(user, _models_file(user, "image", IMAGE), tmp_path)
    assert code == 0, report["reasons"]
    _assert_certified_on_its_own(report, "image_classifier")
    quality = _criteria(report)["model_quality[image_classifier]"]
    assert quality["status"] == "measured" and quality["measured"] == 1.0
    assert quality["samples"] == 64 and quality["unit"] == "accuracy"
    checks = json.loads((run / "stages/integration/summary.json").read_text())
    assert checks["failed"] == []
    import pandas as pd

    rows = pd.read_csv(run / "stages/integration/checks.csv").set_index("check")
    assert rows.loc["batching", "status"] == "not_applicable"  # served one at a time
    assert "fixed at 1" in rows.loc["batching", "detail"]


def test_a_torchscript_only_import_goes_all_the_way(user: Path, tmp_path: Path) -> None:
    models_file = _models_file(
        user,
        "scripted",
        {"name": "scripted", "path": "scripted.pt", "input_shape": [None, 8], "version": "1"},
    )
    code, report, run = _staged(user, models_file, tmp_path)
    assert code == 0, report["reasons"]
    _assert_certified_on_its_own(report, "scripted")
    import pandas as pd

    assert [m["format"] for m in report["models"]] == ["torchscript"]
    rows = pd.read_csv(run / "stages/integration/checks.csv").set_index("check")
    assert rows.loc["parity_torchscript_onnx", "status"] == "not_applicable"
    assert "one format only (torchscript)" in rows.loc["parity_torchscript_onnx", "detail"]
    parity = _criteria(report)["parity_max_abs_diff[scripted]"]  # alone vs batched vs cached
    assert parity["status"] == "measured" and parity["met"]
    served = json.loads((run / "stages/infra/summary.json").read_text())
    assert served["failed"] == []
    assert report["package"] is None  # `relcert package` writes it: the torchscript lock
    from pipeline.cli import main

    assert main(["package", "--run-dir", str(run)]) == 0
    config = json.loads(_unzip(run, "config/service.json"))
    assert config["model_formats"] == {"scripted": "torchscript"}


def test_a_float64_onnx_model_is_approved(user: Path, tmp_path: Path) -> None:
    models_file = _models_file(
        user, "precise", {"name": "precise", "path": "precise.onnx", "version": "3"}
    )
    code, report, run = _staged(user, models_file, tmp_path)
    assert code == 0, report["reasons"]
    _assert_certified_on_its_own(report, "precise")
    info = json.loads((run / "models/model_info.json").read_text())
    assert info["precise"]["input_dtype"] == "float64"


def test_labels_the_model_gets_wrong_fail_its_quality_criterion(user: Path, tmp_path: Path):
    wrong = {
        **IMAGE,
        "sla": {
            **IMAGE["sla"],
            "evaluation": {"inputs": "eval_x.npy", "labels": "eval_wrong_y.npy"},
        },
    }
    models_file = _models_file(user, "image_wrong", wrong)
    code, report, _ = _staged(user, models_file, tmp_path, ("build", "integration", "certify"))
    assert code == 20 and report["decision"] == "NOT_APPROVED"
    quality = _criteria(report)["model_quality[image_classifier]"]
    assert quality["status"] == "measured" and not quality["met"] and quality["measured"] == 0.0
    assert any("model_quality[image_classifier]: not met" in r for r in report["reasons"])


def test_a_slow_model_does_not_hide_behind_a_fast_one(user: Path, tmp_path: Path) -> None:
    models_file = _models_file(
        user,
        "fast_and_slow",
        {"name": "fast", "path": "fast.onnx", "version": "1"},
        # its own budget: ~3 ms of compute per call is too slow for this model's use
        {
            "name": "slow",
            "path": "slow.onnx",
            "version": "1",
            "targets": {"average_inference_latency_ms": 2.0},
        },
    )
    code, report, _ = _staged(
        user, models_file, tmp_path, ("build", "integration", "load", "certify")
    )
    assert code == 20 and report["decision"] == "NOT_APPROVED"
    criteria = _criteria(report)
    slow = criteria["average_inference_latency_ms[slow]"]
    assert slow["status"] == "measured" and not slow["met"] and slow["threshold"] == 2.2
    assert criteria["average_inference_latency_ms[fast]"]["met"]
    assert criteria["average_inference_latency_ms"]["met"]  # the mix alone would pass
    reasons = " ".join(report["reasons"])
    assert "average_inference_latency_ms[slow]: not met" in reasons
    assert "average_inference_latency_ms: not met" not in reasons


def test_a_build_refusal_names_the_model_and_the_file_in_the_report(
    user: Path, tmp_path: Path
) -> None:
    from pipeline.cli import main
    from pipeline.orchestrate import build_part
    from pipeline.stages.common import ModelDefect, RunDir

    models_file = _models_file(user, "nan", {"name": "nan_model", "path": "nan.onnx"})
    # the DAG's build task records the refusal for the report (orchestrate.build_part)
    artifacts = tmp_path / "artifacts"
    run = artifacts / "model_release_certification" / "nan"
    RunDir.of(run).root.mkdir(parents=True)
    attempt = RunDir.of(run).start_attempt()
    ctx = {
        "run_dir": str(run),
        "snapshot_date": SNAPSHOT,
        "models_file": str(models_file),
        "attempt_id": attempt,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELCERT_ARTIFACTS", str(artifacts))
        patch.setenv("RELCERT_MODELS_DIRS", str(user))
        with pytest.raises(ModelDefect, match="produces NaN/Inf outputs"):
            build_part(ctx, "nan_model", progress=lambda _: None)
    assert main(["report", "--run-dir", str(run)]) == 20
    report = json.loads((run / "report.json").read_text())
    reasons = " ".join(report["reasons"])
    assert "build: failed: model 'nan_model'" in reasons
    assert "nan.onnx" in reasons and "produces NaN/Inf outputs" in reasons
