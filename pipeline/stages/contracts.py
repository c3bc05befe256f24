"""What each stage writes into the run folder: its tables (CSV) and its summary.json.

These are the contract between a stage (which writes) and everything that reads (its gate,
certification, the report, the Certifications view). Both kinds are checked when written
(`StageContext.write_table` / `write_summary`) and when read (`RunDir.read_summary`), so a
consumer never depends on a key nobody writes.

Every table and summary carries the run attempt that produced it (`attempt_id`): evidence
from another attempt of the same run is never read as this attempt's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ATTEMPT_COLUMN",
    "CHECK_COLUMNS",
    "COMMON_SUMMARY_KEYS",
    "ContractError",
    "SummaryContract",
    "TableContract",
]

#: the column every table carries: the run attempt that wrote the row
ATTEMPT_COLUMN = "attempt_id"


class ContractError(ValueError):
    """A table or summary does not follow its contract; the message names it and the key."""


@dataclass(frozen=True)
class TableContract:
    """Where a stage's table lives and which columns it must have."""

    stage: str
    path: str  # relative to the run folder, POSIX separators
    columns: tuple[tuple[str, str], ...]  # (column, kind): kind is str, bool, int or float
    key: tuple[str, ...]  # columns that identify a row in failure examples
    row_noun: str  # what one row is, for human messages: "scenario", "model", ...

    @property
    def name(self) -> str:
        """The table's file stem: `checks` for stages/integration/checks.csv."""
        return self.path.rsplit("/", 1)[-1].removesuffix(".csv")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def string_columns(self) -> tuple[str, ...]:
        """Columns read as text even when their values look numeric (versions, names)."""
        return tuple(name for name, kind in self.columns if kind == "str")

    def check_columns(self, present: Sequence[str]) -> None:
        missing = [c for c in self.column_names if c not in present]
        if missing:
            raise ContractError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))}; the "
                f"{self.stage} stage's contract requires {', '.join(self.column_names)}"
            )


_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list, tuple),
    "any": (object,),
}


@dataclass(frozen=True)
class SummaryContract:
    """The keys a stage's summary.json must have (dotted paths into nested mappings) and
    their kinds (str, int, number, bool, dict, list, any; `?` suffix: may be null)."""

    stage: str
    keys: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return f"stages/{self.stage}/summary.json"

    def problems(self, summary: Mapping[str, Any]) -> list[str]:
        """What is wrong with `summary` (empty when it follows the contract)."""
        out = []
        for dotted, kind in (*COMMON_SUMMARY_KEYS, *self.keys):
            node: Any = summary
            found = True
            for part in dotted.split("."):
                if isinstance(node, Mapping) and part in node:
                    node = node[part]
                else:
                    found = False
                    break
            if not found:
                out.append(f"missing key {dotted!r} ({kind})")
                continue
            nullable = kind.endswith("?")
            base = kind.rstrip("?")
            if node is None:
                if not nullable:
                    out.append(f"key {dotted!r} is null, expected {base}")
                continue
            allowed = _KINDS[base]
            if base in ("int", "number") and isinstance(node, bool):
                out.append(f"key {dotted!r} is a boolean, expected {base}")
            elif not isinstance(node, allowed):
                out.append(f"key {dotted!r} is {type(node).__name__}, expected {base}")
        return out

    def check(self, summary: Mapping[str, Any]) -> None:
        problems = self.problems(summary)
        if problems:
            raise ContractError(f"{self.path} does not follow its contract: {'; '.join(problems)}")


#: keys every summary has: which stage, attempt, profile and host, and how long it took
COMMON_SUMMARY_KEYS: tuple[tuple[str, str], ...] = (
    ("stage", "str"),
    (ATTEMPT_COLUMN, "str"),
    ("profile", "str"),
    ("host", "dict"),
    ("seconds", "number"),
)

#: the columns of a checks table (integration, infra): one row per end-to-end check
CHECK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("check", "str"),
    ("model", "str"),  # the model's name ("all" or "mixed" for checks of the whole run)
    ("format", "str"),  # the model file's format (onnx, torchscript) when the check is per file
    ("status", "str"),
    ("passed", "bool"),
    ("measured", "float"),
    ("samples", "int"),  # how much evidence `measured` rests on (requests, rows, ...)
    ("unit", "str"),
    ("limit", "float"),
    ("detail", "str"),
    (ATTEMPT_COLUMN, "str"),
)
