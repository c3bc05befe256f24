"""Infra stage: the HTTP service that will be deployed, validated for real on loopback.

Starts `python -m pipeline.serve` as a subprocess from the run's built models on a free
loopback port (every model, each in ONNX when it has that file, else in the format it has;
MAX_BODY_BYTES raised as the package raises it so one JSON request of every model fits),
waits (bounded) for readiness, then checks every model through the Open Inference Protocol
(`/v2`): its metadata and readiness, golden requests (one row per JSON request, and a batch
of rows in binary tensor data) against the in-process engine's outputs (any shape, any
dtype), a malformed request (400). The example models are also checked on their named
endpoints (golden answers, 422); for other models those checks are rows marked not
applicable. Then error handling (404, 413), /metrics, liveness, open-loop HTTP load spread
over every model with the load stage's methodology (Poisson arrivals, latency from the
scheduled time, issue delay recorded) spread over every endpoint a model is served on (its
/v2 endpoint, and the named endpoint of an example model), then the performance validation
endpoint (enabled for this instance with a random token), the server process's RSS and CPU;
the server is always stopped, even when a check fails.

The interface SLAs are checks of their own, each against its target: per endpoint, the p99
under the open-loop load (`routing_endpoint_p99_ms`, `quality_endpoint_p99_ms` on the named
endpoints, `endpoint_p99_latency_ms` on each model's /v2 endpoint with the model's own
target when it has one), and the validation endpoint's completion time
(`validation_endpoint_s`). While the load and the validation run, the health endpoints are
probed on a fixed cadence (pipeline.stages.availability): `availability` is the share of
probes and requests answered correctly. Writes `stages/infra/checks.csv` (gated),
`stages/infra/load.csv`, `stages/infra/resources.csv` and `summary.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import atomic_write_text
from pipeline._proc import stop_process_group
from pipeline.loadgen import run_open_loop, summarize
from pipeline.stages.availability import HealthProber
from pipeline.stages.common import SERVING_FORMAT, StageError, check_row, input_pool, serving_keys
from pipeline.stages.context import StageContext
from pipeline.stages.engine_host import ResourceSampler
from pipeline.stages.infra_named import (
    expected_metadata,
    golden_batch_named,
    golden_json_named,
    malformed_named,
    named_body,
)
from pipeline.stages.interface import (
    ENDPOINTS,
    NAMED_SLAS,
    V2_SLA,
    availability_check,
    interface_checks,
    validation_checks,
)

__all__ = ["ServerProcess", "run"]

READY_TIMEOUT_S = 90.0
#: golden rows per model
GOLDEN_ROWS = 8
#: largest max abs difference between a served answer and the in-process engine's
GOLDEN_TOLERANCE = 1e-5
_HEADER = "Inference-Header-Content-Length"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """The service as a subprocess on a loopback port; `stop()` always ends it."""

    def __init__(
        self,
        model_dir: Path,
        env: dict[str, str] | None = None,
        hide: Path | None = None,
        *,
        validate_token: str | None = None,
    ) -> None:
        """`validate_token` turns the validation endpoint on; it is handed over on the
        child's stdin (`--validate-token-stdin`), never in its environment or command line,
        and a VALIDATE_TOKEN of this process's environment is not passed on."""
        self.model_dir = model_dir
        self.hide = hide  # a folder (the run's) whose absolute path the log shows as <run>
        self.port = _free_port()
        inherited = {k: v for k, v in os.environ.items() if k != "VALIDATE_TOKEN"}
        self.env = {**inherited, "MODEL_FORMAT": SERVING_FORMAT, **(env or {})}
        self._validate_token = validate_token
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> ServerProcess:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.serve",
                    "--model-dir",
                    str(self.model_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *(["--validate-token-stdin"] if self._validate_token else []),
                ],
                env=self.env,
                stdin=subprocess.PIPE if self._validate_token else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self._validate_token:
            self.process.stdin.write(f"{self._validate_token}\n".encode())
            self.process.stdin.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL of the process group after `timeout_s`."""
        try:
            return stop_process_group(self.process, timeout_s)
        finally:
            self._hide_in_log()

    def _hidden(self, text: str) -> str:
        return text.replace(str(self.hide), "<run>") if self.hide else text

    def _hide_in_log(self) -> None:
        """The run folder may be a task's temporary copy: the log names it `<run>`."""
        if self.hide and self.log_path and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
            if str(self.hide) in text:
                atomic_write_text(self.log_path, self._hidden(text))

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(self._hidden(text).splitlines()[-lines:])


