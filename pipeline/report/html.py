"""report.html: one self-contained page (inline CSS, inline PNG figures, no scripts).

Rendered with jinja2 and autoescape on, so every text from the run is escaped. Links are
relative to the run folder (evidence tables, gate results, Data Docs) and only drawn for
files that exist.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.report.plots import Plot
from pipeline.stages.registry import STAGE_NAMES, stage, summary_contract, table

__all__ = ["render_html"]

#: the run's files the page names outside the per-criterion and per-gate links, from the
#: stage registry (never spelled out in the template)
_PATHS = {
    "criteria_table": table("certify", "criteria").path,
    "certify_gate": stage("certify").gate_path,
    "regression_table": stage("regression").gated_table.path,
    "regression_evidence": tuple(c.path for c in stage("regression").tables[1:]),
}

#: files written together with report.html: linked even before they exist
_WRITTEN_WITH_THE_PAGE = frozenset({"report.json", "report.html"})

_COLOURS = {
    "APPROVED": ("#1b7f3b", "#e8f5ec"),
    "CONDITIONAL_APPROVAL": ("#9a5b00", "#fff4e0"),
    "NOT_APPROVED": ("#b00020", "#fdecee"),
}

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ d.decision }} · relcert report · {{ d.run_id }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1100px; padding: 1rem 1.5rem 3rem; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin-bottom: .3rem; }
.meta { color: #555; font-size: .85rem; }
.decision { border-left: 8px solid {{ colour }}; background: {{ tint }}; padding: .8rem 1rem;
  margin: 1rem 0; border-radius: 4px; }
.decision .verdict { font-size: 1.6rem; font-weight: 700; color: {{ colour }}; }
.decision .score { font-size: 1rem; margin-left: 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .82rem; margin: .4rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .4rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #1b7f3b; font-weight: 600; }
.bad { color: #b00020; font-weight: 600; }
.warn { color: #9a5b00; font-weight: 600; }
.na { color: #777; }
.risk-high { background: #fdecee; } .risk-medium { background: #fff4e0; }
.risk-low { background: #f4f7fb; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .78rem;
  word-break: break-all; }
p code { word-break: normal; white-space: nowrap; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #444; }
.note { font-size: .85rem; color: #666; background: #f7f7f7; padding: .5rem; }
pre { background: #f7f7f9; padding: .6rem; overflow-x: auto; font-size: .75rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 1rem; }
</style>
</head>
<body>
<h1>Model release certification: {{ d.run_id }}</h1>
<div class="meta">profile {{ d.profile or "unknown" }} · {{ d.generated_by }}
{%- if d.generated_at %} · generated {{ d.generated_at }}{% endif %}
{%- if d.conf and d.conf.reason %} · reason: {{ d.conf.reason }}{% endif %}</div>

<section class="decision" id="decision">
  <span class="verdict">{{ d.decision }}</span>
  <span class="score">confidence {{ d.confidence }} · readiness score
    <strong>{{ "%.2f"|format(d.readiness_score) }}</strong></span>
  <ul>{% for reason in d.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
  {% if d.relaxed_targets %}<p class="relaxed"><strong>Relaxed targets</strong> (this run was
    held to a weaker bar than the targets file declares, so it is at most
    CONDITIONAL_APPROVAL{% if d.conf and d.conf.reason %}; the trigger's reason:
    {{ d.conf.reason }}{% endif %}):</p>
  <table><tr><th>target</th><th>model</th><th>declared</th><th>relaxed to</th></tr>
  {% for r in d.relaxed_targets %}<tr><td>{{ r.metric }}</td><td>{{ r.model or "every model" }}</td>
  <td class="num">{{ r.declared }}</td><td class="num">{{ r.effective }}</td></tr>{% endfor %}
  </table>{% endif %}
  <strong>Next steps</strong>
  <ol>{% for step in d.next_steps %}<li>{{ step }}</li>{% endfor %}</ol>
  {% if d.package %}<p>Deployment package: {{ link(d.package) }}</p>{% endif %}
  {% if d.image %}<p>Container image: {{ link(d.image.archive) }} ({{ d.image.platform }}),
    <code>{{ d.image.reference }}</code> digest <code>{{ d.image.digest }}</code>; base
    <code>{{ d.image.base_image.reference }}</code>; {{ d.image.wheels | length }} wheels,
    each checked against its pinned sha256 (report.json: <code>image</code>).</p>
  {% if d.image.base_image.warning %}<p class="relaxed"><strong>Not reproducible:</strong>
    {{ d.image.base_image.warning }}.</p>{% endif %}{% endif %}
</section>

<section id="summary">
<h2>Validation summary</h2>
<table>
<tr><th>criteria met</th><th>gates passed</th><th>integration checks</th>
<th>load scenarios valid</th><th>stress tests survived and recovered</th>
<th>high risks</th><th>deployment allowed</th></tr>
<tr>
<td class="num">{{ s.criteria.met }}/{{ s.criteria.total }}
  {%- if s.criteria.invalid %} ({{ s.criteria.invalid }} invalid){% endif %}
  {%- if s.criteria.not_run %} ({{ s.criteria.not_run }} not run){% endif %}
  {%- if s.criteria.not_applicable %} ({{ s.criteria.not_applicable }} not applicable)
  {%- endif %}</td>
<td class="num">{{ s.gates.passed }}/{{ s.gates.total }}</td>
<td class="num">{{ counts(s.integration_checks) }}</td>
<td class="num">{{ counts(s.load_scenarios) }}</td>
<td class="num">{{ counts(s.stress_tests) }}</td>
<td class="num">{{ s.critical_issues }}</td>
<td>{{ yesno(s.deployment_allowed) }}</td>
</tr></table>
</section>

<section id="criteria">
<h2>Certification criteria</h2>
<table>
<tr><th>criterion</th><th>category</th><th>target</th><th>threshold</th><th>measured</th>
<th>margin</th><th>met</th><th>samples</th><th>evidence</th></tr>
{% for c in d.criteria %}
<tr class="criterion" id="criterion-{{ c.name }}">
<td><strong>{{ c.name }}</strong><br><span class="meta">{{ c.detail }}</span></td>
<td>{{ c.category }}</td>
<td class="num">{{ c.direction }} {{ num(c.target) }} {{ c.unit }}
  {%- if c.tolerance %} ({{ "+" if c.direction == "max" else "-" -}}
  {{ num(c.tolerance * 100) }}%){% endif %}</td>
<td class="num">{{ "<=" if c.direction == "max" else ">=" }} {{ num(c.threshold) }}</td>
<td class="num">{{ num(c.measured) }}</td>
<td class="num">{{ pct(c.margin) }}</td>
<td>{{ criterion_status(c) }}</td>
<td class="num">{{ c.samples }}{% if c.min_samples %} (min {{ c.min_samples }}){% endif %}</td>
<td>{{ link(c.evidence.table) }}<br>{{ link(c.evidence.gate) }}</td>
</tr>
{% endfor %}
</table>
<p class="meta">Every measured value comes from {{ link(paths.criteria_table) }} (checked
again by {{ link(paths.certify_gate) }}). Margin: relative headroom to the threshold
(positive inside). Marginal: met only thanks to the tolerance, or with under 10% headroom.</p>
</section>

<section id="regression">
<h2>Against the baseline</h2>
{% set g = d.regression %}
{% if not g.ran %}<p class="note">{{ g.reason }}</p>
{% else %}
<p>Baseline: {% if g.baseline_run %}<strong>{{ g.baseline_run }}</strong>
  {%- if g.baseline.pinned %} (pinned){% endif %}
  {%- if g.baseline_location %} · <span class="mono">{{ g.baseline_location }}</span>{% endif %}
  {%- else %}none{% endif %} — {{ g.reason }}.
  {% if g.baseline_run and not g.comparable %}<br><span class="warn">Not comparable:</span>
  {{ (g.comparability.reasons or []) | join("; ") }}; every comparison is not applicable.
  {% endif %}</p>
<p class="meta">The baseline is the last APPROVED run of this DAG with the same models and
  profile and an earlier snapshot date, unless a run is pinned (<code>relcert baseline
  pin</code>). A change is a regression only when it exceeds its allowance in the targets
  file's <code>regression:</code> block AND its whole interval lies beyond it.</p>
{% if g.waiver %}<p class="warn">Waiver: {{ g.waiver.criterion }} by {{ g.waiver.by or "the
  trigger" }}: {{ g.waiver.justification }}</p>{% endif %}
{% if not rv.compared %}
{% for why, names in rv.other_reasons %}<p class="note">Not applicable ({{ names | join(", ")
  }}): {{ why }}.</p>
{% endfor %}
<p>With a comparable baseline, these {{ g.rows | length }} comparisons run:</p>
<table class="planned-comparisons"><tr><th>comparison</th><th>of</th><th>allowance</th></tr>
{% for p in rv.planned %}<tr><td>{{ p.metric }}</td><td>{{ p.subjects | join(", ") }}</td>
<td>{{ p.allowance }}</td></tr>
{% endfor %}</table>
<p class="meta">Evidence: {{ link(paths.regression_table) }}.</p>
{% else %}
<p class="meta">{{ g.counts.measured }} comparison(s) measured,
  {{ g.counts.regressions }} regression(s), {{ g.counts.waived }} waived,
  {{ g.counts.improvements }} improvement(s), {{ g.counts.not_applicable }} not
  applicable.</p>
<table>
<tr><th>comparison</th><th>verdict</th><th>baseline</th><th>this run</th><th>ratio</th>
<th>interval</th><th>p</th><th>allowance</th><th>samples</th></tr>
{% for r in g.rows %}
<tr class="comparison" id="comparison-{{ r.name }}"><td><strong>{{ r.name }}</strong><br>
<span class="meta">{{ r.detail }}</span></td>
<td>{% if r.status == "not_applicable" %}<span class="na">not applicable</span>
  {%- elif r.verdict == "regression" and r.waived %}<span class="warn">regression (waived)</span>
  {%- elif r.verdict == "regression" %}<span class="bad">REGRESSION</span>
  {%- elif r.verdict == "improvement" %}<span class="ok">improvement</span>
  {%- else %}{{ r.verdict or "–" }}{% endif %}</td>
<td class="num">{{ num(fnum(r.baseline_value)) }}</td>
<td class="num">{{ num(fnum(r.candidate_value)) }}</td>
<td class="num">{{ num(fnum(r.ratio)) }}</td>
<td class="num">{% if fnum(r.ci_low) is not none %}{{ num(fnum(r.ci_low)) }} – {{
  num(fnum(r.ci_high)) }}{% else %}–{% endif %}</td>
<td class="num">{{ num(fnum(r.p_value)) }}</td>
<td class="num">{{ num(fnum(r.allowance)) }}</td>
<td class="num">{{ r.samples }} / {{ r.baseline_samples }}</td></tr>
{% endfor %}
</table>
<p class="meta">Evidence: {{ link(paths.regression_table) }}
{%- for path in paths.regression_evidence %}, {{ link(path) }}{% endfor %} (both runs, kept
with this run); the figures are under Performance analysis.</p>
{% endif %}
{% endif %}
</section>

<section id="gates">
<h2>Gates</h2>
<table>
<tr><th>gate</th><th>stage</th><th>result</th><th>expectations</th><th>failed expectations</th>
<th>links</th></tr>
{% for name, g in d.gates.items() %}
<tr class="gate"><td>{{ name }}</td><td>{{ g.stage }}</td>
<td>{{ gate_status(g) }}</td>
<td class="num">{% if g.ran %}{{ g.passed }}/{{ g.expectations }}{% endif %}</td>
<td>{% if g.failed %}<ul>{% for f in g.failed %}<li>{{ f }}</li>{% endfor %}</ul>{% endif %}</td>
<td>{{ link(g.path) }} {{ link(g.data_docs, "Data Docs") }}
{{ link(g.data_docs_validation, "validation page") }} {{ link(g.table) }}</td></tr>
{% endfor %}
</table>
</section>

<section id="performance">
<h2>Performance analysis</h2>
<table><tr><th>metric</th><th>threshold</th><th>load scenarios</th><th>certified</th>
<th>met</th></tr>
{% for p in d.performance %}
<tr><td>{{ p.metric }}</td><td class="num">{{ num(p.threshold) }} {{ p.unit }}</td>
<td class="num" title="{{ p.test_figure_is }}">{{ num(p.test_figure) }}</td>
<td class="num">{{ num(p.certified) }}</td><td>{{ yesno(p.met) }}</td></tr>
{% endfor %}
</table>
<div class="grid">
{% for p in plots %}
<figure id="plot-{{ p.key }}"><h3>{{ p.title }}</h3>
{% if p.png_base64 -%}
<img alt="{{ p.title }}" src="data:image/png;base64,{{ p.png_base64 }}">
<figcaption>{{ p.note }}
Source: {% for s in p.sources %}{{ link(s) }} {% endfor %}</figcaption>
{%- else -%}
{# not drawn: the note says which table is missing or unusable, and why #}
<figcaption><span class="note">{{ p.note }}</span></figcaption>
{%- endif %}</figure>
{% endfor %}
</div>
</section>

<section id="readiness">
<h2>Readiness assessment</h2>
<div class="grid">
{% for group, items in d.readiness.items() %}
<div><h3>{{ group }} ({{ items|selectattr("passed")|list|length }}/{{ items|length }})</h3>
<table><tr><th>item</th><th>result</th><th>evidence</th></tr>
{% for i in items %}
<tr><td>{{ i.item }}<br><span class="meta">{{ i.detail }}</span></td>
<td>{% if i.status == "not_applicable" %}<span class="na">not applicable</span>
{%- elif i.status == "not_run" %}<span class="na">not run</span>
{%- else %}{{ yesno(i.passed) }}{% endif %}</td><td>{{ link(i.evidence) }}</td></tr>
{% endfor %}
</table></div>
{% endfor %}
</div>
</section>

<section id="risks">
<h2>Risks</h2>
{% if d.risks %}
<table><tr><th>level</th><th>area</th><th>subject</th><th>description</th><th>mitigation</th></tr>
{% for r in d.risks %}
<tr class="risk-{{ r.level }}"><td>{{ r.level }}</td><td>{{ r.area }}</td>
<td>{{ r.criterion or ("gate " ~ r.gate) }}</td><td>{{ r.description }}</td>
<td>{{ r.mitigation }}</td></tr>
{% endfor %}
</table>
{% else %}<p>No risks derived from this run's criteria and gates.</p>{% endif %}
<h2>Recommendations</h2>
{% if d.recommendations %}<ul>{% for r in d.recommendations %}<li>{{ r }}</li>{% endfor %}</ul>
{% else %}<p>None.</p>{% endif %}
</section>

<section id="models">
<h2>Models</h2>
<table><tr><th>model</th><th>format</th><th>version</th><th>sha256</th><th>verified</th>
<th>served</th><th>source</th><th>file</th></tr>
{% for m in d.models %}
<tr><td>{{ m.name }}</td><td>{{ m.format }}</td><td>{{ m.version }}</td>
<td class="mono">{{ m.sha256 }}</td><td>{{ yesno(m.sha256_verified) }}</td>
<td>{{ "load stage" if m.served else "" }}</td><td>{{ m.source }}</td>
<td>{{ link(m.path) }}</td></tr>
{% endfor %}
</table>
</section>

<section id="environment">
<h2>Environment</h2>
<table>
<tr><th>measured on</th><td>{{ e.hostname }} ({{ e.cpu_count }} CPUs), {{ e.platform }},
Python {{ e.python }}{% if not e.same_host_for_all_stages %} <span class="warn">(stages ran on
different hosts; see the appendix)</span>{% endif %}</td></tr>
<tr><th>packages</th><td>{% for k, v in e.packages.items() -%}
{{ k }} {{ v or "not installed" }}{{ ", " if not loop.last }}{% endfor %}</td></tr>
<tr><th>snapshot date</th><td>{{ e.snapshot_date }}</td></tr>
<tr><th>seeds</th><td>{% for k, v in e.seeds.items() -%}
{{ k }}: {{ v }}{{ ", " if not loop.last }}{% endfor %}</td></tr>
<tr><th>run configuration</th><td><code>{{ tojson(d.conf) }}</code></td></tr>
</table>
</section>

<section id="stages">
<h2>Stages</h2>
<table><tr><th>stage</th><th>ran</th><th>expected</th><th>seconds</th><th>gate</th>
<th>table</th><th>summary</th></tr>
{% for name, st in d.stages.items() %}
<tr><td>{{ name }}</td><td>{{ yesno(st.ran) }}</td><td>{{ yesno(st.expected) }}</td>
<td class="num">{{ num(st.seconds) }}</td><td>{{ st.gate or "" }}</td>
<td>{{ link(st.table) }}</td><td>{{ link(st.summary_path) }}</td></tr>
{% endfor %}
</table>
</section>

<section id="appendix">
<h2>Appendix: stage summaries</h2>
{% for name, path, text in appendix %}
<details><summary>{{ name }} ({{ link(path) }})</summary>
<pre>{{ text }}</pre></details>
{% endfor %}
</section>
</body>
</html>
"""


