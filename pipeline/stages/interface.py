"""The service's interface SLAs, judged from what the infra stage measured over HTTP.

Per endpoint, the p99 under the stage's open-loop load (the example models' named endpoints
against `routing_endpoint_p99_ms` / `quality_endpoint_p99_ms`; every model's /v2 endpoint
against `endpoint_p99_latency_ms`, with the model's own target when its models-file entry
sets one), the validation endpoint's completion time (`validation_endpoint_s`) and the
service's availability under the load (`availability`, see pipeline.stages.availability):
each a row of `stages/infra/checks.csv` that the infra gate bounds by its target and the
certify stage reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

from pipeline.loadgen import min_samples_for
from pipeline.stages.availability import MIN_AVAILABILITY_PROBES, HealthProber
from pipeline.stages.common import check_row

__all__ = [
    "ENDPOINTS",
    "INTERFACE_PERCENTILE",
    "NAMED_SLAS",
    "V2_SLA",
    "VALIDATE_PATH",
    "VALIDATION_SLA",
    "availability_check",
    "interface_checks",
    "validation_checks",
]

#: the named endpoints of the example models (every model also has /v2/models/{name}/infer)
ENDPOINTS = {
    "quality_predictor": "/api/v1/predict/quality",
    "routing_classifier": "/api/v1/predict/routing",
}
#: the interface SLA (a target of targets.yaml) each named endpoint is certified against
NAMED_SLAS = {
    "quality_predictor": "quality_endpoint_p99_ms",
    "routing_classifier": "routing_endpoint_p99_ms",
}
#: the interface SLA of every model's own /v2 inference endpoint (per model)
V2_SLA = "endpoint_p99_latency_ms"
#: the validation endpoint's completion-time SLA
VALIDATION_SLA = "validation_endpoint_s"
VALIDATE_PATH = "/api/v1/validate/performance"
#: the percentile the interface SLAs are certified at, and the samples it needs
INTERFACE_PERCENTILE = 99.0


def _undeclared(check: str, model: str, detail: str, samples: int = 1) -> dict:
    """The row of a check whose target the run's targets do not declare: not applicable,
    with the reason (never passed, never failed)."""
    return check_row(
        check,
        model,
        False,
        status="not_applicable",
        detail=f"not applicable: the run's targets declare no {check}; {detail}",
        samples=samples,
    )


def sla_target(targets, sla: str, model: str):
    """The target `sla` holds for `model` (its own value when it has one); None when the
    run's targets do not declare it."""
    if sla not in targets:
        return None
    return targets.for_model(model)[sla] if sla == V2_SLA else targets[sla]


def endpoint_verdict(trials: list[dict[str, Any]]) -> tuple[float, int, str]:
    """An endpoint's p99 under the load: the worst over the offered rates at which it has
    the samples a p99 needs and the generator kept up (measured, samples, how)."""
    need = min_samples_for(INTERFACE_PERCENTILE)
    kept = [t for t in trials if t["kept_up"]]
    enough = [t for t in kept if t["samples"] >= need]
    if enough:
        worst = max(enough, key=lambda t: t["p99_ms"])
        rates = ", ".join(f"{t['offered_rps']:g}" for t in enough)
        return (
            worst["p99_ms"],
            worst["samples"],
            f"worst p99 over the offered rates with >= {need} samples of it ({rates} req/s): "
            f"{worst['samples']} requests at {worst['offered_rps']:g} req/s",
        )
    if kept:
        most = max(kept, key=lambda t: t["samples"])
        return (
            most["p99_ms"],
            most["samples"],
            f"p99 over {most['samples']} requests at {most['offered_rps']:g} req/s, the most "
            f"of any rate: fewer than the {need} a p99 needs (not claimed)",
        )
    return math.nan, 0, "the load generator fell behind at every offered rate: no p99"


def interface_checks(trials: list[dict[str, Any]], targets) -> tuple[list, list]:
    """A check per endpoint against its interface SLA, and the summary's endpoint list."""
    rows, summary = [], []
    by_endpoint: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for t in trials:
        by_endpoint.setdefault((t["model"], t["endpoint"], t["sla"]), []).append(t)
    for (model, path, sla), found in by_endpoint.items():
        target = sla_target(targets, sla, model)
        if target is None:
            rows.append(_undeclared(sla, model, f"POST {path}"))
            continue
        measured, samples, how = endpoint_verdict(found)
        rows.append(
            check_row(
                sla,
                model,
                target.passes(measured),
                measured,
                "p99 ms",
                target.threshold,
                f"POST {path}: {how}",
                samples=samples,
            )
        )
        summary.append(
            {
                "model": model,
                "endpoint": path,
                "sla": sla,
                "p99_ms": measured,
                "samples": samples,
                "threshold_ms": target.threshold,
                "trials": [
                    {k: t[k] for k in ("offered_rps", "p99_ms", "samples", "kept_up")}
                    for t in found
                ],
            }
        )
    return rows, summary


