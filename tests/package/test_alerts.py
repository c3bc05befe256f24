"""The package's alert rules, checked and unit-tested with Prometheus's own promtool.

The rules and their tests are generated from the same targets; promtool must accept every
generated rules file, pass every generated test file, and fail when the rules and the tests
come from different thresholds (or when a rule goes back to a lifetime average).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.package import PackageError, build_package
from pipeline.package.alerts import alert_rules_and_tests, latency_buckets_ms
from pipeline.package.manifests import dump_yaml
from pipeline.package.settings import EngineSettings
from pipeline.targets import load_targets
from tests.package.conftest import extract, make_run
from tests.serve.conftest import QUALITY_PATH, missing_for_rules, running_server

pytestmark = pytest.mark.system

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package "
    "(apt-get install --no-install-recommends prometheus ships /usr/bin/promtool)",
)
KUBERNETES_VERSION = "1.31.0"
TESTS_FILE = "monitoring/tests/alerts_test.yaml"
#: stricter than include/targets.yaml (overrides may only tighten)
STRICTER = {
    "p95_latency_ms": 80,
    "p99_latency_ms": 250,
    "error_rate": 0.005,
    "memory_usage_mb": 400,
    "sustained_throughput_rps": 60,
    "cache_hit_rate": 0.8,
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _yaml(top: Path, name: str) -> dict:
    return yaml.safe_load((top / name).read_text())


def _write(root: Path, rules: dict, tests: dict) -> Path:
    """monitoring/rules.yaml and monitoring/tests/alerts_test.yaml under `root`."""
    (root / "monitoring" / "tests").mkdir(parents=True)
    (root / "monitoring" / "rules.yaml").write_text(dump_yaml(rules))
    (root / TESTS_FILE).write_text(dump_yaml(tests))
    return root


@pytest.fixture(scope="module")
def capacity_package(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A package from a run with stricter targets whose load stage measured its capacity."""
    root = tmp_path_factory.mktemp("capacity-package")
    run = make_run(root / "run", built_models)
    load = run / "stages" / "load"
    load.mkdir(parents=True)
    summary = {"capacity": {"max_sustained_rps": 437.5, "capped": False}}
    (load / "summary.json").write_text(json.dumps(summary))
    targets = load_targets().with_overrides(STRICTER)
    result = build_package(run, targets=targets, kubernetes_version=KUBERNETES_VERSION)
    return result, extract(result.path, root / "unzipped"), targets


