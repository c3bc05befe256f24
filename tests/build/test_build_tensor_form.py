"""The models file's tensor form: named inputs (shape with named dynamic dims, dtype, range),
outputs and the workload sizes of dynamic dims; .npz reference and evaluation sets by name.

The model files are the session's text models (tests/text_models.py), written by torch."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.build import build_models
from pipeline.build.config import load_models_config
from pipeline.build.errors import BuildError
from pipeline.samples import read_samples
from tests.text_models import SENTIMENT, VOCAB, bag_entry

pytestmark = pytest.mark.unit

SNAPSHOT = "2026-11-26"


@pytest.fixture(scope="module")
def user(text_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the user's folder of model files and arrays behind `text_models`."""
    import shutil

    folder = tmp_path_factory.mktemp("tensor-form") / "user"
    shutil.copytree(text_models.parent / "user", folder)
    with np.load(folder / "sentiment_ref_in.npz") as data:
        np.savez(folder / "ids_only.npz", input_ids=data["input_ids"])
    return folder


def _build(user: Path, tmp_path: Path, *entries: dict[str, Any]) -> dict[str, Any]:
    import yaml

    models_file = user / f"models-{tmp_path.name}.yaml"
    models_file.write_text(yaml.safe_dump({"models": list(entries)}, sort_keys=False))
    build_models(tmp_path / "out", SNAPSHOT, models_file=models_file)
    return json.loads((tmp_path / "out/model_info.json").read_text())


def test_the_tensor_form_records_every_input_and_output(text_models: Path) -> None:
    entry = json.loads((text_models / "model_info.json").read_text())["sentiment"]
    assert entry["inputs"] == [
        {"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, VOCAB]},
        {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, 2]},
    ]
    assert entry["outputs"] == [
        {"name": "logits", "shape": ["batch", 3], "dtype": "float32"},
        {"name": "pooled", "shape": ["batch", 16], "dtype": "float32"},
    ]
    assert entry["dims"] == {"seq": [6, 12, 24]}
    assert "input_shape" not in entry  # two inputs: no single-tensor input keys
    assert entry["output_name"] == "logits" and entry["output_shape"] == [None, 3]
    parity = entry["parity"]
    assert parity["reference"]["passed"] and parity["reference"]["count"] == 8
    assert parity["probe_count"] == 8 + 3 * 8  # the reference + 8 probes at each seq size
    x, y = read_samples(text_models / parity["reference"]["file"])
    assert set(x) == {"input_ids", "attention_mask"} and set(y) == {"logits", "pooled"}
    assert entry["sla"]["output"] == "logits" and entry["sla"]["rows"] == 48
    x, y = read_samples(text_models / entry["sla"]["evaluation_file"])
    assert x["input_ids"].shape == (48, 10) and y.shape == (48,)


def test_a_graph_of_several_inputs_needs_no_spec(user: Path, tmp_path: Path) -> None:
    info = _build(user, tmp_path, {"name": "plain", "path": "sentiment.onnx"})
    entry = info["plain"]
    assert [t["name"] for t in entry["inputs"]] == ["input_ids", "attention_mask"]
    assert entry["inputs"][0]["shape"] == ["batch", "seq"]  # the graph's dim names
    assert [t["name"] for t in entry["outputs"]] == ["logits", "pooled"]
    assert entry["parity"]["probe_count"] == 16  # 8 probes at each default seq size (4, 8)


def test_one_named_output_is_compared_with_an_npy_reference(user: Path, tmp_path: Path) -> None:
    refs = np.load(user / "sentiment_ref_out.npz")
    np.save(user / "pooled_only.npy", refs["pooled"])
    entry = copy.deepcopy(SENTIMENT)
    entry["reference"].update(outputs="pooled_only.npy", output="pooled")
    del entry["sla"]
    info = _build(user, tmp_path, entry)
    reference = info["sentiment"]["parity"]["reference"]
    assert reference["passed"] and reference["output"] == "pooled"