def run(ctx: StageContext) -> dict[str, Any]:
    """Run the infra stage; returns its summary (also stages/infra/summary.json)."""
    return asyncio.run(_run(ctx))


async def _wait_ready(client, server: ServerProcess, timeout_s: float) -> tuple[bool, float, str]:
    started = time.perf_counter()
    last = ""
    while time.perf_counter() - started < timeout_s:
        if server.process.poll() is not None:
            return False, time.perf_counter() - started, f"server exited: {server.log_tail()}"
        result = await client.get("/health/ready")
        if result.status == 200:
            return True, time.perf_counter() - started, result.body.decode()[:200]
        if result.status == 503 and b'"failed"' in result.body:  # models will never load
            # the service names the failed models; the reasons are in its log
            tail = server.log_tail(50).splitlines()
            reasons = [line for line in tail if "failed to load" in line]
            detail = " ".join([result.body.decode()[:300], *reasons])[:1500]
            return False, time.perf_counter() - started, detail
        last = f"{result.status} {result.body[:200]!r} {result.error or ''}"
        await asyncio.sleep(0.2)
    return False, time.perf_counter() - started, f"not ready after {timeout_s:g} s: {last}"


@dataclass
class _Model:
    """One served model as the stage checks it: golden inputs and the engine's answers."""

    name: str
    key: str  # the engine key it is served as (<name>_<format>)
    entry: dict[str, Any]  # its model_info.json entry
    # golden inputs, (GOLDEN_ROWS, *row shape) in its input dtype; for a model of named
    # tensors (`signature` set) a list of mappings input name -> one sample
    rows: Any
    # the in-process engine's answers, (GOLDEN_ROWS, *output row shape); for a model of
    # named tensors a list of mappings output name -> one row
    outputs: Any
    version: str
    input_name: str = "input"  # from the service's model metadata once read
    fixed_batch: int | None = None
    signature: Any = None  # its settled Signature when it is a model of named tensors

    @property
    def format(self) -> str:
        return self.key.removeprefix(f"{self.name}_")

    @property
    def infer_path(self) -> str:
        return f"/v2/models/{self.name}/infer"


def _default_body_bytes() -> int:
    from pipeline.serve.settings import ServeSettings

    return next(f.default for f in fields(ServeSettings) if f.name == "max_body_bytes")


