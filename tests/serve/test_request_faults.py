"""Over HTTP: values that make the runtime raise are the client's 400 (counted apart, never
reloading the model); out-of-range integers are a 400 naming the input and the range, never a
wrapped value (issue 24)."""

from __future__ import annotations

import httpx
import pytest

from tests.fault_models import BAG, VOCAB, embedding_model
from tests.serve.conftest import running_server

pytestmark = pytest.mark.unit

INFER = f"/v2/models/{BAG}/infer"
INT64_RANGE = "[-9223372036854775808, 9223372036854775807]"


def _infer(client: httpx.Client, rows: list) -> httpx.Response:
    tensor = {"name": "ids", "shape": [len(rows), 3], "datatype": "INT64", "data": rows}
    return client.post(INFER, json={"inputs": [tensor]})


def _metric(metrics: str, prefix: str) -> float:
    """The value of the first sample line starting with `prefix` (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def bag_server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bag")
    models = embedding_model(folder / "models", "torchscript")
    env = {"CACHE_ENTRIES": "0", "RECOVERY_FAILURE_THRESHOLD": "2", "RECOVERY_COOLDOWN_S": "0"}
    with running_server(models, folder, env, fmt="torchscript") as server:
        yield server


def test_an_index_past_the_table_is_400_and_never_reloads_the_model(bag_server) -> None:
    with bag_server.client() as client:
        ok = _infer(client, [[1, 2, 3]])
        refused = [_infer(client, [[1, 2, VOCAB + i]]) for i in range(6)]
        mixed = _infer(client, [[1, 2, 3], [4, 5, VOCAB], [6, 7, 8]])
        after = _infer(client, [[1, 2, 3]])
        metrics = client.get("/metrics").text
    assert ok.status_code == 200, ok.text
    assert [r.status_code for r in refused] == [400] * 6, [r.text for r in refused]
    detail = refused[0].json()["error"]
    assert detail.startswith("inputs[0]") and BAG in detail
    for leak in ("Traceback", "RuntimeError", "index out of range", ".py"):
        assert leak not in refused[0].text, refused[0].text
    assert mixed.status_code == 400  # one bad row: the request's error, the model's answer
    assert after.status_code == 200 and after.json()["outputs"] == ok.json()["outputs"]
    # counted apart, and never toward recovery: no reload (it would also flush the cache)
    assert _metric(metrics, "relcert_engine_input_runtime_errors_total") == 7
    assert _metric(metrics, 'relcert_recoveries_total{kind="model_reload"}') == 0
    assert f'relcert_http_requests_total{{endpoint="{INFER}",status="500"}}' not in metrics


@pytest.mark.parametrize(
    "data",
    [[[1e20, 1, 2]], [[9223372036854775808, 1, 2]], [[-9.3e18, 1, 2]]],
    ids=["1e20", "2**63", "-9.3e18"],
)
def test_an_out_of_range_integer_is_400_naming_the_input_and_the_range(bag_server, data) -> None:
    with bag_server.client() as client:
        answer = _infer(client, data)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["error"]
    assert detail.startswith("inputs[0].data: element 0 is "), detail
    assert f"outside the INT64 range {INT64_RANGE}" in detail, detail
