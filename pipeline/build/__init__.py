"""Build (train + export) or import the models a release certifies.

``build_models(out_dir, snapshot_date)`` reads ``include/models.yaml`` and writes one models
folder: TorchScript (``<name>.pt``) and ONNX (``<name>.onnx``) files, the holdout splits of
built models (``holdout/<name>.npz``), ``model_info.json`` (the contract the inference
library reads, see :mod:`pipeline.build.model_info`) and ``SHA256SUMS``.

* Built models are trained from a builder callable (the two examples live in
  :mod:`pipeline.build.examples`, their data generator is documented in
  :mod:`pipeline.build.synthetic`). The build is deterministic in the snapshot date.
* Imported models ("bring your own model") are copied, verified and probed
  (:mod:`pipeline.build.byom`).

Every failure raises :class:`BuildError`; the folder is replaced only by a complete build.
Importing this package does not import torch or onnx (they load when a build runs).
"""

from __future__ import annotations

from pipeline.build.builder import PROBE_COUNT, build_models, parse_snapshot_date
from pipeline.build.config import ModelSpec, ReferenceSpec, default_models_file, load_models_config
from pipeline.build.errors import BuildError
from pipeline.build.model_info import MODEL_INFO_FILE, read_model_info, write_model_info
from pipeline.build.seeds import model_seed
from pipeline.build.synthetic import QUALITY_FEATURES, ROUTING_CLASSES, ROUTING_FEATURES
from pipeline.build.types import BuildResult, BuiltModel

__all__ = [
    "MODEL_INFO_FILE",
    "PROBE_COUNT",
    "QUALITY_FEATURES",
    "ROUTING_CLASSES",
    "ROUTING_FEATURES",
    "BuildError",
    "BuildResult",
    "BuiltModel",
    "ModelSpec",
    "ReferenceSpec",
    "build_models",
    "default_models_file",
    "load_models_config",
    "model_seed",
    "parse_snapshot_date",
    "read_model_info",
    "write_model_info",
]