async def _run(ctx: StageContext) -> dict:
    from pipeline.serve.client import HttpLoadClient
    from pipeline.serve.tensors import body_limit_for

    run, profile, targets, say = ctx.run, ctx.profile, ctx.targets, ctx.say
    info = run.model_info()
    if not info:
        rows = [check_row("service", "all", False, detail="model_info.json lists no model")]
        ctx.write_table("checks", rows)
        return ctx.write_summary({"checks": len(rows), "failed": ["service:all"]})
    keys = serving_keys(info)
    models, rows = await _golden(run, info, keys, profile.seeds.infra)
    limit = body_limit_for(info, _default_body_bytes())
    # this instance's validation endpoint (off unless a token is set): a fresh random token,
    # held in memory only (handed over on the child's stdin; never written, logged, put in
    # an environment or on a command line)
    token = secrets.token_urlsafe(32)
    server = ServerProcess(
        run.models, {"MAX_BODY_BYTES": str(limit)}, hide=run.root, validate_token=token
    ).start(ctx.folder / "server.log")
    sampler = ResourceSampler(server.pid, interval_s=0.5)
    client = HttpLoadClient("127.0.0.1", server.port, connections=16)
    probe_client = HttpLoadClient("127.0.0.1", server.port, connections=2)
    load_rows: list[dict[str, Any]] = []
    interface: dict[str, Any] = {"endpoints": [], "validation": None, "availability": None}
    say(f"infra: service pid {server.pid} on 127.0.0.1:{server.port} serving {', '.join(keys)}")
    try:
        sampler.start()
        await _connect(client, server)
        ready, ready_s, detail = await _wait_ready(client, server, READY_TIMEOUT_S)
        rows.append(check_row("readiness", "all", ready, ready_s, "s", READY_TIMEOUT_S, detail))
        say(f"infra: ready={ready} after {ready_s:.1f} s")
        if ready:
            rows += await _protocol_checks(client, models, limit)
            rows += await _named_checks(client, models)
            rows += await _service_checks(client, models, limit)
            claim = min(95.0, max(profile.percentiles_claimed))
            await _connect(probe_client, server)
            prober = await HealthProber(probe_client).start()
            try:
                load_rows, load_checks, trials = await _load(
                    client, models, profile.infra, targets, claim, say
                )
                validation_rows, interface["validation"] = await validation_checks(
                    client, token, targets, say
                )
            finally:
                await prober.stop()
            endpoint_rows, interface["endpoints"] = interface_checks(trials, targets)
            availability_row, interface["availability"] = availability_check(
                prober, load_rows, targets
            )
            rows += [*load_checks, *endpoint_rows, *validation_rows, availability_row]
            say(f"infra: {availability_row['detail']}")
        sampler.sample()
    finally:
        await sampler.stop()
        await client.close()
        await probe_client.close()
        code = server.stop()
    rows += _process_checks(server, code, sampler, targets)
    ctx.write_table("checks", rows)
    ctx.write_table("load", load_rows)
    ctx.write_table(
        "resources", [{"t_s": t, "rss_mb": r, "cpu_percent": c} for t, r, c in sampler.samples]
    )
    failed = [
        f"{r['check']}:{r['model']}"
        for r in rows
        if not r["passed"] and r["status"] != "not_applicable"
    ]
    summary = ctx.write_summary(
        {
            "port": server.port,
            "server_pid": server.pid,
            "models": {name: key.removeprefix(f"{name}_") for name, key in keys.items()},
            "max_body_bytes": limit,
            "checks": len(rows),
            "failed": failed,
            "peak_rss_mb": sampler.peak_rss_mb(),
            "mean_cpu_percent": sampler.mean_cpu_percent(),
            "load": load_rows,
            **interface,
        }
    )
    say(
        f"infra: {len(rows) - len(failed)}/{len(rows)} checks passed or not applicable"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return summary


def _process_checks(server: ServerProcess, code: int | None, sampler, targets) -> list:
    """Clean shutdown and the server process's peak memory."""
    clean = code in (0, -signal.SIGTERM)
    peak = sampler.peak_rss_mb()
    memory = targets["memory_usage_mb"]
    return [
        check_row(
            "clean_shutdown",
            "all",
            clean,
            code if code is not None else float("nan"),
            "exit code",
            0,
            "SIGTERM -> graceful exit" if clean else f"exit {code}: {server.log_tail(5)}",
        ),
        check_row(
            "server_memory",
            "all",
            memory.passes(peak),
            peak,
            "MB",
            memory.threshold,
            "peak RSS of the service process during the stage",
        ),
    ]


async def _golden(
    run, info: dict[str, Any], keys: dict[str, str], seed: int
) -> tuple[dict[str, _Model], list[dict[str, Any]]]:
    """Golden inputs of every model and the in-process engine's answers to them."""
    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager

    manager = ProductionModelManager(run.models)
    engine = ProductionInferenceEngine(manager)
    models: dict[str, _Model] = {}
    rows: list[dict[str, Any]] = []
    for name, key in keys.items():
        fmt = key.removeprefix(f"{name}_")
        if not manager.load_model(key):
            reason = manager.load_errors.get(key, "does not load")
            rows.append(check_row("golden_reference", name, False, detail=reason, fmt=fmt))
            continue
        xs = input_pool(run, info, name, GOLDEN_ROWS, seed=seed)
        answers = await engine.predict_batch(key, list(xs))
        failed = next((a for a in answers if not a.success), None)
        if failed is not None:
            detail = f"the in-process engine failed on a golden input: {failed.error}"
            rows.append(check_row("golden_reference", name, False, detail=detail, fmt=fmt))
            continue
        entry = info[name]
        record = manager.model_info[key]
        named = record.tensor_io
        models[name] = _Model(
            name,
            key,
            entry,
            xs,
            [a.outputs for a in answers] if named else np.stack([a.output for a in answers]),
            record.version,
            str(entry.get("input_name") or "input"),
            signature=record.signature if named else None,
        )
    await engine.stop()
    return models, rows


async def _connect(client, server: ServerProcess, timeout_s: float = 30.0) -> None:
    started = time.perf_counter()
    while True:
        try:
            await client.start()
            return
        except OSError as exc:
            if server.process.poll() is not None or time.perf_counter() - started > timeout_s:
                raise StageError(
                    f"infra: cannot connect to the service: {exc}: {server.log_tail()}"
                ) from None
            await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- /v2 checks
async def _protocol_checks(client, models: dict[str, _Model], limit: int) -> list:
    """Every model through the Open Inference Protocol: metadata, readiness, golden
    answers (JSON, one row a request; binary, a batch of rows), a malformed request."""
    rows = []
    for m in models.values():
        rows.append(await _metadata_check(client, m))
        ready = await client.get(f"/v2/models/{m.name}/ready")
        rows.append(
            check_row(
                "model_ready",
                m.name,
                ready.status == 200,
                ready.status,
                "status",
                200,
                ready.body.decode(errors="replace")[:160],
                fmt=m.format,
            )
        )
        rows.append(await _golden_json(client, m))
        rows.append(await _golden_batch(client, m, limit))
        rows.append(await _malformed_request(client, m))
    return rows


async def _metadata_check(client, m: _Model) -> dict[str, Any]:
    """GET /v2/models/{name}: the version, platform and tensors the run built."""
    from pipeline.serve.tensors import PLATFORMS, datatype_of

    result = await client.get(f"/v2/models/{m.name}")
    problems = []
    if result.status == 200 and m.signature is not None:
        doc = result.json()
        expected = {"versions": [m.version], "platform": PLATFORMS[m.format]}
        expected.update(expected_metadata(m.signature))
        problems = [
            f"{k} {doc.get(k)} (expected {v})" for k, v in expected.items() if doc.get(k) != v
        ]
        shape = expected["inputs"][0]["shape"]
        m.fixed_batch = shape[0] if shape[0] > 0 else None
        detail = "; ".join(problems) or (
            f"version {m.version}, {doc.get('platform')}, inputs "
            + ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in doc["inputs"])
            + ", outputs "
            + ", ".join(f"{t['name']} {t['shape']}" for t in doc["outputs"])
        )
    elif result.status == 200:
        doc = result.json()
        tensor_in, tensor_out = (doc.get("inputs") or [{}])[0], (doc.get("outputs") or [{}])[0]
        m.input_name = str(tensor_in.get("name") or m.input_name)
        shape = list(tensor_in.get("shape") or [])
        m.fixed_batch = shape[0] if shape and shape[0] > 0 else None
        expected = {
            "versions": [m.version],
            "platform": PLATFORMS[m.format],
            "input datatype": datatype_of(m.rows.dtype),
            "input row shape": list(m.rows.shape[1:]),
            "output row shape": list(m.outputs.shape[1:]),
        }
        got = {
            "versions": doc.get("versions"),
            "platform": doc.get("platform"),
            "input datatype": tensor_in.get("datatype"),
            "input row shape": shape[1:],
            "output row shape": list(tensor_out.get("shape") or [])[1:],
        }
        problems = [f"{k} {got[k]} (expected {v})" for k, v in expected.items() if got[k] != v]
        detail = "; ".join(problems) or (
            f"version {m.version}, {doc.get('platform')}, input {m.input_name} "
            f"{tensor_in.get('datatype')} {shape}"
        )
    else:
        detail = result.body.decode(errors="replace")[:160] or str(result.error)
    return check_row(
        "model_metadata",
        m.name,
        result.status == 200 and not problems,
        result.status,
        "status",
        200,
        detail,
        fmt=m.format,
    )


