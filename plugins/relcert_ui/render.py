"""HTML of the certifications page, its trend plot (inline SVG) and the error pages.

Plain strings with every value escaped; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from relcert_ui.artifacts import APPROVED, CONDITIONAL, METRICS, NOT_APPROVED, RunSummary

DECISION_COLOURS = {
    APPROVED: ("#1e7e34", "#e6f4ea"),
    CONDITIONAL: ("#8a5a00", "#fff4d6"),
    NOT_APPROVED: ("#b00020", "#fde7ea"),
}
_RUNNING = ("#555", "#eee")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2rem;color:#1a1a1a}
h1{font-size:1.35rem;margin:0 0 .3rem}
p.sub{color:#555;margin:.1rem 0 1rem}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .45rem;border-radius:.6rem;font-weight:600;
font-size:.78rem;white-space:nowrap}
.met{color:#1e7e34}.unmet{color:#b00020;font-weight:600}.invalid{color:#8a5a00;font-style:italic}
.muted{color:#777}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem}
.trend{margin:0 0 1.2rem;max-width:1000px}.trend svg{max-width:100%;height:auto}
a{color:#0b5cad}ul.models,ul.interface{margin:0;padding-left:1rem}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def decision_badge(run: RunSummary) -> str:
    if run.status == "running":
        fg, bg = _RUNNING
        return f'<span class="badge" style="color:{fg};background:{bg}">running / no report</span>'
    if run.status == "unreadable":
        fg, bg = _RUNNING
        return f'<span class="badge" style="color:{fg};background:{bg}">report unreadable</span>'
    decision = run.decision or "UNKNOWN"
    fg, bg = DECISION_COLOURS.get(decision, _RUNNING)
    badge = (
        f'<span class="badge decision-{escape(decision.lower())}" '
        f'style="color:{fg};background:{bg}">{escape(decision)}</span>'
    )
    if run.relaxed:
        badge += (
            '<br><span class="relaxed">relaxed targets: '
            + escape("; ".join(run.relaxed))
            + "</span>"
        )
    if run.why:
        badge += '<br><span class="muted why">' + escape(" ".join(run.why)[:400]) + "</span>"
    return badge


def _fmt_number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def metric_cell(metric: Mapping[str, Any] | None) -> str:
    if not metric or metric.get("measured") is None:
        return '<td class="num muted">–</td>'
    text = f"{_fmt_number(metric['measured'])} {escape(str(metric.get('unit') or ''))}".strip()
    classes = ["num"]
    notes = []
    if metric.get("met") is True:
        classes.append("met")
    elif metric.get("met") is False:
        classes.append("unmet")
        notes.append("target not met")
    if metric.get("valid") is False:
        classes.append("invalid")
        notes.append("measurement not statistically valid")
        text += " (invalid)"
    rule = metric.get("rule")
    if not rule and metric.get("threshold") is not None:
        rule = f"threshold {metric['threshold']:g} {metric.get('unit') or ''}".strip()
    title = "; ".join([r for r in [rule, *notes] if r])
    title_attr = f' title="{escape(title)}"' if title else ""
    return f'<td class="{" ".join(classes)}"{title_attr}>{text}</td>'


def _interface_cell(run: RunSummary) -> str:
    """Each interface SLA and the availability: measured against its threshold, met, not
    met, invalid, not run or not applicable (with why, on hover)."""
    if not run.interface:
        return '<td class="muted">–</td>'
    items = []
    for c in run.interface:
        status = c.get("status")
        unit = "" if c.get("unit") == "ratio" else escape(c.get("unit") or "")
        bound = ""
        if c.get("threshold") is not None:
            op = "&lt;=" if c.get("direction") == "max" else "&gt;="
            bound = f" ({op} {c['threshold']:g}{' ' + unit if unit else ''})"
        if status == "not_applicable":
            verdict, klass, bound = "not applicable", "muted", ""
        elif status == "not_run":
            verdict, klass = "not run", "unmet"
        else:
            value = c.get("measured")
            shown = f"{value:.4f}" if value is not None and not unit else None
            verdict = "–" if value is None else shown or f"{_fmt_number(value)} {unit}"
            verdict += " (invalid)" if status == "invalid" else ""
            klass = "met" if c.get("met") and status == "measured" else "unmet"
        items.append(
            f'<li class="{klass}" title="{escape(c.get("detail") or "")}">'
            f"{escape(c['name'])}: {verdict}{bound}</li>"
        )
    return f'<td><ul class="interface">{"".join(items)}</ul></td>'


def _models_cell(run: RunSummary) -> str:
    if not run.models:
        return '<td class="muted">–</td>'
    items = []
    for model in run.models:
        text = escape(str(model.get("name")))
        if model.get("version"):
            text += f' <span class="mono">{escape(str(model["version"]))}</span>'
        if model.get("formats"):
            text += f' <span class="muted">({escape(", ".join(model["formats"]))})</span>'
        items.append(f"<li>{text}</li>")
    return f'<td><ul class="models">{"".join(items)}</ul></td>'


def _links_cell(links: Mapping[str, str | None]) -> str:
    labels = (("report", "Report"), ("data_docs", "Data Docs"), ("package", "Package"))
    parts = [
        f'<a href="{escape(links[key])}">{label}</a>' for key, label in labels if links.get(key)
    ]
    return f"<td>{' · '.join(parts) if parts else '<span class=muted>–</span>'}</td>"


def _baseline_cell(run: RunSummary, links: Mapping[str, Mapping[str, str | None]]) -> str:
    """The run against its baseline: regressions (or none), with a link to the baseline."""
    note = f'<br><span class="muted">{escape(run.regression_note)}</span>'
    if run.regressions is None:
        text = "no baseline" if run.status == "certified" else "–"
        return f'<td class="muted">{text}{note if run.regression_note else ""}</td>'
    target = (links.get(run.baseline or "") or {}).get("report")
    name = escape(run.baseline or "")
    base = f'<span class="mono">{name}</span>'
    if target:
        base = f'<a href="{escape(target)}">{name}</a>'
    verdict = (
        f'<span class="unmet">{run.regressions} regression(s)</span>'
        if run.regressions
        else '<span class="met">no regression</span>'
    )
    return f"<td>{verdict} vs {base}{note if run.regression_note else ''}</td>"


#: the trend plot shows at most this many of the newest runs
TREND_RUNS = 200


def certifications_page(
    runs: Sequence[RunSummary],
    links: Mapping[str, Mapping[str, str | None]],
    *,
    dag_id: str,
    json_url: str,
    user: str | None = None,
    all_runs: Sequence[RunSummary] | None = None,
    page: int = 1,
    pages: int = 1,
    page_url: str | None = None,
) -> str:
    """One page of runs (newest first) with the trend plot above it; the summary counts and
    the trend (newest TREND_RUNS runs) are over `all_runs` when given."""
    every = list(all_runs) if all_runs is not None else list(runs)
    header = (
        "<th>Snapshot date</th><th>Run</th><th>Models</th><th>Decision</th>"
        "<th>Readiness</th>"
        + "".join(f"<th>{escape(label)}</th>" for _, label, _ in METRICS)
        + "<th>Interface SLAs and availability</th>"
        + "<th>Against baseline</th><th>Reason</th><th>Artifacts</th>"
    )
    rows = []
    for run in runs:
        readiness = (
            f'<td class="num">{run.readiness_score:.2f}</td>'
            if run.readiness_score is not None
            else '<td class="num muted">–</td>'
        )
        profile = f'<br><span class="muted">{escape(run.profile)}</span>' if run.profile else ""
        rows.append(
            f'<tr data-run-key="{escape(run.run_key)}">'
            f"<td>{escape(run.snapshot_date or '–')}</td>"
            f'<td class="mono">{escape(run.run_id)}{profile}</td>'
            f"{_models_cell(run)}<td>{decision_badge(run)}</td>{readiness}"
            + "".join(metric_cell(run.metrics.get(name)) for name, _, _ in METRICS)
            + _interface_cell(run)
            + _baseline_cell(run, links)
            + f"<td>{escape(run.reason or '')}</td>{_links_cell(links.get(run.run_key, {}))}</tr>"
        )
    certified = sum(1 for r in every if r.status == "certified")
    counts = {d: sum(1 for r in every if r.decision == d) for d in DECISION_COLOURS}
    summary = (
        f"{len(every)} run(s) of <span class=mono>{escape(dag_id)}</span>, {certified} with a "
        f"report: {counts[APPROVED]} approved, {counts[CONDITIONAL]} conditional, "
        f"{counts[NOT_APPROVED]} not approved."
        f' <a href="{escape(json_url)}">JSON</a>'
    )
    if user:
        summary += f' <span class="muted">Signed in as {escape(user)}.</span>'
    plot = trend_svg(every[:TREND_RUNS])
    plot_html = (
        f'<figure class="trend" id="trend">{plot}</figure>'
        if plot
        else '<p class="muted" id="trend">No measured runs yet: the trend plot appears once a '
        "run has a report.</p>"
    )
    table = (
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No certification runs yet.</p>'
    )
    nav = ""
    if pages > 1 and page_url is not None:
        newer = f'<a href="{escape(page_url)}{page - 1}">Newer</a>' if page > 1 else ""
        older = f'<a href="{escape(page_url)}{page + 1}">Older</a>' if page < pages else ""
        nav = (
            f'<nav class="pages" id="pages">Page {page} of {pages} '
            + " · ".join(x for x in (newer, older) if x)
            + "</nav>"
        )
    body = (
        f'<h1>Model release certifications</h1><p class="sub">{summary}</p>{plot_html}{table}{nav}'
    )
    return _page("Model release certifications", body)


def message_page(title: str, message: str, *, link: tuple[str, str] | None = None) -> str:
    """A small page for errors, missing reports and the anonymous 401."""
    extra = f'<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>' if link else ""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>{extra}")


# ---------------------------------------------------------------------------- trend plot

_PLOT_LOCK = threading.Lock()
_MARKER_COLOURS = {APPROVED: "#1e7e34", CONDITIONAL: "#d39200", NOT_APPROVED: "#b00020"}


def _plot_points(runs: Sequence[RunSummary]) -> tuple:
    """Chronological, hashable plot input: ((label, decision, values, thresholds), ...)."""
    points = []
    for run in sorted(runs, key=lambda r: r.sort_key):
        if run.status != "certified":
            continue
        values, thresholds = [], []
        for name, _, _ in METRICS:
            metric = run.metrics.get(name) or {}
            values.append(metric.get("measured"))
            thresholds.append(metric.get("threshold"))
        if all(v is None for v in values):
            continue
        label = run.snapshot_date or run.run_key[:16]
        points.append((label, run.decision, tuple(values), tuple(thresholds)))
    return tuple(points)


def trend_svg(runs: Sequence[RunSummary]) -> str | None:
    """An inline <svg> of p99 latency, sustained throughput and memory across runs."""
    points = _plot_points(runs)
    if not points:
        return None
    units = tuple(
        str(
            next(
                (m["unit"] for r in runs if (m := r.metrics.get(name)) and m.get("unit")),
                default_unit,
            )
        )
        for name, _, default_unit in METRICS
    )
    return _render_svg(points, units)


@functools.lru_cache(maxsize=16)
def _render_svg(points: tuple, units: tuple[str, ...]) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    xs = list(range(len(points)))
    with _PLOT_LOCK, matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "relcert"}):
        fig = Figure(figsize=(9, 6.6), layout="constrained")
        axes = fig.subplots(len(METRICS), 1, sharex=True)
        for i, ((_, label, _), ax) in enumerate(zip(METRICS, axes, strict=True)):
            series = [(x, p[2][i], p[1]) for x, p in zip(xs, points, strict=True)]
            measured = [(x, v, d) for x, v, d in series if v is not None]
            if measured:
                ax.plot([m[0] for m in measured], [m[1] for m in measured], color="#4a6fa5", lw=1.2)
                ax.scatter(
                    [m[0] for m in measured],
                    [m[1] for m in measured],
                    c=[_MARKER_COLOURS.get(m[2], "#777777") for m in measured],
                    s=28,
                    zorder=3,
                )
            threshold = next((p[3][i] for p in reversed(points) if p[3][i] is not None), None)
            if threshold is not None:
                ax.axhline(threshold, color="#888888", ls="--", lw=1)
                ax.annotate(
                    f"threshold {threshold:g}",
                    xy=(1, threshold),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="#666666",
                )
            ax.set_ylabel(f"{label}\n({units[i]})", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        step = max(1, -(-len(points) // 12))
        ticks = xs[::step]
        axes[-1].set_xticks(ticks, [points[x][0] for x in ticks], rotation=30, ha="right")
        axes[-1].set_xlim(-0.5, len(points) - 0.5)
        fig.suptitle(
            "Trend across runs (green approved, amber conditional, red not approved)", fontsize=9
        )
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    return svg.replace(
        "<svg ",
        '<svg role="img" aria-label="p99 latency, sustained throughput and memory across runs" ',
        1,
    )
