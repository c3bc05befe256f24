"""Open Inference Protocol tensors without a server: what a request may hold and what it
decodes to, for the dtypes and shapes a models folder can have."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.serve.features import RequestError
from pipeline.serve.tensors import (
    ModelSignature,
    body_limit_for,
    datatype_of,
    decode_infer_request,
    encode_infer_request,
    encode_infer_response,
    read_infer_response,
)

pytestmark = pytest.mark.unit


def _signature(shape, dtype="float32", **entry) -> ModelSignature:
    return ModelSignature.from_model_info(
        "m",
        {"input_name": "x", "output_name": "y", **entry},
        model_format="onnx",
        version="1",
        input_shape=shape,
        output_shape=[shape[0], 2],
        input_dtype=dtype,
    )


def _decode(signature: ModelSignature, doc: dict, header: str | None = None, raw: bytes = b""):
    body = json.dumps(doc).encode()
    if header == "auto":
        header = str(len(body))
    return decode_infer_request(body + raw, header, signature)


def _error(signature: ModelSignature, doc: dict, **kwargs) -> str:
    with pytest.raises(RequestError) as caught:
        _decode(signature, doc, **kwargs)
    assert caught.value.status == 400
    return caught.value.detail


def test_int64_inputs_take_integers_and_refuse_fractions() -> None:
    signature = _signature([None, 3], "int64")
    assert signature.metadata()["inputs"] == [{"name": "x", "datatype": "INT64", "shape": [-1, 3]}]
    tensor = {"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}
    rows = _decode(signature, {"inputs": [tensor]}).rows
    assert rows.dtype == np.int64 and rows.tolist() == [[1, 2, 3], [4, 5, 6]]
    fractional = {**tensor, "data": [1, 2, 3.5, 4, 5, 6]}
    assert "expected integers (INT64)" in _error(signature, {"inputs": [fractional]})
    huge = {**tensor, "data": [2**70, 2, 3, 4, 5, 6]}
    assert "INT64" in _error(signature, {"inputs": [huge]})


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1e20, "1e+20"), (2**63, "9223372036854775808"), (-9.3e18, "-9.3e+18")],
)
def test_int64_values_out_of_range_are_refused_never_wrapped(value, shown) -> None:
    signature = _signature([None, 3], "int64")
    tensor = {"name": "x", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, value, 6]}
    detail = _error(signature, {"inputs": [tensor]})
    assert detail == (
        f"inputs[0].data: element 4 is {shown}, outside the INT64 range "
        "[-9223372036854775808, 9223372036854775807]"
    )


def test_int64_json_data_decodes_exactly() -> None:
    # a whole-number float beside a large integer must not turn the integer into a float
    signature = _signature([None, 3], "int64")
    tensor = {"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [2**53 + 1, 1.0, 2]}
    assert _decode(signature, {"inputs": [tensor]}).rows.tolist() == [[2**53 + 1, 1, 2]]


def test_binary_data_round_trips_any_dtype() -> None:
    for dtype in ("float32", "float64", "int64"):
        signature = _signature([None, 2, 2], dtype)
        rows = (np.arange(12).reshape(3, 2, 2) * 1.5).astype(dtype)
        body, size = encode_infer_request("x", rows, binary_input=True, binary_output=True)
        request = decode_infer_request(body, str(size), signature)
        np.testing.assert_array_equal(request.rows, rows)
        assert request.rows.dtype == np.dtype(dtype) and request.binary_output
        answer, json_size = encode_infer_response(signature, rows, "1", "r", binary=True)
        doc = read_infer_response(answer, json_size)
        np.testing.assert_array_equal(doc["outputs"][0]["array"], rows)
        assert doc["outputs"][0]["datatype"] == datatype_of(dtype) and doc["id"] == "r"


def test_declared_input_ranges_are_enforced_per_element() -> None:
    signature = _signature([None, 2], input_range=[0, 1], feature_names=["a", "b"])
    tensor = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0, 1, 0.5, 1.5]}
    detail = _error(signature, {"inputs": [tensor]})
    assert "row 1 element [1] is 1.5, outside the model's declared input range [0, 1]" in detail
    image = _signature([1, 3, 2, 2], input_range=[-1, 1])
    data = [0.0] * 11 + [2.0]
    tensor = {"name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": data}
    assert "element [2, 1, 1] is 2.0" in _error(image, {"inputs": [tensor]})
    with pytest.raises(ValueError, match="feature_ranges needs an input of shape"):
        _signature([1, 3, 2, 2], feature_ranges={"a": [0, 1]})


def test_malformed_binary_framing_is_named() -> None:
    signature = _signature([None, 2])
    tensor = {"name": "x", "shape": [1, 2], "datatype": "FP32"}
    declared = {**tensor, "parameters": {"binary_data_size": 8}}
    raw = np.zeros(2, dtype=np.float32).tobytes()
    assert "takes 8 bytes, got 4" in _error(
        signature,
        {"inputs": [{**tensor, "parameters": {"binary_data_size": 4}}]},
        header="auto",
        raw=raw,
    )
    assert "no input declares" in _error(
        signature, {"inputs": [{**tensor, "data": [1, 2]}]}, header="auto", raw=raw
    )
    with pytest.raises(RequestError, match="not within the body"):
        decode_infer_request(json.dumps({"inputs": [declared]}).encode(), "100000", signature)
    with pytest.raises(RequestError, match="Inference-Header-Content-Length: expected"):
        decode_infer_request(b"{}", "ten", signature)


def test_requested_outputs_and_ids() -> None:
    signature = _signature([None, 2])
    tensor = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}
    request = _decode(signature, {"id": "a", "inputs": [tensor], "outputs": [{"name": "y"}]})
    assert request.request_id == "a" and not request.binary_output
    binary = {"name": "y", "parameters": {"binary_data": True}}
    assert _decode(signature, {"inputs": [tensor], "outputs": [binary]}).binary_output
    assert "expected a string" in _error(signature, {"id": 7, "inputs": [tensor]})
    classify = {"name": "y", "parameters": {"classification": 2}}
    assert "not supported" in _error(signature, {"inputs": [tensor], "outputs": [classify]})
    assert "a list of one input tensor" in _error(signature, {"inputs": [tensor, tensor]})


def test_body_limit_fits_one_json_row_of_every_model() -> None:
    small = {"a": {"input_shape": [None, 10], "files": {"onnx": {}}}}
    assert body_limit_for(small, 65536) == 65536
    image = {"b": {"input_shape": [1, 3, 224, 224], "files": {"onnx": {}}}}
    limit = body_limit_for({**small, **image}, 65536)
    assert limit % 65536 == 0 and limit >= 3 * 224 * 224 * 20
    legacy = {"c": {"input_shape": [5000]}}  # the plan's feature-only shapes
    assert body_limit_for(legacy, 65536) > 65536