def _difference(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0))


async def _golden_json(client, m: _Model) -> dict[str, Any]:
    """Each golden row as its own JSON request; the answers against the engine's."""
    from pipeline.serve.tensors import datatype_of, encode_infer_request

    if m.signature is not None:
        return await golden_json_named(client, m, GOLDEN_TOLERANCE)
    worst, answered, versions, datatypes = 0.0, 0, set(), set()
    for row, expected in zip(m.rows, m.outputs, strict=True):
        body, _ = encode_infer_request(m.input_name, row[None])
        result = await client.post_json(m.infer_path, body)
        if not result.success:
            worst = float("inf")
            continue
        doc = result.json()
        output = doc["outputs"][0]
        got = np.asarray(output["data"]).reshape(output["shape"])[0]
        worst = max(worst, _difference(got, expected))
        versions.add(str(doc.get("model_version")))
        datatypes.add(output["datatype"])
        answered += 1
    want = datatype_of(m.outputs.dtype)
    passed = (
        answered == len(m.rows)
        and worst <= GOLDEN_TOLERANCE
        and versions == {m.version}
        and datatypes == {want}
    )
    return check_row(
        "golden_requests",
        m.name,
        passed,
        worst,
        "max abs diff",
        GOLDEN_TOLERANCE,
        f"{answered}/{len(m.rows)} answered through {m.infer_path} (JSON, one row each); "
        f"versions {sorted(versions)} (expected {m.version}); datatypes {sorted(datatypes)} "
        f"(expected {want})",
        fmt=m.format,
        samples=len(m.rows),
    )


