"""The stage registry: every certification stage, declared once.

A `Stage` names its runner (a function of one `StageContext`), the tables and summary it
writes (their contracts), the stages it comes after, and how the DAG runs it. The DAG, the
CLI, the gates, certification and the report iterate `STAGES`; adding a stage is one
module under `pipeline/stages/` and one entry here.

Light on purpose (no pandas, numpy or GX): the DAG file imports it at parse time; runners
are imported only when a stage runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.stages.contracts import (
    ATTEMPT_COLUMN,
    CHECK_COLUMNS,
    SummaryContract,
    TableContract,
)

if TYPE_CHECKING:
    from pipeline.stages.context import StageContext

__all__ = [
    "DATA_DOCS_DIR",
    "DATA_DOCS_INDEX",
    "GATES_DIR",
    "STAGES",
    "STAGE_NAMES",
    "TABLES",
    "Stage",
    "stage",
    "summary_contract",
    "table",
]

_A = ((ATTEMPT_COLUMN, "str"),)

#: where the gates write their results (<GATES_DIR>/<gate>.json), relative to the run folder
GATES_DIR = "gates"
#: the Data Docs site every gate of the run updates
DATA_DOCS_DIR = "data_docs"
DATA_DOCS_INDEX = f"{DATA_DOCS_DIR}/index.html"


@dataclass(frozen=True)
class Stage:
    """One certification stage and everything the rest of relcert needs to know about it."""

    name: str  # also its gate's name: gates/<name>.json, GX suite relcert_<name>
    title: str  # one line: what it does (task docs, CLI help)
    runner: str  # "module:function", the function taking a StageContext
    tables: tuple[TableContract, ...]  # tables[0] is the one its gate validates
    summary: SummaryContract
    after: tuple[str, ...] = ()  # stages whose gates must pass before this one runs
    task_id: str = ""  # the DAG task that runs it
    perf: bool = False  # measures speed: takes the perf pool (never shares a machine's CPUs)
    always: bool = False  # runs even when an earlier gate failed (certify: measures what exists)

    @property
    def gate(self) -> str:
        return self.name

    @property
    def gate_path(self) -> str:
        """Its gate's result, relative to the run folder."""
        return f"{GATES_DIR}/{self.gate}.json"

    @property
    def gate_task_id(self) -> str:
        return f"gate_{self.name}"

    @property
    def gated_table(self) -> TableContract:
        return self.tables[0]

    def load_runner(self) -> Callable[[StageContext], dict[str, Any]]:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


def _t(stage: str, name: str, columns, key, noun: str) -> TableContract:
    return TableContract(stage, f"stages/{stage}/{name}.csv", (*columns, *_A), key, noun)


_REQUEST_COLUMNS = (
    ("scenario", "str"),
    ("user", "int"),
    ("model", "str"),
    ("scheduled_s", "float"),
    ("warmup", "bool"),
    ("latency_ms", "float"),
    ("issue_delay_ms", "float"),
    ("success", "bool"),
    ("error", "str"),
    ("batch_size", "int"),
    ("cache_hit", "bool"),
    ("inference_ms", "float"),  # the model's own compute time for the request's batch
    ("batch_id", "int"),  # requests run in one runtime call share it
)
_RESOURCE_COLUMNS = (("t_s", "float"), ("rss_mb", "float"), ("cpu_percent", "float"))

