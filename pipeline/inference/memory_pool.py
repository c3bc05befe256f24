"""A pool of reusable batch buffers with a hard size limit.

Buffers are numpy arrays (a torch tensor made with `torch.from_numpy` shares their memory,
so TorchScript runs on them without a copy). Every statistic is counted from real
allocations: a *hit* reuses a free buffer, a *miss* allocates a new one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin
from pipeline.inference.errors import PoolExhaustedError

__all__ = ["MemoryPoolManager", "MemoryStats"]

_MB = 2**20


@dataclass(frozen=True)
class MemoryStats(RecordMixin):
    current_pool_size_mb: float
    in_use_mb: float
    peak_pool_size_mb: float
    max_pool_size_mb: float
    pool_utilization: float
    reuse_ratio: float
    cache_hits: int
    cache_misses: int
    allocations: int
    releases: int
    evictions: int
    exhausted: int
    free_buffers: int
    buffers_in_use: int


def _pointer(buffer: Any) -> int:
    if isinstance(buffer, np.ndarray):
        base = buffer
        while isinstance(base.base, np.ndarray):
            base = base.base
        return int(base.__array_interface__["data"][0])
    data_ptr = getattr(buffer, "data_ptr", None)  # a torch tensor made from a pool buffer
    if data_ptr is not None:
        return int(data_ptr())
    raise TypeError(f"release_tensor expects a numpy array or torch tensor, got {type(buffer)}")


class MemoryPoolManager:
    """Reusable buffers keyed by (shape, dtype); never holds more than `max_pool_size_mb`."""

    def __init__(self, max_pool_size_mb: float = 400.0) -> None:
        if max_pool_size_mb <= 0:
            raise ValueError(f"max_pool_size_mb must be positive, got {max_pool_size_mb}")
        self.max_pool_size_mb = float(max_pool_size_mb)
        self._limit = int(max_pool_size_mb * _MB)
        self._free: OrderedDict[int, tuple[tuple, np.ndarray]] = OrderedDict()  # LRU order
        self._free_by_key: dict[tuple, list[int]] = {}
        self._in_use: dict[int, tuple[tuple, np.ndarray]] = {}
        self._ptr_by_id: dict[int, int] = {}  # id(buffer) -> its address, while pooled
        self._bytes = 0
        self._in_use_bytes = 0
        self._peak = 0
        self._hits = 0
        self._misses = 0
        self._releases = 0
        self._evictions = 0
        self._exhausted = 0
        self._lock = threading.Lock()

    def allocate_tensor(
        self, shape: tuple[int, ...] | list[int], dtype: Any = np.float32, *, as_torch: bool = False
    ) -> Any:
        """A buffer of `shape` (contents undefined). Raises PoolExhaustedError past the limit."""
        key = (tuple(map(int, shape)), np.dtype(dtype).str)
        with self._lock:
            ptrs = self._free_by_key.get(key)
            if ptrs:
                ptr = ptrs.pop()
                _, array = self._free.pop(ptr)
                self._hits += 1
            else:
                nbytes = int(np.prod(key[0], dtype=np.int64)) * np.dtype(dtype).itemsize
                if nbytes > self._limit - self._in_use_bytes:
                    self._exhausted += 1
                    raise PoolExhaustedError(
                        f"memory pool: cannot allocate {nbytes / _MB:.1f} MB for shape "
                        f"{list(key[0])}; {self._in_use_bytes / _MB:.1f} MB in use of "
                        f"max_pool_size_mb={self.max_pool_size_mb:g}"
                    )
                while self._bytes + nbytes > self._limit and self._free:
                    self._evict_one()
                array = np.empty(key[0], dtype=dtype)
                ptr = _pointer(array)
                self._ptr_by_id[id(array)] = ptr
                self._bytes += nbytes
                self._peak = max(self._peak, self._bytes)
                self._misses += 1
            self._in_use[ptr] = (key, array)
            self._in_use_bytes += array.nbytes
        if as_torch:
            import torch

            return torch.from_numpy(array)
        return array

    def release_tensor(self, tensor: Any) -> None:
        """Return a buffer (or a view of it) to the pool for reuse."""
        # the common case, the very array `allocate_tensor` returned: its address is known
        # (the pool holds a reference to each of its buffers, so their ids are unique)
        ptr = self._ptr_by_id.get(id(tensor)) if type(tensor) is np.ndarray else None
        if ptr is None:
            ptr = _pointer(tensor)
        with self._lock:
            entry = self._in_use.pop(ptr, None)
            if entry is None:
                raise ValueError("release_tensor: this buffer was not allocated by the pool")
            key, array = entry
            self._in_use_bytes -= array.nbytes
            self._free[ptr] = entry
            self._free_by_key.setdefault(key, []).append(ptr)
            self._releases += 1

    def _evict_one(self) -> None:
        ptr, (key, array) = self._free.popitem(last=False)
        self._free_by_key[key].remove(ptr)
        self._ptr_by_id.pop(id(array), None)
        self._bytes -= array.nbytes
        self._evictions += 1

    def shrink(self, target_mb: float = 0.0) -> float:
        """Give free buffers back until the pool holds at most `target_mb`; returns MB freed."""
        with self._lock:
            before = self._bytes
            while self._free and self._bytes > target_mb * _MB:
                self._evict_one()
            return (before - self._bytes) / _MB

    def get_memory_stats(self) -> MemoryStats:
        with self._lock:
            total = self._hits + self._misses
            return MemoryStats(
                current_pool_size_mb=self._bytes / _MB,
                in_use_mb=self._in_use_bytes / _MB,
                peak_pool_size_mb=self._peak / _MB,
                max_pool_size_mb=self.max_pool_size_mb,
                pool_utilization=self._bytes / self._limit,
                reuse_ratio=self._hits / total if total else 0.0,
                cache_hits=self._hits,
                cache_misses=self._misses,
                allocations=total,
                releases=self._releases,
                evictions=self._evictions,
                exhausted=self._exhausted,
                free_buffers=len(self._free),
                buffers_in_use=len(self._in_use),
            )
