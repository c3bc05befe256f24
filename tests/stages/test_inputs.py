"""How the stages make request inputs for a model of named tensors from its spec."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference.signature import Signature
from pipeline.samples import read_samples
from pipeline.stages.inputs import model_requests, scale_request
from tests.text_models import EVAL_SEQ, SEQ_SIZES, VOCAB

pytestmark = pytest.mark.unit


def _entry(text_models: Path, name: str) -> dict:
    return json.loads((text_models / "model_info.json").read_text())[name]


def test_dynamic_dims_are_drawn_from_the_declared_list(text_models: Path) -> None:
    entry = _entry(text_models, "sentiment")
    requests = model_requests(text_models, entry, 300, seed=4)
    assert len(requests) == 300
    lengths = {len(r["input_ids"]) for r in requests}
    assert lengths == set(SEQ_SIZES)  # every declared size, and only those
    for r in requests:
        assert set(r) == {"input_ids", "attention_mask"}
        assert r["input_ids"].dtype == np.int64 and r["attention_mask"].dtype == np.int64
        assert r["input_ids"].shape == r["attention_mask"].shape  # the shared seq dim
        assert r["input_ids"].min() >= 0 and r["input_ids"].max() < VOCAB
        assert set(np.unique(r["attention_mask"])) <= {0, 1}
    again = model_requests(text_models, entry, 300, seed=4)
    assert all(np.array_equal(a[n], b[n]) for a, b in zip(requests, again, strict=True) for n in a)


def test_evaluation_dims_send_the_evaluation_rows(text_models: Path) -> None:
    entry = copy.deepcopy(_entry(text_models, "sentiment"))
    entry["dims"] = {"seq": "evaluation"}
    requests = model_requests(text_models, entry, 50, seed=1)
    x, _ = read_samples(text_models / entry["sla"]["evaluation_file"])
    rows = {tuple(ids) for ids in x["input_ids"].tolist()}
    assert {len(r["input_ids"]) for r in requests} == {EVAL_SEQ}
    assert all(tuple(r["input_ids"].tolist()) in rows for r in requests)
    # ids and mask come from the same evaluation row
    by_ids = {tuple(i): tuple(m) for i, m in zip(x["input_ids"], x["attention_mask"], strict=True)}
    assert all(by_ids[tuple(r["input_ids"])] == tuple(r["attention_mask"]) for r in requests)


def test_extreme_requests_stay_valid_when_scaled_down_and_leave_the_range_when_up(
    text_models: Path,
) -> None:
    entry = _entry(text_models, "sentiment")
    signature = Signature.from_entry(entry)
    request = model_requests(text_models, entry, 1, seed=2)[0]
    small = scale_request(request, 0.001, signature)
    assert all(small[n].dtype == np.int64 for n in small)
    assert small["input_ids"].min() >= 0  # within [0, VOCAB): still a valid request
    large = scale_request(request, 1000.0, signature)
    assert large["input_ids"].max() >= VOCAB  # out of range: the engine must refuse it
