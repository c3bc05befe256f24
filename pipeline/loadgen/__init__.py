"""Load generation for relcert's benchmarks and load stages.

Closed-loop users (`run_users`: send, wait, think, repeat) and percentile tallies
(`percentiles`) live here too, so every stage simulates users and counts the same way.

Open loop has three separate units, as in MLPerf's LoadGen: *scheduling* (when each
query should be sent: `poisson_schedule`), *issuing* (`run_open_loop` sends each query at
its scheduled time and records when it really went out and when it completed) and
*summarising* (`summarize`: percentiles from the scheduled time, issue delay, validity
with reasons).

Latency is counted from the scheduled send time, so a generator or server that falls
behind shows up as latency rather than silently thinning the load (coordinated omission).
"""

from pipeline.loadgen.closed import Turn, run_users
from pipeline.loadgen.issue import OpenLoopRecord, run_open_loop
from pipeline.loadgen.schedule import poisson_schedule
from pipeline.loadgen.search import (
    CapacityResult,
    KneeResult,
    failure_cause,
    find_knee,
    find_max_sustained_rate,
)
from pipeline.loadgen.summary import LoadSummary, min_samples_for, summarize
from pipeline.loadgen.tally import Percentiles, percentiles

__all__ = [
    "CapacityResult",
    "KneeResult",
    "LoadSummary",
    "OpenLoopRecord",
    "Percentiles",
    "Turn",
    "failure_cause",
    "find_knee",
    "find_max_sustained_rate",
    "min_samples_for",
    "percentiles",
    "poisson_schedule",
    "run_open_loop",
    "run_users",
    "summarize",
]
