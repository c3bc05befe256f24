"""The report's figures, drawn from the run's tables as inline PNG (base64).

matplotlib is imported lazily and only through its object-oriented API with the Agg canvas
(no pyplot, no global backend switch). A figure whose data is missing or unusable becomes a
short note; drawing never raises. PNGs are written without metadata, so the same tables give
the same bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.stages.registry import summary_contract
from pipeline.stages.registry import table as table_contract

__all__ = ["Plot", "draw_plots"]

_WIDTH_IN, _HEIGHT_IN, _DPI = 7.6, 3.3, 96
_SCENARIOS = table_contract("load", "scenarios").path
_CAPACITY = table_contract("load", "capacity").path
_CONCURRENCY = table_contract("load", "concurrency").path
_LOAD_RESOURCES = table_contract("load", "resources").path
_STRESS_TESTS = table_contract("stress", "tests").path
_STRESS_RESOURCES = table_contract("stress", "resources").path
_BASELINE_QUANTILES = table_contract("regression", "latency_quantiles").path
_BASELINE_TRIALS = table_contract("regression", "capacity_trials").path
_REGRESSION_SUMMARY = summary_contract("regression").path
_COLOURS = {"p50": "#4c78a8", "p95": "#f58518", "p99": "#e45756", "ok": "#54a24b", "bad": "#e45756"}


@dataclass(frozen=True)
class Plot:
    """One figure: `png_base64` is None when its data was missing, and `note` says why."""

    key: str
    title: str
    sources: tuple[str, ...]
    png_base64: str | None
    note: str


class _NoData(Exception):
    pass


def _read(root: Path, relative: str, columns: Sequence[str]) -> Any:
    import pandas as pd

    path = root / relative
    stage = relative.split("/")[1] if relative.startswith("stages/") else "its"
    if not path.is_file():
        raise _NoData(f"{relative} is missing (the {stage} stage did not run)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _NoData(f"{relative} is not a readable table: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _NoData(f"{relative} lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise _NoData(f"{relative} has no rows")
    return frame


def _figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    # fixed margins: a layout engine would cost more time than all the drawing
    fig = Figure(figsize=(_WIDTH_IN, _HEIGHT_IN), dpi=_DPI)
    fig.subplots_adjust(left=0.09, right=0.91, bottom=0.2, top=0.92, wspace=0.3)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    return fig, list(axes)


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bool_column(frame: Any, column: str) -> Any:
    return frame[column].astype(str).str.lower().eq("true")


def _threshold(criteria: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    row = criteria.get(name) or {}
    return row.get("threshold")


def _fmt(value: Any) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _rate_label(value: float) -> str:
    """16000 -> "16k": short enough that neighbouring ticks never run into each other."""
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _log_axis(ax: Any, which: str, values: Any, label: Callable[[float], str] = "{:g}".format):
    """A log scale on `ax`'s `which` ("x" or "y") axis with few, round labels: at powers of
    ten over more than 2.5 decades, at 1, 2 and 5 per decade over more than one, at every
    integer multiple below that. Never one label per data point: the close rates at the end
    of a capacity search would print on top of each other."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [float(v) for v in values if v is not None and float(v) > 0]
    span = math.log10(max(positive) / min(positive)) if positive else 0.0
    every = tuple(float(i) for i in range(1, 10))
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    labelled = (1.0,) if span > 2.5 else (1.0, 2.0, 5.0) if span > 1.0 else every
    axis.set_major_locator(LogLocator(base=10.0, subs=labelled))
    axis.set_major_formatter(FuncFormatter(lambda value, _: label(value)))
    axis.set_minor_locator(LogLocator(base=10.0, subs=every))
    axis.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------- the figures
