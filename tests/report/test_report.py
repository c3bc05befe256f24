"""The final report on real run folders: decision, evidence, HTML, determinism, package."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.report import (
    APPROVED,
    CONDITIONAL_APPROVAL,
    NOT_APPROVED,
    set_package,
    write_report,
)
from pipeline.stages import run_stage
from tests.report.conftest import STAGES_RUN

pytestmark = pytest.mark.e2e

VOID = {"meta", "br", "img", "hr", "link", "input", "col", "wbr", "source"}


class _Page(HTMLParser):
    """Collects links, images and text, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "a":
            self.hrefs.append(attributes.get("href") or "")
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.errors, page.errors[:5]
    assert not page.stack, page.stack
    return page


def criteria_csv(run: Path) -> dict[str, dict[str, str]]:
    with open(run / "stages/certify/criteria.csv", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


# ------------------------------------------------------------------------- the outcomes
def test_a_healthy_run_is_approved(approved_report) -> None:
    data = json.loads(approved_report.path_json.read_text())
    assert approved_report.decision == data["decision"] == APPROVED
    assert data == approved_report.data
    assert data["confidence"] == "HIGH" and approved_report.readiness_score == 1.0
    assert all(c["met"] and c["valid"] for c in data["criteria"] if c["status"] != "not_applicable")
    not_applicable = [c["name"] for c in data["criteria"] if c["status"] == "not_applicable"]
    assert not_applicable == ["soak_p99_drift_ratio", "soak_rss_growth_mb", "soak_error_rate"]
    assert all(g["success"] for g in data["gates"].values())
    assert set(data["gates"]) == set(STAGES_RUN)
    assert not [r for r in data["risks"] if r["level"] == "high"]
    assert data["summary"]["deployment_allowed"] and data["run_id"] == "nightly-1"
    assert data["profile"] == "smoke"
    operational = {i["item"]: i for i in data["readiness"]["operational"]}
    package = operational["deployment package can be generated"]
    assert package["status"] == "not_run" and package["passed"] is None  # no package yet
    assert operational["monitoring exposes engine metrics"]["passed"] is True
    functional = {i["item"]: i["passed"] for i in data["readiness"]["functional"]}
    assert all(functional.values()), functional


def test_infra_expected_but_not_run_is_not_approved(good_run: Path) -> None:
    # The default expects the infra stage (the DAG runs it). Without it the service that
    # would ship was never validated, and its criteria (the interface SLAs, availability)
    # were not run: NOT_APPROVED.
    shutil.rmtree(good_run / "stages/infra")
    (good_run / "gates/infra.json").unlink()
    run_stage("certify", good_run, "smoke")  # its criteria as the certify task finds them
    report = write_report(good_run, conf={"reason": "<script>alert('x')</script>"})
    data = report.data
    assert (report.decision, data["confidence"]) == (NOT_APPROVED, "LOW")
    assert "nothing is packaged" in data["reasons"][0]
    assert any("infra: did not run" in r for r in data["reasons"])
    criteria = {c["name"]: c for c in data["criteria"]}
    interface = ("routing_endpoint_p99_ms", "endpoint_p99_latency_ms[quality_predictor]")
    for name in ("availability", *interface):
        assert criteria[name]["status"] == "not_run" and not criteria[name]["met"]
        assert "infra" in criteria[name]["detail"]
    assert data["gates"]["infra"] == {
        **data["gates"]["infra"],
        "ran": False,
        "success": False,
        "failed": ["infra: did not run"],
    }
    assert any(r["level"] == "high" and r["gate"] == "infra" for r in data["risks"])
    assert data["next_steps"][0].startswith("Do not deploy")
    health = {i["item"]: i for i in data["readiness"]["operational"]}
    assert health["health endpoints answer (ready, live)"]["passed"] is None  # not checked
    # every text from the run is escaped in the page
    page = report.path_html.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert data["conf"]["reason"] == "<script>alert('x')</script>"
    assert "NOT_APPROVED" in page and "infra: did not run" in page


def test_a_failed_certification_gate_is_not_approved(failed_certification_report) -> None:
    report = failed_certification_report
    data = report.data
    assert (report.decision, data["confidence"]) == (NOT_APPROVED, "LOW")
    assert report.readiness_score == 0.6  # integration 0.3 + load and stress 0.3
    criteria = {c["name"]: c for c in data["criteria"]}
    p99 = criteria["p99_latency_ms"]
    assert not p99["met"] and p99["valid"] and p99["threshold"] == pytest.approx(0.0012)
    # the mix and each model on its own are held to the run's p99
    p99_rows = ["p99_latency_ms", "p99_latency_ms[quality_predictor]"]
    p99_rows.append("p99_latency_ms[routing_classifier]")
    unmet = [c["name"] for c in data["criteria"] if not c["met"]]
    assert [n for n in unmet if not n.startswith("soak_")] == p99_rows  # soak: n.a.
    assert not data["gates"]["certify"]["success"]
    assert any("p99_latency_ms" in f for f in data["gates"]["certify"]["failed"])
    reasons = " ".join(data["reasons"])
    assert "Gate 'certify' failed" in reasons and "p99_latency_ms: not met" in reasons
    assert "p99_latency_ms[routing_classifier]: not met" in reasons
    high = [(r["gate"] or r["criterion"]) for r in data["risks"] if r["level"] == "high"]
    assert high == ["certify", *p99_rows]
    assert "cache results of repeated inputs (latency)" in data["recommendations"]
    assert data["next_steps"][0].startswith("Do not deploy")
    page = parse(report.path_html)
    text = "".join(page.text)
    assert "NOT_APPROVED" in text and "p99_latency_ms: not met" in text
    assert len([s for s in page.images if s.startswith("data:image/png;base64,")]) >= 4


def test_a_run_without_the_load_stage_is_not_approved(no_load_report) -> None:
    data = no_load_report.data
    assert no_load_report.decision == NOT_APPROVED
    assert no_load_report.readiness_score == 0.3  # only the integration gate passed
    assert any("load: did not run" in r for r in data["reasons"])
    assert any(
        "criteria not measured because the load stage did not run" in r for r in data["reasons"]
    )
    assert "run the load stage and its gate" in data["recommendations"][0]
    assert data["stages"]["load"]["ran"] is False and data["stages"]["load"]["expected"]
    assert data["gates"]["load"]["failed"] == ["load: did not run"]
    criteria = {c["name"]: c for c in data["criteria"]}
    for name in ("p95_latency_ms", "sustained_throughput_rps", "success_rate"):
        assert not criteria[name]["met"] and not criteria[name]["valid"]
        assert criteria[name]["measured"] is None and "did not run" in criteria[name]["detail"]
    assert criteria["model_quality[routing_classifier]"]["met"]  # integration still ran
    # figures without data become notes; the stress figures are still drawn
    page = parse(no_load_report.path_html)
    assert "Not available: stages/load/scenarios.csv is missing" in "".join(page.text)
    assert len([s for s in page.images if s.startswith("data:image/png;base64,")]) >= 2
    root = no_load_report.path_json.parent
    assert all((root / href).is_file() for href in page.hrefs)


def test_an_empty_run_folder_still_gets_a_report(tmp_path: Path) -> None:
    report = write_report(tmp_path)
    assert report.decision == NOT_APPROVED and report.readiness_score == 0.0
    assert all(not c["met"] and c["measured"] is None for c in report.data["criteria"])
    assert report.data["models"] == [] and parse(report.path_html).images == []


# ------------------------------------------------------------------------- report.json
def test_report_json_schema(approved_report) -> None:
    run = approved_report.path_json.parent
    data = json.loads(approved_report.path_json.read_text())
    types = {
        "decision": str,
        "confidence": str,
        "reasons": list,
        "readiness_score": float,
        "criteria": list,
        "gates": dict,
        "stages": dict,
        "models": list,
        "risks": list,
        "recommendations": list,
        "readiness": dict,
        "environment": dict,
        "profile": str,
        "run_id": str,
        "conf": dict,
        "generated_by": str,
        "generated_at": str,
        "next_steps": list,
    }
    for key, kind in types.items():
        assert isinstance(data[key], kind), key
    assert data["package"] is None and data["conf"] == {"reason": "manual"}
    assert data["generated_by"].startswith("relcert ") and data["generated_at"] == "2026-01-16"
    fields = {
        "name", "category", "target", "threshold", "direction", "tolerance", "unit",
        "measured", "margin", "met", "valid", "samples", "evidence",
    }  # fmt: skip
    for row in data["criteria"]:
        assert fields <= set(row), fields - set(row)
    for gate in data["gates"].values():
        assert isinstance(gate["success"], bool) and isinstance(gate["failed"], list)
        assert (run / gate["path"]).is_file()
    for stage in STAGES_RUN:
        assert data["stages"][stage]["ran"] is True
    assert data["stages"]["load"]["seconds"] > 0
    assert data["stages"]["load"]["summary"]["capacity.max_sustained_rps"] > 0
    assert set(data["readiness"]) == {"functional", "performance", "reliability", "operational"}
    for items in data["readiness"].values():
        assert items and all({"item", "passed", "evidence"} <= set(i) for i in items)
        assert all(i["evidence"] is None or (run / i["evidence"]).exists() for i in items)
    reliability = [i["item"] for i in data["readiness"]["reliability"]]
    assert "stress: memory_pressure survived and recovered" in reliability
    models = {(m["name"], m["format"]): m for m in data["models"]}
    info = json.loads((run / "models/model_info.json").read_text())
    for name, entry in info.items():
        for fmt, file in entry["files"].items():
            model = models[(name, fmt)]
            assert model["sha256"] == file["sha256"] and model["version"] == entry["version"]
            assert model["sha256_verified"] is True and model["source"] == "built"
    env = data["environment"]
    assert env["cpu_count"] >= 1 and env["python"] and env["hostname"]
    assert env["packages"]["onnxruntime"] and "apache-airflow" in env["packages"]
    assert env["snapshot_date"] == "2026-01-15"
    assert set(env["seeds"]) == set(info) and all(isinstance(s, int) for s in env["seeds"].values())


def test_every_criterion_is_the_measurement_of_the_certify_table(approved_report) -> None:
    run = approved_report.path_json.parent
    table = criteria_csv(run)
    criteria = approved_report.data["criteria"]
    assert [c["name"] for c in criteria] == list(table)
    for row in criteria:
        recorded = table[row["name"]]
        if recorded["status"] == "not_applicable":
            assert row["measured"] is None and recorded["measured"] == ""
            continue
        assert row["measured"] == float(recorded["measured"])  # the same float, bit for bit
        assert row["threshold"] == float(recorded["threshold"])
        assert row["met"] == (recorded["met"] == "True")
        assert row["samples"] == int(recorded["samples"])
        evidence = row["evidence"]
        assert evidence["table"] == recorded["source"]
        for key in ("table", "gate", "criteria_table", "certification_gate"):
            assert (run / evidence[key]).is_file(), (row["name"], key, evidence[key])


# ------------------------------------------------------------------------- report.html
def test_report_html_is_self_contained_and_links_into_the_run(approved_report) -> None:
    run = approved_report.path_json.parent
    page = parse(approved_report.path_html)
    text = " ".join(page.text)
    assert APPROVED in text and "readiness score" in text
    rows = [a for tag, a in page.tags if tag == "tr" and a.get("class") == "criterion"]
    criteria = approved_report.data["criteria"]
    assert [a["id"] for a in rows] == [f"criterion-{c['name']}" for c in criteria]
    pngs = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(pngs) >= 4 and len(pngs) == len(page.images)
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe")]
    assert page.hrefs
    for href in page.hrefs:
        assert "://" not in href and not href.startswith("/"), href
        assert (run / href).is_file(), href
    for wanted in ("data_docs/index.html", "gates/certify.json", "stages/load/requests.csv"):
        assert wanted in page.hrefs
    for gate in approved_report.data["gates"].values():
        assert gate["data_docs_validation"] in page.hrefs


# ------------------------------------------------------------------------- determinism
def test_writing_the_report_twice_gives_identical_bytes(approved_report) -> None:
    run = approved_report.path_json.parent
    json_bytes = approved_report.path_json.read_bytes()
    html_bytes = approved_report.path_html.read_bytes()
    again = write_report(
        run,
        stages_expected=STAGES_RUN,
        run_id="nightly-1",
        conf={"reason": "manual"},
        generated_at="2026-01-16",
    )
    assert again.path_json.read_bytes() == json_bytes
    assert again.path_html.read_bytes() == html_bytes
    assert not list(run.glob(".report.*.tmp"))  # atomic writes left no temporaries


# ------------------------------------------------------------------------- package
def test_set_package_updates_both_files(good_run: Path) -> None:
    write_report(good_run, stages_expected=STAGES_RUN)
    archive = good_run / "package" / "relcert-1.0.0.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("README.md", "package")
    report = set_package(good_run, archive)
    data = json.loads((good_run / "report.json").read_text())
    assert data["package"] == report.data["package"] == "package/relcert-1.0.0.zip"
    assert data["decision"] == APPROVED
    item = {i["item"]: i for i in data["readiness"]["operational"]}
    assert item["deployment package can be generated"]["evidence"] == data["package"]
    page = parse(good_run / "report.html")
    assert "package/relcert-1.0.0.zip" in page.hrefs
    set_package(good_run, None)
    assert json.loads((good_run / "report.json").read_text())["package"] is None
    assert "package/relcert-1.0.0.zip" not in parse(good_run / "report.html").hrefs


def test_a_rejected_run_gets_no_package(no_load_report, tmp_path: Path) -> None:
    run = no_load_report.path_json.parent
    archive = tmp_path / "x.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(ValueError, match="NOT_APPROVED"):
        set_package(run, archive)
    with pytest.raises(FileNotFoundError):
        set_package(run / "nowhere", archive)


# ------------------------------------------------------------------------- damaged runs
def test_unreadable_artifacts_fail_their_gate_and_never_crash_the_report(tmp_path: Path) -> None:
    (tmp_path / "gates").mkdir()
    (tmp_path / "gates/load.json").write_text("{not json")
    (tmp_path / "stages/load").mkdir(parents=True)
    (tmp_path / "stages/load/scenarios.csv").write_text("scenario,users\nbaseline,5\n")
    (tmp_path / "stages/load/capacity.csv").write_text("")
    report = write_report(tmp_path, stages_expected=("load",))
    load = report.data["gates"]["load"]
    assert load["ran"] and not load["success"]
    assert load["failed"] == ["gates/load.json is not readable JSON"]
    assert report.data["stages"]["load"]["ran"] is True
    notes = " ".join(parse(report.path_html).text)
    assert "stages/load/scenarios.csv lacks column(s) p50_ms" in notes
    assert "stages/load/capacity.csv is not a readable table" in notes
    with pytest.raises(ValueError, match="unknown stage"):
        write_report(tmp_path, stages_expected=("deploy",))


def test_a_run_on_relaxed_targets_is_at_most_conditional_and_says_so(good_run: Path) -> None:
    from pipeline.report import write_report
    from pipeline.targets import load_targets

    relaxed = load_targets().with_overrides({"p99_latency_ms": 1e9}, allow_relaxed=True)
    report = write_report(
        good_run,
        targets=relaxed,
        stages_expected=STAGES_RUN,
        conf={"reason": "canary with a known slow tail"},
    )
    assert report.decision == CONDITIONAL_APPROVAL
    assert report.data["relaxed_targets"] == [
        {"metric": "p99_latency_ms", "model": None, "declared": 300.0, "effective": 1e9}
    ]
    reasons = " ".join(report.data["reasons"])
    assert "p99_latency_ms relaxed from 300 to 1e+09" in reasons
    assert "canary with a known slow tail" in reasons
    text = "".join(parse(report.path_html).text)
    assert "Relaxed targets" in text and "1000000000.0" in text
