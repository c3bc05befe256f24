"""The report's figures stay readable on the tables a long capacity search writes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest

from pipeline.report import plots
from pipeline.stages.registry import table

pytestmark = pytest.mark.unit

# the nightly profile's capacity search: doubling from 250 req/s, then bisecting the last
# step to 5% (the close rates near the knee are where the labels ran into each other)
RATES = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 24000, 20000, 18000, 17000, 16500)


def _capacity_run(root: Path) -> Path:
    rows = [
        {
            "subject": subject,
            "offered_rps": rate,
            "p50_ms": 1.0 + (rate / 16000) ** 6 * 10,
            "p99_ms": 3.0 + (rate / 16000) ** 6 * 30,
            "attempt_id": "a",
        }
        for subject in ("mix", "quality_predictor", "routing_classifier")
        for rate in RATES
    ]
    path = root / table("load", "capacity").path
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return root


def test_latency_against_offered_load_has_readable_rate_labels(tmp_path: Path) -> None:
    root = _capacity_run(tmp_path)
    criteria = {"p99_latency_ms": {"threshold": 360.0}, "sustained_throughput_rps": {}}
    fig, _caption, sources = plots._latency_vs_load(root, criteria)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    low, high = ax.get_xlim()
    shown = [t for t in labels if low <= t.get_position()[0] <= high]
    assert 3 <= len(shown) <= 10, [t.get_text() for t in shown]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, "two rate labels overlap"
    assert {t.get_text() for t in shown} >= {"1k", "10k"}  # round, short labels
    assert sources == (table("load", "capacity").path,)
