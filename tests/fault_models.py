"""Small real models whose runtime raises: on one request's values, or on everything.

- ``bag``: token ids (INT64, ``[None, 3]``) -> the mean of their embeddings (a vocabulary of
  `VOCAB`); an id past the table makes the runtime raise (torch: index out of range; ONNX
  Runtime: Gather out of data bounds). The model is healthy: the request is at fault.
- ``quality_predictor`` (`breakable_model`): 10 features -> a score, until a request's first
  feature is `BREAK_VALUE`: from then on its runtime raises on every input (its state is
  corrupt), like a session gone bad. The model is at fault; reloading it from its file heals.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

BAG = "bag"
VOCAB = 10
IDS = 3
BREAK_VALUE = 777.0


def _info(folder: Path, name: str, file: Path, fmt: str, **entry) -> None:
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    doc = {name: {"name": name, "files": {fmt: {"path": file.name, "sha256": digest}}, **entry}}
    (folder / "model_info.json").write_text(json.dumps(doc))


def embedding_model(folder: Path, fmt: str = "torchscript") -> Path:
    """`folder` with the ``bag`` model in `fmt` (torchscript or onnx)."""
    import torch

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(VOCAB, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.table(ids).mean(dim=1)

    torch.manual_seed(3)
    module = Bag().eval()
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        path = folder / f"{BAG}.pt"
        torch.jit.save(torch.jit.script(module), str(path))
    else:
        path = folder / f"{BAG}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(2, IDS, dtype=torch.int64),),
                str(path),
                dynamo=False,
                input_names=["ids"],
                output_names=["vector"],
                dynamic_axes={"ids": {0: "batch"}, "vector": {0: "batch"}},
                opset_version=17,
            )
    _info(
        folder,
        BAG,
        path,
        fmt,
        version="bag-1",
        input_shape=[None, IDS],
        output_shape=[None, 4],
        input_dtype="int64",
        input_name="ids",
        output_name="vector",
    )
    return folder


def breakable_model(folder: Path) -> Path:
    """`folder` with a TorchScript ``quality_predictor`` that breaks for good (until it is
    reloaded) on a request whose first feature is BREAK_VALUE."""
    import torch

    class Breakable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("broken", torch.zeros(1))
            self.break_value = BREAK_VALUE

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] == self.break_value).any()):
                self.broken.fill_(1.0)
            if bool(self.broken[0] > 0):
                raise RuntimeError("SECRET-INTERNAL-DETAIL: state corrupt in /srv/private/m.py")
            return torch.sigmoid(x.sum(dim=1, keepdim=True))

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quality_predictor.pt"
    torch.jit.save(torch.jit.script(Breakable().eval()), str(path))
    _info(
        folder,
        "quality_predictor",
        path,
        "torchscript",
        version="breakable-1",
        input_shape=[None, 10],
        output_shape=[None, 1],
        feature_names=[f"p{i}" for i in range(10)],
    )
    return folder
