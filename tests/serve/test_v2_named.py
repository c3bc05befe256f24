"""The Open Inference Protocol for models of named tensors: several tensors in and out, dynamic
dimensions as -1, a sequence dimension shared by two inputs, through the standard client.

The reference is ONNX Runtime called directly on the model file (not relcert's engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.serve.conftest import Server, running_server
from tests.text_models import VOCAB

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def text_server(text_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(text_models, tmp_path_factory.mktemp("serve-text")) as server:
        yield server


@pytest.fixture(scope="module")
def client(text_server: Server) -> Iterator:
    client = triton.InferenceServerClient(f"127.0.0.1:{text_server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(text_server: Server) -> Iterator[httpx.Client]:
    with text_server.client() as client:
        yield client


def _ort(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _tokens(rows: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(rows, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, seq - 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_metadata_lists_every_input_and_output_with_dynamic_dims(client) -> None:
    sentiment = client.get_model_metadata("sentiment")
    assert sentiment["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert sentiment["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "pooled", "datatype": "FP32", "shape": [-1, 16]},
    ]
    bag = client.get_model_metadata("bag_script")
    assert bag["platform"] == "pytorch_libtorch"
    assert bag["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]
    assert bag["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_two_inputs_in_two_outputs_out_like_onnx_runtime(
    client, text_models: Path, binary: bool
) -> None:
    for seq in (6, 17):  # any sequence length, the same in both inputs
        feed = _tokens(3, seq, seed=seq)
        tensors = []
        for name, array in feed.items():
            tensor = triton.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=binary)
            tensors.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "pooled")]
        result = client.infer("sentiment", tensors, outputs=outputs, request_id=f"s{seq}")
        expected = _ort(text_models / "sentiment.onnx", feed)
        for name in ("logits", "pooled"):
            got = result.as_numpy(name)
            assert got.shape == expected[name].shape
            np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-5)
        assert result.get_response()["id"] == f"s{seq}"


def test_one_output_when_one_is_asked_for(client, text_models: Path) -> None:
    feed = _tokens(2, 9, seed=1)
    tensors = []
    for name, array in feed.items():
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer("sentiment", tensors, outputs=[triton.InferRequestedOutput("pooled")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["pooled"]
    expected = _ort(text_models / "sentiment.onnx", feed)["pooled"]
    np.testing.assert_allclose(result.as_numpy("pooled"), expected, rtol=0, atol=1e-5)


def test_a_single_input_token_model_takes_any_sequence_length(client, text_models: Path) -> None:
    for seq in (3, 11):
        tokens = np.random.default_rng(seq).integers(0, VOCAB, size=(2, seq)).astype(np.int64)
        tensor = triton.InferInput("tokens", [2, seq], "INT64")
        tensor.set_data_from_numpy(tokens)
        got = client.infer("bag_graph", [tensor]).as_numpy("scores")
        expected = _ort(text_models / "bag_graph.onnx", {"tokens": tokens})["scores"]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def _post(http: httpx.Client, inputs: list[dict]) -> httpx.Response:
    return http.post("/v2/models/sentiment/infer", json={"inputs": inputs})


def _tensor(name: str, array: np.ndarray) -> dict:
    return {
        "name": name,
        "datatype": "INT64",
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def test_bad_requests_are_400_naming_the_input_and_what_was_expected(http: httpx.Client) -> None:
    feed = _tokens(2, 5, seed=2)
    ids, mask = feed["input_ids"], feed["attention_mask"]
    # the shared sequence dimension disagrees between the inputs
    wrong = _post(http, [_tensor("input_ids", ids), _tensor("attention_mask", mask[:, :4])])
    assert wrong.status_code == 400 and "dimension 'seq'" in wrong.json()["error"]
    # an input is missing
    missing = _post(http, [_tensor("input_ids", ids)])
    assert missing.status_code == 400 and "missing 'attention_mask'" in missing.json()["error"]
    # a token id outside the vocabulary the models file declares
    ids_out = ids.copy()
    ids_out[1, 2] = VOCAB + 5
    outside = _post(http, [_tensor("input_ids", ids_out), _tensor("attention_mask", mask)])
    error = outside.json()["error"]
    assert outside.status_code == 400 and "'input_ids'" in error and f"[0, {VOCAB})" in error
    # rows that differ in number between the inputs
    rows = _post(http, [_tensor("input_ids", ids), _tensor("attention_mask", mask[:1])])
    assert rows.status_code == 400 and "every input holds the same samples" in rows.json()["error"]
