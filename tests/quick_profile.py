"""The quickest profile that still certifies: every criterion gets enough samples to be
valid, so a healthy model is approved (used where a test needs a whole certification)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# A small profile under the name the DAG's form accepts: every certification criterion
# gets enough samples to be valid (2,600 load requests, half per example model, since a p99
# per model needs 1,000 of that model's own; 21 concurrent users; p50/p95 claims; 1,000
# HTTP requests per endpoint and >= 100 health probes in the infra stage), so a
# healthy model is approved and packaged, in about a minute per run.
QUICK_PROFILES = """
version: 1
scenarios:
  baseline_performance:
    {users: 10, requests_per_user: 100, ramp_up_s: 0.2, duration_s: 5, pattern: constant,
     behaviour: mixed}
patterns:
  constant: {think_ms: 10}
behaviours:
  # models beyond the two examples (bench/scale.py) share `other`
  mixed: {quality_predictor: 0.5, routing_classifier: 0.5, other: 0.5}
profiles:
  smoke:
    scenario_time_scale: 1.0
    think_time_scale: 1.0
    min_requests_per_scenario: 2600
    max_requests_per_user: 300
    warmup_s: 0.2
    window_s: 1.0
    stability_tolerance: 1.0
    stability_floor_ms: 5.0
    percentiles_claimed: [50, 95]
    capacity: {trial_s: 0.5, warmup_s: 0.1, start_rps: 100, max_rps: 400,
               resolution: 0.5, max_seconds: 20}
    burst_requests: 100
    concurrency: {users: [1, 11, 21], requests_per_user: 20, think_ms: 10}
    cache: {distinct_inputs: 50, requests: 500, zipf_a: 1.3, concurrency: 4}
    calibration_s: 0.3
    integration: {concurrent_clients: 3, requests_per_client: 3, think_ms: 5, memory_requests: 20}
    stress: {scale: 0.1}
    infra: {rates: [1000], duration_s: 5.0, warmup_s: 0.2}
    regression: {blocks: 12, block_s: 0.75, users: 8, think_ms: 10, warmup_s: 0.2}
  nightly:  # scheduled and backfilled runs certify with `nightly`: the same quick settings
    extends: smoke
"""


@contextlib.contextmanager
def quick_profiles(folder: Path) -> Iterator[Path]:
    """Install QUICK_PROFILES (profile name `smoke`) as RELCERT_PROFILES_FILE meanwhile."""
    path = folder / "quick-profiles.yaml"
    path.write_text(QUICK_PROFILES)
    before = os.environ.get("RELCERT_PROFILES_FILE")
    os.environ["RELCERT_PROFILES_FILE"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("RELCERT_PROFILES_FILE", None)
        else:
            os.environ["RELCERT_PROFILES_FILE"] = before
