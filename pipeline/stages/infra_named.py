"""The infra stage's Open Inference Protocol checks for models of named tensors: the golden
requests with every input tensor in and every output tensor out, a batch of the golden rows
that share their shapes, a malformed request, and the load's request bodies.

`golden` is a list of requests (mappings input name -> one sample) and `answers` the
in-process engine's outputs for them (mappings output name -> one row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.inference.signature import Signature
from pipeline.stages.common import check_row

__all__ = [
    "expected_metadata",
    "golden_batch_named",
    "golden_json_named",
    "malformed_named",
    "named_body",
]

_HEADER = "Inference-Header-Content-Length"


def expected_metadata(signature: Signature) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs GET /v2/models/{name} must list (-1: a dynamic dim)."""
    from pipeline.serve.tensors import datatype_of

    def meta(spec: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in spec.shape]
        return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}

    return {
        "inputs": [meta(t) for t in signature.inputs],
        "outputs": [meta(t) for t in signature.outputs],
    }


def _worst(doc: Mapping[str, Any], expected: list[Mapping[str, np.ndarray]]) -> float:
    """The largest difference between a response's outputs and the expected rows."""
    got = {o["name"]: o["array"] for o in doc.get("outputs") or []}
    worst = 0.0
    for name in expected[0]:
        if name not in got:
            return float("inf")
        want = np.stack([e[name] for e in expected]).astype(np.float64)
        if got[name].shape != want.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got[name].astype(np.float64) - want).max(initial=0.0)))
    return worst


def named_body(request: Mapping[str, np.ndarray], binary: bool) -> tuple[bytes, int | None]:
    """One sample as a request with a row per input (binary data in and out, or JSON)."""
    from pipeline.serve.named_tensors import encode_named_request

    rows = {name: value[None] for name, value in request.items()}
    return encode_named_request(rows, binary_input=binary, binary_output=binary)


async def golden_json_named(client, m: Any, tolerance: float) -> dict[str, Any]:
    """Each golden request as its own JSON request; every output against the engine's."""
    from pipeline.serve.tensors import read_infer_response

    worst, answered, versions = 0.0, 0, set()
    for request, expected in zip(m.rows, m.outputs, strict=True):
        body, _ = named_body(request, binary=False)
        result = await client.post_json(m.infer_path, body)
        if not result.success:
            worst = float("inf")
            continue
        doc = read_infer_response(result.body, None)
        worst = max(worst, _worst(doc, [expected]))
        versions.add(str(doc.get("model_version")))
        answered += 1
    names = ", ".join(m.outputs[0]) if m.outputs else ""
    return check_row(
        "golden_requests",
        m.name,
        answered == len(m.rows) and worst <= tolerance and versions == {m.version},
        worst,
        "max abs diff",
        tolerance,
        f"{answered}/{len(m.rows)} answered through {m.infer_path} (JSON, every input tensor "
        f"in, outputs {names} out); versions {sorted(versions)} (expected {m.version})",
        fmt=m.format,
        samples=len(m.rows),
    )


async def golden_batch_named(client, m: Any, limit: int, tolerance: float) -> dict[str, Any]:
    """The golden requests that share their shapes (the largest such group) as one binary
    request of several rows, answered in binary."""
    from pipeline.serve.named_tensors import encode_named_request
    from pipeline.serve.tensors import read_infer_response

    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(m.rows):
        groups.setdefault(tuple(a.shape for a in request.values()), []).append(i)
    chosen = max(groups.values(), key=len)
    if len(chosen) < 2:
        return check_row(
            "golden_batch",
            m.name,
            False,
            status="not_applicable",
            detail="no two golden requests share their input shapes (a request's rows share "
            "every dimension but the batch)",
            fmt=m.format,
        )
    while True:
        rows = {n: np.stack([m.rows[i][n] for i in chosen]) for n in m.rows[0]}
        body, size = encode_named_request(rows, binary_input=True, binary_output=True)
        if len(body) <= limit or len(chosen) <= 2:
            break
        chosen = chosen[: len(chosen) // 2]
    result = await client.request(
        "POST", m.infer_path, body, "application/octet-stream", ((_HEADER, str(size)),)
    )
    worst, detail = float("inf"), f"HTTP {result.status}: {result.body[:160]!r}"
    if result.success:
        doc = read_infer_response(result.body, result.headers.get(_HEADER.lower()))
        worst = _worst(doc, [m.outputs[i] for i in chosen])
        detail = (
            f"{len(chosen)} rows of shapes {[list(a.shape) for a in rows.values()]} in one "
            f"binary request, answered in binary (version {doc['model_version']})"
        )
    return check_row(
        "golden_batch",
        m.name,
        result.success and worst <= tolerance,
        worst,
        "max abs diff",
        tolerance,
        detail,
        fmt=m.format,
        samples=len(chosen),
    )


async def malformed_named(client, m: Any) -> dict[str, Any]:
    """The first input with an extra dimension: 400 naming the shape expected."""
    request = dict(m.rows[0])
    first = next(iter(request))
    request[first] = request[first][..., None]
    body, _ = named_body(request, binary=False)
    result = await client.post_json(m.infer_path, body)
    text = result.body.decode(errors="replace")
    named = '"error"' in text and "expected [" in text and first in text
    return check_row(
        "invalid_request_400",
        m.name,
        result.status == 400 and named,
        result.status,
        "status",
        400,
        text[:200],
        fmt=m.format,
    )
