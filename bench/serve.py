"""Benchmark: relcert's HTTP service against LitServe 0.2.19 serving the same model.

Measured in one run on this machine, each server in its own process on a free loopback
port, both with one worker, driven by the same open-loop Poisson generator
(`pipeline.serve.client.HttpLoadClient` + `pipeline.loadgen.run_open_loop`; latency from the
scheduled send time) running in a separate process, on the TorchScript quality predictor:

- ours:      `python -m pipeline.serve` with MODEL_FORMAT=torchscript (greedy batching,
             MAX_BATCH_SIZE=32, result cache off: every request runs the model);
- litserve:  a LitAPI written here (decode 10 features, batch up to 32 with a 1 ms batch
             timeout, `torch.jit.load`, `torch.inference_mode`), `LitServer` on CPU with one
             inference worker and one API server.

For each: the highest sustained rate with p99 <= 20 ms and no errors (doubling from 500
req/s, then bisection, a failed trial confirmed once), the generator's own CPU share
(process time / wall) and issue delay. Then the service's RSS with TorchScript and with
ONNX. The ratio is printed on the last line.

LitServe lives in its own virtualenv (it pins its own FastAPI); point
RELCERT_LITSERVE_PYTHON at its python:

    .venv/bin/python -m venv /tmp/ls-venv
    /tmp/ls-venv/bin/pip install litserve==0.2.19 torch==2.13.0
    RELCERT_LITSERVE_PYTHON=/tmp/ls-venv/bin/python .venv/bin/python bench/serve.py [--quick]

Without it, ours is still measured and LitServe is reported as skipped, with the reason.
This file's top level imports only the standard library: LitServe's python runs it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-01-15"
P99_BOUND_MS = 20.0
PATH = "/api/v1/predict/quality"
LITSERVE_VERSION = "0.2.19"
MAX_BATCH_SIZE = 32
LITSERVE_BATCH_TIMEOUT_S = 0.001
READY_TIMEOUT_S = 120.0

SETUP_HELP = f"""\
  To include LitServe {LITSERVE_VERSION}, create its own virtualenv and point
  RELCERT_LITSERVE_PYTHON at its python:
    .venv/bin/python -m venv /tmp/ls-venv
    /tmp/ls-venv/bin/pip install litserve=={LITSERVE_VERSION} torch==2.13.0
    RELCERT_LITSERVE_PYTHON=/tmp/ls-venv/bin/python .venv/bin/python bench/serve.py"""


# --------------------------------------------------------------------------- LitServe side
try:  # only LitServe's python has it; LitServe spawns its workers, so the API class must
    import litserve as _litserve  # be importable from this module's top level (picklable)
except ImportError:
    _litserve = None

if _litserve is not None:

    class QualityLitAPI(_litserve.LitAPI):
        """The quality model on LitServe: decode 10 features, batch, TorchScript, encode."""

        def __init__(self, model_path: str, feature_names: list[str], **kwargs) -> None:
            super().__init__(**kwargs)
            self.model_path = model_path
            self.names = feature_names

        def setup(self, device: str) -> None:
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.model = torch.jit.load(self.model_path, map_location="cpu").eval()

        def decode_request(self, request: dict) -> list[float]:
            features = request["features"]
            if isinstance(features, dict):
                return [float(features[name]) for name in self.names]
            return [float(v) for v in features]

        def batch(self, inputs: list[list[float]]):
            return self.torch.tensor(inputs, dtype=self.torch.float32)

        def predict(self, x):
            with self.torch.inference_mode():
                return self.model(x)

        def unbatch(self, output) -> list[float]:
            return output[:, 0].tolist()

        def encode_response(self, output: float) -> dict:
            return {"quality": output, "model": "quality_predictor"}


def litserve_worker(model_path: str, feature_names: list[str], port: int) -> None:
    """Serve the TorchScript quality model with LitServe (runs under LitServe's python)."""
    if _litserve is None:
        raise SystemExit("litserve is not importable by this python")
    api = QualityLitAPI(
        model_path,
        feature_names,
        max_batch_size=MAX_BATCH_SIZE,
        batch_timeout=LITSERVE_BATCH_TIMEOUT_S,
        api_path=PATH,
    )
    server = _litserve.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


# --------------------------------------------------------------------------- generator side
def generator_worker(port: int, feature_names: list[str], quick: bool) -> dict:
    """Find the highest sustained rate of the server on `port` (runs in its own process)."""
    import asyncio
    import gc

    import numpy as np
    import uvloop

    from pipeline.loadgen import find_max_sustained_rate, run_open_loop, summarize
    from pipeline.serve.client import HttpLoadClient

    rng = np.random.default_rng(7)
    rows = rng.random((4096, len(feature_names)))
    bodies = [
        json.dumps({"features": dict(zip(feature_names, row.tolist(), strict=True))}).encode()
        for row in rows
    ]
    duration, warmup = (2.0, 0.4) if quick else (4.0, 0.5)
    gc.collect()
    gc.freeze()
    cpu_share: dict[float, float] = {}

    async def main() -> dict:
        client = HttpLoadClient("127.0.0.1", port, connections=128, max_pipeline=8)
        await client.start()
        post = client.post_json

        def send(i: int):
            return post(PATH, bodies[i & 4095])

        async def trial(rate: float):
            record = await run_open_loop(
                send, rate, duration, warmup_s=warmup, seed=int(rate), drain_timeout_s=5.0
            )
            cpu_share[rate] = record.process_cpu_s / record.wall_s
            await asyncio.sleep(0.3)  # let the server settle between trials
            return summarize(record, percentile=99)

        try:
            await trial(200.0)  # warm-up: connections, server caches, first batches
            capacity = await find_max_sustained_rate(
                trial,
                p99_bound_ms=P99_BOUND_MS,
                start_rps=500.0,
                max_rps=64_000.0,
                refine_steps=3 if quick else 4,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        finally:
            await client.close()
        best = capacity.best
        highest = max(capacity.trials, key=lambda t: t.offered_rps)
        return {
            "max_sustained_rps": capacity.max_sustained_rps,
            "capped": capacity.capped,
            "best": best.to_dict() if best else None,
            "generator_cpu_share_at_best": cpu_share.get(best.offered_rps) if best else None,
            "generator_cpu_share_at_highest": cpu_share.get(highest.offered_rps),
            "highest_offered_rps": highest.offered_rps,
            "trials": capacity.trial_table(),
        }

    return uvloop.run(main())


def fixed_rate_worker(port: int, feature_names: list[str], rate: float, seconds: float) -> dict:
    """Drive the server at a fixed rate (for the RSS measurement under load)."""
    import asyncio

    import numpy as np
    import uvloop

    from pipeline.loadgen import run_open_loop, summarize
    from pipeline.serve.client import HttpLoadClient

    rows = np.random.default_rng(3).random((1024, len(feature_names)))
    bodies = [json.dumps({"features": row.tolist()}).encode() for row in rows]

    async def main() -> dict:
        async with HttpLoadClient("127.0.0.1", port, connections=64) as client:
            record = await run_open_loop(
                lambda i: client.post_json(PATH, bodies[i & 1023]), rate, seconds, warmup_s=0.5
            )
            await asyncio.sleep(0)
        return summarize(record).to_dict()

    return uvloop.run(main())


# --------------------------------------------------------------------------- orchestration
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


class ServerProcess:
    """A server in its own process group (LitServe forks workers), always stopped."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, env: dict) -> None:
        self.name = name
        self.port = port
        self.health = f"http://127.0.0.1:{port}{health}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            if _get(self.health) == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {READY_TIMEOUT_S:g} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the server process itself, in MB."""
        import psutil

        rss = psutil.Process(self.proc.pid).memory_info().rss / 2**20
        peak = rss
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
        return rss, peak

    def _tree(self) -> list:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def tree_rss_mb(self) -> float:
        """RSS of the server and every process it started (LitServe's workers), in MB."""
        import psutil

        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss / 2**20
        return total

    def tree_cpu_s(self) -> float:
        import psutil

        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group (LitServe's)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _spawn_json(args: list[str], timeout: float = 1800) -> dict:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args[:2])} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours(model_dir: Path, fmt: str, port: int) -> ServerProcess:
    env = {
        **os.environ,
        "MODEL_FORMAT": fmt,
        "MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "BATCH_TIMEOUT_MS": "0",
        "CACHE_ENTRIES": "0",
    }
    cmd = [sys.executable, "-m", "pipeline.serve", "--model-dir", str(model_dir)]
    cmd += ["--port", str(port), "--format", fmt, "--log-level", "warning"]
    return ServerProcess(f"ours-{fmt}", cmd, port, "/health/ready", env)


def _litserve_python() -> tuple[str | None, str]:
    """(python path, why not) for LitServe."""
    python = os.environ.get("RELCERT_LITSERVE_PYTHON")
    if not python:
        return None, "RELCERT_LITSERVE_PYTHON is not set"
    if not Path(python).exists():
        return None, f"RELCERT_LITSERVE_PYTHON={python} does not exist"
    probe = subprocess.run(
        [python, "-c", "import litserve, torch; print(litserve.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{python} cannot import litserve and torch: {last}"
    version = probe.stdout.strip().splitlines()[-1]
    if version != LITSERVE_VERSION:
        return None, f"{python} has litserve {version}, this benchmark needs {LITSERVE_VERSION}"
    return python, ""


def _measure_capacity(server: ServerProcess, names: list[str], quick: bool) -> dict:
    print(f"measuring {server.name} ...", flush=True)
    ready_s = server.wait_ready()
    args = ["--worker", "gen", "--port", str(server.port), "--features", json.dumps(names)]
    started = time.monotonic()
    busy, served, generated = _busy_cpu_s(), server.tree_cpu_s(), _children_cpu_s()
    result = _spawn_json(args + (["--quick"] if quick else []))
    wall = time.monotonic() - started
    served = server.tree_cpu_s() - served
    generated = _children_cpu_s() - generated
    # whatever else ran on the machine meanwhile (other users' jobs): context for the figures
    result["other_cpu_cores"] = max(0.0, _busy_cpu_s() - busy - served - generated) / wall
    result["server_cpu_cores"] = served / wall
    result["ready_s"] = ready_s
    result["rss_mb"], result["peak_rss_mb"] = server.rss_mb()
    result["tree_rss_mb"] = server.tree_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="models built by `relcert build`")
    parser.add_argument("--quick", action="store_true", help="shorter trials (less precise)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=1000.0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "litserve":
        litserve_worker(args.model, json.loads(args.features), args.port)
        return
    if args.worker == "gen":
        print(json.dumps(generator_worker(args.port, json.loads(args.features), args.quick)))
        return
    if args.worker == "fixed":
        result = fixed_rate_worker(args.port, json.loads(args.features), args.rate, 3.0)
        print(json.dumps(result))
        return

    ls_python, ls_reason = _litserve_python()
    if ls_python is None:
        print(f"LitServe will be skipped: {ls_reason}.\n{SETUP_HELP}", flush=True)
    results: dict = {"p99_bound_ms": P99_BOUND_MS, "litserve_skipped": ls_reason or None}
    with tempfile.TemporaryDirectory(prefix="relcert-bench-serve-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            print(f"building the example models for {SNAPSHOT} ...", flush=True)
            model_dir = Path(tmp) / "models"
            build = ["build", "--out", str(model_dir), "--date", SNAPSHOT]
            subprocess.run(
                [sys.executable, "-m", "pipeline.cli", *build],
                cwd=REPO,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        info = json.loads((model_dir / "model_info.json").read_text())
        names = info["quality_predictor"]["feature_names"]

        server = _ours(model_dir, "torchscript", _free_port())
        try:
            results["ours"] = _measure_capacity(server, names, args.quick)
        finally:
            server.stop()

        if ls_python is not None:
            port = _free_port()
            cmd = [ls_python, __file__, "--worker", "litserve", "--port", str(port)]
            cmd += ["--model", str(model_dir / "quality_predictor.pt")]
            cmd += ["--features", json.dumps(names)]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            server = ServerProcess("litserve", cmd, port, "/health", env)
            try:
                results["litserve"] = _measure_capacity(server, names, args.quick)
            finally:
                server.stop()

        rss = {}
        for fmt in ("torchscript", "onnx"):
            server = _ours(model_dir, fmt, _free_port())
            try:
                server.wait_ready()
                port_args = ["--port", str(server.port), "--features", json.dumps(names)]
                load = _spawn_json(["--worker", "fixed", *port_args, "--rate", "1000"])
                current, peak = server.rss_mb()
                rss[fmt] = {"rss_mb": current, "peak_rss_mb": peak, "at_1000_rps": load}
            finally:
                server.stop()
        results["rss"] = rss

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    _report(results)


def _report(results: dict) -> None:
    print()
    print(
        f"{'server':22s} {'max rps (p99<=20ms)':>20s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'gen CPU':>8s} {'issue p99 ms':>13s} {'RSS MB':>8s} {'other CPU':>10s}"
    )
    for key, label in (("ours", "ours (TorchScript)"), ("litserve", "LitServe 0.2.19")):
        r = results.get(key)
        if r is None:
            print(f"{label:22s} skipped: {results['litserve_skipped']}")
            continue
        best = r["best"] or {}
        cpu = r["generator_cpu_share_at_best"]
        rss = r["tree_rss_mb"]
        print(
            f"{label:22s} {r['max_sustained_rps']:20.0f} {best.get('p50_ms', float('nan')):8.2f} "
            f"{best.get('p99_ms', float('nan')):8.2f} "
            f"{(cpu if cpu is not None else float('nan')):8.2f} "
            f"{best.get('issue_delay_p99_ms', float('nan')):13.2f} {rss:8.0f}"
            f" {r['other_cpu_cores']:10.2f}"
        )
    print(
        "  gen CPU: the generator process's CPU time / wall at that rate (it includes the busy "
        "wait between sends: asyncio timers have 1 ms resolution); other CPU: cores busy with "
        "other processes on this shared machine during the search; RSS: the server's process "
        "tree after the search"
    )
    ours = results["ours"]
    nan = float("nan")
    at_best = ours["generator_cpu_share_at_best"]
    print(
        f"generator (its own process): CPU share {nan if at_best is None else at_best:.2f} of one"
        f" core at ours' best rate, {ours['generator_cpu_share_at_highest']:.2f} at the highest "
        f"offered ({ours['highest_offered_rps']:.0f} req/s); issue delay p99 "
        f"{(ours['best'] or {}).get('issue_delay_p99_ms', nan):.2f} ms at ours' best"
    )
    rss = results["rss"]
    print(
        f"service RSS after 3 s at 1000 req/s: TorchScript {rss['torchscript']['rss_mb']:.0f} MB "
        f"(peak {rss['torchscript']['peak_rss_mb']:.0f}), ONNX {rss['onnx']['rss_mb']:.0f} MB "
        f"(peak {rss['onnx']['peak_rss_mb']:.0f}) (goal <= 500)"
    )
    lit = results.get("litserve")
    print()
    if lit is None or not lit["max_sustained_rps"]:
        why = results["litserve_skipped"] or "LitServe sustained no rate"
        print(f"ours = {ours['max_sustained_rps']:.0f} req/s; LitServe skipped: {why}")
        print("RATIO ours/litserve = n/a (goal >= 5)")
        return
    print(
        f"ours {ours['max_sustained_rps']:.0f} req/s vs LitServe {lit['max_sustained_rps']:.0f} "
        f"req/s at p99 <= {results['p99_bound_ms']:g} ms, no errors, one worker each"
    )
    ratio = ours["max_sustained_rps"] / lit["max_sustained_rps"]
    print(f"RATIO ours/litserve = {ratio:.2f} (goal >= 5)")


if __name__ == "__main__":
    main()
