"""Availability of the HTTP service under load: health probes on a fixed cadence.

While the infra stage drives its open-loop load (and then the validation endpoint), a
`HealthProber` probes `GET /health/live` and `GET /health/ready` every `interval_s` on its
own loopback connections, as a kubelet would, bounded in count and time. A probe is answered
correctly when it gets 200 within `timeout_s`; a liveness answer must also carry an uptime
(`uptime_s`) that did not go back, since a restarted service was down in between. The
service's uptime gauge (`relcert_uptime_seconds` in /metrics) is read when probing starts
and when it ends: each reading is one more probe, and the second is answered correctly only
when the gauge advanced by the wall time between them (within `UPTIME_SLACK_S`).

Availability = (probes answered correctly + requests answered correctly) / (probes +
requests), where the requests are the load's requests after warm-up. It is claimed only on
at least `MIN_AVAILABILITY_PROBES` probes: one failed probe in 100 is the 1% a 99% target
allows, so fewer probes cannot resolve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MIN_AVAILABILITY_PROBES",
    "PROBE_INTERVAL_S",
    "PROBE_PATHS",
    "HealthProber",
    "ProbeTally",
]

PROBE_PATHS = ("/health/live", "/health/ready")
#: probing cadence: both paths once per tick
PROBE_INTERVAL_S = 0.1
#: a probe not answered within this is a failed probe (a kubelet's default timeoutSeconds)
PROBE_TIMEOUT_S = 1.0
#: probes needed to claim an availability (see the module docstring)
MIN_AVAILABILITY_PROBES = 100
#: at most this many probes (two per tick) and this long, whatever the caller does
MAX_PROBES = 20_000
MAX_PROBING_S = 900.0
#: how far the uptime gauge may lag the wall clock between two readings
UPTIME_SLACK_S = 1.0
_GAUGE = re.compile(rb"^relcert_uptime_seconds\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


@dataclass
class ProbeTally:
    """The probes of one path: how many were sent, answered correctly, and why others were
    not (failure -> count)."""

    path: str
    sent: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def record(self, ok: bool, why: str = "") -> None:
        self.sent += 1
        if ok:
            self.ok += 1
        else:
            self.failures[why] = self.failures.get(why, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sent": self.sent, "ok": self.ok, "failures": self.failures}


class HealthProber:
    """Probes the service's health endpoints on a fixed cadence until `stop()`."""

    def __init__(
        self,
        client: Any,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
        max_probes: int = MAX_PROBES,
        max_seconds: float = MAX_PROBING_S,
    ) -> None:
        self.client = client  # an HttpLoadClient of its own (loopback only)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_probes = max_probes
        self.max_seconds = max_seconds
        self.tallies = {p: ProbeTally(p) for p in PROBE_PATHS}
        self.gauge = ProbeTally("/metrics relcert_uptime_seconds")
        self.gauge_readings: list[tuple[float, float | None]] = []  # (wall s, uptime s)
        self.restarts = 0
        self.started = 0.0
        self.stopped = 0.0
        self._last_uptime: float | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def probes(self) -> int:
        return sum(t.sent for t in self.tallies.values()) + self.gauge.sent

    @property
    def answered(self) -> int:
        return sum(t.ok for t in self.tallies.values()) + self.gauge.ok

    async def start(self) -> HealthProber:
        self.started = time.perf_counter()
        await self._read_gauge()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> HealthProber:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._read_gauge()
        self.stopped = time.perf_counter()
        return self

    async def _run(self) -> None:
        tick = self.started
        while not self._stop.is_set():
            now = time.perf_counter()
            if self.probes + len(PROBE_PATHS) > self.max_probes or now - self.started > (
                self.max_seconds
            ):
                return
            await asyncio.gather(*(self._probe(p) for p in PROBE_PATHS))
            tick += self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, tick - time.perf_counter()))

    async def _get(self, path: str):
        future = self.client.get(path)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s), ""
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s"

    async def _probe(self, path: str) -> None:
        result, why = await self._get(path)
        tally = self.tallies[path]
        if result is None:
            tally.record(False, why)
            return
        if result.status != 200:
            tally.record(
                False, f"HTTP {result.status}" + (f" {result.error}" if result.error else "")
            )
            return
        if path == "/health/live":
            try:
                uptime = float(json.loads(result.body)["uptime_s"])
            except (ValueError, KeyError, TypeError):
                tally.record(False, "no uptime_s in the liveness answer")
                return
            if self._last_uptime is not None and uptime < self._last_uptime:
                self.restarts += 1
                self._last_uptime = uptime
                tally.record(False, "uptime went back: the service restarted")
                return
            self._last_uptime = uptime
        tally.record(True)

    async def _read_gauge(self) -> None:
        """One reading of the uptime gauge; the second must have advanced with the clock."""
        wall = time.perf_counter()
        result, why = await self._get("/metrics")
        uptime = None
        if result is not None and result.status == 200:
            found = _GAUGE.search(result.body)
            uptime = float(found.group(1)) if found else None
            why = "" if found else "no relcert_uptime_seconds gauge in /metrics"
        elif result is not None:
            why = f"HTTP {result.status}"
        self.gauge_readings.append((wall, uptime))
        if uptime is None:
            self.gauge.record(False, why)
            return
        if len(self.gauge_readings) > 1:
            first_wall, first = self.gauge_readings[0]
            if first is not None and uptime - first < (wall - first_wall) - UPTIME_SLACK_S:
                self.restarts += 1
                self.gauge.record(
                    False,
                    f"the uptime gauge advanced {uptime - first:.1f} s in "
                    f"{wall - first_wall:.1f} s: the service restarted",
                )
                return
        self.gauge.record(True)

    def describe(self) -> str:
        parts = [f"{t.path} {t.ok}/{t.sent}" for t in self.tallies.values()]
        parts.append(f"uptime gauge readings {self.gauge.ok}/{self.gauge.sent}")
        failures = {
            f"{t.path}: {why}": n
            for t in (*self.tallies.values(), self.gauge)
            for why, n in t.failures.items()
        }
        text = ", ".join(parts)
        if failures:
            text += "; failed: " + ", ".join(f"{k} x{n}" for k, n in failures.items())
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "seconds": (self.stopped or time.perf_counter()) - self.started,
            "probes": self.probes,
            "answered": self.answered,
            "restarts": self.restarts,
            "paths": [t.to_dict() for t in (*self.tallies.values(), self.gauge)],
            "uptime_gauge_s": [u for _, u in self.gauge_readings],
        }
