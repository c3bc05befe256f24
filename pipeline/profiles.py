"""Run profiles (`include/profiles.yaml`): how long and how large each measurement is.

A profile changes durations and sample sizes, never targets.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROFILE_NAMES",
    "Profile",
    "ProfileError",
    "Scenario",
    "default_profiles_file",
    "load_profile",
]

PROFILE_NAMES = ("smoke", "nightly", "release")


class ProfileError(ValueError):
    """The profiles file or a profile name is invalid."""


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
    name: str
    raw: dict[str, Any]
    scenarios: tuple[Scenario, ...]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def percentiles_claimed(self) -> tuple[float, ...]:
        return tuple(float(p) for p in self.raw["percentiles_claimed"])


def default_profiles_file() -> Path:
    env = os.environ.get("RELCERT_PROFILES_FILE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "include" / "profiles.yaml"


def _scenario(name: str, raw: dict, patterns: dict, behaviours: dict, prof: dict) -> Scenario:
    where = f"scenario {name!r}"
    try:
        users = int(raw["users"])
        per_user = int(raw["requests_per_user"])
        pattern = str(raw["pattern"])
        behaviour = behaviours[str(raw["behaviour"])]
        params = {k: float(v) for k, v in patterns[pattern].items()}
        ramp, duration = float(raw["ramp_up_s"]), float(raw["duration_s"])
    except KeyError as exc:
        raise ProfileError(f"{where}: missing or unknown {exc}") from None
    time_scale = float(prof.get("scenario_time_scale", 1.0))
    think_scale = float(prof.get("think_time_scale", 1.0))
    for key in ("think_ms", "pause_ms", "min_ms", "max_ms"):
        if key in params:
            params[key] *= think_scale
    # enough requests that `min_requests_per_scenario` remain after the warm-up is
    # discarded, and a duration long enough for them (a profile never starves a claim)
    mean_think_s = _mean_think_ms(pattern, params) / 1000.0
    warmup_requests = math.ceil(float(prof.get("warmup_s", 0.0)) / max(mean_think_s, 1e-3))
    wanted = math.ceil(int(prof.get("min_requests_per_scenario", 0)) / users) + warmup_requests
    per_user = min(max(per_user, wanted), int(prof.get("max_requests_per_user", 10**6)))
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
    """Load and scale profile `name` from the profiles file."""
    file = Path(path) if path else default_profiles_file()
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ProfileError(f"profiles file {file} does not exist") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{file}: malformed YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ProfileError(f"{file}: expected a mapping with a `profiles` mapping")
    profiles = data["profiles"]
    if name not in profiles:
        raise ProfileError(
            f"unknown profile {name!r}; expected one of {', '.join(sorted(profiles))}"
        )
    raw = dict(profiles[name])
    seen = {name}
    while "extends" in raw:
        parent = raw.pop("extends")
        if parent in seen or parent not in profiles:
            raise ProfileError(f"{file}: profile {name!r} extends unknown or cyclic {parent!r}")
        seen.add(parent)
        raw = {**profiles[parent], **raw}
    scenarios = tuple(
        _scenario(n, s, data.get("patterns", {}), data.get("behaviours", {}), raw)
        for n, s in (data.get("scenarios") or {}).items()
    )
    return Profile(name=name, raw=raw, scenarios=scenarios)
