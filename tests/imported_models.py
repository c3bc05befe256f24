"""A models folder like a user's: the two example models plus two imported ones, written by
`relcert build` from a models file.

- ``image_classifier``: ONNX, an image-shaped input ``[1, 3, 8, 8]`` (batch fixed at 1),
  float32 in, 2 class scores out;
- ``precise_regressor``: TorchScript only, float64 in (``[null, 6]``) and out (3 values).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml

SNAPSHOT = "2026-01-15"
IMAGE = "image_classifier"
PRECISE = "precise_regressor"
IMAGE_VERSION = "2.0.0"
PRECISE_VERSION = "0.3.1"


def write_imported_model_files(folder: Path) -> dict[str, Path]:
    """The two user model files (tiny torch modules, exported)."""
    import torch
    from torch import nn

    torch.manual_seed(7)
    folder.mkdir(parents=True, exist_ok=True)
    image = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
        nn.Softmax(dim=-1),
    ).eval()
    precise = nn.Sequential(nn.Linear(6, 3), nn.Tanh()).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no dynamic axes: every dimension is fixed, the batch included ([1, 3, 8, 8])
        torch.onnx.export(
            image,
            (torch.rand(1, 3, 8, 8),),
            str(folder / "image.onnx"),
            dynamo=False,
            input_names=["image"],
            output_names=["scores"],
            opset_version=17,
        )
        torch.jit.save(torch.jit.script(precise), str(folder / "precise.pt"))
    return {IMAGE: folder / "image.onnx", PRECISE: folder / "precise.pt"}


def build_mixed_models(root: Path, date: str = SNAPSHOT) -> Path:
    """`root/models`: the example models and the two imports, built with `relcert build`."""
    from pipeline.cli import main

    files = write_imported_model_files(root / "user")
    models_file = root / "user" / "models.yaml"
    models_file.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "quality_predictor",
                        "builder": "pipeline.build.examples:build_quality_predictor",
                        "version": "1.0",
                    },
                    {
                        "name": "routing_classifier",
                        "builder": "pipeline.build.examples:build_routing_classifier",
                        "version": "1.0",
                    },
                    {
                        "name": IMAGE,
                        "path": files[IMAGE].name,
                        "version": IMAGE_VERSION,
                        "class_names": ["cat", "dog"],
                    },
                    {
                        "name": PRECISE,
                        "path": files[PRECISE].name,
                        "input_shape": [None, 6],
                        "input_dtype": "float64",
                        "version": PRECISE_VERSION,
                    },
                ]
            },
            sort_keys=False,
        )
    )
    out = root / "models"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        code = main(["build", "--out", str(out), "--date", date, "--models", str(models_file)])
    assert code == 0, "relcert build of the mixed models file failed"
    return out
