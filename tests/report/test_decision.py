"""The decision rule and the risk rules as pure functions (no run folder needed)."""

from __future__ import annotations

import pytest

from pipeline.report.decision import (
    APPROVED,
    CONDITIONAL_APPROVAL,
    NOT_APPROVED,
    blocking_issues,
    decide,
    next_steps,
    readiness_score,
)
from pipeline.report.risks import derive_risks, headroom, is_marginal, recommendations

pytestmark = pytest.mark.unit

ALL_STAGES = ("build", "integration", "load", "stress", "infra", "certify")
GATE: dict[str, str] = {}


def crit(name="p95_latency_ms", measured=10.0, **overrides):
    row = {
        "name": name,
        "category": "latency",
        "target": 100.0,
        "tolerance": 0.15,
        "threshold": 115.0,
        "direction": "max",
        "unit": "ms",
        "measured": measured,
        "met": True,
        "valid": True,
        "detail": "p95 over 5000 requests",
    }
    row.update(overrides)
    return row


def gates(failed=(), missing=()):
    return {
        GATE.get(s, s): {
            "success": s not in failed,
            "failed": [f"{s} check"] if s in failed else [],
        }
        for s in ALL_STAGES
        if s not in missing
    }


def ran(missing=()):
    return {s: s not in missing for s in ALL_STAGES}


def test_everything_passed_is_approved_with_high_confidence() -> None:
    decision, confidence, score, reasons = decide([crit()], gates(), ran())
    assert (decision, confidence, score) == (APPROVED, "HIGH", 1.0)
    assert "All 1 criteria are met" in reasons[0]


@pytest.mark.parametrize(
    ("failed", "score"),
    [
        (("certify",), 0.6),
        (("integration",), 0.7),
        (("stress",), 0.7),
        (("load",), 0.7),
        (("load", "stress"), 0.7),
        (("integration", "certify"), 0.3),
        (("integration", "certify", "load"), 0.0),
    ],
)
def test_a_failed_scored_gate_is_not_approved(failed, score) -> None:
    # the smallest pair of terms is 0.3 + 0.4 = 0.7 < 0.8: any failed scored gate rejects
    decision, confidence, got, reasons = decide([crit()], gates(failed), ran())
    assert (decision, confidence, got) == (NOT_APPROVED, "LOW", score)
    assert any("failed" in r for r in reasons[1:])


@pytest.mark.parametrize(
    ("failed", "missing", "expect"),
    [
        (("infra",), (), "Gate 'infra' failed"),
        (("build",), (), "Gate 'build' failed"),
        ((), ("infra",), "infra: did not run"),
    ],
)
def test_a_failed_or_missing_shipping_gate_is_not_approved(failed, missing, expect) -> None:
    # the service (infra) and models (build) that failed their validation are what would
    # ship: never a package for them, whatever the score
    decision, confidence, score, reasons = decide([crit()], gates(failed, missing), ran(missing))
    assert (decision, confidence, score) == (NOT_APPROVED, "LOW", 1.0)
    assert "nothing is packaged" in reasons[0]
    assert any(expect in r for r in reasons)


def test_a_relaxed_target_caps_the_decision_at_conditional() -> None:
    cap = "Relaxed targets: p99_latency_ms relaxed from 300 to 1e+09 (the trigger's reason: x)."
    decision, confidence, score, reasons = decide([crit()], gates(), ran(), caps=[cap])
    assert (decision, confidence, score) == (CONDITIONAL_APPROVAL, "MEDIUM", 1.0)
    assert cap in reasons
    assert decide([crit()], gates(), ran()).decision == APPROVED  # the same run, not relaxed


def test_a_stage_that_did_not_run_counts_as_failed() -> None:
    decision, _, score, reasons = decide([crit()], gates(missing=("load",)), ran(("load",)))
    assert decision == NOT_APPROVED and score == 0.7
    assert any("load: did not run" in r for r in reasons)
    # also when it was not even expected: the score still needs its gate
    stages = {s: True for s in ALL_STAGES if s not in ("load", "infra")}
    decision, _, score, reasons = decide([crit()], gates(missing=("load", "infra")), stages)
    assert decision == NOT_APPROVED and score == 0.7
    assert any("load: did not run" in r for r in reasons)


def test_an_unexpected_stage_that_did_not_run_is_ignored() -> None:
    stages = {s: True for s in ALL_STAGES if s != "infra"}
    assert decide([crit()], gates(missing=("infra",)), stages).decision == APPROVED


def test_a_stage_that_ran_without_its_gate_counts_as_failed() -> None:
    issues = blocking_issues([crit()], gates(missing=("stress",)), ran())
    assert issues == ["stress: ran, but its gate 'stress' did not run (counts as failed)."]
    assert readiness_score(gates(missing=("stress",))) == 0.7


def test_an_unmet_or_invalid_criterion_blocks_approval() -> None:
    unmet = crit(measured=200.0, met=False)
    decision, _, _, reasons = decide([unmet], gates(), ran())
    assert decision == CONDITIONAL_APPROVAL  # every gate passed, but a criterion is not met
    assert "p95_latency_ms: not met, measured 200 ms (needs <= 115 ms)." in reasons
    invalid = crit(met=False, valid=False, detail="needs >= 1000 samples")
    reasons = decide([invalid], gates(), ran()).reasons
    assert "p95_latency_ms: measurement not valid (needs >= 1000 samples)." in reasons
    assert decide([], gates(), ran()).decision == CONDITIONAL_APPROVAL  # nothing certified


