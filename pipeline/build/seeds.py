"""Seeds derived from a model name and a snapshot date: the build for date D is a function of D."""

from __future__ import annotations

import datetime as _dt
import hashlib

import numpy as np

__all__ = ["STREAM_DATA", "STREAM_INIT", "STREAM_PROBE", "model_seed", "stream_rng", "sub_seed"]

# Independent random streams derived from one model seed.
STREAM_DATA = 0  # training + holdout data
STREAM_INIT = 1  # weight initialisation and shuffling
STREAM_PROBE = 2  # parity probe set


def model_seed(name: str, snapshot_date: _dt.date) -> int:
    """32-bit seed: the first 4 bytes (big-endian) of ``sha256(f"{name}:{date.isoformat()}")``.

    32 bits keep the seed exact in every JSON reader (JavaScript numbers hold 53 bits).
    """
    digest = hashlib.sha256(f"{name}:{snapshot_date.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _sequence(seed: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=(stream,))


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """A numpy Generator for one stream of ``seed``."""
    return np.random.default_rng(_sequence(seed, stream))


def sub_seed(seed: int, stream: int) -> int:
    """A 63-bit integer seed for one stream of ``seed`` (for torch generators)."""
    state = _sequence(seed, stream).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)