def _latency_by_scenario(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    table = _SCENARIOS
    frame = _read(root, table, ("scenario", "p50_ms", "p95_ms", "p99_ms"))
    fig, (ax,) = _figure()
    x = list(range(len(frame)))
    width = 0.27
    p99_valid = (
        _bool_column(frame, "p99_valid") if "p99_valid" in frame.columns else [True] * len(frame)
    )
    for i, column in enumerate(("p50", "p95", "p99")):
        bars = ax.bar(
            [v + (i - 1) * width for v in x],
            frame[f"{column}_ms"],
            width,
            label=column,
            color=_COLOURS[column],
        )
        if column == "p99":
            for bar, valid in zip(bars, p99_valid, strict=True):
                if not valid:
                    bar.set_hatch("///")
                    bar.set_alpha(0.5)
    ax.set_xticks(x, frame["scenario"], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    caption = (
        "Latency percentiles per closed-loop scenario, from the scheduled send time "
        f"(warm-up discarded). Thresholds: p95 <= {_fmt(_threshold(criteria, 'p95_latency_ms'))}"
        f" ms, p99 <= {_fmt(_threshold(criteria, 'p99_latency_ms'))} ms."
    )
    if not all(p99_valid):
        caption += " Hatched p99 bars: too few samples in that scenario to claim a p99."
    return fig, caption, (table,)


def _latency_vs_load(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    table = _CAPACITY
    frame = _read(root, table, ("offered_rps", "p50_ms", "p99_ms")).sort_values("offered_rps")
    if "subject" not in frame.columns:
        frame["subject"] = "mix"
    fig, (ax,) = _figure()
    mix = frame[frame["subject"] == "mix"]
    ax.plot(mix["offered_rps"], mix["p50_ms"], "o-", color=_COLOURS["p50"], label="p50 (mix)")
    ax.plot(mix["offered_rps"], mix["p99_ms"], "s-", color=_COLOURS["p99"], label="p99 (mix)")
    for subject, part in frame[frame["subject"] != "mix"].groupby("subject"):
        ax.plot(part["offered_rps"], part["p99_ms"], "^--", linewidth=1, label=f"p99 ({subject})")
    bound = _threshold(criteria, "p99_latency_ms")
    if bound:
        ax.axhline(bound, color=_COLOURS["p99"], linestyle="--", linewidth=1, label="p99 bound")
    _log_axis(ax, "x", frame["offered_rps"], _rate_label)
    _log_axis(ax, "y", [*frame["p50_ms"], *frame["p99_ms"], *([bound] if bound else [])])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("offered load (req/s, open loop, Poisson; log scale)")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    sustained = (criteria.get("sustained_throughput_rps") or {}).get("measured")
    caption = (
        f"Latency against offered load in the capacity search ({len(frame)} trials). "
        f"Highest sustained rate: {_fmt(sustained)} req/s."
    )
    return fig, caption, (table,)


def _throughput_by_scenario(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    table = _SCENARIOS
    frame = _read(root, table, ("scenario", "throughput_rps", "users"))
    fig, (ax,) = _figure()
    bars = ax.bar(frame["scenario"], frame["throughput_rps"], color=_COLOURS["p50"])
    for bar, users in zip(bars, frame["users"], strict=True):
        ax.annotate(
            f"{int(users)} users",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    ax.set_ylabel("throughput (req/s)")
    caption = (
        "Completed requests per second in each closed-loop scenario (bounded by its users and "
        "think time; the sustained capacity is the open-loop search above)."
    )
    return fig, caption, (table,)


def _memory_over_time(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    load_table, stress_table = _LOAD_RESOURCES, _STRESS_RESOURCES
    panels = []
    notes = []
    for table, time_column, label in (
        (load_table, "t_s", "load stage"),
        (stress_table, "t_s", "stress stage"),
    ):
        try:
            panels.append((table, _read(root, table, (time_column, "rss_mb")), time_column, label))
        except _NoData as exc:
            notes.append(str(exc))
    if not panels:
        raise _NoData("; ".join(notes))
    fig, axes = _figure(len(panels))
    for ax, (_, frame, time_column, label) in zip(axes, panels, strict=True):
        ax.plot(frame[time_column], frame["rss_mb"], color=_COLOURS["p50"], linewidth=1.2)
        ax.set_title(f"engine RSS, {label}", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(bottom=0)
    caption = (
        "Resident memory of the engine process (its own process, sampled). Threshold: "
        f"{_fmt(_threshold(criteria, 'memory_usage_mb'))} MB peak during the load stage."
    )
    if notes:
        caption += " Not shown: " + "; ".join(notes) + "."
    return fig, caption, tuple(p[0] for p in panels)


def _stress_success(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    table = _STRESS_TESTS
    frame = _read(root, table, ("test", "success_rate", "survived", "recovered"))
    fig, (ax,) = _figure()
    ok = _bool_column(frame, "survived") & _bool_column(frame, "recovered")
    colours = [_COLOURS["ok"] if good else _COLOURS["bad"] for good in ok]
    ax.bar(frame["test"], frame["success_rate"].fillna(0.0), color=colours)
    ax.set_ylim(0, 1.05)
    ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    ax.set_ylabel("success rate")
    caption = (
        "Success rate of the requests in each stress test's measured phase; green: survived "
        "and recovered, red: not. Queue overflow rejects by design (bounded queue), so its "
        "rate counts rejected requests as unsuccessful."
    )
    return fig, caption, (table,)


def _concurrency(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    table = _CONCURRENCY
    frame = _read(root, table, ("users", "p95_ms", "success_rate"))
    fig, (ax,) = _figure()
    ax.plot(frame["users"], frame["p95_ms"], "o-", color=_COLOURS["p95"], label="p95 latency")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(frame["users"], frame["success_rate"], "s--", color=_COLOURS["ok"], label="success")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("success rate")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    supported = (criteria.get("concurrent_users_supported") or {}).get("measured")
    caption = (
        f"p95 latency and success rate per concurrency level; supported users: {_fmt(supported)}."
    )
    return fig, caption, (table,)


def _needs_baseline(root: Path, table: str) -> None:
    if not (root / table).is_file() and (root / _REGRESSION_SUMMARY).is_file():
        raise _NoData("this run had no comparable baseline, so there is nothing to overlay")


def _baseline_latency(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    """This run's latency distribution over the baseline's, per subject (quantile curves)."""
    table = _BASELINE_QUANTILES
    _needs_baseline(root, table)
    frame = _read(root, table, ("side", "subject", "q", "latency_ms"))
    subjects = list(dict.fromkeys(frame["subject"]))
    fig, (ax,) = _figure()
    palette = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756"]
    for i, subject in enumerate(subjects):
        colour = palette[i % len(palette)]
        for side, style in (("baseline", "--"), ("candidate", "-")):
            part = frame[(frame["subject"] == subject) & (frame["side"] == side)]
            if not part.empty:
                ax.plot(
                    part["latency_ms"],
                    part["q"],
                    style,
                    color=colour,
                    linewidth=1.2,
                    label=f"{subject} ({'this run' if side == 'candidate' else side})",
                )
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.legend(fontsize=7, ncol=2)
    caption = (
        "Latency distributions of the load scenarios (after warm-up), this run (solid) over "
        "the baseline (dashed), for the mix and each model. A curve shifted right is slower."
    )
    return fig, caption, (table,)


def _baseline_load(root: Path, criteria: Mapping[str, Mapping[str, Any]]):
    """p99 against offered load of the mix, this run and the baseline, with both knees."""
    import json

    table = _BASELINE_TRIALS
    _needs_baseline(root, table)
    frame = _read(root, table, ("side", "offered_rps", "p99_ms"))
    if "subject" in frame.columns:
        frame = frame[frame["subject"] == "mix"]
    frame = frame.sort_values("offered_rps")
    fig, (ax,) = _figure()
    summary_path = root / _REGRESSION_SUMMARY
    knees = {}
    if summary_path.is_file():
        knees = (json.loads(summary_path.read_text()).get("knees") or {}).get("mix") or {}
    for side, style, colour in (("baseline", "s--", "#888888"), ("candidate", "o-", "#e45756")):
        part = frame[frame["side"] == side]
        label = "this run" if side == "candidate" else "baseline"
        ax.plot(part["offered_rps"], part["p99_ms"], style, color=colour, label=f"p99 ({label})")
        knee = knees.get(side)
        if knee:
            ax.axvline(knee, color=colour, linestyle=":", linewidth=1.2, label=f"knee ({label})")
    bound = _threshold(criteria, "p99_latency_ms")
    if bound:
        ax.axhline(bound, color="#e45756", linestyle="--", linewidth=0.8, label="p99 bound")
    _log_axis(ax, "x", frame["offered_rps"], _rate_label)
    _log_axis(ax, "y", [*frame["p99_ms"], *([bound] if bound else [])])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("offered load of the mix (req/s, open loop; log scale)")
    ax.set_ylabel("p99 latency (ms)")
    ax.legend(fontsize=7)
    caption = (
        "p99 latency against offered load in both runs' capacity searches (the mix), with "
        f"each run's knee: this run {_fmt(knees.get('candidate'))} req/s, the baseline "
        f"{_fmt(knees.get('baseline'))} req/s."
    )
    return fig, caption, (table,)


_FIGURES: tuple[tuple[str, str, Callable[..., Any], tuple[str, ...]], ...] = (
    (
        "latency_by_scenario",
        "Latency percentiles per scenario",
        _latency_by_scenario,
        (_SCENARIOS,),
    ),
    (
        "latency_vs_load",
        "Latency against offered load",
        _latency_vs_load,
        (_CAPACITY,),
    ),
    (
        "throughput_by_scenario",
        "Throughput per scenario",
        _throughput_by_scenario,
        (_SCENARIOS,),
    ),
    (
        "memory_over_time",
        "Engine memory over time",
        _memory_over_time,
        (_LOAD_RESOURCES, _STRESS_RESOURCES),
    ),
    (
        "stress_success",
        "Success rate across stress tests",
        _stress_success,
        (_STRESS_TESTS,),
    ),
    (
        "concurrency",
        "Latency and success against concurrent users",
        _concurrency,
        (_CONCURRENCY,),
    ),
    (
        "baseline_latency",
        "Latency distributions against the baseline",
        _baseline_latency,
        (_BASELINE_QUANTILES,),
    ),
    (
        "baseline_load",
        "Latency against offered load, this run and the baseline",
        _baseline_load,
        (_BASELINE_TRIALS,),
    ),
)


def draw_plots(root: Path, criteria: Sequence[Mapping[str, Any]]) -> list[Plot]:
    """Every figure of the report, or a note in its place."""
    by_name = {c["name"]: c for c in criteria}
    plots = []
    for key, title, draw, sources in _FIGURES:
        try:
            fig, caption, used = draw(root, by_name)
            plots.append(Plot(key, title, tuple(used), _png(fig), caption))
        except _NoData as exc:
            plots.append(Plot(key, title, sources, None, f"Not available: {exc}."))
        except Exception as exc:  # a figure must never break the report
            plots.append(
                Plot(key, title, sources, None, f"Could not draw: {type(exc).__name__}: {exc}.")
            )
    return plots
