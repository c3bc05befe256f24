"""Text models as users ship them, built for the tests: named int64 inputs with a dynamic
sequence dimension, imported through models files in the tensor form.

- ``sentiment``: a two-input transformer (``input_ids`` + ``attention_mask``, int64,
  ``[batch, seq]``) with one encoder layer, exported to ONNX with dynamic batch and sequence;
  two outputs (``logits`` [batch, 3] and ``pooled`` [batch, 16]); reference inputs and outputs
  as ``.npz`` by name, an evaluation set (labels the model's own argmax) and an SLA on
  ``logits``.
- ``bag``: a single-input token model (``nn.EmbeddingBag``, ids in [0, VOCAB)), as TorchScript
  (``bag.pt``) and ONNX (``bag.onnx``), one output of 4 class scores.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

VOCAB = 120
SEQ_SIZES = [6, 12, 24]
EVAL_SEQ = 10
EVAL_ROWS = 48


def _text_module():
    import torch
    from torch import nn

    class Sentiment(nn.Module):
        """Embedding + one transformer encoder layer + masked mean pooling + a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 16)
            layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            hidden = self.encoder(self.embed(input_ids))
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled), pooled

    return Sentiment().eval()


def _bag_module():
    from torch import nn

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(VOCAB, 8, mode="mean")
            self.head = nn.Linear(8, 4)

        def forward(self, tokens):
            return self.head(self.bag(tokens))

    return Bag().eval()


def _export_text(module, path: Path) -> None:
    import torch
    from torch.export import Dim

    ids = torch.randint(0, VOCAB, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=2, max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "pooled"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=18,
            external_data=False,
            verbose=False,
        )


def _export_bag(module, folder: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(folder / "bag.pt"))
        torch.onnx.export(
            module,
            (torch.randint(0, VOCAB, (2, 8)),),
            str(folder / "bag.onnx"),
            dynamo=False,
            input_names=["tokens"],
            output_names=["scores"],
            dynamic_axes={"tokens": {0: "batch", 1: "seq"}, "scores": {0: "batch"}},
            opset_version=17,
        )


def write_bag_models(folder: Path) -> Path:
    """The token model's files (bag.pt, bag.onnx) and reference arrays in `folder`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(12)
    bag = _bag_module()
    _export_bag(bag, folder)
    tokens = np.random.default_rng(6).integers(0, VOCAB, size=(6, 7)).astype(np.int64)
    with torch.inference_mode():
        np.save(folder / "bag_ref_out.npy", bag(torch.from_numpy(tokens)).numpy())
    np.save(folder / "bag_ref_in.npy", tokens)
    return folder


def write_text_models(folder: Path) -> Path:
    """The model files, reference and evaluation arrays in `folder` (returned)."""
    import logging

    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    write_bag_models(folder)
    torch.manual_seed(11)
    text = _text_module()
    _export_text(text, folder / "sentiment.onnx")
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, size=(8, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 9:] = 0  # padded tail
    with torch.inference_mode():
        logits, pooled = text(torch.from_numpy(ids), torch.from_numpy(mask))
    np.savez(folder / "sentiment_ref_in.npz", input_ids=ids, attention_mask=mask)
    np.savez(folder / "sentiment_ref_out.npz", logits=logits.numpy(), pooled=pooled.numpy())
    eval_ids = rng.integers(0, VOCAB, size=(EVAL_ROWS, EVAL_SEQ)).astype(np.int64)
    eval_mask = np.ones_like(eval_ids)
    with torch.inference_mode():
        labels = text(torch.from_numpy(eval_ids), torch.from_numpy(eval_mask))[0].argmax(1)
    np.savez(folder / "sentiment_eval.npz", input_ids=eval_ids, attention_mask=eval_mask)
    np.save(folder / "sentiment_eval_y.npy", labels.numpy())
    return folder


SENTIMENT: dict[str, Any] = {
    "name": "sentiment",
    "path": "sentiment.onnx",
    "version": "1.0.0",
    "inputs": [
        {"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, VOCAB]},
        {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 2]},
    ],
    "dims": {"seq": SEQ_SIZES},
    "reference": {
        "inputs": "sentiment_ref_in.npz",
        "outputs": "sentiment_ref_out.npz",
        "atol": 1.0e-4,
    },
    "sla": {
        "metric": "accuracy",
        "threshold": 0.9,
        "output": "logits",
        "evaluation": {"inputs": "sentiment_eval.npz", "labels": "sentiment_eval_y.npy"},
    },
}


def bag_entry(fmt: str) -> dict[str, Any]:
    """The token model's entry: `fmt` "torchscript" (bag.pt) or "onnx" (bag.onnx)."""
    suffix = "pt" if fmt == "torchscript" else "onnx"
    return {
        "name": "bag_script" if fmt == "torchscript" else "bag_graph",
        "path": f"bag.{suffix}",
        "version": "0.1.0",
        "inputs": [
            {"name": "tokens", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, VOCAB]}
        ],
        "outputs": ["scores"],
        "dims": {"seq": SEQ_SIZES},
        "reference": {"inputs": "bag_ref_in.npy", "outputs": "bag_ref_out.npy", "atol": 1.0e-5},
    }


def write_models_file(folder: Path, name: str, *entries: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"models": list(entries)}, sort_keys=False))
    return path


def build_text_models(root: Path, *entries: dict[str, Any], date: str = "2026-01-15") -> Path:
    """`root/models` built with `relcert build` from a models file of `entries` (default:
    the sentiment model and both token models)."""
    from pipeline.cli import main

    folder = write_text_models(root / "user")
    entries = entries or (SENTIMENT, bag_entry("torchscript"), bag_entry("onnx"))
    models_file = write_models_file(folder, "text", *entries)
    out = root / "models"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        code = main(["build", "--out", str(out), "--date", date, "--models", str(models_file)])
    assert code == 0, "relcert build of the text models failed"
    return out
