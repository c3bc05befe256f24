"""Run a stage's gate: validate its table with a GX suite, record the result, update Data Docs.

Everything GX keeps for a run lives under that run's folder: suites, validation results
and validation definitions in `<run_dir>/.gx/`, the Data Docs site in `<run_dir>/data_docs/`.
Each call builds a fresh in-process (ephemeral) GX context pointed at those folders, so no
state is shared between runs and nothing is written to the working directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline._io import atomic_write_json
from pipeline.gates.contracts import TABLES, TableContract
from pipeline.gates.suites import ExpectationSpec, row_condition_pairs, suite_name, suite_spec
from pipeline.stages.registry import DATA_DOCS_DIR
from pipeline.stages.registry import stage as stage_spec
from pipeline.targets import Targets, load_targets

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GateError", "GateFailed", "GateResult", "raise_for_gate", "run_gate"]

_MAX_EXAMPLES = 5
_GX_DIR = ".gx"
_DOCS_DIR = DATA_DOCS_DIR
_SITE_NAME = "relcert"

# GX keeps a process-wide "current context"; one gate at a time per process keeps each
# validation bound to its own run's context.
_PROCESS_LOCK = threading.Lock()


class GateError(RuntimeError):
    """The gate could not run: its table is missing or does not follow the contract."""


class GateFailed(Exception):
    """The gate ran and some expectations were not met."""

    def __init__(self, stage: str, failed: tuple[str, ...] | list[str]) -> None:
        self.stage = stage
        self.failed = tuple(failed)
        lines = "\n".join(f"  - {meaning}" for meaning in self.failed)
        super().__init__(
            f"gate {stage!r} failed: {len(self.failed)} expectation(s) not met:\n{lines}"
        )


@dataclass(frozen=True)
class GateResult:
    """Outcome of one gate; `path` is the JSON summary, `expectations` its per-check records."""

    stage: str
    success: bool
    path: Path
    failed: tuple[str, ...]
    expectations: tuple[dict[str, Any], ...]
    data_docs_index: Path


def raise_for_gate(result: GateResult) -> None:
    """Raise GateFailed listing the failed expectations' meanings; return if the gate passed."""
    if not result.success:
        raise GateFailed(result.stage, result.failed)


# ---------------------------------------------------------------------------------------------
# Reading the table


