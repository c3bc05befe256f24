"""Deterministic CPU training helpers for the example models.

Determinism: one intra-op thread, ``torch.use_deterministic_algorithms(True)``, a seeded
``torch.Generator`` for initialisation and shuffling. The previous global torch settings are
restored afterwards (:func:`deterministic_torch`), so a build does not leak settings into the
process that called it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["TrainReport", "deterministic_torch", "init_module", "train_module"]


@contextlib.contextmanager
def deterministic_torch(threads: int = 1, seed: int | None = None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic algorithms.

    With ``seed``, the global torch RNG is seeded (``torch.manual_seed``) inside a forked RNG
    state, so the caller's global RNG is left as it was.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def init_module(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter of ``module`` from ``seed`` (independent of global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                # PyTorch's default (Kaiming-uniform-like) bounds, drawn from our generator.
                bound = 1.0 / float(np.sqrt(sub.in_features))
                sub.weight.uniform_(-bound, bound, generator=gen)
                if sub.bias is not None:
                    sub.bias.uniform_(-bound, bound, generator=gen)
    return module


@dataclass(frozen=True)
class TrainReport:
    epochs: int
    steps: int
    batch_size: int
    learning_rate: float
    final_loss: float
    seconds: float

    def as_record(self) -> dict[str, object]:
        """The deterministic part (no timing), for ``model_info.json``."""
        return {
            "optimizer": "adam",
            "schedule": "cosine",
            "epochs": self.epochs,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "final_loss": round(self.final_loss, 8),
        }


def train_module(
    forward: Callable[[torch.Tensor], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
) -> TrainReport:
    """Mini-batch Adam with a cosine learning-rate schedule; call inside deterministic_torch.

    ``forward`` maps a batch to what ``loss_fn(prediction, target)`` expects (e.g. logits).
    """
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    n = xt.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * idx.shape[0]
        last = running / n
    return TrainReport(
        epochs=epochs,
        steps=total_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        final_loss=last,
        seconds=time.perf_counter() - start,
    )
