"""The Open Inference Protocol (KServe v2) on a real service: a standard client (tritonclient)
sees every model of a folder with imported models, infers with binary and JSON tensor data,
and bad requests get the protocol's errors naming what was wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from jsonschema import Draft202012Validator
from tritonclient.utils import InferenceServerException

from pipeline.serve.tensors import encode_infer_request, read_infer_response
from tests.imported_models import IMAGE, IMAGE_VERSION, PRECISE, PRECISE_VERSION
from tests.serve.conftest import (
    QUALITY_PATH,
    Server,
    engine_outputs,
    model_info,
    running_server,
    start_server,
)

pytestmark = pytest.mark.unit

QUALITY = "quality_predictor"
ROUTING = "routing_classifier"
#: what each model takes: (input name, datatype, the shape of the test's requests)
REQUESTS = {
    QUALITY: ("features", "FP32", (5, 10)),
    IMAGE: ("image", "FP32", (1, 3, 8, 8)),
    PRECISE: ("input", "FP64", (4, 6)),
}
FORMATS = {QUALITY: "onnx", ROUTING: "onnx", IMAGE: "onnx", PRECISE: "torchscript"}


@pytest.fixture(scope="module")
def mixed_server(mixed_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MODEL_FORMAT=onnx on a folder whose float64 model is TorchScript only."""
    env = {"MAX_BODY_BYTES": "8192", "CACHE_ENTRIES": "0"}
    with running_server(mixed_models, tmp_path_factory.mktemp("serve-v2"), env) as server:
        yield server