def _read_table(contract: TableContract, run_dir: Path) -> pd.DataFrame:
    import pandas as pd

    path = run_dir / contract.path
    if not path.is_file():
        raise GateError(
            f"gate {contract.stage!r}: table not found: expected {contract.path} in {run_dir}"
        )
    try:
        return pd.read_csv(path, dtype=dict.fromkeys(contract.string_columns, str))
    except pd.errors.EmptyDataError:
        raise GateError(
            f"gate {contract.stage!r}: {path} is empty (expected a CSV header with columns "
            f"{', '.join(contract.column_names)})"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise GateError(f"gate {contract.stage!r}: cannot read {path} as CSV: {exc}") from None


def _check_columns(contract: TableContract, table: pd.DataFrame) -> None:
    missing = [name for name in contract.column_names if name not in table.columns]
    if missing:
        raise GateError(
            f"gate {contract.stage!r}: table {contract.path} is missing column(s) "
            f"{', '.join(map(repr, missing))}; the contract requires "
            f"{', '.join(contract.column_names)}"
        )


# ---------------------------------------------------------------------------------------------
# JSON-safe values


def _jsonable(value: Any) -> Any:
    """numpy/pandas scalars -> Python, NaN/inf -> None, containers recursively."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "isoformat"):
        return value.isoformat()
    with contextlib.suppress(TypeError, ValueError):
        import pandas as pd

        if pd.isna(value):
            return None
    return str(value)


# ---------------------------------------------------------------------------------------------
# GX: quiet import, context per run folder, validation, Data Docs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence GX warnings for the duration of a gate (logs are capped at WARNING on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _import_gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level < logging.WARNING:
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


@contextlib.contextmanager
def _run_dir_lock(gx_root: Path) -> Iterator[None]:
    """Serialise gates of one run across processes (load and stress gates may overlap)."""
    gx_root.mkdir(parents=True, exist_ok=True)
    with open(gx_root / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _context(run_dir: Path) -> Any:
    """An ephemeral GX context whose stores and Data Docs site live in this run's folder."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = FilesystemStoreBackendDefaults(root_directory=str(run_dir / _GX_DIR))
    defaults.data_docs_sites = {
        _SITE_NAME: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(run_dir / _DOCS_DIR),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _gx_expectation(spec: ExpectationSpec) -> Any:
    from great_expectations.expectations.registry import get_expectation_impl
    from great_expectations.expectations.row_conditions import deserialize_row_condition

    kwargs = dict(spec.kwargs)
    if "row_condition" in kwargs:
        kwargs["row_condition"] = deserialize_row_condition(kwargs["row_condition"])
    meta = {"target": spec.target} if spec.target else None
    return get_expectation_impl(spec.type)(**kwargs, description=spec.meaning, meta=meta)


def _validate(
    stage: str, run_dir: Path, table: pd.DataFrame, specs: list[ExpectationSpec]
) -> tuple[list[Any], Path]:
    """Validate `table` against `specs`; store the result and rebuild the run's Data Docs.

    Returns the GX ExpectationValidationResults in spec order (None where GX returned none)
    and the Data Docs index path.
    """
    gx = _import_gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    name = suite_name(stage)
    context = _context(run_dir)
    batch = (
        context.data_sources.add_pandas("relcert")
        .add_dataframe_asset(stage)
        .add_batch_definition_whole_dataframe("table")
    )
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=name, expectations=[_gx_expectation(s) for s in specs])
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )

    # A re-run of a gate replaces its earlier result, in the store and (below) in the docs.
    store = context.validation_results_store
    for key in store.list_keys():
        if key.expectation_suite_identifier.name == name:
            store.remove_key(key)

    result = definition.run(
        batch_parameters={"dataframe": table},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": _MAX_EXAMPLES},
        run_id=RunIdentifier(run_name=f"gate_{stage}", run_time=datetime.now(UTC)),
    )
    new_keys = [k for k in store.list_keys() if k.expectation_suite_identifier.name == name]
    context.build_data_docs(resource_identifiers=[*new_keys, ExpectationSuiteIdentifier(name)])
    _remove_empty_dirs(run_dir / _DOCS_DIR / "validations")
    by_meaning = {outcome.expectation_config.description: outcome for outcome in result.results}
    return [by_meaning.get(spec.meaning) for spec in specs], run_dir / _DOCS_DIR / "index.html"


def _remove_empty_dirs(root: Path) -> None:
    """GX removes a replaced result's page but not its folders; drop the empty ones."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


# ---------------------------------------------------------------------------------------------
# Summarising


def _examples(
    result: dict[str, Any], column: str | None, contract: TableContract, table: pd.DataFrame
) -> list[Any]:
    """Up to five offending rows, named by the table's key columns."""
    values = list(result.get("partial_unexpected_list") or [])[:_MAX_EXAMPLES]
    indices = list(result.get("partial_unexpected_index_list") or [])[:_MAX_EXAMPLES]
    if column is None or len(indices) != len(values):
        return values
    examples = []
    for index, value in zip(indices, values, strict=True):
        row: dict[str, Any] = {"row": index}
        if index in table.index:
            for key in contract.key:
                row[key] = table.at[index, key]
        row[column] = value
        examples.append(row)
    return examples


