"""The TorchScript runtime: its intra-op thread setting holds on the thread that runs
inference (issue 17.5), and a scripted model's own hooks are kept."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inference.runtimes import TorchScriptRuntime

pytestmark = pytest.mark.unit

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


# ---------------------------------------------------------------------------------------
# A model someone else scripted may carry forward hooks on its top module. TorchScript runs
# them only through module(...), and freezing for inference drops them, so the runtime must
# serve such a model as scripted: its answers are the module's own, hooks included.
class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _shift(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor):
    return output * 2.0 + 100.0


def _scripted_bytes(hooked: bool) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(0)
    module = _Scaled().eval()
    if hooked:
        module.register_forward_hook(_shift)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue(), module


@pytest.mark.parametrize("hooked", [True, False])
def test_torchscript_runtime_answers_as_the_scripted_module_does(hooked: bool) -> None:
    data, module = _scripted_bytes(hooked)
    runtime = TorchScriptRuntime(data, label="hooked.pt")
    batch = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()  # eager, hook applied if any
    np.testing.assert_allclose(runtime.run(batch), expected, rtol=1e-5, atol=1e-5)
    assert runtime.has_hooks is hooked
    if hooked:  # the hook's shift is in the answer, not dropped by optimisation
        assert np.all(runtime.run(batch) > 90.0)
