"""Service hardening (issue 12) over real sockets on loopback: bounded headers, read and idle
timeouts, a connection cap, malformed bodies, deadlines and disconnected clients."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import (
    QUALITY_PATH,
    ROUTING_PATH,
    VALIDATE_AUTH,
    VALIDATE_PATH,
    VALIDATE_TOKEN,
    Server,
    running_server,
)

pytestmark = pytest.mark.unit

#: generous bound for anything the server should do within about a second
WAIT_S = 30.0


@pytest.fixture(scope="module")
def hardened(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Short read and idle timeouts, a small header bound, validation on."""
    env = {
        "BODY_READ_TIMEOUT_S": "1",
        "TIMEOUT_KEEP_ALIVE_S": "1",
        "MAX_HEADER_BYTES": "8192",
        "VALIDATE_TOKEN": VALIDATE_TOKEN,
        "CACHE_ENTRIES": "0",
    }
    with running_server(built_models, tmp_path_factory.mktemp("hardened"), env) as server:
        yield server


@pytest.fixture(scope="module")
def slow_batches(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A lone request waits 3 s for company; the default deadline is 1 s."""
    env = {
        "BATCH_TIMEOUT_MS": "3000",
        "MAX_BATCH_SIZE": "64",
        "DEFAULT_DEADLINE_MS": "1000",
        "CACHE_ENTRIES": "0",
    }
    with running_server(built_models, tmp_path_factory.mktemp("slow"), env) as server:
        yield server


@contextlib.contextmanager
def raw(server: Server, timeout_s: float = WAIT_S) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it
    keeps it open past the socket's timeout)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def request_head(path: str, extra: str = "", length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + extra).encode()


def metric(server: Server, name: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- headers
def test_headers_larger_than_the_bound_are_431_in_one_read(hardened: Server) -> None:
    body = b'{"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}'
    big = "X-Padding: " + "a" * 12_000 + "\r\n"
    with raw(hardened) as sock:
        sock.sendall(request_head(QUALITY_PATH, big, len(body)) + b"\r\n" + body)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_header_that_never_ends_is_cut_off(hardened: Server) -> None:
    with raw(hardened) as sock:
        sock.sendall(request_head(QUALITY_PATH, "X-Padding: "))
        sent = 0
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(50):  # up to 200 KB of one header, 4 KB at a time
                sock.sendall(b"a" * 4096)
                sent += 4096
                time.sleep(0.005)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431") or sent < 200 * 1024, answer[:200]
    assert b"MAX_HEADER_BYTES" in answer or sent < 200 * 1024


# --------------------------------------------------------------------------- timeouts
@pytest.mark.parametrize(
    "partial",
    [
        request_head(QUALITY_PATH, length=100) + b'\r\n{"features": [0.5,',  # half a body
        request_head(QUALITY_PATH),  # headers that never finish
    ],
    ids=["half-body", "half-headers"],
)
def test_an_unfinished_request_gets_408_and_is_closed(hardened: Server, partial: bytes) -> None:
    with raw(hardened) as sock:
        sock.sendall(partial)
        answer = read_until_closed(sock)  # socket.timeout (a failure) if left open
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"BODY_READ_TIMEOUT_S" in answer


def test_a_connection_that_sends_nothing_is_closed(hardened: Server) -> None:
    with raw(hardened) as sock:
        assert read_until_closed(sock) == b""


def test_a_complete_request_is_unaffected(hardened: Server) -> None:
    body = b'{"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}'
    with raw(hardened) as sock:
        sock.sendall(request_head(QUALITY_PATH, length=len(body)) + b"\r\n")
        time.sleep(0.2)  # a slow but timely client
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_connections_past_the_limit_get_503(built_models: Path, tmp_path: Path) -> None:
    env = {"LIMIT_CONCURRENCY": "3", "TIMEOUT_KEEP_ALIVE_S": "60", "CACHE_ENTRIES": "0"}
    body = {"features": [0.5] * 10}
    with running_server(built_models, tmp_path, env) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            with server.client() as client:
                refused = client.post(QUALITY_PATH, json=body)
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + WAIT_S
        while True:  # the server notices the closed connections shortly
            with server.client() as client:
                served = client.post(QUALITY_PATH, json=body)
            if served.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # validation is off without VALIDATE_TOKEN
        with server.client() as client:
            validation = client.post(VALIDATE_PATH, json={"requests": 5}, headers=VALIDATE_AUTH)
    assert refused.status_code == 503
    assert served.status_code == 200
    assert validation.status_code == 404


# --------------------------------------------------------------------------- bodies
_NESTED = b"[" * 30_000 + b"]" * 30_000  # 60 KB, within MAX_BODY_BYTES
MALFORMED = [
    _NESTED,
    b'{"features": ' + b"[" * 29_990 + b"]" * 29_990 + b"}",
    b'{"model": ' + b'{"a": ' * 9_000 + b"1" + b"}" * 9_000 + b"}",
    b'{"model": []}',
    b'{"model": {}}',
    b'{"model": 1}',
    b'{"requests": []}',
    b'{"requests": {"a": 1}}',
    b'{"duration_s": [1]}',
    b'{"concurrency": "many"}',
    b'{"requests": ' + b"9" * 5000 + b"}",
    b'{"features": [[1], 2, 3, 4, 5, 6, 7, 8, 9, 10]}',
    b'{"features": [{}, 2, 3, 4, 5, 6, 7, 8, 9, 10]}',
    b'{"features": {"a": []}}',
    b'{"features": null}',
    b'{"features": "\\ud800"}',
    b'{"\\ud800": 1}',
    b'{"features": [1, 2, 3], "features": "x"}',
    b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]',
    b"\xff\xfe\x00{",
    b"null",
    b'"text"',
    b"1e400",
]
LEAKS = ("Traceback", "Error:", "RecursionError", "TypeError", "unhashable", ".py", "sys.")


@pytest.mark.parametrize("path", [QUALITY_PATH, ROUTING_PATH, VALIDATE_PATH])
def test_malformed_bodies_are_422_without_internals(hardened: Server, path: str) -> None:
    headers = {"content-type": "application/json", **VALIDATE_AUTH}
    with hardened.client() as client:
        for body in MALFORMED:
            response = client.post(path, content=body, headers=headers)
            shown = body[:40]
            assert response.status_code == 422, (shown, response.status_code, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail, shown
            for leak in LEAKS:
                assert leak not in response.text, (shown, response.text)


def test_failed_readiness_names_models_not_paths(models_dir: Path, tmp_path: Path) -> None:
    onnx = models_dir / "quality_predictor.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100])  # truncated: its recorded sha256 fails
    from tests.serve.conftest import start_server

    server = start_server(models_dir, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError), server.client(timeout=5) as client:
                response = client.get("/health/ready")
                if response.json().get("status") == "failed":
                    break
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    finally:
        server.stop()
    assert response.status_code == 503
    assert set(response.json()["errors"]) == {"quality_predictor_onnx"}
    assert str(models_dir) not in response.text and "sha256" not in response.text
    assert "sha256 mismatch" in server.log()  # the operator gets the reason


# --------------------------------------------------------------------------- engine work
def test_a_disconnected_clients_request_is_dropped_unrun(slow_batches: Server) -> None:
    body = b'{"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}'
    batches_before = metric(slow_batches, "relcert_engine_batches_total")
    with raw(slow_batches) as sock:
        sock.sendall(request_head(QUALITY_PATH, length=len(body)) + b"\r\n" + body)
        time.sleep(0.5)  # queued: the batch waits 3 s for company
    deadline = time.monotonic() + WAIT_S
    while metric(slow_batches, "relcert_engine_cancelled_total") < 1:
        assert time.monotonic() < deadline, "the request was not dropped"
        time.sleep(0.2)
    assert metric(slow_batches, "relcert_engine_batches_total") == batches_before


def test_a_request_outwaiting_the_default_deadline_is_503(slow_batches: Server) -> None:
    with slow_batches.client() as client:
        response = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
    assert response.status_code == 503, response.text
    assert "deadline" in response.json()["detail"]
    assert int(response.headers["retry-after"]) >= 1
    assert metric(slow_batches, "relcert_engine_expired_total") >= 1


def test_declared_input_ranges_are_enforced(built_models: Path) -> None:
    """Optional: model_info.json may declare input ranges; values outside are a 422."""
    from pipeline.serve.features import FeatureSpec, RequestError
    from tests.serve.conftest import model_info

    entry = dict(model_info(built_models)["quality_predictor"])
    names = entry["feature_names"]
    assert FeatureSpec.from_model_info("quality_predictor", entry).ranges is None  # optional
    entry["input_range"] = [-10.0, 10.0]
    entry["feature_ranges"] = {names[2]: [0.0, 1.0]}
    spec = FeatureSpec.from_model_info("quality_predictor", entry)
    assert (
        spec.decode(b'{"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}') is not None
    )
    with pytest.raises(RequestError) as refused:
        spec.decode(b'{"features": [3e38, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}')
    assert refused.value.status == 422
    assert refused.value.detail.startswith("features[0]: expected a number in [-10, 10]")
    named = dict.fromkeys(names, 0.5) | {names[2]: 2.0}
    with pytest.raises(RequestError, match=rf"^features\.{names[2]}: .*\[0, 1\]"):
        spec.decode(json.dumps({"features": named}).encode())
    entry["feature_ranges"] = {"no_such_feature": [0, 1]}
    with pytest.raises(ValueError, match="unknown feature"):
        FeatureSpec.from_model_info("quality_predictor", entry)
