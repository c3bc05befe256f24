"""Run profiles (`include/profiles.yaml`): how long and how large each measurement is.

A profile changes durations and sample sizes, never targets. Every setting has exactly one
default, in the `defaults:` block of the project's `include/profiles.yaml`; a profile (in
that file or in another one named by `RELCERT_PROFILES_FILE`) sets only what differs. The
result is one typed, frozen `Profile`: a misspelt or missing key is an error naming the
file, the profile and the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.names import PROFILE_NAMES

__all__ = [
    "PROFILE_NAMES",
    "CacheSettings",
    "CapacitySettings",
    "ConcurrencySettings",
    "InfraSettings",
    "InjectionSettings",
    "IntegrationSettings",
    "Profile",
    "ProfileError",
    "RegressionSettings",
    "Scenario",
    "Seeds",
    "StressSettings",
    "default_profiles_file",
    "load_profile",
]

PROJECT_PROFILES_FILE = Path(__file__).resolve().parent.parent / "include" / "profiles.yaml"


class ProfileError(ValueError):
    """The profiles file or a profile name is invalid."""


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class CapacitySettings:
    """Open-loop knee search: trial length, the first rate, a safety cap on the rates (the
    search stops at the knee: p99 past its bound, errors, or a generator that cannot keep
    up), the bisection's resolution (0.05: within 5% of the failing rate) and a time
    budget per search."""

    trial_s: float
    warmup_s: float
    start_rps: float
    max_rps: float
    resolution: float
    max_seconds: float


@dataclass(frozen=True)
class ConcurrencySettings:
    """The concurrent-users sweep: user counts tried, requests per user, think time."""

    users: tuple[int, ...]
    requests_per_user: int
    think_ms: float


@dataclass(frozen=True)
class CacheSettings:
    """The Zipf cache workload: catalogue size, requests, skew, concurrent clients."""

    distinct_inputs: int
    requests: int
    zipf_a: float
    concurrency: int


@dataclass(frozen=True)
class InjectionSettings:
    """The plan's error test: `requests` requests from `users` closed-loop users, every
    `scale_up_every`-th input scaled x1000 and every `scale_down_every`-th x0.001."""

    requests: int
    users: int
    scale_up_every: int
    scale_down_every: int


@dataclass(frozen=True)
class IntegrationSettings:
    """The integration stage's concurrent-clients and memory checks."""

    concurrent_clients: int
    requests_per_client: int
    think_ms: float
    memory_requests: int


@dataclass(frozen=True)
class StressSettings:
    """Stress tests: `scale` multiplies their sizes (1.0 is the original plan)."""

    scale: float


@dataclass(frozen=True)
class InfraSettings:
    """Open-loop HTTP load on the real service: offered rates, trial length, warm-up."""

    rates: tuple[float, ...]
    duration_s: float
    warmup_s: float


@dataclass(frozen=True)
class RegressionSettings:
    """The regression stage's A/B latency measurement: `blocks` closed-loop blocks of
    `block_s` (ABBA order: this run's models, then the baseline's, in one engine), `users`
    users with `think_ms` between requests; the first `warmup_s` of a block is discarded."""

    blocks: int
    block_s: float
    users: int
    think_ms: float
    warmup_s: float


@dataclass(frozen=True)
class Seeds:
    """Named seeds: every random draw of a stage starts from one of these."""

    workload: int
    calibration: int
    scenarios: int
    capacity: int
    burst: int
    concurrency: int
    cache: int
    soak: int
    integration: int
    stress: int
    infra: int
    regression: int


@dataclass(frozen=True)
class Scenario:
    """One closed-loop load scenario after the profile's scaling."""

    name: str
    users: int
    requests_per_user: int
    ramp_up_s: float
    duration_s: float
    pattern: str
    pattern_params: dict[str, float]
    behaviour: dict[str, float]

    def think_time_s(self, rng: Any) -> float:
        """Draw one think time (seconds) for this scenario's pattern."""
        p = self.pattern_params
        if self.pattern == "constant":
            return p["think_ms"] / 1000.0
        if self.pattern == "burst":
            if rng.random() < p["pause_probability"]:
                return p["pause_ms"] / 1000.0
            return p["think_ms"] / 1000.0
        if self.pattern == "random":
            return rng.uniform(p["min_ms"], p["max_ms"]) / 1000.0
        raise ProfileError(f"unknown pattern {self.pattern!r}")


