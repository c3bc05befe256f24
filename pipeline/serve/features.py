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
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise RequestError(422, f"body: invalid JSON ({exc.msg} at {where})") from None
    except ValueError:  # e.g. an integer with more digits than Python converts
        raise RequestError(422, "body: invalid JSON (a number too long to read)") from None
    except RecursionError:
        raise RequestError(422, "body: JSON nested too deeply (expected a flat object)") from None
    if type(doc) is not dict:
        raise RequestError(422, f"body: expected a JSON object, got {describe_value(doc)}")
    return doc


@dataclass(frozen=True)
class FeatureSpec:
    """The input contract of one served model, from its `model_info.json` entry.

    Optional input ranges: ``"input_range": [low, high]`` (every feature) and/or
    ``"feature_ranges": {name: [low, high]}`` in the model's entry; a value outside its range
    is refused with 422 naming the feature. Without them any finite float32 is accepted."""

    model: str
    feature_names: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...] | None = None

    @property
    def count(self) -> int:
        return len(self.feature_names)

    @cached_property
    def name_set(self) -> frozenset[str]:
        return frozenset(self.feature_names)

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.ranges is None:
            return None
        return (
            np.array([r[0] for r in self.ranges], dtype=np.float32),
            np.array([r[1] for r in self.ranges], dtype=np.float32),
        )

    @classmethod
    def from_model_info(cls, model: str, entry: Mapping[str, Any]) -> FeatureSpec:
        names = entry.get("feature_names")
        if names:
            feature_names = tuple(str(n) for n in names)
        else:
            shape = list(entry.get("input_shape") or [])
            if len(shape) == 1 and not entry.get("files"):  # the plan's feature-only shape
                shape = [None, *shape]
            if not (len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0):
                raise ValueError(
                    f"model_info.json: model {model!r} has neither feature_names nor an "
                    f"input_shape [batch, features] (got {shape!r}): the service cannot decode "
                    "its requests"
                )
            feature_names = tuple(f"feature_{i}" for i in range(shape[1]))
        return cls(model, feature_names, _ranges(model, feature_names, entry))

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
        x = np.array(values, dtype=np.float32)
        bounds = self._bounds
        if bounds is not None:
            outside = (x < bounds[0]) | (x > bounds[1])
            if outside.any():
                i = int(np.argmax(outside))
                field = f"features.{names[i]}" if kind is dict else f"features[{i}]"
                low, high = self.ranges[i]
                raise RequestError(
                    422,
                    f"{field}: expected a number in [{low:g}, {high:g}] (the model's declared "
                    f"input range), got {describe_value(values[i])}",
                )
        return x

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


def _ranges(
    model: str, names: tuple[str, ...], entry: Mapping[str, Any]
) -> tuple[tuple[float, float], ...] | None:
    """Per-feature [low, high] from `input_range` / `feature_ranges`, or None if undeclared."""
    common = entry.get("input_range")
    per_feature = entry.get("feature_ranges")
    if common is None and per_feature is None:
        return None
    where = f"model_info.json: model {model!r}"
    default = _pair(f"{where} input_range", common) if common is not None else None
    if per_feature is not None and not isinstance(per_feature, Mapping):
        raise ValueError(f"{where} feature_ranges must be an object {{feature: [low, high]}}")
    per_feature = per_feature or {}
    unknown = sorted(set(per_feature) - set(names))
    if unknown:
        raise ValueError(f"{where} feature_ranges names unknown feature(s) {', '.join(unknown)}")
    lowest = (-FLOAT32_MAX, FLOAT32_MAX)
    return tuple(
        _pair(f"{where} feature_ranges.{name}", per_feature[name])
        if name in per_feature
        else (default or lowest)
        for name in names
    )


def _pair(where: str, value: Any) -> tuple[float, float]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(type(v) in (int, float) for v in value)
        and all(-FLOAT32_MAX <= v <= FLOAT32_MAX for v in value)
        and value[0] <= value[1]
    )
    if not ok:
        raise ValueError(f"{where} must be [low, high] with finite low <= high, got {value!r}")
    return float(value[0]), float(value[1])
