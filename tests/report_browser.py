"""A report as a person reads it: Debian's Chromium (driven by Playwright, no browser
download) opens report.html served over HTTP on loopback and follows every link."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on 127.0.0.1 (a missing file is a 404); yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as manager:
        browser = manager.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        try:
            yield browser
        finally:
            browser.close()


def follow_every_link(report_html: Path) -> dict[str, int]:
    """Open `report_html` (served from its run folder) and follow each of its links: an
    anchor must name an element of the page; a file must answer 200 with content (pages are
    loaded as a browser would, other files fetched). Nothing leaves this machine (requests to
    any other origin, e.g. the Data Docs' CDN scripts, are refused). Returns link -> status;
    asserts that the page marks no file it names as missing."""
    followed: dict[str, int] = {}
    with serve_folder(report_html.parent) as base, chromium() as browser:
        context = browser.new_context()
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(base) else route.abort()
            ),
        )
        page = context.new_page()
        response = page.goto(f"{base}/{report_html.name}")
        assert response is not None and response.ok, response
        missing = page.locator("[title=missing]").all_inner_texts()
        assert not missing, f"the report names files that are not there: {missing}"
        hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        assert hrefs, "the report has no links"
        for url in dict.fromkeys(hrefs):
            parts = urlsplit(url)
            if parts.fragment and url.split("#")[0] == page.url.split("#")[0]:
                found = page.locator(f"[id='{parts.fragment}']").count()
                assert found == 1, f"anchor #{parts.fragment}: {found} element(s)"
                followed[url] = 200
                continue
            assert url.startswith(base + "/"), f"a link leaves the run folder: {url}"
            if parts.path.endswith(".html"):
                other = context.new_page()
                answer = other.goto(url)
                status = answer.status if answer is not None else 0
                assert status == 200 and other.content().strip(), (url, status)
                other.close()
            else:
                answer = context.request.get(url)
                status = answer.status
                assert status == 200 and answer.body(), (url, status)
            followed[urljoin(base + "/", url)] = status
        context.close()
    return followed