@dataclass(frozen=True)
class Profile:
    """One run profile, typed. `definition` is the merged mapping it was built from (the
    report records it whole, so a redefined profile is visible)."""

    name: str
    description: str
    scenario_time_scale: float
    think_time_scale: float
    min_requests_per_scenario: int
    max_requests_per_user: int
    warmup_s: float
    window_s: float
    stability_tolerance: float
    stability_floor_ms: float
    percentiles_claimed: tuple[float, ...]
    capacity: CapacitySettings
    burst_requests: int
    concurrency: ConcurrencySettings
    cache: CacheSettings
    error_injection: InjectionSettings
    calibration_s: float
    integration: IntegrationSettings
    stress: StressSettings
    infra: InfraSettings
    regression: RegressionSettings
    soak_s: float
    seeds: Seeds
    mix_behaviour: str
    scenarios: tuple[Scenario, ...] = ()
    #: the traffic mix (share per model) of the open-loop and concurrency steps: the
    #: behaviour named by `mix_behaviour`
    mix: dict[str, float] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The full definition (every setting after defaults), JSON-ready."""
        return {
            "name": self.name,
            "source": self.source,
            **self.definition,
            "scenarios": [dataclasses.asdict(s) for s in self.scenarios],
        }


#: Profile fields that are not settings from the YAML
_NOT_SETTINGS = ("name", "scenarios", "mix", "definition", "source")


# --------------------------------------------------------------------------- typed parsing
def _coerce(kind: Any, value: Any, where: str) -> Any:
    """`value` as `kind` (int, float, str, tuple[x, ...], a section dataclass)."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return kind(**_values(kind, value, where))
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        if not isinstance(value, list | tuple) or not value:
            raise ProfileError(f"{where}: expected a non-empty list, got {value!r}")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ProfileError(f"{where}: expected text, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfileError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ProfileError(f"{where}: expected a finite number >= 0, got {value!r}")
        if kind is int and float(value) != int(value):
            raise ProfileError(f"{where}: expected a whole number, got {value!r}")
        return kind(value)
    raise ProfileError(f"{where}: unsupported setting type {kind!r}")  # pragma: no cover


def _values(cls: type, data: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass `cls` from mapping `data`, each coerced to its declared type;
    unknown and missing keys are errors naming `where`."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {unknown}; expected {names}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ProfileError(f"{where}: missing key(s) {missing}")
    return {n: _coerce(hints[n], data[n], f"{where}.{n}") for n in names}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings (capacity, seeds, ...) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def default_profiles_file() -> Path:
    env = os.environ.get("RELCERT_PROFILES_FILE")
    return Path(env) if env else PROJECT_PROFILES_FILE


def _read(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ProfileError(f"profiles file {file} does not exist") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{file}: malformed YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ProfileError(f"{file}: expected a mapping with a `profiles` mapping")
    return data


def _defaults() -> dict[str, Any]:
    data = _read(PROJECT_PROFILES_FILE)
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        raise ProfileError(f"{PROJECT_PROFILES_FILE}: expected a `defaults` mapping")
    return defaults


def _scenario(name: str, raw: Any, data: dict[str, Any], prof: dict[str, Any]) -> Scenario:
    where = f"scenario {name!r}"
    patterns, behaviours = data.get("patterns") or {}, data.get("behaviours") or {}
    try:
        users = int(raw["users"])
        per_user = int(raw["requests_per_user"])
        pattern = str(raw["pattern"])
        behaviour = behaviours[str(raw["behaviour"])]
        params = {k: float(v) for k, v in patterns[pattern].items()}
        ramp, duration = float(raw["ramp_up_s"]), float(raw["duration_s"])
    except (KeyError, TypeError) as exc:
        raise ProfileError(f"{where}: missing or unknown {exc}") from None
    for key in ("think_ms", "pause_ms", "min_ms", "max_ms"):
        if key in params:
            params[key] *= prof["think_time_scale"]
    # enough requests that `min_requests_per_scenario` remain after the warm-up is
    # discarded, and a duration long enough for them (a profile never starves a claim)
    mean_think_s = _mean_think_ms(pattern, params) / 1000.0
    warmup_requests = math.ceil(prof["warmup_s"] / max(mean_think_s, 1e-3))
    wanted = math.ceil(prof["min_requests_per_scenario"] / users) + warmup_requests
    per_user = min(max(per_user, wanted), prof["max_requests_per_user"])
    time_scale = prof["scenario_time_scale"]
    duration_s = max(duration * time_scale, 1.0, 1.5 * per_user * mean_think_s + 1.0)
    return Scenario(
        name=name,
        users=users,
        requests_per_user=per_user,
        ramp_up_s=ramp * time_scale,
        duration_s=duration_s,
        pattern=pattern,
        pattern_params=params,
        behaviour={str(k): float(v) for k, v in behaviour.items()},
    )


def _mean_think_ms(pattern: str, p: dict[str, float]) -> float:
    if pattern == "burst":
        return (1 - p["pause_probability"]) * p["think_ms"] + p["pause_probability"] * p["pause_ms"]
    if pattern == "random":
        return (p["min_ms"] + p["max_ms"]) / 2
    return p.get("think_ms", 0.0)


def load_profile(name: str = "smoke", path: str | Path | None = None) -> Profile:
    """Load profile `name` from the profiles file (on top of the project's defaults)."""
    file = Path(path) if path else default_profiles_file()
    data = _read(file)
    profiles = data["profiles"]
    if name not in profiles:
        raise ProfileError(
            f"unknown profile {name!r}; expected one of {', '.join(sorted(profiles))}"
        )
    chain, current = [name], profiles[name]
    while isinstance(current, dict) and "extends" in current:
        parent = current["extends"]
        if parent in chain or parent not in profiles:
            raise ProfileError(f"{file}: profile {name!r} extends unknown or cyclic {parent!r}")
        chain.append(parent)
        current = profiles[parent]
    merged = _defaults()
    for link in reversed(chain):
        entry = profiles[link]
        if not isinstance(entry, dict):
            raise ProfileError(f"{file}: profile {link!r} must be a mapping, got {entry!r}")
        merged = _merge(merged, {k: v for k, v in entry.items() if k != "extends"})
    where = f"{file}: profile {name!r}"
    values = _values(Profile, merged, where, skip=_NOT_SETTINGS)
    scenarios = tuple(
        _scenario(n, s, data, values) for n, s in (data.get("scenarios") or {}).items()
    )
    behaviours = data.get("behaviours") or {}
    mix = behaviours.get(values["mix_behaviour"])
    if not isinstance(mix, dict):
        raise ProfileError(
            f"{where}: mix_behaviour {values['mix_behaviour']!r} is not one of the file's "
            f"behaviours ({', '.join(map(str, behaviours)) or 'none'})"
        )
    return Profile(
        name=name,
        scenarios=scenarios,
        mix={str(k): float(v) for k, v in mix.items()},
        definition=merged,
        source=str(file),
        **values,
    )
