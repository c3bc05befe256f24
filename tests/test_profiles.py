"""Run profiles: one typed Profile, every default declared once in include/profiles.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.names import PROFILE_NAMES
from pipeline.profiles import PROJECT_PROFILES_FILE, Profile, ProfileError, load_profile

pytestmark = pytest.mark.unit


def test_every_setting_has_its_one_default_in_the_project_file() -> None:
    defaults = yaml.safe_load(PROJECT_PROFILES_FILE.read_text())["defaults"]
    settings = {
        f.name
        for f in dataclasses.fields(Profile)
        if f.name not in ("name", "scenarios", "mix", "definition", "source")
    }
    assert set(defaults) == settings
    for field in dataclasses.fields(Profile):  # no default hidden in the code
        if field.name in settings:
            assert field.default is dataclasses.MISSING, field.name


def test_the_three_profiles_load_typed() -> None:
    for name in PROFILE_NAMES:
        profile = load_profile(name)
        assert profile.name == name and profile.scenarios
        assert isinstance(profile.capacity.max_rps, float)
        assert {"quality_predictor", "routing_classifier", "other"} <= set(profile.mix)
        assert profile.to_dict()["capacity"]["trial_s"] == profile.capacity.trial_s
    assert load_profile("release").soak_s > 0 == load_profile("nightly").soak_s


def _write(tmp_path: Path, entry: dict) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scenarios": {},
                "behaviours": {"mixed": {"a": 1.0}},
                "profiles": {"mine": entry},
            }
        )
    )
    return path


def test_another_file_starts_from_the_project_defaults(tmp_path: Path) -> None:
    profile = load_profile("mine", _write(tmp_path, {"burst_requests": 7}))
    assert profile.burst_requests == 7
    assert profile.capacity == load_profile("nightly").capacity


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"burst_request": 7}, r"unknown key\(s\) \['burst_request'\]"),
        ({"capacity": {"trial_seconds": 1}}, r"capacity: unknown key\(s\) \['trial_seconds'\]"),
        ({"warmup_s": "soon"}, r"warmup_s: expected a number, got 'soon'"),
        ({"burst_requests": 2.5}, r"burst_requests: expected a whole number"),
        ({"concurrency": {"users": []}}, r"concurrency.users: expected a non-empty list"),
        ({"mix_behaviour": "nope"}, r"mix_behaviour 'nope' is not one of"),
    ],
)
def test_a_bad_setting_is_named(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_profile("mine", _write(tmp_path, entry))
