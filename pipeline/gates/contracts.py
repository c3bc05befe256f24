"""The result table each stage writes into the run folder: path and columns.

These are the contract between a stage (which writes the table) and its gate (which
validates it). Stage code can import them to write exactly what the gate reads.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STAGES", "TABLES", "TableContract"]


@dataclass(frozen=True)
class TableContract:
    """Where a stage's gated table lives and which columns it must have."""

    stage: str
    path: str  # relative to the run folder, POSIX separators
    columns: tuple[tuple[str, str], ...]  # (column, kind): kind is str, bool, int or float
    key: tuple[str, ...]  # columns that identify a row in failure examples
    row_noun: str  # what one row is, for human messages: "scenario", "model", ...

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def string_columns(self) -> tuple[str, ...]:
        """Columns read as text even when their values look numeric (versions, names)."""
        return tuple(name for name, kind in self.columns if kind == "str")


_CHECK_COLUMNS = (
    ("check", "str"),
    ("model", "str"),
    ("passed", "bool"),
    ("measured", "float"),
    ("unit", "str"),
    ("limit", "float"),
    ("detail", "str"),
)

TABLES: dict[str, TableContract] = {
    contract.stage: contract
    for contract in (
        TableContract(
            stage="build",
            path="stages/build/models.csv",
            columns=(
                ("model", "str"),
                ("format", "str"),
                ("version", "str"),
                ("sha256_verified", "bool"),
                ("parity_max_abs_diff", "float"),
                ("parity_passed", "bool"),
                ("outputs_finite", "bool"),
            ),
            key=("model", "format"),
            row_noun="exported model",
        ),
        TableContract(
            stage="integration",
            path="stages/integration/checks.csv",
            columns=_CHECK_COLUMNS,
            key=("check", "model"),
            row_noun="check",
        ),
        TableContract(
            stage="load",
            path="stages/load/scenarios.csv",
            columns=(
                ("scenario", "str"),
                ("users", "int"),
                ("requests", "int"),
                ("succeeded", "int"),
                ("error_rate", "float"),
                ("mean_ms", "float"),
                ("p50_ms", "float"),
                ("p95_ms", "float"),
                ("p99_ms", "float"),
                ("throughput_rps", "float"),
                ("valid", "bool"),
                ("invalid_reason", "str"),
                ("peak_rss_mb", "float"),
                ("mean_cpu_percent", "float"),
            ),
            key=("scenario",),
            row_noun="scenario",
        ),
        TableContract(
            stage="stress",
            path="stages/stress/tests.csv",
            columns=(
                ("test", "str"),
                ("survived", "bool"),
                ("recovered", "bool"),
                ("submitted", "int"),
                ("succeeded", "int"),
                ("rejected", "int"),
                ("lost", "int"),
                ("success_rate", "float"),
                ("p95_ms", "float"),
                ("detail", "str"),
            ),
            key=("test",),
            row_noun="stress test",
        ),
        TableContract(
            stage="infra",
            path="stages/infra/checks.csv",
            columns=_CHECK_COLUMNS,
            key=("check", "model"),
            row_noun="check",
        ),
        TableContract(
            stage="certification",
            path="stages/certify/criteria.csv",
            columns=(
                ("name", "str"),
                ("category", "str"),
                ("target", "float"),
                ("tolerance", "float"),
                ("direction", "str"),
                ("threshold", "float"),
                ("measured", "float"),
                ("met", "bool"),
                ("valid", "bool"),
                ("samples", "int"),
                ("source", "str"),
                ("detail", "str"),
            ),
            key=("name",),
            row_noun="criterion",
        ),
    )
}

STAGES: tuple[str, ...] = tuple(TABLES)
