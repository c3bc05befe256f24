"""The DAG under a real Airflow deployment (scheduler, DAG processor, API server with the
LocalExecutor) on PostgreSQL: a run triggered from the UI's form in a real browser, one
triggered with `airflow dags trigger -c`, and a backfill over two dates all succeed, each
date certifying its own model snapshot; the Certifications view shows the UI run's reason
and decision, and refuses anonymous requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.integration.airflow_cluster import DAG_ID, AirflowCluster, postgres_available

pytestmark = pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL on :5432")

CHROMIUM = shutil.which("chromium")
REASON = "browser-triggered certification"


def _report(root: Path, run_id: str) -> dict:
    from pipeline.orchestrate import run_key

    path = root / "artifacts" / DAG_ID / run_key(run_id) / "report.json"
    assert path.exists(), f"no report for {run_id}"
    return json.loads(path.read_text())


def _browser():
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    browser = manager.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    return manager, browser


def _login(page, base: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/", timeout=30_000)


def _trigger_from_the_form(page, base: str) -> None:
    page.goto(f"{base}/dags/{DAG_ID}")
    page.click("button:has-text('Trigger')", timeout=60_000)
    dialog = page.locator("[role=dialog]")
    dialog.locator("button:has-text('Release')").click()
    page.fill("#element_reason", REASON)
    dialog.locator("button:has-text('Trigger')").last.click()
    page.wait_for_timeout(2000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    cluster = AirflowCluster(root)
    try:
        cluster.start()
        cluster.wait_for_dag()
        yield cluster
    finally:
        cluster.stop()


def test_ui_trigger_cli_trigger_and_backfill_all_certify_their_snapshot(cluster) -> None:
    base = f"http://127.0.0.1:{cluster.port}"
    assert cluster.airflow("dags", "unpause", DAG_ID).returncode == 0
    trigger = cluster.airflow(
        "dags",
        "trigger",
        DAG_ID,
        "-c",
        json.dumps({"reason": "cli trigger"}),
        "--logical-date",
        "2026-02-01T02:00:00+00:00",
    )
    assert trigger.returncode == 0, trigger.stderr[-2000:]
    backfill = cluster.airflow(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        "2026-02-02",
        "--to-date",
        "2026-02-03T23:00:00",
        "--max-active-runs",
        "1",
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
    if CHROMIUM:
        manager, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            _login(page, base)
            _trigger_from_the_form(page, base)
        finally:
            browser.close()
            manager.stop()
    expected = 5 if CHROMIUM else 4  # + the scheduled run that unpausing creates
    runs = cluster.wait_for_runs(expected, timeout_s=900)
    assert [r["state"] for r in runs] == ["success"] * len(runs), runs

    versions, reasons = {}, {}
    for run in runs:
        report = _report(cluster.root, run["run_id"])
        day = report["conf"]["snapshot_date"]
        versions.setdefault(day, set()).update(m["version"] for m in report["models"])
        reasons[run["run_id"]] = (report["conf"].get("reason"), report["decision"])
    for day in ("2026-02-01", "2026-02-02", "2026-02-03"):
        assert versions[day] == {f"1.0.{day.replace('-', '')}"}, versions
    assert any(why == "cli trigger" for why, _ in reasons.values())
    if CHROMIUM:
        ui_run = next(r for r, (why, _) in reasons.items() if why == REASON)
        decision = reasons[ui_run][1]
        manager, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            _login(page, base)
            page.goto(base + "/relcert/certifications")
            text = page.inner_text("body")
            assert REASON in text and decision in text
        finally:
            browser.close()
            manager.stop()

    anonymous = httpx.get(base + "/relcert/certifications", timeout=30)
    assert anonymous.status_code == 401
    assert "cli trigger" not in anonymous.text