@pytest.fixture(scope="module")
def client(mixed_server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{mixed_server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(mixed_server: Server) -> Iterator[httpx.Client]:
    with mixed_server.client() as client:
        yield client


def _rows(model: str, seed: int) -> np.ndarray:
    _, datatype, shape = REQUESTS[model]
    dtype = np.float64 if datatype == "FP64" else np.float32
    return np.random.default_rng(seed).random(shape).astype(dtype)


def test_every_model_is_served_and_ready(
    client: triton.InferenceServerClient, http: httpx.Client, mixed_models: Path
) -> None:
    info = model_info(mixed_models)
    assert client.is_server_live() and client.is_server_ready()
    for name in info:
        assert client.is_model_ready(name), name
        assert client.is_model_ready(name, model_version=info[name]["version"]), name
    assert not client.is_model_ready("no_such_model")
    ready = http.get("/health/ready").json()
    assert ready["models"] == {name: entry["version"] for name, entry in info.items()}
    assert ready["formats"] == FORMATS  # the TorchScript-only import from its .pt
    metadata = client.get_server_metadata()
    assert metadata["name"] == "relcert" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_describes_each_models_tensors(
    client: triton.InferenceServerClient, mixed_models: Path
) -> None:
    info = model_info(mixed_models)
    image = client.get_model_metadata(IMAGE)
    assert image == {
        "name": IMAGE,
        "versions": [IMAGE_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [1, 2]}],
    }
    precise = client.get_model_metadata(PRECISE, model_version=PRECISE_VERSION)
    assert precise["platform"] == "pytorch_libtorch"
    assert precise["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 6]}]
    assert precise["outputs"][0]["datatype"] == "FP64"
    assert precise["outputs"][0]["shape"] == [-1, 3]
    quality = client.get_model_metadata(QUALITY)
    assert quality["versions"] == [info[QUALITY]["version"]]
    assert quality["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 10]}]
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata(IMAGE, model_version="9.9")
    assert error.value.status() == "404" and IMAGE_VERSION in error.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", [QUALITY, IMAGE, PRECISE])
def test_standard_client_infers_like_the_engine(
    client: triton.InferenceServerClient, mixed_models: Path, model: str, binary: bool
) -> None:
    name, datatype, shape = REQUESTS[model]
    rows = _rows(model, seed=len(model) + binary)
    tensor = triton.InferInput(name, list(shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    output = model_info(mixed_models)[model]["output_name"]
    result = client.infer(
        model,
        [tensor],
        request_id=f"req-{model}",
        outputs=[triton.InferRequestedOutput(output, binary_data=binary)],
    )
    got = result.as_numpy(output)
    expected = np.stack(engine_outputs(mixed_models, FORMATS[model], model, list(rows)))
    assert got.shape == expected.shape == (shape[0], *expected.shape[1:])
    assert got.dtype == expected.dtype  # FP64 stays float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    response = result.get_response()
    assert response["id"] == f"req-{model}"
    assert response["model_name"] == model
    assert response["model_version"] == model_info(mixed_models)[model]["version"]


def test_nested_and_flat_json_data_are_the_same_request(http: httpx.Client) -> None:
    rows = _rows(QUALITY, seed=3)
    answers = []
    for data in (rows.tolist(), rows.ravel().tolist()):
        body = {
            "inputs": [{"name": "features", "shape": [5, 10], "datatype": "FP32", "data": data}]
        }
        response = http.post(f"/v2/models/{QUALITY}/infer", json=body)
        assert response.status_code == 200, response.text
        answers.append(response.json()["outputs"][0])
    assert answers[0] == answers[1]
    assert answers[0]["shape"] == [5, 1] and answers[0]["name"] == "quality"


def test_binary_output_has_the_header_and_the_bytes(http: httpx.Client, mixed_models: Path) -> None:
    rows = _rows(PRECISE, seed=4)
    body, json_size = encode_infer_request("input", rows, binary_input=True, binary_output=True)
    response = http.post(
        f"/v2/models/{PRECISE}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header = response.headers["inference-header-content-length"]
    doc = read_infer_response(response.content, header)
    output = doc["outputs"][0]
    assert output["parameters"]["binary_data_size"] == 4 * 3 * 8
    expected = np.stack(engine_outputs(mixed_models, "torchscript", PRECISE, list(rows)))
    np.testing.assert_array_equal(output["array"], expected)


def _infer(http: httpx.Client, model: str, tensor: dict, **extra) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", json={"inputs": [tensor], **extra})


BAD_REQUESTS = {
    "wrong input name": (
        {"name": "pixels", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.5] * 192},
        "has one input, 'image'",
    ),
    "wrong datatype": (
        {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP64", "data": [0.5] * 192},
        "is FP32",
    ),
    "a batch over the fixed batch of 1": (
        {"name": "image", "shape": [2, 3, 8, 8], "datatype": "FP32", "data": [0.5] * 384},
        "fixed batch of 1: expected [1, 3, 8, 8]",
    ),
    "wrong row shape": (
        {"name": "image", "shape": [1, 3, 8, 4], "datatype": "FP32", "data": [0.5] * 96},
        "expected [1, 3, 8, 8]",
    ),
    "data of the wrong size": (
        {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.5] * 191},
        "expected 192 values",
    ),
    "strings": (
        {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": ["a"] * 192},
        "expected numbers (FP32), got strings",
    ),
    "no data": (
        {"name": "image", "shape": [1, 3, 8, 8], "datatype": "FP32"},
        "data: required",
    ),
    "binary size without the header": (
        {
            "name": "image",
            "shape": [1, 3, 8, 8],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 768},
        },
        "needs the Inference-Header-Content-Length header",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_400_naming_what_was_expected(http: httpx.Client, case: str) -> None:
    tensor, expected = BAD_REQUESTS[case]
    response = _infer(http, IMAGE, tensor)
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"error"}
    assert expected in response.json()["error"]


def test_non_finite_and_unknown_outputs_are_400(http: httpx.Client) -> None:
    text = (
        '{"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP64", '
        '"data": [0, 1, NaN, 3, 4, 5]}]}'
    )
    response = http.post(f"/v2/models/{PRECISE}/infer", content=text)
    assert response.status_code == 400
    assert "element 2 is not a finite FP64 number" in response.json()["error"]
    tensor = {"name": "input", "shape": [1, 6], "datatype": "FP64", "data": [0.5] * 6}
    response = _infer(http, PRECISE, tensor, outputs=[{"name": "logits"}])
    assert response.status_code == 400
    assert "has one output, 'output'" in response.json()["error"]
    response = http.post(f"/v2/models/{PRECISE}/infer", content=b'{"inputs": [')
    assert response.status_code == 400 and "invalid JSON" in response.json()["error"]


def test_binary_data_of_the_wrong_size_is_400(http: httpx.Client) -> None:
    rows = _rows(IMAGE, seed=5)
    body, json_size = encode_infer_request("image", rows, binary_input=True)
    response = http.post(
        f"/v2/models/{IMAGE}/infer",
        content=body[:-4],
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert response.status_code == 400
    assert "764 bytes of binary data" in response.json()["error"]


def test_unknown_model_and_version_are_404_and_too_large_is_413(http: httpx.Client) -> None:
    tensor = {"name": "input", "shape": [1, 6], "datatype": "FP64", "data": [0.5] * 6}
    response = _infer(http, "resnet", tensor)
    assert response.status_code == 404
    assert "unknown model 'resnet'" in response.json()["error"]
    assert PRECISE in response.json()["error"]
    response = http.post(f"/v2/models/{PRECISE}/versions/0.0.1/infer", json={"inputs": [tensor]})
    assert response.status_code == 404 and PRECISE_VERSION in response.json()["error"]
    ok = http.post(
        f"/v2/models/{PRECISE}/versions/{PRECISE_VERSION}/infer", json={"inputs": [tensor]}
    )
    assert ok.status_code == 200, ok.text
    big = _infer(http, PRECISE, {**tensor, "data": [0.5] * 4000})
    assert big.status_code == 413 and "MAX_BODY_BYTES=8192" in big.json()["error"]
    assert http.get("/v2/models/resnet").status_code == 404
    assert http.get(f"/v2/models/{PRECISE}/infer").json().keys() == {"error"}  # 405


def test_no_error_names_a_file_or_exception(http: httpx.Client, mixed_models: Path) -> None:
    bodies = [_infer(http, IMAGE, tensor).text for tensor, _ in BAD_REQUESTS.values()] + [
        http.post(f"/v2/models/{IMAGE}/infer", content=b"\xff\xfe").text
    ]
    for text in bodies:
        assert str(mixed_models) not in text and "Traceback" not in text
        assert "Error(" not in text and ".py" not in text


def test_named_endpoints_remain_for_the_example_models(http: httpx.Client) -> None:
    response = http.post(QUALITY_PATH, json={"features": [0.5] * 10})
    assert response.status_code == 200 and response.json()["model"] == QUALITY
    routes = {p for p in http.get("/openapi.json").json()["paths"]}
    assert "/api/v1/predict/quality" in routes and "/v2/models/{model_name}/infer" in routes


def test_openapi_documents_the_protocol_for_every_model(
    http: httpx.Client, mixed_models: Path
) -> None:
    document = http.get("/openapi.json").json()
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    enum = infer["parameters"][0]["schema"]["enum"]
    assert enum == sorted(model_info(mixed_models))
    components = document["components"]

    def valid(schema: str, value: object) -> None:
        ref = {"$ref": f"#/components/schemas/{schema}", "components": components}
        Draft202012Validator(ref).validate(value)

    tensor = {"name": "input", "shape": [2, 6], "datatype": "FP64", "data": [0.5] * 12}
    request = {"id": "x", "inputs": [tensor]}
    valid("V2InferRequest", request)
    valid("V2InferResponse", http.post(f"/v2/models/{PRECISE}/infer", json=request).json())
    valid("V2ModelMetadata", http.get(f"/v2/models/{IMAGE}").json())
    valid("V2ServerMetadata", http.get("/v2").json())
    valid("V2Ready", http.get("/v2/health/ready").json())
    valid("V2Live", http.get("/v2/health/live").json())
    valid("V2ModelReady", http.get(f"/v2/models/{IMAGE}/ready").json())
    valid("V2Error", http.get("/v2/models/nope/ready").json())
    assert json.dumps(document)  # serialisable as served


def test_not_ready_while_loading(built_models: Path, tmp_path: Path) -> None:
    server = start_server(built_models, tmp_path, {"STARTUP_DELAY_S": "3.0"})
    try:
        server.wait_listening()
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert client.is_server_live()
            assert not client.is_server_ready()
            assert not client.is_model_ready(QUALITY)
            # metadata answers from model_info.json before the model loads
            assert client.get_model_metadata(QUALITY)["inputs"][0]["shape"] == [-1, 10]
        finally:
            client.close()
        with server.client() as http:
            tensor = {"name": "features", "shape": [1, 10], "datatype": "FP32", "data": [0.5] * 10}
            early = _infer(http, QUALITY, tensor)
            assert early.status_code == 503 and int(early.headers["retry-after"]) >= 1
            assert "loading" in early.json()["error"]
            ready = http.get("/v2/health/ready")
            assert ready.status_code == 503 and "poll /v2/health/ready" in ready.json()["error"]
        server.wait_ready()
        with server.client() as http:
            assert _infer(http, QUALITY, tensor).status_code == 200
    finally:
        server.stop()


def test_torchscript_format_serves_an_onnx_only_import_from_its_onnx(
    mixed_models: Path, tmp_path: Path
) -> None:
    with (
        running_server(mixed_models, tmp_path, fmt="torchscript") as server,
        server.client() as http,
    ):
        ready = http.get("/health/ready").json()
        assert ready["format"] == "torchscript"
        assert ready["formats"] == {
            QUALITY: "torchscript",
            ROUTING: "torchscript",
            IMAGE: "onnx",  # it has no .pt
            PRECISE: "torchscript",
        }
        assert http.get(f"/v2/models/{QUALITY}").json()["platform"] == "pytorch_libtorch"
        assert http.get(f"/v2/models/{IMAGE}").json()["platform"] == "onnxruntime_onnx"


def test_a_folder_in_the_plans_format_serves(built_models: Path, tmp_path: Path) -> None:
    """model_info.json written the original plan's way (feature dimensions only, no files,
    no checksums): the service loads it and answers on both kinds of endpoint."""
    import json
    import shutil

    import httpx

    from tests.serve.conftest import running_server

    folder = tmp_path / "plan-models"
    folder.mkdir()
    for name in ("quality_predictor", "routing_classifier"):
        for suffix in (".pt", ".onnx"):
            shutil.copy(built_models / f"{name}{suffix}", folder / f"{name}{suffix}")
    (folder / "model_info.json").write_text(
        json.dumps(
            {
                "quality_predictor": {"input_shape": [10], "output_shape": [1]},
                "routing_classifier": {"input_shape": [15], "output_shape": [4]},
            }
        )
    )
    with running_server(folder, tmp_path) as server:
        base = f"http://127.0.0.1:{server.port}"
        named = httpx.post(f"{base}/api/v1/predict/quality", json={"features": [0.5] * 10})
        assert named.status_code == 200 and 0.0 <= named.json()["quality"] <= 1.0
        tensor = {"name": "input", "shape": [2, 15], "datatype": "FP32", "data": [0.5] * 30}
        body = {"inputs": [tensor]}
        v2 = httpx.post(f"{base}/v2/models/routing_classifier/infer", json=body)
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["shape"] == [2, 4]
