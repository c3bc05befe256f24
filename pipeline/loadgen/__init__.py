"""Load generation for relcert's benchmarks and load stages.

Three separate units, as in MLPerf's LoadGen: *scheduling* (when each query should be sent:
`poisson_schedule`), *issuing* (`run_open_loop` sends each query at its scheduled time and
records when it really went out and when it completed) and *summarising* (`summarize`:
percentiles from the scheduled time, issue delay, validity with reasons).

Latency is counted from the scheduled send time, so a generator or server that falls
behind shows up as latency rather than silently thinning the load (coordinated omission).
"""

from pipeline.loadgen.issue import OpenLoopRecord, run_open_loop
from pipeline.loadgen.schedule import poisson_schedule
from pipeline.loadgen.search import CapacityResult, find_max_sustained_rate
from pipeline.loadgen.summary import LoadSummary, min_samples_for, summarize

__all__ = [
    "CapacityResult",
    "LoadSummary",
    "OpenLoopRecord",
    "find_max_sustained_rate",
    "min_samples_for",
    "poisson_schedule",
    "run_open_loop",
    "summarize",
]
