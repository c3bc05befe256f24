"""A bounded LRU cache of inference results keyed on (model, generation, input bytes).

The generation changes on every reload, so a reloaded model never serves a stale result;
the reload also purges the old generation's entries so they do not hold memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin

__all__ = ["CacheStats", "ResultCache"]


@dataclass(frozen=True)
class CacheStats(RecordMixin):
    entries: int
    max_entries: int
    hits: int
    misses: int
    hit_rate: float
    evictions: int
    invalidations: int


def _frozen(value: Any) -> Any:
    """A read-only copy of a result: an array, or a tuple of arrays (one per output of a
    model of named tensors)."""
    if isinstance(value, tuple):
        return tuple(_frozen(v) for v in value)
    copy = np.array(value, copy=True)
    copy.setflags(write=False)
    return copy


def _nbytes(value: Any) -> int:
    return sum(v.nbytes for v in value) if isinstance(value, tuple) else value.nbytes


class ResultCache:
    """LRU over at most `max_entries` results (an array, or a tuple of arrays: one per
    output); hit rate counted over every lookup."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._invalidations = 0
        self._lock = threading.Lock()

    @staticmethod
    def make_key(model_key: str, generation: int, x: np.ndarray) -> tuple:
        return (model_key, generation, x.shape, x.tobytes())

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        self.put_many(((key, value),))

    def put_many(self, items: Iterable[tuple[tuple, np.ndarray]]) -> None:
        """`put` for several (key, value) pairs under one lock (the engine's per-batch call)."""
        stored = []
        for key, value in items:
            stored.append((key, _frozen(value)))
        entries = self._entries
        with self._lock:
            for key, copy in stored:
                entries[key] = copy
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
                self._evictions += 1

    def invalidate(self, model_key: str | None = None) -> int:
        """Drop every entry (or those of one model); returns how many were dropped."""
        with self._lock:
            if model_key is None:
                dropped = len(self._entries)
                self._entries.clear()
            else:
                stale = [k for k in self._entries if k[0] == model_key]
                for k in stale:
                    del self._entries[k]
                dropped = len(stale)
            self._invalidations += dropped
            return dropped

    def clear(self) -> None:
        self.invalidate(None)

    def memory_bytes(self) -> int:
        """Bytes held by cached outputs and their input keys (container overhead excluded)."""
        with self._lock:
            return sum(len(k[-1]) + _nbytes(v) for k, v in self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def get_stats(self) -> CacheStats:
        total = self._hits + self._misses
        return CacheStats(
            entries=len(self._entries),
            max_entries=self.max_entries,
            hits=self._hits,
            misses=self._misses,
            hit_rate=self._hits / total if total else 0.0,
            evictions=self._evictions,
            invalidations=self._invalidations,
        )

    def stats_dict(self) -> dict[str, Any]:
        return self.get_stats().to_dict()
