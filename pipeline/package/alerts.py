"""Alert rules of the deployment package, and the promtool unit tests that check them.

`alert_rules_and_tests` builds both from the same facts: the targets' thresholds, the engine
settings and, when the run measured one, the certified capacity. The rules are a plain
Prometheus rules file (`monitoring/rules.yaml`; the PrometheusRule carries the same groups),
the tests a `promtool test rules` file (`monitoring/tests/alerts_test.yaml`) an operator can
rerun. A rule and its test cannot disagree about a threshold unless someone edits one of
them, and then promtool says so.

The rules follow Prometheus conventions: ratios of counters over a window
(`rate(x[5m]) / rate(y[5m])`), percentiles from the latency histogram
(`histogram_quantile`), gauges compared as they are. (A lifetime average since the process
started barely moves after a day of fast traffic, and stays high long after a slow start.)

Each alert's tests feed it series named and labelled as the service exports them (one pod,
scraped as job=<service>): an hour of healthy traffic, then the alerted quantity 5% past the
threshold for longer than the rule's `for:` (pending at first, then firing with the expected
labels and annotations), then healthy again (it clears); and the same 5% inside the
threshold, which stays silent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.inference.monitor import DEFAULT_LATENCY_BUCKETS_MS
from pipeline.package.settings import DeploymentSettings, EngineSettings
from pipeline.targets import Target, Targets, format_number, format_unit

__all__ = [
    "CAPACITY_SAFETY_FACTOR",
    "WINDOW_MINUTES",
    "Alert",
    "Scenario",
    "alert_rules_and_tests",
    "build_alerts",
    "envelope_factor",
    "latency_buckets_ms",
    "rules_document",
    "tests_document",
]

#: the window of every rate() in the rules
WINDOW_MINUTES = 5
#: the capacity alert fires above this share of the certified max sustained rate per pod,
#: unless the targets file's `regression: envelope_safety_factor` says otherwise
CAPACITY_SAFETY_FACTOR = 0.5


def envelope_factor(targets: Targets | None) -> float:
    """The operating envelope's share of the knee (targets' regression block, default 0.5)."""
    if targets is None or not hasattr(targets, "regression_config"):
        return CAPACITY_SAFETY_FACTOR
    return float(targets.regression_config().envelope_safety_factor)


#: the tests put the alerted quantity this far past (fires) and inside (silent) a threshold
NEAR = 0.05
BYTES_PER_MB = 2**20  # relcert_memory_rss_bytes = memory_usage_mb * 2**20 (monitor.py)

LATENCY = "relcert_request_latency_ms"
REQUESTS = "relcert_requests_total"
ERRORS = 'relcert_requests_total{outcome="error"}'
CACHE_HITS = "relcert_engine_cache_hits_total"
RSS = "relcert_memory_rss_bytes"
QUEUE = "relcert_queue_depth"

_WINDOW = f"{WINDOW_MINUTES}m"
_SERVICE_WIDE = ("namespace", "job")  # what a service-wide alert keeps of its series' labels
_QUANTILES = {"p95_latency_ms": 0.95, "p99_latency_ms": 0.99}
_LATENCY_TARGETS = ("average_inference_latency_ms", *_QUANTILES)
_HEALTHY_MINUTES = 60  # of healthy traffic before each test's incident
_PER_MINUTE = 10_000  # requests per minute of the synthetic traffic
_COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
# Go text/template, as Prometheus renders annotations; _shown() is its Python twin
_VALUE_TEMPLATE = '{{ $value | printf "%.4g" }}'


def _shown(value: float) -> str:
    return f"{value:.4g}"


def promql_number(value: float) -> str:
    """A PromQL literal: 115, 0.015, 550502400."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _clean(value: float) -> float:
    """Drop binary floating-point noise: 0.0143 * 10000 is 142.99999999999997, we mean 143."""
    return float(f"{value:.12g}")


def _past(threshold: float, fires_above: bool) -> float:
    """A round value NEAR past the threshold (on the side that fires)."""
    exact = threshold * (1 + NEAR if fires_above else 1 - NEAR)
    rounded = float(f"{exact:.3g}")
    return rounded if (rounded > threshold if fires_above else rounded < threshold) else exact


def _inside(threshold: float, fires_above: bool) -> float:
    return _past(threshold, not fires_above)