def _worst_value(spec: ExpectationSpec, table: pd.DataFrame) -> Any:
    """For a target bound, the value closest to failing among the rows it checked."""
    import pandas as pd

    column = spec.kwargs["column"]
    values = table[column]
    for name, value in row_condition_pairs(spec.kwargs.get("row_condition")):
        values = values[table[name] == value]
    numeric = pd.to_numeric(values.dropna(), errors="coerce")
    if numeric.empty or numeric.isna().any():  # nothing to compare, or not numbers: GX says so
        return None
    return numeric.max() if "max_value" in spec.kwargs else numeric.min()


def _record(
    spec: ExpectationSpec, outcome: Any, contract: TableContract, table: pd.DataFrame
) -> dict[str, Any]:
    result = dict(outcome.result or {})
    observed = result.get("observed_value")
    if observed is None and spec.target is not None:
        observed = _worst_value(spec, table)
    record = {
        "type": spec.type,
        "kwargs": spec.kwargs,
        "meaning": spec.meaning,
        "target": spec.target,
        "success": bool(outcome.success),
        "observed_value": observed,
        "element_count": result.get("element_count"),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_examples": _examples(result, spec.kwargs.get("column"), contract, table),
    }
    errors = _exception_messages(outcome.exception_info)
    if errors:
        record["exception"] = "; ".join(errors)[:500]
    return _jsonable(record)


def _exception_messages(info: Any) -> list[str]:
    """GX reports an exception either flat or per failed metric; collect the messages."""
    if not isinstance(info, Mapping):
        return []
    if "raised_exception" in info or "exception_message" in info:
        message = info.get("exception_message")
        return [str(message)] if info.get("raised_exception") and message else []
    return [msg for nested in info.values() for msg in _exception_messages(nested)]


# ---------------------------------------------------------------------------------------------
# The gate


def run_gate(
    stage: str,
    run_dir: str | os.PathLike[str],
    targets: Targets | None = None,
    table: pd.DataFrame | None = None,
) -> GateResult:
    """Validate `stage`'s result table with its GX suite and record the outcome.

    Reads `<run_dir>/<contract path>` unless `table` is given, validates it against
    `suite_spec(stage, targets, attempt)` (targets default to `load_targets()`; the attempt is
    the run's current one: rows of another attempt fail the gate), writes
    `<run_dir>/gates/<stage>.json` (stamped with the attempt) and updates
    `<run_dir>/data_docs/`. Raises GateError when the table is missing or lacks a contract
    column; a failed expectation is not an error here (see `raise_for_gate`).
    """
    from pipeline.stages.common import RunDir, StageError

    root = Path(run_dir).resolve()
    run = RunDir(root)
    attempt_id = run.attempt_id()
    try:
        model_info = run.model_info()
    except StageError:
        model_info = None  # no models in this folder: the run-level criteria only
    specs = suite_spec(
        stage, targets if targets is not None else load_targets(), attempt_id, model_info
    )
    contract = TABLES[stage]
    if table is None:
        table = _read_table(contract, root)
    _check_columns(contract, table)

    with _PROCESS_LOCK, _run_dir_lock(root / _GX_DIR), _quiet():
        outcomes, docs_index = _validate(stage, root, table, specs)

    if any(outcome is None for outcome in outcomes):
        raise GateError(f"gate {stage!r}: GX returned no result for some expectations")
    records = tuple(
        _record(spec, outcome, contract, table)
        for spec, outcome in zip(specs, outcomes, strict=True)
    )
    failed = tuple(record["meaning"] for record in records if not record["success"])
    success = not failed
    payload = {
        "stage": stage,
        "attempt_id": attempt_id,
        "success": success,
        "table": contract.path,
        "row_count": len(table),
        "suite_name": suite_name(stage),
        "expectations": list(records),
        "failed": list(failed),
    }
    path = atomic_write_json(root / stage_spec(stage).gate_path, _jsonable(payload))
    return GateResult(
        stage=stage,
        success=success,
        path=path,
        failed=failed,
        expectations=records,
        data_docs_index=docs_index,
    )
