"""Infra stage: the HTTP service that will be deployed, validated for real on loopback.

Starts `python -m pipeline.serve` as a subprocess from the run's built models on a free
loopback port, waits (bounded) for readiness, checks golden requests against the
in-process engine's outputs, checks error handling (422, 413), scrapes /metrics, runs
open-loop HTTP load with the load stage's methodology (Poisson arrivals, latency from the
scheduled time, issue delay recorded), samples the server process's RSS and CPU, and always
stops the server, even when a check fails. Writes `stages/infra/checks.csv` (gated),
`stages/infra/load.csv`, `stages/infra/resources.csv` and `summary.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import atomic_write_text
from pipeline._proc import stop_process_group
from pipeline.loadgen import run_open_loop, summarize
from pipeline.stages.common import StageError, check_row, input_pool
from pipeline.stages.context import StageContext
from pipeline.stages.engine_host import ResourceSampler

__all__ = ["ServerProcess", "run"]

ENDPOINTS = {
    "quality_predictor": "/api/v1/predict/quality",
    "routing_classifier": "/api/v1/predict/routing",
}
READY_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """The service as a subprocess on a loopback port; `stop()` always ends it."""

    def __init__(
        self, model_dir: Path, env: dict[str, str] | None = None, hide: Path | None = None
    ) -> None:
        self.model_dir = model_dir
        self.hide = hide  # a folder (the run's) whose absolute path the log shows as <run>
        self.port = _free_port()
        self.env = {**os.environ, "MODEL_FORMAT": "onnx", **(env or {})}
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
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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


async def _run(ctx: StageContext) -> dict:
    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager
    from pipeline.serve.client import HttpLoadClient

    run, profile, targets, say = ctx.run, ctx.profile, ctx.targets, ctx.say
    cfg = profile.infra
    info = run.model_info()
    served = {
        n: e for n, e in sorted(info.items()) if n in ENDPOINTS and "onnx" in (e.get("files") or {})
    }
    folder = ctx.folder
    rows: list[dict[str, Any]] = []
    load_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    if not served:
        rows.append(
            check_row(
                "service",
                "all",
                False,
                detail="no model of this run has an HTTP "
                "endpoint (quality_predictor / routing_classifier in ONNX)",
            )
        )
        ctx.write_table("checks", rows)
        return ctx.write_summary({"checks": len(rows), "failed": ["service:all"]})

    # golden inputs and the in-process engine's outputs for them
    manager = ProductionModelManager(run.models)
    engine = ProductionInferenceEngine(manager)
    golden: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for name, entry in served.items():
        if not manager.load_model(f"{name}_onnx"):
            rows.append(
                check_row(
                    "golden_reference",
                    name,
                    False,
                    detail=manager.load_errors.get(f"{name}_onnx", "does not load"),
                )
            )
            continue
        xs = input_pool(run, info, name, 8, seed=profile.seeds.infra)
        outs = [r.output for r in await engine.predict_batch(f"{name}_onnx", xs)]
        golden[name] = [
            (dict(zip(entry["feature_names"], map(float, x), strict=True)), o)
            for x, o in zip(xs, outs, strict=True)
        ]

    server = ServerProcess(run.models, hide=run.root).start(folder / "server.log")
    sampler = ResourceSampler(server.pid, interval_s=0.5)
    client = HttpLoadClient("127.0.0.1", server.port, connections=16)
    say(f"infra: service pid {server.pid} on 127.0.0.1:{server.port}")
    try:
        sampler.start()
        await _connect(client, server)
        ready, ready_s, detail = await _wait_ready(client, server, READY_TIMEOUT_S)
        rows.append(check_row("readiness", "all", ready, ready_s, "s", READY_TIMEOUT_S, detail))
        say(f"infra: ready={ready} after {ready_s:.1f} s")
        if ready:
            rows += await _functional_checks(client, served, golden)
            claim = min(95.0, max(profile.percentiles_claimed))
            load_rows, load_checks = await _load(client, served, golden, cfg, targets, claim, say)
            rows += load_checks
        sampler.sample()
    finally:
        await sampler.stop()
        await client.close()
        code = server.stop()
    rows.append(
        check_row(
            "clean_shutdown",
            "all",
            code in (0, -signal.SIGTERM),
            code if code is not None else float("nan"),
            "exit code",
            0,
            "SIGTERM -> graceful exit"
            if code in (0, -signal.SIGTERM)
            else f"exit {code}: {server.log_tail(5)}",
        )
    )
    peak = sampler.peak_rss_mb()
    mem_target = targets["memory_usage_mb"]
    rows.append(
        check_row(
            "server_memory",
            "all",
            mem_target.passes(peak),
            peak,
            "MB",
            mem_target.threshold,
            "peak RSS of the service process during the stage",
        )
    )
    ctx.write_table("checks", rows)
    ctx.write_table("load", load_rows)
    ctx.write_table(
        "resources", [{"t_s": t, "rss_mb": r, "cpu_percent": c} for t, r, c in sampler.samples]
    )
    failed = [f"{r['check']}:{r['model']}" for r in rows if not r["passed"]]
    summary.update(
        {
            "port": server.port,
            "server_pid": server.pid,
            "checks": len(rows),
            "failed": failed,
            "peak_rss_mb": peak,
            "mean_cpu_percent": sampler.mean_cpu_percent(),
            "load": load_rows,
        }
    )
    summary = ctx.write_summary(summary)
    say(
        f"infra: {len(rows) - len(failed)}/{len(rows)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return summary


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


async def _functional_checks(client, served, golden) -> list[dict[str, Any]]:
    rows = []
    for name in golden:
        path = ENDPOINTS[name]
        worst, ok, versions = 0.0, 0, set()
        for features, expected in golden[name]:
            result = await client.post_json(path, json.dumps({"features": features}).encode())
            if not result.success:
                continue
            body = result.json()
            versions.add(body.get("model_version"))
            if name == "quality_predictor":
                got = np.array([body["quality"]], dtype=np.float64)
            else:
                probs = body["probabilities"]
                got = np.array([probs[c] for c in served[name]["class_names"]])
            worst = max(worst, float(np.abs(got - expected.astype(np.float64)).max()))
            ok += 1
        expected_version = served[name]["version"]
        passed = ok == len(golden[name]) and worst <= 1e-5 and versions == {expected_version}
        rows.append(
            check_row(
                "golden_requests",
                name,
                passed,
                worst,
                "max abs diff",
                1e-5,
                f"{ok}/{len(golden[name])} answered; versions {sorted(map(str, versions))}"
                f" (expected {expected_version})",
            )
        )
        features = dict(golden[name][0][0])
        first = next(iter(features))
        features[first] = "abc"
        bad = await client.post_json(path, json.dumps({"features": features}).encode())
        rows.append(
            check_row(
                "invalid_body_422",
                name,
                bad.status == 422 and first in bad.body.decode(),
                bad.status,
                "status",
                422,
                bad.body.decode()[:160],
            )
        )
    path = ENDPOINTS[next(iter(served))]
    big = await client.post_json(path, b'{"features": [' + b"1," * 40000 + b"1]}")
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
    return rows


async def _load(client, served, golden, cfg, targets, claim, say) -> tuple[list, list]:
    names = sorted(golden)
    bodies = {n: [json.dumps({"features": f}).encode() for f, _ in golden[n]] for n in names}
    paths = [ENDPOINTS[n] for n in names]
    p99_bound = targets["p99_latency_ms"].threshold
    rows, checks = [], []
    for rate in cfg.rates:

        def send(i: int, rate=rate):
            m = i % len(names)
            return client.post_json(paths[m], bodies[names[m]][(i // len(names)) % 8])

        record = await run_open_loop(
            send,
            float(rate),
            cfg.duration_s,
            warmup_s=cfg.warmup_s,
            seed=int(rate),
        )
        s = summarize(record, percentile=claim, max_issue_delay_ms=10.0)
        rows.append(
            {
                "offered_rps": rate,
                "achieved_rps": s.achieved_rps,
                "requests": s.scheduled,
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "p99_ms": s.p99_ms,
                "error_rate": s.error_rate,
                "issue_delay_p99_ms": s.issue_delay_p99_ms,
                "valid": s.valid,
                "invalid_reason": "; ".join(s.invalid_reasons),
                "errors": json.dumps(s.errors),
            }
        )
        ok = s.valid and s.error_rate <= targets["error_rate"].threshold and s.p99_ms <= p99_bound
        checks.append(
            check_row(
                f"http_load_{rate}rps",
                "mixed",
                ok,
                s.p99_ms,
                "p99 ms",
                p99_bound,
                f"{s.scheduled} requests: p50 {s.p50_ms:.2f} ms, errors "
                f"{s.error_rate:.2%}, issue delay p99 {s.issue_delay_p99_ms:.2f} ms"
                + ("" if s.valid else f"; INVALID: {'; '.join(s.invalid_reasons)}"),
            )
        )
        say(
            f"infra: HTTP open loop {rate} req/s: p50 {s.p50_ms:.2f} ms, p99 {s.p99_ms:.2f} ms, "
            f"errors {s.error_rate:.2%}"
        )
    return rows, checks