# ----------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Scenario:
    """Synthetic series for one alert's tests: series selector -> value in each phase.

    Counters (names ending in _total, _bucket, _sum, _count) take their increase per
    minute, gauges their value. `value` is the alert's $value while `past` holds (None when
    the description does not show it).
    """

    healthy: Mapping[str, float]
    past: Mapping[str, float]
    inside: Mapping[str, float]
    value: float | None
    #: how long `inside` lasts (default: as long as `past`); a blip shorter than `for:`
    inside_minutes: int | None = None
    #: further (what, series) cases that must stay silent, e.g. an idle replica
    also_silent: tuple[tuple[str, Mapping[str, float]], ...] = ()


@dataclass(frozen=True)
class Alert:
    """One alerting rule and the facts its tests are generated from."""

    name: str
    target: str  # the certification target (or operational limit) it guards
    threshold: float  # in the unit the expression compares
    expr: str
    for_minutes: int
    severity: str
    summary: str
    description: str  # with {where} and {value} placeholders
    runbook: str
    rule_text: str
    threshold_text: str
    per_pod: bool  # keeps the pod's labels; otherwise namespace and job (service-wide)
    scenario: Scenario

    def labels(self, service: str) -> dict[str, str]:
        return {"severity": self.severity, "service": service, "target": self.target}

    def annotations(self, where: str, value: str) -> dict[str, str]:
        description = self.description.replace("{where}", where).replace("{value}", value)
        return {
            "summary": self.summary,
            "description": description,
            "target": self.target,
            "threshold": promql_number(self.threshold),
            "threshold_text": self.threshold_text,
            "rule": self.rule_text,
            "runbook": f"docs/runbook.md#{self.runbook}",
        }

    def rule(self, service: str) -> dict[str, Any]:
        where = "{{ $labels.namespace }}/{{ $labels.%s }}" % ("pod" if self.per_pod else "job")
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": f"{self.for_minutes}m",
            "labels": self.labels(service),
            "annotations": self.annotations(where, _VALUE_TEMPLATE),
        }


# ----------------------------------------------------------------------------- series
def _pod(service: str) -> dict[str, str]:
    """The labels a scraped pod's series carry (ServiceMonitor: job = the Service's name)."""
    return {
        "instance": "10.0.0.7:8000",
        "job": service,
        "namespace": "relcert",
        "pod": f"{service}-0",
    }


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _requests(service: str, per_minute: float, errors: float = 0.0) -> dict[str, float]:
    pod = _pod(service)
    return {
        _selector(REQUESTS, {**pod, "outcome": "success"}): _clean(per_minute - errors),
        _selector(REQUESTS, {**pod, "outcome": "error"}): _clean(errors),
    }


def _histogram(
    service: str, bounds: tuple[float, ...], observations: Mapping[float, float]
) -> dict[str, float]:
    """Increase per minute of every series of the latency histogram, for `observations`
    ({latency ms: requests per minute}); `le` written as prometheus_client writes it."""
    from prometheus_client.utils import floatToGoString

    pod = _pod(service)
    series = {
        _selector(f"{LATENCY}_bucket", {**pod, "le": floatToGoString(bound)}): _clean(
            sum(n for latency, n in observations.items() if latency <= bound)
        )
        for bound in (*bounds, math.inf)
    }
    series[_selector(f"{LATENCY}_sum", pod)] = _clean(sum(v * n for v, n in observations.items()))
    series[_selector(f"{LATENCY}_count", pod)] = _clean(sum(observations.values()))
    return series


def _histogram_quantile(q: float, bounds: tuple[float, ...], observations) -> float:
    """What PromQL's histogram_quantile answers for these observations (linear
    interpolation inside the bucket that holds the rank)."""
    counts = [sum(n for v, n in observations.items() if v <= b) for b in bounds]
    total = sum(observations.values())
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    start, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    return start + (bounds[i] - start) * (rank - below) / (counts[i] - below)


# ----------------------------------------------------------------------------- alerts
def latency_buckets_ms(targets: Targets) -> tuple[float, ...]:
    """The latency histogram bounds the service needs for these targets: the default ladder
    plus every latency alert threshold (so histogram_quantile is exact there), and a bound
    above the highest threshold (a percentile past the last finite bound reads as that
    bound, so it could never exceed it)."""
    thresholds = {
        targets[name].threshold
        for name in _LATENCY_TARGETS
        if name in targets and targets[name].threshold > 0
    }
    bounds = set(DEFAULT_LATENCY_BUCKETS_MS) | thresholds
    if thresholds and max(thresholds) >= max(DEFAULT_LATENCY_BUCKETS_MS):
        bounds.add(2 * max(thresholds))
    return tuple(sorted(bounds))