STAGES: tuple[Stage, ...] = (
    Stage(
        name="build",
        title="Build (train + export) or import the run's models; verify checksums, parity, "
        "that the engine loads every model file, and its finite outputs.",
        runner="pipeline.stages.build:run",
        tables=(
            _t(
                "build",
                "models",
                (
                    ("model", "str"),
                    ("format", "str"),
                    ("version", "str"),
                    ("sha256_verified", "bool"),
                    ("parity_status", "str"),
                    ("parity_max_abs_diff", "float"),
                    ("parity_passed", "bool"),
                    ("loaded", "bool"),  # the engine's model manager loads and warms it up
                    ("load_refusal", "str"),  # why it does not (empty when it does)
                    ("outputs_finite", "bool"),
                    ("detail", "str"),
                ),
                ("model", "format"),
                "exported model",
            ),
        ),
        summary=SummaryContract(
            "build", (("snapshot_date", "str"), ("models", "dict"), ("rows", "int"))
        ),
        task_id="build_models",
    ),
    Stage(
        name="integration",
        title="End-to-end checks of every model on the in-process engine: load, shapes, "
        "batching, memory, concurrent clients, workflow, parity, model SLAs.",
        runner="pipeline.stages.integration:run",
        tables=(
            TableContract(
                "integration",
                "stages/integration/checks.csv",
                CHECK_COLUMNS,
                ("check", "model"),
                "check",
            ),
        ),
        summary=SummaryContract(
            "integration",
            (
                ("checks", "int"),
                ("passed", "int"),
                ("failed", "list"),
                ("initialization_s", "number?"),
            ),
        ),
        after=("build",),
        task_id="validate_integration",
    ),
    Stage(
        name="load",
        title="The plan's six closed-loop scenarios, capacity, peak, concurrency and cache "
        "against the engine in its own process.",
        runner="pipeline.stages.load:run",
        tables=(
            _t(
                "load",
                "scenarios",
                (
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
                ("scenario",),
                "scenario",
            ),
            _t("load", "requests", _REQUEST_COLUMNS, ("scenario", "user"), "request"),
            _t(
                "load",
                "windows",
                (("scenario", "str"), ("window", "int"), ("requests", "int"), ("p50_ms", "float")),
                ("scenario", "window"),
                "window",
            ),
            _t(
                "load",
                "capacity",
                (("subject", "str"), ("offered_rps", "float"), ("p99_ms", "float")),
                ("subject", "offered_rps"),
                "trial",
            ),
            _t(
                "load",
                "concurrency",
                (
                    ("users", "int"),
                    ("success_rate", "float"),
                    ("p95_ms", "float"),
                    ("passed", "bool"),
                ),
                ("users",),
                "level",
            ),
            _t(
                "load",
                "injection",
                (
                    ("model", "str"),
                    ("injected", "str"),
                    ("expected", "str"),
                    ("outcome", "str"),
                    ("success", "bool"),
                    ("error", "str"),
                ),
                ("model", "injected"),
                "request",
            ),
            _t("load", "resources", _RESOURCE_COLUMNS, ("t_s",), "sample"),
        ),
        summary=SummaryContract(
            "load",
            (
                ("warmup_s", "number"),
                ("engine_config", "dict"),
                ("calibration", "dict"),
                ("overall.requests", "int"),
                ("capacity.max_sustained_rps", "number"),
                ("capacity.capped", "bool"),
                ("capacity.trials", "int"),
                ("capacity.best_samples", "int"),
                ("peak.throughput_rps", "number"),
                ("peak.bursts", "list"),
                ("concurrency.supported_users", "int"),
                ("concurrency.levels_tested", "list"),
                ("cache.hit_rate", "number"),
                ("cache.requests", "int"),
                ("cache.best_possible_hits", "int"),
                ("error_injection.requests", "int"),
                ("memory.peak_rss_mb", "number"),
                ("memory.pool_reuse_ratio", "number?"),
            ),
        ),
        after=("integration",),
        task_id="load_test",
        perf=True,
    ),
    Stage(
        name="stress",
        title="Memory pressure, CPU saturation, queue overflow, rapid scaling, model "
        "switching, pool exhaustion and hot reload against the engine in its own process.",
        runner="pipeline.stages.stress:run",
        tables=(
            _t(
                "stress",
                "tests",
                (
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
                ("test",),
                "stress test",
            ),
            _t(
                "stress",
                "levels",
                (("test", "str"), ("phase", "str"), ("submitted", "int"), ("p95_ms", "float")),
                ("test", "phase"),
                "phase",
            ),
            _t("stress", "resources", _RESOURCE_COLUMNS, ("t_s",), "sample"),
        ),
        summary=SummaryContract(
            "stress",
            (
                ("engine_config", "dict"),
                ("tests", "dict"),
                ("survived", "int"),
                ("recovered", "int"),
                ("total", "int"),
                ("all_survived", "bool"),
                ("all_recovered", "bool"),
                ("lost", "int"),
            ),
        ),
        after=("integration",),
        task_id="stress_test",
        perf=True,
    ),
    Stage(
        name="infra",
        title="The HTTP service that will be deployed, started from the run's models on "
        "loopback: golden requests, errors, metrics, open-loop HTTP load per endpoint (the "
        "interface SLAs), the validation endpoint, availability probes, RSS.",
        runner="pipeline.stages.infra:run",
        tables=(
            TableContract(
                "infra", "stages/infra/checks.csv", CHECK_COLUMNS, ("check", "model"), "check"
            ),
            _t(
                "infra",
                "load",
                (
                    ("model", "str"),  # a model's share of the trial, or "mixed": all of it
                    ("endpoint", "str"),  # the path it went to ("all" for the mix)
                    ("offered_rps", "float"),
                    ("requests", "int"),
                    ("succeeded", "int"),
                    ("p99_ms", "float"),
                    ("valid", "bool"),
                ),
                ("model", "endpoint", "offered_rps"),
                "trial",
            ),
            _t("infra", "resources", _RESOURCE_COLUMNS, ("t_s",), "sample"),
        ),
        summary=SummaryContract(
            "infra",
            (
                ("checks", "int"),
                ("failed", "list"),
                # the interface SLAs: each endpoint's p99 under the load, the validation
                # endpoint's completion and the availability probes (null: not reached)
                ("endpoints", "list"),
                ("validation", "dict?"),
                ("availability", "dict?"),
            ),
        ),
        after=("load", "stress"),
        task_id="infra_validate",
        perf=True,
    ),
    Stage(
        name="certify",
        title="Every target of targets.yaml measured from this attempt's tables, with its "
        "status, evidence and sample count.",
        runner="pipeline.stages.certify:run",
        tables=(
            _t(
                "certify",
                "criteria",
                (
                    ("name", "str"),
                    ("metric", "str"),
                    ("model", "str"),
                    ("category", "str"),
                    ("status", "str"),
                    ("target", "float"),
                    ("tolerance", "float"),
                    ("direction", "str"),
                    ("threshold", "float"),
                    ("measured", "float"),
                    ("met", "bool"),
                    ("valid", "bool"),
                    ("samples", "int"),
                    ("min_samples", "int"),
                    ("source", "str"),
                    ("detail", "str"),
                    ("unit", "str"),
                ),
                ("name",),
                "criterion",
            ),
        ),
        summary=SummaryContract(
            "certify",
            (
                ("criteria", "int"),
                ("met", "int"),
                ("unmet", "list"),
                ("certification_passed", "bool"),
                ("by_category", "dict"),
                ("by_status", "dict"),
            ),
        ),
        after=("infra",),
        task_id="certify",
        always=True,
    ),
)

STAGES += (
    Stage(
        name="regression",
        title="This attempt against the baseline (the last approved release): latency, "
        "compute time, capacity, RSS, initialisation and quality, per model and for the mix; "
        "a change beyond its allowance that is also significant is a regression.",
        runner="pipeline.stages.regression:run",
        tables=(
            _t(
                "regression",
                "comparisons",
                (
                    ("name", "str"),
                    ("metric", "str"),
                    ("model", "str"),
                    ("status", "str"),
                    ("passed", "bool"),
                    ("verdict", "str"),
                    ("baseline_value", "float"),
                    ("candidate_value", "float"),
                    ("ratio", "float"),
                    ("ci_low", "float"),
                    ("ci_high", "float"),
                    ("p_value", "float"),
                    ("allowance", "float"),
                    ("samples", "int"),
                    ("baseline_samples", "int"),
                    ("method", "str"),
                    ("waived", "bool"),
                    ("detail", "str"),
                ),
                ("name",),
                "comparison",
            ),
            # what the report draws against the baseline, kept with this run (written only
            # when there is a baseline to compare with)
            _t(
                "regression",
                "latency_quantiles",
                (
                    ("side", "str"),
                    ("subject", "str"),
                    ("q", "float"),
                    ("latency_ms", "float"),
                    ("samples", "int"),
                ),
                ("side", "subject", "q"),
                "quantile",
            ),
            _t(
                "regression",
                "capacity_trials",
                (("side", "str"), ("offered_rps", "float"), ("p99_ms", "float")),
                ("side", "offered_rps"),
                "trial",
            ),
        ),
        summary=SummaryContract(
            "regression",
            (
                ("baseline", "dict"),
                ("comparable", "bool"),
                ("comparisons", "int"),
                ("regressions", "list"),
                ("improvements", "list"),
                ("waived", "list"),
            ),
        ),
        after=("certify",),
        task_id="regression",
        always=True,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}
#: gate (= stage) name -> the table its gate validates
TABLES: dict[str, TableContract] = {s.name: s.gated_table for s in STAGES}


def stage(name: str) -> Stage:
    """The stage called `name`; an unknown name is an error listing the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}"
        ) from None


def table(stage_name: str, table_name: str) -> TableContract:
    """The contract of `stages/<stage_name>/<table_name>.csv`."""
    for contract in stage(stage_name).tables:
        if contract.name == table_name:
            return contract
    raise ValueError(f"stage {stage_name!r} declares no table {table_name!r}")


def summary_contract(stage_name: str) -> SummaryContract:
    return stage(stage_name).summary