async def _golden_batch(client, m: _Model, limit: int) -> dict[str, Any]:
    """The golden rows as one request in binary tensor data, answered in binary."""
    from pipeline.serve.tensors import encode_infer_request, read_infer_response

    if m.fixed_batch is not None:
        return check_row(
            "golden_batch",
            m.name,
            False,
            status="not_applicable",
            detail=f"{m.name} takes a fixed batch of {m.fixed_batch}: a request holds "
            f"{m.fixed_batch} row(s) (golden_requests sends them one by one)",
            fmt=m.format,
        )
    if m.signature is not None:
        return await golden_batch_named(client, m, limit, GOLDEN_TOLERANCE)
    count = len(m.rows)
    body, size = encode_infer_request(m.input_name, m.rows, binary_input=True, binary_output=True)
    while len(body) > limit and count > 2:
        count //= 2
        body, size = encode_infer_request(
            m.input_name, m.rows[:count], binary_input=True, binary_output=True
        )
    if len(body) > limit:
        return check_row(
            "golden_batch",
            m.name,
            False,
            status="not_applicable",
            detail=f"a request of 2 rows ({len(body)} bytes) exceeds MAX_BODY_BYTES={limit}",
            fmt=m.format,
        )
    result = await client.request(
        "POST", m.infer_path, body, "application/octet-stream", ((_HEADER, str(size)),)
    )
    worst, detail = float("inf"), f"HTTP {result.status}: {result.body[:160]!r}"
    if result.success:
        doc = read_infer_response(result.body, result.headers.get(_HEADER.lower()))
        worst = _difference(doc["outputs"][0]["array"], m.outputs[:count])
        detail = (
            f"{count} rows in one binary request, answered in binary "
            f"(shape {list(doc['outputs'][0]['array'].shape)}, version {doc['model_version']})"
        )
    return check_row(
        "golden_batch",
        m.name,
        result.success and worst <= GOLDEN_TOLERANCE,
        worst,
        "max abs diff",
        GOLDEN_TOLERANCE,
        detail,
        fmt=m.format,
        samples=count,
    )


