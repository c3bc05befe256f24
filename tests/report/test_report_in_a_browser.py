"""The report of a real run, opened in a browser: every link leads to a file of the run."""

from __future__ import annotations

import pytest

from tests.report_browser import follow_every_link, needs_chromium

pytestmark = pytest.mark.system


@needs_chromium
def test_every_link_of_the_report_opens_a_file_of_the_run(approved_report) -> None:
    run = approved_report.path_json.parent
    followed = follow_every_link(approved_report.path_html)
    paths = {url.split("/", 3)[3] for url in followed if "#" not in url}
    # the evidence of every criterion and gate, the certification gate under the criteria
    # table (named from the registry: it is gates/certify.json), the Data Docs, the appendix
    for wanted in (
        "stages/certify/criteria.csv",
        "gates/certify.json",
        "data_docs/index.html",
        "stages/load/summary.json",
        *(g["path"] for g in approved_report.data["gates"].values()),
        *(g["data_docs_validation"] for g in approved_report.data["gates"].values()),
    ):
        assert wanted in paths, wanted
        assert (run / wanted).is_file()
    assert all(status == 200 for status in followed.values())
