"""Fixtures for the pipeline.build tests: real builds, built once per session."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

SNAPSHOT = "2026-11-26"
OTHER_SNAPSHOT = "2026-11-27"


@pytest.fixture(scope="session")
def build_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two builds of SNAPSHOT and one of OTHER_SNAPSHOT with the default models.yaml."""
    import torch

    from pipeline.build import build_models

    threads_before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("builds")
    lines: list[str] = []
    first = build_models(root / "first" / "models", SNAPSHOT, progress=lines.append)
    second = build_models(root / "second" / "models", SNAPSHOT)
    other = build_models(root / "other" / "models", OTHER_SNAPSHOT)
    return {
        "first": first,
        "second": second,
        "other": other,
        "progress": lines,
        "threads_before": threads_before,
        "threads_after": torch.get_num_threads(),
    }


@pytest.fixture(scope="session")
def built(build_session: dict[str, Any]):
    """The BuildResult of the first build of SNAPSHOT."""
    return build_session["first"]


@pytest.fixture
def write_models_yaml(tmp_path: Path) -> Callable[[Any], Path]:
    """Write a models.yaml (any YAML-serialisable value, or raw text) into tmp_path."""

    def write(content: Any, name: str = "models.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _export_onnx(module, example, path: Path, **kwargs: Any) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, **kwargs)
    return path


@pytest.fixture(scope="session")
def byom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small user models: a fixed-shape ONNX conv net, TorchScript MLPs (one returns NaN)."""
    import torch

    folder = tmp_path_factory.mktemp("byom")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        return _make_byom_files(folder)


def _make_byom_files(folder: Path) -> dict[str, Path]:
    import numpy as np
    import torch
    from torch import nn

    conv = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    # No dynamic_axes: every dim of the graph input is fixed, batch included ([1, 3, 8, 8]).
    conv_onnx = _export_onnx(
        conv,
        torch.randn(1, 3, 8, 8),
        folder / "conv_fixed.onnx",
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
    )

    mlp = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).eval()
    mlp_pt = folder / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(mlp_pt))
    ref_in = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    with torch.no_grad():
        ref_out = mlp(torch.from_numpy(ref_in)).numpy()
    np.save(folder / "mlp_ref_in.npy", ref_in)
    np.save(folder / "mlp_ref_out.npy", ref_out)
    np.save(folder / "mlp_ref_out_wrong.npy", ref_out + 0.1)

    class NaNModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float("nan")

    nan_pt = folder / "nan.pt"
    torch.jit.save(torch.jit.script(NaNModel()), str(nan_pt))

    truncated = folder / "truncated.onnx"
    truncated.write_bytes(conv_onnx.read_bytes()[:100])
    garbage = folder / "garbage.pt"
    garbage.write_bytes(b"this is not a zip archive, let alone TorchScript\x00\x01\x02" * 20)
    h5 = folder / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    return {
        "conv_onnx": conv_onnx,
        "mlp_pt": mlp_pt,
        "mlp_ref_in": folder / "mlp_ref_in.npy",
        "mlp_ref_out": folder / "mlp_ref_out.npy",
        "mlp_ref_out_wrong": folder / "mlp_ref_out_wrong.npy",
        "nan_pt": nan_pt,
        "truncated_onnx": truncated,
        "garbage_pt": garbage,
        "h5": h5,
    }