def test_a_torchscript_model_takes_its_tensors_from_the_models_file(
    user: Path, tmp_path: Path
) -> None:
    unnamed = bag_entry("torchscript")
    del unnamed["outputs"]
    info = _build(user, tmp_path, unnamed)
    entry = info["bag_script"]
    assert entry["outputs"] == [{"name": "output", "shape": ["batch", 4], "dtype": "float32"}]
    assert entry["inputs"][0]["shape"] == ["batch", "seq"] and entry["input_shape"] == [None, None]


def _sentiment(**changes: Any) -> dict[str, Any]:
    entry = copy.deepcopy(SENTIMENT)
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


_IDS = {"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64", "range": [0, VOCAB]}
_MASK = {"name": "attention_mask", "shape": ["batch", "seq"], "dtype": "int64"}

BAD_IMPORTS = {
    "names": (_sentiment(inputs=[_IDS, {**_MASK, "name": "mask"}]), "do not match the graph"),
    "rank": (
        _sentiment(inputs=[_IDS, {**_MASK, "shape": ["batch", "seq", 2]}]),
        "contradicts the graph input 'attention_mask'",
    ),
    "dtype": (
        _sentiment(inputs=[_IDS, {**_MASK, "dtype": "float32"}]),
        "dtype 'float32' in",
    ),
    "npy_for_two_inputs": (
        _sentiment(reference={"inputs": "bag_ref_in.npy", "outputs": "sentiment_ref_out.npz"}),
        "is one array, but the model has 2",
    ),
    "missing_array": (
        _sentiment(reference={"inputs": "ids_only.npz", "outputs": "sentiment_ref_out.npz"}),
        "has no array 'attention_mask'",
    ),
    "out_of_range": (
        _sentiment(inputs=[{**_IDS, "range": [0, 10]}, _MASK], sla=None),
        "outside the declared range [0, 10) of input 'input_ids'",
    ),
    "labels_of_two_outputs": (
        _sentiment(sla={**SENTIMENT["sla"], "output": None}),
        "name it with sla.output",
    ),
    "unknown_sla_output": (
        _sentiment(sla={**SENTIMENT["sla"], "output": "probs"}),
        "sla.output 'probs'",
    ),
    "evaluation_dims_without_evaluation": (
        _sentiment(dims={"seq": "evaluation"}, sla=None),
        "take sizes from the evaluation set",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_tensor_form_imports_name_the_model_and_what_was_expected(
    case: str, user: Path, tmp_path: Path
) -> None:
    entry, expected = BAD_IMPORTS[case]
    entry = {k: v for k, v in entry.items() if v is not None}
    if isinstance(entry.get("sla"), dict):
        entry["sla"] = {k: v for k, v in entry["sla"].items() if v is not None}
    with pytest.raises(BuildError) as info:
        _build(user, tmp_path, entry)
    assert "'sentiment'" in str(info.value) and expected in str(info.value), str(info.value)


BAD_SPECS = {
    "mixed_forms": (
        {"input_shape": [None, 8], "inputs": [_IDS]},
        "belong to the single-tensor form",
    ),
    "fixed_batch_of_two": (
        {"inputs": [{**_IDS, "shape": [2, "seq"]}]},
        "starting with the batch dimension",
    ),
    "bad_dtype": ({"inputs": [{**_IDS, "dtype": "int32"}]}, "dtype of input 'input_ids'"),
    "empty_range": ({"inputs": [{**_IDS, "range": [5, 5]}]}, "with low < high"),
    "unknown_dim": ({"inputs": [_IDS], "dims": {"sequence": [4]}}, "'sequence' is not a"),
    "bad_sizes": ({"inputs": [_IDS], "dims": {"seq": [0, 4]}}, "list of positive sizes"),
    "unknown_key": ({"inputs": [{**_IDS, "vocab": 5}]}, "unknown key(s) 'vocab'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_tensor_specs_are_refused_before_anything_is_built(
    case: str, write_models_yaml
) -> None:
    extra, expected = BAD_SPECS[case]
    entry = {"name": "tokens", "path": "bag.onnx", **extra}
    with pytest.raises(BuildError) as info:
        load_models_config(write_models_yaml({"models": [entry]}))
    assert "'tokens'" in str(info.value) and expected in str(info.value), str(info.value)