async def _malformed_request(client, m: _Model) -> dict[str, Any]:
    """A row of the wrong shape: 400 naming the shape expected."""
    from pipeline.serve.tensors import encode_infer_request

    if m.signature is not None:
        return await malformed_named(client, m)
    row = m.rows[:1].reshape(1, -1)
    wrong = np.concatenate([row, np.zeros((1, 1), dtype=row.dtype)], axis=1)
    body, _ = encode_infer_request(m.input_name, wrong)
    result = await client.post_json(m.infer_path, body)
    text = result.body.decode(errors="replace")
    named = '"error"' in text and "expected [" in text
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


# ----------------------------------------------------------------------------- named endpoints
async def _named_checks(client, models: dict[str, _Model]) -> list[dict[str, Any]]:
    """The example models' named endpoints; other models have none (not applicable)."""
    rows = []
    for name, m in models.items():
        path = ENDPOINTS.get(name)
        if path is None:
            reason = (
                f"{name} has no named endpoint (only {', '.join(ENDPOINTS)} do); it is "
                f"checked through {m.infer_path}"
            )
            for check in ("golden_requests_named", "invalid_body_422"):
                rows.append(check_row(check, name, False, status="not_applicable", detail=reason))
            continue
        rows += await _named_golden(client, m, path)
    return rows


async def _named_golden(client, m: _Model, path: str) -> list[dict[str, Any]]:
    names = m.entry["feature_names"]
    worst, ok, versions = 0.0, 0, set()
    for row, expected in zip(m.rows, m.outputs, strict=True):
        features = dict(zip(names, map(float, row), strict=True))
        result = await client.post_json(path, json.dumps({"features": features}).encode())
        if not result.success:
            continue
        body = result.json()
        versions.add(body.get("model_version"))
        if m.name == "quality_predictor":
            got = np.array([body["quality"]], dtype=np.float64)
        else:
            probs = body["probabilities"]
            got = np.array([probs[c] for c in m.entry["class_names"]])
        worst = max(worst, _difference(got, expected))
        ok += 1
    passed = ok == len(m.rows) and worst <= GOLDEN_TOLERANCE and versions == {m.version}
    features = dict(zip(names, map(float, m.rows[0]), strict=True))
    first = next(iter(features))
    features[first] = "abc"
    bad = await client.post_json(path, json.dumps({"features": features}).encode())
    return [
        check_row(
            "golden_requests_named",
            m.name,
            passed,
            worst,
            "max abs diff",
            GOLDEN_TOLERANCE,
            f"{ok}/{len(m.rows)} answered on {path}; versions {sorted(map(str, versions))}"
            f" (expected {m.version})",
            fmt=m.format,
            samples=len(m.rows),
        ),
        check_row(
            "invalid_body_422",
            m.name,
            bad.status == 422 and first in bad.body.decode(),
            bad.status,
            "status",
            422,
            bad.body.decode()[:160],
            fmt=m.format,
        ),
    ]


