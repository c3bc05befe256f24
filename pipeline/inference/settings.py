"""`EngineSettings`: every knob of the inference engine, declared once.

The engine library, the stage engine host, the HTTP service and the deployment package all
configure the engine with this one record (the service reads it from environment variables,
the host from JSON, the package from the load stage's recorded `engine_config`), so a knob
has one name, one meaning and one default everywhere. Like Triton's dynamic batcher, each
field is documented by the behaviour it changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["EngineSettings"]


@dataclass(frozen=True)
class EngineSettings:
    """How one engine batches, queues, bounds memory and recovers.

    Invalid values raise ValueError naming the field and what was expected.
    """

    #: Most requests run as one batch. Requests queued for a model when the dispatcher runs
    #: are taken together up to this many; the rest form the next batch.
    max_batch_size: int = 32
    #: How long (ms) a partial batch may wait for company. 0 is greedy and work-conserving:
    #: a lone request runs on the next turn of the event loop.
    batch_timeout_ms: float = 0.0
    #: Requests waiting in the engine at most. Past it a request fails at once with
    #: `rejected=True` (load shedding; the service answers 503 with Retry-After).
    max_queue_size: int = 1024
    #: A request still queued this long (ms) after submission fails with
    #: DeadlineExceededError without running (unless it brings its own `deadline_ms`).
    #: None: no default deadline.
    default_deadline_ms: float | None = 10_000.0
    #: Memory pool for batch input buffers, in MB; buffers are reused across batches and
    #: never exceed this. 0: no pool (a fresh buffer per batch).
    pool_mb: float = 400.0
    #: Entries of the LRU result cache (keyed on model, load generation and input bytes).
    #: 0: no cache.
    cache_entries: int = 10_000
    #: Budget (MB) for the loaded models' weights: a load that does not fit evicts the least
    #: recently used model. The service also gives pool and cache memory back when its RSS
    #: passes it.
    max_memory_mb: float = 500.0
    #: Consecutive runtime faults (the runtime raising even on its warm-up input, or
    #: returning a wrong batch) after which a model is reloaded from its verified file. A
    #: request's values the runtime raises on (while it answers other inputs) or answers
    #: NaN/Inf for are that request's error and never count.
    recovery_failure_threshold: int = 5
    #: Shortest time (s) between two automatic reloads of one model.
    recovery_cooldown_s: float = 5.0
    #: How often (s) the dispatcher asks the monitor whether memory is under pressure (0: on
    #: every dispatch).
    memory_check_interval_s: float = 1.0
    #: Intra-op threads each runtime uses for one batch (set on every thread that runs it).
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        for name, (kind, low, strict) in _BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check(name, value, kind, low, strict, optional=name in _OPTIONAL)

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-ready: None stays None)."""
        return asdict(self)

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, ignore_unknown: bool = False
    ) -> EngineSettings:
        """Settings from a mapping of field names (e.g. JSON); missing fields keep their
        defaults, whole floats are accepted for integer fields (JSON writes 16.0 as 16.0)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and not ignore_unknown:
            raise ValueError(
                f"unknown engine setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        chosen = {k: _integral(k, v) for k, v in values.items() if k in known}
        return cls(**chosen)

    @staticmethod
    def parse(name: str, raw: Any) -> Any:
        """One field's value from text (e.g. an environment variable) or a number, validated
        like the constructor ("none" is None for an optional field)."""
        if name not in _BOUNDS:
            raise ValueError(f"unknown engine setting {name!r}; known: {', '.join(_BOUNDS)}")
        kind, low, strict = _BOUNDS[name]
        optional = name in _OPTIONAL
        value = raw
        if isinstance(raw, str):
            text = raw.strip()
            if optional and text.lower() in ("none", "off"):
                return None
            try:
                value = int(text) if kind is int else float(text)
            except ValueError:
                value = raw  # _check names what was expected
        elif raw is None and optional:
            return None
        value = _integral(name, value)
        _check(name, value, kind, low, strict, optional=optional)
        return value

    def replace(self, **changes: Any) -> EngineSettings:
        """A copy with `changes` applied (validated like the constructor)."""
        return replace(self, **{k: _integral(k, v) for k, v in changes.items()})

    def memory_pool(self) -> Any:
        """A MemoryPoolManager of `pool_mb` (None when the pool is off)."""
        from pipeline.inference.memory_pool import MemoryPoolManager

        return MemoryPoolManager(self.pool_mb) if self.pool_mb > 0 else None

    def result_cache(self) -> Any:
        """A ResultCache of `cache_entries` (None when the cache is off)."""
        from pipeline.inference.cache import ResultCache

        return ResultCache(self.cache_entries) if self.cache_entries > 0 else None


# field -> (int or float, lower bound, bound is strict)
_BOUNDS: dict[str, tuple[type, float, bool]] = {
    "max_batch_size": (int, 1, False),
    "batch_timeout_ms": (float, 0.0, False),
    "max_queue_size": (int, 1, False),
    "default_deadline_ms": (float, 0.0, True),
    "pool_mb": (float, 0.0, False),
    "cache_entries": (int, 0, False),
    "max_memory_mb": (float, 0.0, True),
    "recovery_failure_threshold": (int, 1, False),
    "recovery_cooldown_s": (float, 0.0, False),
    "memory_check_interval_s": (float, 0.0, False),
    "intra_op_threads": (int, 1, False),
}
_OPTIONAL = frozenset({"default_deadline_ms"})


def _check(name: str, value: Any, kind: type, low: float, strict: bool, *, optional: bool) -> None:
    bound = f"{'>' if strict else '>='} {low:g}"
    what = "an integer" if kind is int else "a finite number"
    expected = f"{what} {bound}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"engine setting {name} must be {expected}, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"engine setting {name} must be {expected}, got {value!r}")
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"engine setting {name} must be {expected}, got {value!r}")


def _integral(name: str, value: Any) -> Any:
    """16.0 -> 16 for integer fields (JSON round trips); anything else unchanged."""
    kind = _BOUNDS.get(name, (float,))[0]
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
