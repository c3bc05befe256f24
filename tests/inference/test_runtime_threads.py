"""TorchScript's intra-op thread setting holds on the thread that runs inference (issue 17.5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter, as a service process: the event loop thread has already used torch's
# thread pool, the model is loaded in an executor thread, and inference runs on the loop.
_SCENARIO = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    import torch
    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager

    before = torch.get_num_threads()  # the loop thread's own setting is initialised here
    manager = ProductionModelManager(sys.argv[1])
    key = "quality_predictor_torchscript"

    async def main():
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, manager.load_model, key)
        engine = ProductionInferenceEngine(manager)
        result = await engine.predict(key, np.full(10, 0.5, dtype=np.float32))
        assert result.success, result.error
        # the runtime ran on this thread: what it set here is what inference used
        return torch.get_num_threads()

    print(json.dumps({"before": before, "inference": asyncio.run(main())}))
    """
)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: torch defaults to one thread")
def test_inference_thread_uses_one_intra_op_thread_when_loaded_elsewhere(
    built_models: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    completed = subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(built_models)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])
    assert seen["before"] >= 2  # torch's default on this machine: the setting matters
    assert seen["inference"] == 1