def test_each_decision_has_next_steps() -> None:
    assert "deployment package" in next_steps(APPROVED, [])[0]
    steps = next_steps(CONDITIONAL_APPROVAL, ["infra: did not run."])
    assert "canary" in steps[0] and "Resolve: infra: did not run." in steps
    assert next_steps(NOT_APPROVED, ["x"])[0].startswith("Do not deploy")


# ------------------------------------------------------------------------- risks
def test_a_failed_criterion_is_a_high_risk_with_the_plans_mitigations() -> None:
    risks = derive_risks([crit(measured=200.0, met=False)], gates(), ran())
    assert [(r["level"], r["criterion"]) for r in risks] == [("high", "p95_latency_ms")]
    assert all(m in risks[0]["mitigation"] for m in ("cach", "batching", "optimise"))


@pytest.mark.parametrize(
    ("category", "words"),
    [
        ("throughput", ("autoscale", "load-balance")),
        ("memory", ("monitor", "pool", "quantise")),
        ("cache", ("cache", "key")),
        ("reliability", ("circuit breaker", "degrade gracefully")),
        ("model_quality", ("retrain", "data")),
    ],
)
def test_mitigations_follow_the_category(category, words) -> None:
    row = crit(
        name="x",
        category=category,
        direction="min",
        target=50.0,
        threshold=45.0,
        measured=10.0,
        met=False,
        unit="req/s",
    )
    (risk,) = derive_risks([row], gates(), ran())
    assert all(w in risk["mitigation"] for w in words)


def test_marginal_criteria_are_medium_risks() -> None:
    by_tolerance = crit(measured=31.0, target=30.0, threshold=33.0)  # worse than 30, inside 33
    thin = crit(measured=110.0)  # 4% headroom to 115
    comfortable = crit(measured=50.0)
    assert is_marginal(by_tolerance) and is_marginal(thin) and not is_marginal(comfortable)
    risks = derive_risks([by_tolerance, thin, comfortable], gates(), ran())
    assert [r["level"] for r in risks] == ["medium", "medium"]
    assert "passing only by tolerance" in risks[0]["description"]


def test_a_bounded_ratio_at_its_best_is_not_marginal() -> None:
    success = crit(
        name="success_rate",
        category="reliability",
        direction="min",
        target=0.99,
        tolerance=0.01,
        threshold=0.9801,
        unit="ratio",
        measured=1.0,
    )
    assert headroom(success) == 1.0 and not is_marginal(success)
    below_target = dict(success, measured=0.985)  # met by tolerance only: under 99%
    assert is_marginal(below_target)
    (risk,) = derive_risks([below_target], gates(), ran())
    assert risk["level"] == "medium" and "circuit breaker" in risk["mitigation"]


def test_invalid_measurements_and_failed_gates() -> None:
    invalid = crit(met=False, valid=False, detail="needs >= 1000 samples")
    risks = derive_risks([invalid], gates(failed=("stress",)), ran())
    assert [(r["level"], r["gate"] or r["criterion"]) for r in risks] == [
        ("high", "stress"),
        ("medium", "p95_latency_ms"),
    ]
    assert risks[1]["description"] == "p95_latency_ms: measurement not valid: needs >= 1000 samples"
    lines = recommendations(risks, [invalid])
    assert any("needs >= 1000 samples" in line for line in lines)
    assert len(lines) == len(set(lines))


def test_recommendations_are_deduplicated() -> None:
    rows = [crit(measured=200.0, met=False), crit(name="p99_latency_ms", measured=900.0, met=False)]
    lines = recommendations(derive_risks(rows, gates(), ran()), rows)
    assert lines == [
        "cache results of repeated inputs (latency)",
        "tune dynamic batching (batch size, queue delay) (latency)",
        "optimise the models (graph optimisation, quantisation, smaller architecture) (latency)",
    ]


def test_criteria_left_unmeasured_by_a_missing_stage_are_grouped() -> None:
    detail = "stages/load/requests.csv is missing (its stage did not run)"
    rows = [
        crit(
            name=n,
            met=False,
            valid=False,
            status="not_run",
            measured=None,
            detail=detail,
            evidence={"table": "stages/load/requests.csv"},
        )
        for n in ("p95_latency_ms", "success_rate")
    ]
    issues = blocking_issues(rows, gates(missing=("load",)), ran(("load",)))
    assert issues == [
        "load: did not run, so its gate 'load' counts as failed.",
        "2 criteria not measured because the load stage did not run: p95_latency_ms, success_rate.",
    ]
    risks = derive_risks(rows, gates(missing=("load",)), ran(("load",)))
    assert {r["mitigation"] for r in risks} == {"run the load stage and its gate"}
    assert recommendations(risks, rows) == ["run the load stage and its gate (load, latency)"]


def test_a_regression_against_the_baseline_is_not_approved_whatever_the_score() -> None:
    sentence = (
        "compute_time_ms[scorer]: compute_time_ms of model scorer regressed against the "
        "baseline r1: 1.94x (interval 1.92x to 1.96x), p = 1e-99; at most 10% allowed."
    )
    decision, confidence, score, reasons = decide([crit()], gates(), ran(), regressions=[sentence])
    assert (decision, confidence, score) == (NOT_APPROVED, "LOW", 1.0)
    assert reasons[0].startswith("Not approved: 1 regression(s) against the baseline")
    assert reasons[1] == sentence


def test_a_waived_regression_caps_the_decision_at_conditional() -> None:
    cap = "Waived regression (by alice: agreed with the search team): compute_time_ms[scorer]"
    decision, _, _, reasons = decide([crit()], gates(), ran(), caps=[cap])
    assert decision == CONDITIONAL_APPROVAL and cap in reasons
