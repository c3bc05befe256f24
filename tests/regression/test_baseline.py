"""pipeline.regression.baseline: which run a candidate is compared with, pins, comparability.

Runs are minimal report.json / conf.json files in a real artifact store: a plain path and
fsspec's `memory://` (standing in for an object store: no rename, one put per object).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.names import APPROVED, CONDITIONAL_APPROVAL, DAG_ID, NOT_APPROVED
from pipeline.regression.baseline import (
    PIN_FILE,
    BaselineError,
    HostIdentity,
    check_comparable,
    cpu_model,
    find_baseline,
    list_runs,
    pin_baseline,
    read_pin,
    read_run,
    unpin_baseline,
)
from pipeline.storage import ArtifactStore

pytestmark = pytest.mark.unit

CPU = "AMD EPYC 7B13"
MODELS = {"routing": "20260101.1", "quality_predictor": "20260101.1"}


@pytest.fixture(params=["path", "memory"])
def store(request, tmp_path: Path):
    if request.param == "path":
        root = str(tmp_path / "artifacts")
    else:
        root = f"memory://relcert-baseline-{uuid.uuid4().hex[:12]}/artifacts"
    result = ArtifactStore.from_location(root)
    yield result
    if request.param == "memory":
        with contextlib.suppress(FileNotFoundError):
            result.fs.rm(result.fs_root, recursive=True)


def _put(store: ArtifactStore, location: str, data: dict) -> None:
    path = store.fs_path(location)
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(path, json.dumps(data).encode())


def make_run(
    store: ArtifactStore,
    key: str,
    date: str,
    decision: str | None = APPROVED,
    *,
    profile: str = "nightly",
    models: dict[str, str] | None = None,
    cpu_count: int = 2,
    cpu: str | None = CPU,
    generated_at: str = "2026-01-01T00:00:00",
) -> None:
    """A run folder: conf.json (as prepare writes it) and, with a decision, report.json."""
    models = MODELS if models is None else models
    location = store.run_location(DAG_ID, key)
    conf = {"run_id": f"scheduled__{date}", "snapshot_date": date, "profile": profile}
    _put(store, store.join(location, "conf.json"), {**conf, "models": sorted(models)})
    if decision is None:
        return
    host = {"hostname": "worker-1", "cpu_count": cpu_count, "platform": "Linux"}
    if cpu is not None:
        host["cpu_model"] = cpu
    report = {
        "run_id": conf["run_id"],
        "decision": decision,
        "profile": profile,
        "generated_at": generated_at,
        "conf": {"snapshot_date": date},
        "models": [
            {"name": name, "format": fmt, "version": version}
            for name, version in models.items()
            for fmt in ("onnx", "torchscript")
        ],
        "environment": {
            "cpu_count": cpu_count,
            "hostname": "worker-1",
            "measured_on": "load",
            "hosts": {"load": host},
        },
    }
    _put(store, store.join(location, "report.json"), report)


def test_no_approved_run_means_no_baseline(store) -> None:
    make_run(store, "d10", "2026-01-10", decision=None)
    make_run(store, "d05", "2026-01-05", NOT_APPROVED)
    found = find_baseline(store, "d10")
    assert not found.found and found.run is None
    assert "no APPROVED run" in found.reason and "before 2026-01-10" in found.reason


def test_the_last_approved_run_before_the_snapshot_date_is_the_baseline(store) -> None:
    make_run(store, "d01", "2026-01-01")
    make_run(store, "d03", "2026-01-03")
    make_run(store, "d04", "2026-01-04", NOT_APPROVED)
    make_run(store, "d05", "2026-01-05", CONDITIONAL_APPROVAL)
    make_run(store, "d06", "2026-01-06", models={"routing": "1"})  # other models
    make_run(store, "d07", "2026-01-07", profile="smoke")  # other profile
    make_run(store, "d08", "2026-01-08", decision=None)  # the candidate
    make_run(store, "d09", "2026-01-09")  # later: never a baseline of d08
    found = find_baseline(store, "d08")
    assert found.found and not found.pinned
    assert found.run.run_key == "d03"
    assert found.run.snapshot_date == "2026-01-03"
    assert found.run.models == MODELS
    assert found.run.profile == "nightly"
    assert found.run.host == HostIdentity(2, CPU, "worker-1", "Linux")
    assert found.considered == 5  # approved: d01, d03, d06, d07, d09 (d08 is the candidate)
    assert "d03" in found.reason


def test_a_backfill_compares_each_date_with_the_release_before_it(store) -> None:
    for day in ("01", "05", "09", "13"):
        make_run(store, f"run-{day}", f"2026-03-{day}")
    # backfilled later, out of order: each date gets the release before it
    make_run(store, "backfill-07", "2026-03-07", decision=None)
    make_run(store, "backfill-02", "2026-03-02", decision=None)
    make_run(store, "backfill-01", "2026-03-01", decision=None)
    assert find_baseline(store, "backfill-07").run.run_key == "run-05"
    assert find_baseline(store, "backfill-02").run.run_key == "run-01"
    assert not find_baseline(store, "backfill-01").found  # nothing strictly earlier
    # an approved re-run of a date is compared with the date before, not with itself
    assert find_baseline(store, "run-09").run.run_key == "run-05"


def test_a_date_certified_twice_uses_the_latest_report(store) -> None:
    make_run(store, "a", "2026-01-01", generated_at="2026-01-01T03:00:00")
    make_run(store, "b", "2026-01-01", generated_at="2026-01-01T09:00:00")
    make_run(store, "c", "2026-01-02", decision=None)
    assert find_baseline(store, "c").run.run_key == "b"


def test_the_candidate_may_be_described_explicitly(store) -> None:
    make_run(store, "d01", "2026-01-01", profile="smoke", models={"routing": "1"})
    found = find_baseline(
        store,
        "not-stored-yet",
        snapshot_date="2026-02-01",
        model_names={"routing"},
        profile="smoke",
    )
    assert found.run.run_key == "d01"
    assert not find_baseline(store, "not-stored-yet").found  # no conf: no date


def test_a_pinned_run_is_honoured_and_stored_in_the_store(store) -> None:
    make_run(store, "old", "2026-01-01")
    make_run(store, "new", "2026-01-05")
    make_run(store, "cand", "2026-01-09", decision=None)
    pin = pin_baseline(store, "old", reason="last release shipped")
    assert pin.run_key == "old" and pin.reason == "last release shipped"
    assert store.fs.exists(store.fs_path(store.join(store.root, DAG_ID, PIN_FILE)))
    assert read_pin(store) == pin
    found = find_baseline(store, "cand")
    assert found.pinned and found.run.run_key == "old"
    assert "pinned baseline old" in found.reason and "last release shipped" in found.reason
    # a backfill of an earlier date also gets the pinned run (a pin is explicit)
    make_run(store, "early", "2025-12-01", decision=None)
    assert find_baseline(store, "early").run.run_key == "old"
    # the pin file is not taken for a run
    assert [r.run_key for r in list_runs(store)] == ["cand", "early", "new", "old"]
    assert unpin_baseline(store) == pin
    assert read_pin(store) is None and unpin_baseline(store) is None
    assert find_baseline(store, "cand").run.run_key == "new"


def test_a_pinned_run_with_other_models_is_noted(store) -> None:
    make_run(store, "old", "2026-01-01", models={"routing": "1"})
    make_run(store, "cand", "2026-01-09", decision=None)
    pin_baseline(store, "old")
    found = find_baseline(store, "cand")
    assert found.run.run_key == "old"
    assert "quality_predictor" in found.notes[0] and "no baseline" in found.notes[0]


def test_a_pin_that_became_unusable_gives_no_baseline_and_says_why(store) -> None:
    make_run(store, "old", "2026-01-01")
    make_run(store, "new", "2026-01-05")
    make_run(store, "cand", "2026-01-09", decision=None)
    pin_baseline(store, "old")
    make_run(store, "old", "2026-01-01", NOT_APPROVED)  # its report was rewritten
    found = find_baseline(store, "cand")
    assert not found.found and found.pinned
    assert "pinned baseline old is NOT_APPROVED" in found.reason
    store.fs.rm(store.fs_path(store.run_location(DAG_ID, "old")), recursive=True)
    assert "pinned baseline old is gone" in find_baseline(store, "cand").reason
    assert "is this run itself" in find_baseline(store, "old").reason


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (NOT_APPROVED, "its decision is NOT_APPROVED; only an APPROVED run can be a baseline"),
        (CONDITIONAL_APPROVAL, "its decision is CONDITIONAL_APPROVAL"),
        (None, "has no report.json yet"),
    ],
)
def test_only_an_approved_run_can_be_pinned(store, decision, message) -> None:
    make_run(store, "run", "2026-01-01", decision)
    with pytest.raises(BaselineError, match=message):
        pin_baseline(store, "run")
    assert read_pin(store) is None


def test_pinning_an_unknown_or_unsafe_run_is_refused(store) -> None:
    with pytest.raises(BaselineError, match="cannot pin 'nope': no such run in "):
        pin_baseline(store, "nope")
    with pytest.raises(BaselineError, match="unsafe"):
        pin_baseline(store, "../elsewhere")


def test_a_broken_pin_file_is_named(store) -> None:
    location = store.join(store.root, DAG_ID, PIN_FILE)
    _put(store, location, {"run": "x"})
    with pytest.raises(BaselineError, match=r"baseline\.json: expected an object with a run_key"):
        read_pin(store)


# --------------------------------------------------------------------------- comparable
def test_comparable_needs_the_same_profile_cpu_count_and_cpu_model(store) -> None:
    make_run(store, "base", "2026-01-01")
    make_run(store, "nocpu", "2026-01-01", cpu=None)
    base, nocpu = read_run(store, "base"), read_run(store, "nocpu")
    same = check_comparable(base, profile="nightly", host=HostIdentity(2, CPU, "worker-2"))
    assert same.comparable and same.reasons == ()
    other = check_comparable(base, profile="smoke", host=HostIdentity(4, "Intel Xeon"))
    assert not other.comparable
    assert other.reasons == (
        "profile smoke vs the baseline's nightly",
        "CPU count 4 vs the baseline's 2",
        "CPU model Intel Xeon vs the baseline's AMD EPYC 7B13",
    )
    unknown = check_comparable(nocpu, profile="nightly", host=HostIdentity(2, CPU))
    assert not unknown.comparable
    assert unknown.reason == "CPU model not recorded by the baseline nocpu"
    mine = check_comparable(base, profile="nightly", host=HostIdentity(2, None))
    assert mine.reason == "CPU model not recorded by this run"


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(info) == "AMD EPYC 7B13"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\nModel\t: Pi 4\n")
    assert cpu_model(arm) == "BCM2835"


# --------------------------------------------------------------------------- the CLI
def test_the_cli_pins_shows_and_unpins(tmp_path: Path, capsys) -> None:
    store = ArtifactStore.from_location(str(tmp_path / "art"))
    make_run(store, "good", "2026-01-01")
    make_run(store, "bad", "2026-01-02", NOT_APPROVED)
    make_run(store, "cand", "2026-01-09", decision=None)
    art = ["--artifacts", store.root]

    assert main(["baseline", "pin", "bad", *art]) == 1
    err = capsys.readouterr().err
    assert "relcert baseline pin: error: cannot pin 'bad': its decision is NOT_APPROVED" in err
    assert main(["baseline", "pin", "missing", *art]) == 1
    assert "no such run" in capsys.readouterr().err

    assert main(["baseline", "pin", "good", "--reason", "v1 release", *art]) == 0
    assert "pinned good" in capsys.readouterr().out
    assert main(["baseline", "show", "--for", "cand", *art]) == 0
    out = capsys.readouterr().out
    assert "pinned: good" in out and "v1 release" in out
    assert "baseline of cand: pinned baseline good" in out
    assert f"2 CPUs, {CPU}" in out and "routing v20260101.1" in out

    assert main(["baseline", "unpin", *art]) == 0
    assert "unpinned good" in capsys.readouterr().out
    assert main(["baseline", "show", "--for", "cand", *art]) == 0
    out = capsys.readouterr().out
    assert "pinned: none" in out and "the last APPROVED run before 2026-01-09: good" in out
