"""Request decoding: a JSON body of named (or ordered) features -> one float32 input row.

The fast path is a handful of type checks and one `np.array` call; only a bad request pays
for the search that names the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["FeatureSpec", "RequestError", "describe_value", "load_json_object"]

#: the largest finite float32: a bigger JSON number would become Inf in the model's input
FLOAT32_MAX = float(np.finfo(np.float32).max)

_loads = json.loads


class RequestError(Exception):
    """A request the service refuses; `status` is the HTTP status, `detail` names the field."""

    def __init__(self, status: int, detail: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = tuple(headers)


def describe_value(value: Any) -> str:
    """A short JSON-like rendering of a client's value for an error message."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (422 naming the problem otherwise)."""
    if allow_empty and not body.strip():
        return {}
    try:
        doc = _loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(422, f"body: not UTF-8 encoded JSON ({exc.reason})") from None
    except ValueError as exc:
        raise RequestError(422, f"body: invalid JSON ({exc})") from None
    if type(doc) is not dict:
        raise RequestError(422, f"body: expected a JSON object, got {describe_value(doc)}")
    return doc


@dataclass(frozen=True)
class FeatureSpec:
    """The input contract of one served model, from its `model_info.json` entry."""

    model: str
    feature_names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.feature_names)

    @cached_property
    def name_set(self) -> frozenset[str]:
        return frozenset(self.feature_names)

    @classmethod
    def from_model_info(cls, model: str, entry: Mapping[str, Any]) -> FeatureSpec:
        names = entry.get("feature_names")
        if names:
            return cls(model, tuple(str(n) for n in names))
        shape = entry.get("input_shape") or []
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            return cls(model, tuple(f"feature_{i}" for i in range(shape[1])))
        raise ValueError(
            f"model_info.json: model {model!r} has neither feature_names nor an input_shape "
            f"[batch, features] (got {shape!r}): the service cannot decode its requests"
        )

    def decode(self, body: bytes) -> np.ndarray:
        """`{"features": {name: number, ...}}` or `{"features": [numbers]}` -> float32 row."""
        doc = load_json_object(body)
        if len(doc) != 1 or "features" not in doc:
            if "features" not in doc:
                raise RequestError(422, "features: required field is missing")
            extra = next(k for k in doc if k != "features")
            raise RequestError(422, f'{extra}: unexpected field (the body holds only "features")')
        features = doc["features"]
        names = self.feature_names
        kind = type(features)
        if kind is dict:
            if features.keys() != self.name_set:
                self._explain_names(features)
            values = [features[name] for name in names]
        elif kind is list:
            values = features
            if len(values) != len(names):
                raise RequestError(
                    422,
                    f"features: expected a list of {len(names)} numbers (in the order "
                    f"{', '.join(names)}), got {len(values)}",
                )
        else:
            raise RequestError(
                422,
                f"features: expected an object of {len(names)} named numbers or a list of "
                f"{len(names)} numbers, got {describe_value(features)}",
            )
        top = FLOAT32_MAX
        for value in values:
            t = type(value)
            # a chained comparison is False for NaN, so it also catches NaN and +-Inf
            if (t is not float and t is not int) or not -top <= value <= top:
                self._explain_value(values, kind is dict)
        return np.array(values, dtype=np.float32)

    def _explain_names(self, features: dict[str, Any]) -> None:
        names = self.feature_names
        for name in names:
            if name not in features:
                raise RequestError(422, f"features.{name}: required feature is missing")
        known = set(names)
        extra = next(k for k in features if k not in known)
        raise RequestError(
            422,
            f"features.{extra}: unexpected feature; {self.model} takes exactly {', '.join(names)}",
        )

    def _explain_value(self, values: list[Any], named: bool) -> None:
        for i, value in enumerate(values):
            field = f"features.{self.feature_names[i]}" if named else f"features[{i}]"
            t = type(value)
            if t is not float and t is not int:
                raise RequestError(
                    422, f"{field}: expected a finite number, got {describe_value(value)}"
                )
            if value != value or value in (float("inf"), float("-inf")):
                raise RequestError(
                    422, f"{field}: expected a finite number, got {describe_value(value)}"
                )
            if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
                raise RequestError(
                    422,
                    f"{field}: expected a finite number within float32 range "
                    f"(|x| <= {FLOAT32_MAX:.4g}), got {describe_value(value)}",
                )
        raise AssertionError("unreachable: no invalid value found")  # pragma: no cover