# ----------------------------------------------------------------------------- the service
async def _service_checks(client, models: dict[str, _Model], limit: int) -> list:
    """Errors every client can meet (413, 404), /metrics, liveness and the v2 health."""
    rows = []
    if models:
        first = next(iter(models.values()))
        big = await client.post_json(first.infer_path, b"[" + b"1," * (limit // 2 + 512) + b"1]")
        rows.append(
            check_row(
                "oversized_body_413",
                "all",
                big.status == 413,
                big.status,
                "status",
                413,
                big.body.decode()[:160],
            )
        )
    unknown = await client.post_json("/v2/models/relcert-no-such-model/infer", b"{}")
    rows.append(
        check_row(
            "unknown_model_404",
            "all",
            unknown.status == 404 and b'"error"' in unknown.body,
            unknown.status,
            "status",
            404,
            unknown.body.decode()[:160],
        )
    )
    metrics = await client.get("/metrics")
    text = metrics.body.decode(errors="replace")
    has = "relcert_requests_total" in text and "relcert_http_requests_total" in text
    rows.append(
        check_row(
            "metrics",
            "all",
            metrics.status == 200 and has,
            metrics.status,
            "status",
            200,
            "Prometheus exposition with engine and HTTP counters" if has else text[:160],
        )
    )
    live = await client.get("/health/live")
    rows.append(check_row("liveness", "all", live.status == 200, live.status, "status", 200, ""))
    answers = [await client.get(p) for p in ("/v2/health/live", "/v2/health/ready")]
    worst = max(a.status for a in answers)
    rows.append(
        check_row(
            "health_v2",
            "all",
            all(a.status == 200 for a in answers),
            worst,
            "status",
            200,
            "GET /v2/health/live and /v2/health/ready: "
            + ", ".join(str(a.status) for a in answers),
        )
    )
    return rows


# ----------------------------------------------------------------------------- load
@dataclass(frozen=True)
class _Endpoint:
    """One endpoint the load goes to: a model's /v2 endpoint or an example model's named one,
    with a request per golden row as a client sends it (body, content type, headers)."""

    model: str
    path: str
    sla: str  # the interface target it is certified against
    requests: tuple[tuple[bytes, str, tuple], ...]


def _load_endpoints(models: dict[str, _Model]) -> list[_Endpoint]:
    """Every model's /v2 endpoint (binary tensor data, as a standard client sends it) and
    the named endpoint of each example model (its JSON body)."""
    from pipeline.serve.tensors import encode_infer_request

    endpoints = []
    for name in sorted(models):
        m = models[name]
        v2 = []
        for row in m.rows:
            if m.signature is not None:
                body, size = named_body(row, binary=True)
            else:
                body, size = encode_infer_request(
                    m.input_name, row[None], binary_input=True, binary_output=True
                )
            v2.append((body, "application/octet-stream", ((_HEADER, str(size)),)))
        endpoints.append(_Endpoint(name, m.infer_path, V2_SLA, tuple(v2)))
        path = ENDPOINTS.get(name)
        if path is not None:
            names = m.entry["feature_names"]
            named = tuple(
                (
                    json.dumps(
                        {"features": dict(zip(names, map(float, row), strict=True))}
                    ).encode(),
                    "application/json",
                    (),
                )
                for row in m.rows
            )
            endpoints.append(_Endpoint(name, path, NAMED_SLAS[name], named))
    return endpoints


def _model_share(record, m: int, k: int, errors: dict[str, int]):
    """The part of an open-loop record that went to endpoint `m` of `k` (round robin)."""
    from pipeline.loadgen.issue import OpenLoopRecord

    return OpenLoopRecord(
        rate_rps=record.rate_rps / k,
        duration_s=record.duration_s,
        warmup_s=record.warmup_s,
        scheduled=record.scheduled[m::k],
        issued=record.issued[m::k],
        completed=record.completed[m::k],
        success=record.success[m::k],
        batch_size=record.batch_size[m::k],
        cache_hit=record.cache_hit[m::k],
        errors=errors,
        wall_s=record.wall_s,
        process_cpu_s=record.process_cpu_s,
    )


def _load_row(model: str, endpoint: str, rate: float, s) -> dict[str, Any]:
    return {
        "model": model,
        "endpoint": endpoint,
        "offered_rps": rate,
        "model_offered_rps": s.offered_rps,
        "achieved_rps": s.achieved_rps,
        "requests": s.scheduled,
        "succeeded": s.succeeded,
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "error_rate": s.error_rate,
        "issue_delay_p99_ms": s.issue_delay_p99_ms,
        "valid": s.valid,
        "invalid_reason": "; ".join(s.invalid_reasons),
        "errors": json.dumps(s.errors),
    }


def _kept_up(summary) -> bool:
    """The generator kept up (its issue delay and issue count were fine), whatever the
    sample count: the per-endpoint p99 claims check their own sample counts."""
    return not [r for r in summary.invalid_reasons if " samples; " not in r]


async def _load(client, models, cfg, targets, claim, say) -> tuple[list, list, list]:
    """Open-loop HTTP load over every endpoint (round robin): a row for the mix and one per
    endpoint at each offered rate; the mix is checked against the run's targets. Also
    returns each endpoint's trials (rate, p99, samples, generator kept up) for the
    interface SLAs."""
    endpoints = _load_endpoints(models)
    if not endpoints:
        return [], [], []
    k = len(endpoints)
    p99_bound = targets["p99_latency_ms"].threshold
    rows, checks = [], []
    trials: list[dict[str, Any]] = []
    for rate in cfg.rates:
        errors: list[dict[str, int]] = [{} for _ in endpoints]

        def tally(m: int, future: asyncio.Future, errors=errors) -> None:
            result = future.result()
            if not result.success:
                key = result.error or f"HTTP {result.status}"
                errors[m][key] = errors[m].get(key, 0) + 1

        def send(i: int):
            m = i % k
            body, kind, headers = endpoints[m].requests[(i // k) % len(endpoints[m].requests)]
            future = client.request("POST", endpoints[m].path, body, kind, headers)
            future.add_done_callback(lambda f, m=m: tally(m, f))
            return future

        record = await run_open_loop(
            send, float(rate), cfg.duration_s, warmup_s=cfg.warmup_s, seed=int(rate)
        )
        mix = summarize(record, percentile=claim, max_issue_delay_ms=10.0)
        rows.append(_load_row("mixed", "all", rate, mix))
        kept_up = _kept_up(mix)  # one generator for every endpoint of the trial
        per_endpoint = []
        for m, ep in enumerate(endpoints):
            share = summarize(
                _model_share(record, m, k, errors[m]), percentile=claim, max_issue_delay_ms=10.0
            )
            rows.append(_load_row(ep.model, ep.path, rate, share))
            per_endpoint.append(f"{ep.path} {share.p99_ms:.2f} ms ({share.error_rate:.1%} errors)")
            trials.append(
                {
                    "model": ep.model,
                    "endpoint": ep.path,
                    "sla": ep.sla,
                    "offered_rps": float(rate),
                    "p99_ms": share.p99_ms,
                    "samples": share.scheduled,
                    "answered": share.measured,
                    "kept_up": kept_up,
                }
            )
        ok = (
            mix.valid
            and mix.error_rate <= targets["error_rate"].threshold
            and mix.p99_ms <= p99_bound
        )
        checks.append(
            check_row(
                f"http_load_{rate}rps",
                "mixed",
                ok,
                mix.p99_ms,
                "p99 ms",
                p99_bound,
                f"{mix.scheduled} requests over {k} endpoint(s) of {len(models)} model(s): p50 "
                f"{mix.p50_ms:.2f} ms, errors {mix.error_rate:.2%}, issue delay p99 "
                f"{mix.issue_delay_p99_ms:.2f} ms; p99 per endpoint: {', '.join(per_endpoint)}"
                + ("" if mix.valid else f"; INVALID: {'; '.join(mix.invalid_reasons)}"),
                samples=mix.scheduled,
            )
        )
        say(
            f"infra: HTTP open loop {rate} req/s over {k} endpoints: p50 {mix.p50_ms:.2f} ms, "
            f"p99 {mix.p99_ms:.2f} ms, errors {mix.error_rate:.2%}"
        )
    return rows, checks, trials