def _described(summary: str, unit: str, describe: str) -> str:
    return (
        f"{{where}}: {summary[0].lower()}{summary[1:]} (value {{value}}{unit}, over "
        f"{_WINDOW}); certified target {describe}."
    )


def _crossing(
    series: Callable[[float], dict[str, float]],
    threshold: float,
    fires_above: bool,
    healthy: float,
    ceiling: float | None = None,
    **extra: Any,
) -> Scenario:
    """`series` at a healthy level, NEAR past the threshold (the alert's value there) and
    NEAR inside it; never past `ceiling` (a ratio stays <= 1)."""

    def capped(level: float) -> float:
        return level if ceiling is None or level <= ceiling else (threshold + ceiling) / 2

    past = capped(_past(threshold, fires_above))
    return Scenario(
        healthy=series(healthy),
        past=series(past),
        inside=series(capped(_inside(threshold, fires_above))),
        value=past,
        **extra,
    )


def _guarding(target: Target, **fields: Any) -> Alert:
    """An alert on a certification target: the target's name, threshold and rule; by default
    a description that shows the value and the rule."""
    unit = format_unit(target.unit)
    fields.setdefault("description", _described(fields["summary"], unit, target.describe()))
    return Alert(
        target=target.name,
        threshold=target.threshold,
        rule_text=target.describe(),
        threshold_text=f"{format_number(target.threshold)}{unit}",
        **fields,
    )


def _ratio(numerator: str, denominator: str) -> str:
    """A service-wide ratio of two counters' rates over the window."""
    by = ", ".join(_SERVICE_WIDE)
    return (
        f"sum by ({by}) (rate({numerator}[{_WINDOW}]))\n"
        f"  / sum by ({by}) (rate({denominator}[{_WINDOW}]))"
    )