def _num(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def _fnum(value: Any) -> float | None:
    """A CSV cell as a finite number, None otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pct(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{value * 100:+.1f}%"


def _allowance(metric: str, allowance: Any) -> str:
    value = _fnum(allowance)
    if value is None:
        return "–"
    if metric == "quality":
        return f"a drop of at most {value:g}"
    return f"a change of at most {value:.0%}"


def _regression_view(section: Mapping[str, Any]) -> dict[str, Any]:
    """What the "Against the baseline" section shows when nothing was compared: the reasons
    not said already (the section's own reason, or why the baseline is not comparable, is
    said once above), and the comparisons a comparable baseline would run, one line per
    metric with its subjects and allowance."""
    rows = list(section.get("rows") or [])
    compared = any(r.get("status") != "not_applicable" for r in rows)
    said = [str(section.get("reason") or "")]
    said += list((section.get("comparability") or {}).get("reasons") or [])
    reasons: dict[str, list[str]] = {}
    planned: dict[str, dict[str, Any]] = {}
    for row in rows:
        why = str(row.get("detail") or "").removeprefix("not applicable: ").rstrip(".")
        if why and not any(why in text or text in why for text in said if text):
            reasons.setdefault(why, []).append(str(row.get("name")))
        metric = str(row.get("metric") or row.get("name"))
        allowance = _allowance(metric, row.get("allowance"))
        entry = planned.setdefault(metric, {"metric": metric, "allowance": allowance})
        entry.setdefault("subjects", []).append(row.get("model") or "the mix")
    return {
        "compared": compared,
        "other_reasons": sorted(reasons.items()),
        "planned": list(planned.values()),
    }


def render_html(data: Mapping[str, Any], root: Path, plots: Sequence[Plot]) -> str:
    """The report page for `data` (report.json's content) of the run folder `root`."""
    import jinja2
    from markupsafe import Markup, escape

    def link(path: str | None, label: str | None = None) -> Markup:
        if not path:
            return Markup("")
        text = escape(label or path)
        if Path(path).is_absolute():
            return Markup(f'<span class="mono">{text}</span>')
        if path in _WRITTEN_WITH_THE_PAGE or (root / path).exists():
            return Markup(f'<a href="{escape(path)}">{text}</a>')
        return Markup(f'<span class="na" title="missing">{text} (missing)</span>')

    def yesno(value: Any) -> Markup:
        if value is None:
            return Markup('<span class="na">not checked</span>')
        return Markup('<span class="ok">yes</span>' if value else '<span class="bad">no</span>')

    def criterion_status(c: Mapping[str, Any]) -> Markup:
        status = c.get("status")
        if status == "not_applicable":
            return Markup('<span class="na">not applicable</span>')
        if status == "not_run":
            return Markup('<span class="bad">not run</span>')
        if not c.get("valid"):
            return Markup('<span class="bad">invalid</span>')
        if c.get("met"):
            if c.get("marginal"):
                return Markup('<span class="warn">met (marginal)</span>')
            return Markup('<span class="ok">met</span>')
        return Markup('<span class="bad">NOT met</span>')

    def gate_status(g: Mapping[str, Any]) -> Markup:
        if g.get("success"):
            return Markup('<span class="ok">passed</span>')
        if not g.get("ran"):
            return Markup('<span class="bad">did not run</span>')
        return Markup('<span class="bad">FAILED</span>')

    def counts(pair: Mapping[str, Any] | None) -> str:
        if not pair or pair.get("total") is None:
            return "did not run"
        return f"{pair['passed']}/{pair['total']}"

    appendix = []
    for name in data.get("stages", {}):
        if name not in STAGE_NAMES:
            continue
        relative = summary_contract(name).path
        path = root / relative
        if path.is_file():
            try:
                text = json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True)
            except ValueError:
                text = path.read_text(errors="replace")
            appendix.append((name, relative, text))

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    template = env.from_string(_TEMPLATE)
    colour, tint = _COLOURS.get(str(data.get("decision")), ("#444", "#f4f4f4"))
    return template.render(
        d=data,
        s=data.get("summary", {}),
        e=data.get("environment", {}),
        plots=plots,
        paths=_PATHS,
        rv=_regression_view(data.get("regression") or {}),
        appendix=appendix,
        colour=colour,
        tint=tint,
        link=link,
        yesno=yesno,
        counts=counts,
        criterion_status=criterion_status,
        gate_status=gate_status,
        num=_num,
        pct=_pct,
        fnum=_fnum,
        tojson=lambda v: json.dumps(v, sort_keys=True),
    )