async def validation_checks(client, token: str, targets, say) -> tuple[list, dict[str, Any]]:
    """The performance validation endpoint: refused without the token (401), and one run
    of the largest size this configuration allows, timed to completion."""
    from pipeline.serve.settings import ServeSettings

    defaults = ServeSettings  # its class attributes are the fields' defaults
    body = json.dumps(
        {"requests": defaults.validate_max_requests, "duration_s": defaults.validate_max_seconds}
    ).encode()
    refused = await client.request("POST", VALIDATE_PATH, body, "application/json", ())
    rows = [
        check_row(
            "validate_requires_token",
            "all",
            refused.status == 401,
            refused.status,
            "status",
            401,
            f"POST {VALIDATE_PATH} without a token",
        )
    ]
    started = time.perf_counter()
    result = await client.request(
        "POST", VALIDATE_PATH, body, "application/json", (("Authorization", f"Bearer {token}"),)
    )
    seconds = time.perf_counter() - started
    doc: dict[str, Any] = {}
    if result.success:
        with contextlib.suppress(ValueError):
            doc = result.json()
    completed = result.success and doc.get("success_rate") == 1.0 and bool(doc.get("requests"))
    what = (
        f"POST {VALIDATE_PATH} ({defaults.validate_max_requests} requests or "
        f"{defaults.validate_max_seconds:g} s, the configured maximum): "
    )
    if completed:
        what += (
            f"completed in {seconds:.2f} s: {doc['requests']} requests through the engine, "
            f"p99 {doc.get('p99_ms', math.nan):.2f} ms, success rate {doc['success_rate']:.3f}"
        )
    else:
        what += f"did not complete: HTTP {result.status} {result.error or ''} {result.body[:160]!r}"
    summary = {
        "endpoint": VALIDATE_PATH,
        "status": result.status,
        "seconds": seconds,
        "completed": completed,
        "requests": doc.get("requests"),
        "success_rate": doc.get("success_rate"),
    }
    target = targets.get(VALIDATION_SLA)
    if target is None:
        rows.append(_undeclared(VALIDATION_SLA, "all", what))
    else:
        rows.append(
            check_row(
                VALIDATION_SLA,
                "all",
                completed and target.passes(seconds),
                seconds if completed else math.nan,
                "s",
                target.threshold,
                what,
            )
        )
    say(f"infra: validation endpoint {what}")
    return rows, summary


def availability_check(prober: HealthProber, load_rows: list, targets) -> tuple[dict, dict]:
    """Availability = probes and load requests answered correctly / all of them."""
    mixed = [r for r in load_rows if r["model"] == "mixed"]
    requests = sum(int(r["requests"]) for r in mixed)
    answered = sum(int(r["succeeded"]) for r in mixed)
    total = prober.probes + requests
    value = (prober.answered + answered) / total if total else math.nan
    enough = prober.probes >= MIN_AVAILABILITY_PROBES
    detail = (
        f"availability {value:.5f}: {prober.answered + answered} of {total} answered correctly; "
        f"{prober.probes} probes every {prober.interval_s * 1000:g} ms alongside the load and "
        f"the validation run ({prober.describe()}; restarts seen: {prober.restarts}) and "
        f"{answered}/{requests} load requests after warm-up"
        + (
            ""
            if enough
            else f" (INVALID: fewer than {MIN_AVAILABILITY_PROBES} probes, the minimum to claim it)"
        )
    )
    summary = {
        **prober.to_dict(),
        "requests": requests,
        "requests_answered": answered,
        "value": value,
        "min_probes": MIN_AVAILABILITY_PROBES,
    }
    if "availability" not in targets:
        return _undeclared("availability", "all", detail, samples=prober.probes), summary
    target = targets["availability"]
    row = check_row(
        "availability",
        "all",
        target.passes(value),
        value,
        "ratio",
        target.threshold,
        detail,
        samples=prober.probes,
    )
    return row, summary