def _mean_latency(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    t = target.threshold

    def latency(ms: float) -> dict[str, float]:
        return _histogram(service, bounds, {ms: _PER_MINUTE})

    return _guarding(
        target,
        name="RelcertMeanLatencyHigh",
        expr=f"{_ratio(f'{LATENCY}_sum', f'{LATENCY}_count')}\n  > {promql_number(t)}",
        for_minutes=5,
        severity="warning",
        summary="Mean request latency above the certified threshold",
        runbook="troubleshooting-high-latency",
        per_pod=False,
        scenario=_crossing(latency, t, True, healthy=_clean(t / 2)),
    )


def _percentile_latency(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    q = _QUANTILES[target.name]
    t = target.threshold
    if t not in bounds:
        raise ValueError(f"latency buckets {bounds} lack the {target.name} threshold {t:g}")
    i = bounds.index(t)
    below, above = (bounds[i - 1] if i else 0.0), bounds[i + 1]
    fast = _clean(t / 4)

    def mix(start: float, end: float, aim: float) -> tuple[dict[str, float], float]:
        """Fast requests plus enough slow ones in the bucket (start, end] that the
        histogram's percentile reads `aim` (or the bucket's middle if `aim` is outside):
        the histogram's series, and that percentile."""
        if not start < aim < end:
            aim = (start + end) / 2
        share = (aim - start) / (end - start)  # where the rank falls inside the bucket
        slow = math.ceil((1 - q) * _PER_MINUTE / (1 - share))
        while True:
            observations = {fast: _PER_MINUTE - slow, _clean((start + end) / 2): slow}
            value = _histogram_quantile(q, bounds, observations)
            if _shown(value * (1 - 1e-9)) == _shown(value * (1 + 1e-9)):  # no rounding edge
                return _histogram(service, bounds, observations), value
            slow += 1

    past, value = mix(t, above, _past(t, True))
    inside, _ = mix(below, t, _inside(t, True))
    label = target.name.split("_")[0]  # p95
    by = ", ".join((*_SERVICE_WIDE, "le"))
    return _guarding(
        target,
        name=f"Relcert{label.upper()}LatencyHigh",
        expr=(
            f"histogram_quantile({q}, sum by ({by}) (rate({LATENCY}_bucket[{_WINDOW}])))\n"
            f"  > {promql_number(t)}"
        ),
        for_minutes=5,
        severity="critical" if q >= 0.99 else "warning",
        summary=f"{label} request latency above the certified threshold",
        runbook="troubleshooting-high-latency",
        per_pod=False,
        scenario=Scenario(
            healthy=_histogram(service, bounds, {fast: _PER_MINUTE}),
            past=past,
            inside=inside,
            value=value,
        ),
    )


def _error_rate(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    t = target.threshold

    def traffic(share: float) -> dict[str, float]:
        return _requests(service, _PER_MINUTE, share * _PER_MINUTE)

    return _guarding(
        target,
        name="RelcertErrorRateHigh",
        expr=f"{_ratio(ERRORS, REQUESTS)}\n  > {promql_number(t)}",
        for_minutes=5,
        severity="critical",
        summary="Share of failed requests above the certified threshold",
        runbook="troubleshooting-integration-failures-model-loading",
        per_pod=False,
        scenario=_crossing(traffic, t, True, healthy=_clean(t / 5), ceiling=1.0),
    )


def _memory(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    t = target.threshold
    rss = _selector(RSS, _pod(service))
    return _guarding(
        target,
        name="RelcertMemoryHigh",
        expr=f"{RSS} / {BYTES_PER_MB} > {promql_number(t)}",
        for_minutes=10,
        severity="warning",
        summary="Resident memory of a replica above the certified threshold",
        description=(
            f"{{where}}: resident memory {{value}}{format_unit(target.unit)} (process RSS); "
            f"certified target {target.describe()}."
        ),
        runbook="troubleshooting-memory",
        per_pod=True,
        scenario=_crossing(
            lambda mb: {rss: _clean(mb * BYTES_PER_MB)}, t, True, healthy=_clean(t / 2)
        ),
    )


def _throughput_floor(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    t = target.threshold
    queue = _selector(QUEUE, _pod(service))

    def busy(rps: float, waiting: float = 4.0) -> dict[str, float]:
        return {**_requests(service, _clean(rps * 60)), queue: waiting}

    idle = ("an idle replica with an empty queue", busy(_clean(t / 10), 0.0))
    return _guarding(
        target,
        name="RelcertThroughputBelowFloor",
        # low traffic is not a fault: alert only while requests wait in the queue throughout
        expr=(
            f"sum without (outcome) (rate({REQUESTS}[{_WINDOW}])) < {promql_number(t)}\n"
            f"  and min_over_time({QUEUE}[{_WINDOW}]) > 0"
        ),
        for_minutes=10,
        severity="warning",
        summary="Throughput below the certified floor while requests are queuing",
        description=(
            f"{{where}}: completes {{value}} req/s (over {_WINDOW}) while requests queue; "
            f"certified target {target.describe()}."
        ),
        runbook="horizontal-scaling",
        per_pod=True,
        scenario=_crossing(busy, t, False, healthy=_clean(t * 1.5), also_silent=(idle,)),
    )


def _cache_hit_rate(target: Target, service: str, bounds: tuple[float, ...]) -> Alert:
    t = target.threshold
    hits = _selector(CACHE_HITS, _pod(service))

    def traffic(share: float) -> dict[str, float]:
        return {**_requests(service, _PER_MINUTE), hits: _clean(share * _PER_MINUTE)}

    return _guarding(
        target,
        name="RelcertCacheHitRateLow",
        # no traffic gives NaN, which compares false: an idle service does not alert
        expr=f"{_ratio(CACHE_HITS, REQUESTS)}\n  < {promql_number(t)}",
        for_minutes=15,
        severity="info",
        summary="Result-cache hit rate below the certified threshold",
        runbook="troubleshooting-high-latency",
        per_pod=False,
        scenario=_crossing(traffic, t, False, healthy=_clean((1 + t) / 2), ceiling=1.0),
    )


#: certification target -> its alert, in the order the rules list them
_TARGET_ALERTS: dict[str, Callable[[Target, str, tuple[float, ...]], Alert]] = {
    "average_inference_latency_ms": _mean_latency,
    "p95_latency_ms": _percentile_latency,
    "p99_latency_ms": _percentile_latency,
    "error_rate": _error_rate,
    "memory_usage_mb": _memory,
    "sustained_throughput_rps": _throughput_floor,
    "cache_hit_rate": _cache_hit_rate,
}


def _capacity(service: str, certified_rps: float, factor: float) -> Alert:
    t = _clean(certified_rps * factor)
    rule = (
        f"traffic per replica <= {format_number(factor)} x certified "
        f"max sustained {format_number(certified_rps)} req/s"
    )
    return Alert(
        name="RelcertTrafficAboveCertifiedCapacity",
        target="max_sustained_rps",
        threshold=t,
        expr=f"sum without (outcome) (rate({REQUESTS}[{_WINDOW}])) > {promql_number(t)}",
        for_minutes=10,
        severity="warning",
        summary=f"Traffic per replica above {format_number(factor)} of its certified capacity",
        description=(
            f"{{where}}: receives {{value}} req/s (over {_WINDOW}); the run certified "
            f"{format_number(certified_rps)} req/s per replica (stages/load/summary.json "
            f"capacity.max_sustained_rps, the knee), alert at x{format_number(factor)} (the "
            "targets file's regression.envelope_safety_factor)."
        ),
        runbook="horizontal-scaling",
        rule_text=rule,
        threshold_text=f"{format_number(t)} req/s",
        per_pod=True,
        scenario=_crossing(
            lambda rps: _requests(service, _clean(rps * 60)), t, True, healthy=_clean(t / 2)
        ),
    )


def _queue_saturated(settings: DeploymentSettings | EngineSettings, service: str) -> Alert:
    max_queue = getattr(settings, "engine", settings).max_queue_size
    limit = int(max_queue * 0.8)
    queue = _selector(QUEUE, _pod(service))
    return Alert(
        name="RelcertQueueSaturated",
        target="max_queue_size",
        threshold=limit,
        expr=f"{QUEUE} > {limit}",
        for_minutes=2,
        severity="warning",
        summary="Batching queue above 80% of MAX_QUEUE",
        description=(
            "{where}: {value} requests waiting; requests are rejected at "
            f"MAX_QUEUE={max_queue}."
        ),
        runbook="horizontal-scaling",
        rule_text=f"{QUEUE} <= {limit}",
        threshold_text=f"{limit} requests (80% of {max_queue})",
        per_pod=True,
        scenario=Scenario(
            healthy={queue: float(limit // 10)},
            past={queue: float(limit + 1)},
            inside={queue: float(limit)},
            value=float(limit + 1),
        ),
    )


def _service_down(service: str) -> Alert:
    up = _selector("up", _pod(service))
    return Alert(
        name="RelcertServiceDown",
        target="availability",
        threshold=0,
        expr=f'up{{job="{service}"}} == 0',
        for_minutes=2,
        severity="critical",
        summary="A replica's /metrics endpoint cannot be scraped",
        description="{where} has not answered Prometheus for 2 minutes.",
        runbook="health-checks",
        rule_text="every replica scrapable",
        threshold_text="up == 0 for 2m",
        per_pod=True,
        scenario=Scenario(
            healthy={up: 1.0},
            past={up: 0.0},
            inside={up: 0.0},
            value=None,
            inside_minutes=1,  # one failed scrape is shorter than `for:`
        ),
    )


def build_alerts(
    targets: Targets,
    settings: DeploymentSettings | EngineSettings,
    service: str,
    certified_capacity_rps: float | None = None,
) -> tuple[Alert, ...]:
    """One alert per monitored target declared in `targets`, the capacity alert when the
    run certified a max sustained rate, and two operational ones (queue, scrape)."""
    if certified_capacity_rps is not None and not (
        math.isfinite(certified_capacity_rps) and certified_capacity_rps > 0
    ):
        raise ValueError(
            f"certified capacity must be a finite rate > 0 req/s, got {certified_capacity_rps!r}"
        )
    bounds = latency_buckets_ms(targets)
    alerts = [
        build(targets[name], service, bounds)
        for name, build in _TARGET_ALERTS.items()
        if name in targets
    ]
    if certified_capacity_rps is not None:
        alerts.append(_capacity(service, certified_capacity_rps, envelope_factor(targets)))
    alerts += [_queue_saturated(settings, service), _service_down(service)]
    return tuple(alerts)


# ----------------------------------------------------------------------------- documents
def rules_document(alerts: tuple[Alert, ...], service: str) -> dict[str, Any]:
    """The plain Prometheus rules file (`promtool check rules` reads it)."""
    return {
        "groups": [
            {
                "name": f"{service}.certified-targets",
                "rules": [alert.rule(service) for alert in alerts],
            }
        ]
    }


def _values(counter: bool, phases: list[tuple[int, Mapping[str, float]]], key: str) -> str:
    """promtool's expanding notation: a counter starts at 0 and grows by the phase's
    increase each minute; a gauge holds the phase's value (sample 0 is the first phase's)."""
    parts = []
    if counter:
        total = 0.0
        parts.append("0")
        for minutes, values in phases:
            step = values[key]
            parts.append(
                f"{promql_number(_clean(total + step))}+{promql_number(step)}x{minutes - 1}"
            )
            total = _clean(total + step * minutes)
    else:
        for i, (minutes, values) in enumerate(phases):
            samples = minutes + 1 if i == 0 else minutes
            parts.append(f"{promql_number(values[key])}+0x{samples - 1}")
    return " ".join(parts)


def _input_series(phases: list[tuple[int, Mapping[str, float]]]) -> list[dict[str, str]]:
    keys = list(phases[0][1])
    for _, values in phases:
        if set(values) != set(keys):
            raise ValueError(f"scenario phases name different series: {sorted(values)}")
    return [
        {
            "series": key,
            "values": _values(key.split("{")[0].endswith(_COUNTER_SUFFIXES), phases, key),
        }
        for key in keys
    ]


def _expected(alert: Alert, service: str) -> dict[str, Any]:
    pod = _pod(service)
    kept = pod if alert.per_pod else {k: pod[k] for k in _SERVICE_WIDE}
    where = f"{pod['namespace']}/{pod['pod' if alert.per_pod else 'job']}"
    value = _shown(alert.scenario.value) if alert.scenario.value is not None else ""
    return {
        "exp_labels": {**kept, **alert.labels(service)},
        "exp_annotations": alert.annotations(where, value),
    }


def _checks(alert: Alert, expected: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Evaluations of one test group: at the end of the healthy hour; when `for:` has not
    yet passed; once the window is past the threshold for longer than `for:`; and after
    the window has recovered."""
    healthy = _HEALTHY_MINUTES
    incident = WINDOW_MINUTES + alert.for_minutes + 2
    times = (
        (healthy, None),
        (healthy + alert.for_minutes, None),
        (healthy + WINDOW_MINUTES + alert.for_minutes + 1, expected),
        (healthy + incident + WINDOW_MINUTES + 1, None),
    )
    return [
        {
            "eval_time": f"{minute}m",
            "alertname": alert.name,
            "exp_alerts": [expected] if want else [],
        }
        for minute, want in times
    ]


def _test_groups(alert: Alert, service: str) -> list[dict[str, Any]]:
    s = alert.scenario
    healthy = _HEALTHY_MINUTES
    incident = WINDOW_MINUTES + alert.for_minutes + 2
    recovery = WINDOW_MINUTES + 2
    inside = s.inside_minutes or incident
    past_what = f"past {alert.threshold_text}"
    cases: list[tuple[str, list[tuple[int, Mapping[str, float]]], dict | None]] = [
        (
            f"{alert.name}: {past_what} for longer than {alert.for_minutes}m fires, then clears",
            [(healthy, s.healthy), (incident, s.past), (recovery, s.healthy)],
            _expected(alert, service),
        ),
        (
            f"{alert.name}: just inside {alert.threshold_text}"
            + (f" for {inside}m" if s.inside_minutes else "")
            + " stays silent",
            [(healthy, s.healthy), (inside, s.inside), (incident + recovery - inside, s.healthy)],
            None,
        ),
    ]
    for what, values in s.also_silent:
        cases.append(
            (
                f"{alert.name}: {what} stays silent",
                [(healthy, s.healthy), (incident, values), (recovery, s.healthy)],
                None,
            )
        )
    return [
        {
            "name": name,
            "interval": "1m",
            "input_series": _input_series(phases),
            "alert_rule_test": _checks(alert, expected),
        }
        for name, phases, expected in cases
    ]


def tests_document(
    alerts: tuple[Alert, ...], service: str, rule_file: str = "../rules.yaml"
) -> dict[str, Any]:
    """The `promtool test rules` file for `alerts` (`rule_file` relative to it)."""
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [group for alert in alerts for group in _test_groups(alert, service)],
    }


def alert_rules_and_tests(
    targets: Targets,
    settings: DeploymentSettings | EngineSettings,
    service: str,
    certified_capacity_rps: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rules file and its promtool tests, from the same thresholds."""
    alerts = build_alerts(targets, settings, service, certified_capacity_rps)
    return rules_document(alerts, service), tests_document(alerts, service)