@pytest.fixture(scope="module")
def package(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A package from an approved run with the default targets (read-only)."""
    root = tmp_path_factory.mktemp("package")
    result = build_package(make_run(root / "run", built_models))
    return result, extract(result.path, root / "unzipped")


def _alert_names(rules: dict) -> list[str]:
    return [rule["alert"] for rule in rules["groups"][0]["rules"]]


def _rule(rules: dict, *, alert: str | None = None, target: str | None = None) -> dict:
    """The rule of a rules file with that alert name or that target label."""
    return next(
        r
        for r in rules["groups"][0]["rules"]
        if r["alert"] == alert or (target is not None and r["labels"]["target"] == target)
    )


def _only(tests: dict, alert: str) -> list[dict]:
    """The test groups of one alert (the others pass either way; promtool takes a second
    to run them all)."""
    return [group for group in tests["tests"] if group["alert_rule_test"][0]["alertname"] == alert]


# ----------------------------------------------------------------------------- packaged
@needs_promtool
def test_packaged_rules_pass_promtool_check_and_their_own_tests(package) -> None:
    _, top = package
    checked = promtool("check", "rules", "monitoring/rules.yaml", cwd=top)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = _yaml(top, "monitoring/rules.yaml")
    assert f"SUCCESS: {len(_alert_names(rules))} rules found" in checked.stdout
    # the PrometheusRule carries exactly the plain file's groups
    resource = _yaml(top, "monitoring/prometheus-rule.yaml")
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == rules["groups"]
    # as the README tells an operator to rerun them, from the package's top folder
    tested = promtool("test", "rules", TESTS_FILE, cwd=top)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    # no certified capacity in this run: no capacity alert
    assert "RelcertTrafficAboveCertifiedCapacity" not in _alert_names(rules)


def test_every_alert_is_tested_firing_silent_and_recovering(package) -> None:
    _, top = package
    rules = _yaml(top, "monitoring/rules.yaml")
    tests = _yaml(top, TESTS_FILE)
    assert tests["rule_files"] == ["../rules.yaml"]
    for rule in rules["groups"][0]["rules"]:
        groups = [
            [(check["eval_time"], check["exp_alerts"]) for check in group["alert_rule_test"]]
            for group in _only(tests, rule["alert"])
        ]
        fires = [g for g in groups if any(alerts for _, alerts in g)]
        assert len(fires) == 1, rule["alert"]
        (checks,) = fires
        firing = [i for i, (_, alerts) in enumerate(checks) if alerts]
        # silent before, firing once past `for:`, silent again after recovery
        assert checks[0][1] == [] and checks[-1][1] == [] and 0 < firing[0] < len(checks) - 1
        expected = checks[firing[0]][1][0]
        assert expected["exp_labels"]["target"] == rule["labels"]["target"]
        assert expected["exp_annotations"]["threshold"] == rule["annotations"]["threshold"]
        assert "{{" not in expected["exp_annotations"]["description"]
        silent = [g for g in groups if not any(alerts for _, alerts in g)]
        assert silent, f"{rule['alert']}: no case just inside the threshold"


@needs_promtool
def test_capacity_alert_comes_from_the_load_summary(capacity_package) -> None:
    result, top, targets = capacity_package
    rules = _yaml(top, "monitoring/rules.yaml")
    capacity = _rule(rules, alert="RelcertTrafficAboveCertifiedCapacity")
    assert capacity["expr"] == "sum without (outcome) (rate(relcert_requests_total[5m])) > 218.75"
    assert capacity["annotations"]["threshold"] == "218.75"  # 437.5 req/s x 0.5
    assert "437.5 req/s" in capacity["annotations"]["description"]
    tests = _yaml(top, TESTS_FILE)
    names = [g["name"] for g in tests["tests"]]
    assert any(n.startswith("RelcertTrafficAboveCertifiedCapacity: past") for n in names)
    # the stricter thresholds are the rules' (and the tests') thresholds
    p95 = _rule(rules, alert="RelcertP95LatencyHigh")
    assert p95["expr"].endswith("> 92")
    assert promtool("check", "rules", "monitoring/rules.yaml", cwd=top).returncode == 0
    tested = promtool("test", "rules", TESTS_FILE, cwd=top)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "RelcertTrafficAboveCertifiedCapacity" in (top / "docs/runbook.md").read_text()
    # the service is configured with bounds at the stricter thresholds (92, 300 ms)
    data = _yaml(top, "kubernetes/configmap.yaml")["data"]
    bounds = [float(b) for b in data["LATENCY_BUCKETS_MS"].split(",")]
    assert bounds == list(latency_buckets_ms(targets)) and {92.0, 300.0} <= set(bounds)
    # an explicit rate wins over the load summary
    run = result.path.parents[1]
    again = build_package(
        run, targets=targets, certified_capacity_rps=100.0, out_dir=run / "explicit"
    )
    with zipfile.ZipFile(again.path) as archive:
        rules = yaml.safe_load(archive.read(f"{top.name}/monitoring/rules.yaml"))
    assert _rule(rules, target="max_sustained_rps")["expr"].endswith("> 50")
    with pytest.raises(PackageError, match="certified_capacity_rps must be a finite rate > 0"):
        build_package(run, certified_capacity_rps=float("nan"), out_dir=run / "explicit")


# ----------------------------------------------------------------------------- disagreement
@needs_promtool
@pytest.mark.parametrize("target", sorted(STRICTER))
@pytest.mark.parametrize("stricter", ["rules", "tests"])
def test_promtool_fails_when_rules_and_tests_have_different_thresholds(
    tmp_path: Path, target: str, stricter: str
) -> None:
    default = load_targets()
    tightened = default.with_overrides({target: STRICTER[target]})
    rules_from, tests_from = (tightened, default) if stricter == "rules" else (default, tightened)
    rules, _ = alert_rules_and_tests(rules_from, EngineSettings(), "relcert-service")
    _, tests = alert_rules_and_tests(tests_from, EngineSettings(), "relcert-service")
    alert = _rule(rules, target=target)["alert"]
    tests["tests"] = _only(tests, alert)
    completed = promtool("test", "rules", TESTS_FILE, cwd=_write(tmp_path, rules, tests))
    assert completed.returncode != 0, completed.stdout
    report = completed.stdout + completed.stderr
    assert "FAILED" in report and f"alertname: {alert}," in report
    if stricter == "rules":  # the rules fire on what the tests call just inside: healthy
        assert f"name: {alert}: just inside" in report and "exp:[]," in report
    else:  # the rules stay silent where the tests expect them to fire
        assert f"name: {alert}: past" in report and "got:[]" in report


@needs_promtool
def test_a_lifetime_average_fails_the_generated_tests(tmp_path: Path) -> None:
    """The rule this issue replaced: after an hour of fast traffic it misses the spike."""
    rules, tests = alert_rules_and_tests(load_targets(), EngineSettings(), "relcert-service")
    tests["tests"] = _only(tests, "RelcertMeanLatencyHigh")
    mean = _rule(rules, alert="RelcertMeanLatencyHigh")
    mean["expr"] = (
        "sum by (namespace, job) (relcert_request_latency_ms_sum)"
        " / sum by (namespace, job) (relcert_request_latency_ms_count) > 33"
    )
    completed = promtool("test", "rules", TESTS_FILE, cwd=_write(tmp_path, rules, tests))
    assert completed.returncode != 0, completed.stdout
    report = completed.stdout + completed.stderr
    # the hour of fast traffic holds the lifetime mean down: the spike never fires it
    assert "alertname: RelcertMeanLatencyHigh, time: 1h11m" in report
    assert "got:[]" in report


# ----------------------------------------------------------------------------- the service
def test_the_service_exports_what_the_packaged_rules_use(capacity_package, tmp_path: Path) -> None:
    """The packaged ConfigMap's settings on the real service: every metric the packaged rules
    use is exported with the type they assume, and the thresholds are bucket bounds."""
    _, top, targets = capacity_package
    env = _yaml(top, "kubernetes/configmap.yaml")["data"]
    env = {k: v for k, v in env.items() if k not in ("MODEL_DIR", "MODEL_FORMAT")}
    with running_server(top / "models", tmp_path, env) as server, server.client() as http:
        for _ in range(3):
            assert http.post(QUALITY_PATH, json={"features": [0.5] * 10}).status_code == 200
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rules = _yaml(top, "monitoring/rules.yaml")
    assert missing_for_rules(families, rules) == []
    latency = families["relcert_request_latency_ms"]
    bounds = {float(s.labels["le"]) for s in latency.samples if s.name.endswith("_bucket")}
    for name in ("p95_latency_ms", "p99_latency_ms", "average_inference_latency_ms"):
        assert targets[name].threshold in bounds, name
    assert 92.0 in bounds  # the stricter p95 threshold, not in the default ladder
    count = next(s.value for s in latency.samples if s.name.endswith("_count"))
    assert count >= 3
