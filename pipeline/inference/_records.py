"""Dataclass helpers: records that can also be read like the plan's dicts (`rec["x"]`)."""

from __future__ import annotations

import dataclasses
from typing import Any


class RecordMixin:
    """Lets a dataclass be read as a mapping too: `rec.latency_ms == rec["latency_ms"]`."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.keys()}
