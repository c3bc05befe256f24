"""The tables the gates validate: one per stage, declared in the stage registry.

Kept as the gates' view of `pipeline.stages.registry`: `TABLES[gate]` is the contract of
the table that gate validates (gate names are stage names).
"""

from __future__ import annotations

from pipeline.stages.contracts import TableContract
from pipeline.stages.registry import STAGE_NAMES, TABLES

__all__ = ["STAGES", "TABLES", "TableContract"]

#: every gate, in stage order
STAGES: tuple[str, ...] = STAGE_NAMES
