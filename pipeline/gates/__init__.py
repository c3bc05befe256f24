"""Gates: each stage's result table validated by a Great Expectations suite built from targets.

`suite_spec` says what a gate checks (pure Python); `run_gate` runs it with GX, writes
`<run_dir>/gates/<stage>.json` and updates the run's Data Docs; `raise_for_gate` turns a
failed gate into an exception for the orchestrator. GX is imported only when a gate runs.
"""

from pipeline.gates.contracts import STAGES, TABLES, TableContract
from pipeline.gates.runner import GateError, GateFailed, GateResult, raise_for_gate, run_gate
from pipeline.gates.suites import (
    TARGET_BOUNDS,
    ExpectationSpec,
    TargetBound,
    suite_name,
    suite_spec,
)

__all__ = [
    "STAGES",
    "TABLES",
    "TARGET_BOUNDS",
    "ExpectationSpec",
    "GateError",
    "GateFailed",
    "GateResult",
    "TableContract",
    "TargetBound",
    "raise_for_gate",
    "run_gate",
    "suite_name",
    "suite_spec",
]
