"""Atomic writes are durable: after the rename, the folder that holds it is fsynced.

A rename (os.replace) lives in its folder's entries; until that folder is fsynced a power
loss can undo it even though the caller saw the write finish (and went on, e.g. removed the
commit record of a push). These tests record the real system calls (os.replace, os.fsync,
os.remove, ...) made by our writers and check their order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline._io import atomic_write_text
from pipeline.storage import ArtifactStore

pytestmark = pytest.mark.unit


class Journal:
    """The file system calls made while it is installed: (call, path) in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def index(self, call: str, path: str | Path, start: int = 0) -> int:
        wanted = (call, os.path.abspath(path))
        for i in range(start, len(self.calls)):
            if self.calls[i] == wanted:
                return i
        raise AssertionError(f"no {call} of {path} after call {start}: {self.calls[start:]}")

    def last(self, call: str, path: str | Path) -> int:
        wanted = (call, os.path.abspath(path))
        found = [i for i, entry in enumerate(self.calls) if entry == wanted]
        assert found, f"no {call} of {path}: {self.calls}"
        return found[-1]


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Journal:
    record = Journal()

    def spy(name: str, path_of):
        original = getattr(os, name)

        def call(*args, **kwargs):
            result = original(*args, **kwargs)
            record.calls.append((name, os.path.abspath(path_of(*args))))
            return result

        monkeypatch.setattr(os, name, call)

    spy("fsync", lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
    for name in ("replace", "rename"):
        spy(name, lambda src, dst, **_: os.fspath(dst))
    for name in ("remove", "unlink", "mkdir"):
        spy(name, lambda path, *_, **__: os.fspath(path))
    return record


def test_an_atomic_write_is_durable_in_its_folder(tmp_path: Path, journal: Journal) -> None:
    target = tmp_path / "new" / "deeper" / "report.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    renamed = journal.index("replace", target)
    journal.index("fsync", target.parent, start=renamed)  # the rename itself
    # the folders the write created are entries of their parents: durable too
    journal.index("fsync", tmp_path / "new", start=journal.index("mkdir", target.parent))
    journal.index("fsync", tmp_path, start=journal.index("mkdir", tmp_path / "new"))


def test_a_push_is_durable_before_its_commit_record_comes_and_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: Journal
) -> None:
    """Staged files are durable before the commit record exists (else a crash leaves a
    record whose files are missing: the roll forward skips them and the run is half new);
    moved-in files and deletions are durable before the record is removed (else a crash
    loses them with nothing left to finish them)."""
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    store = ArtifactStore.from_location()
    location = store.run_location("model_release_certification", "run1")
    base = Path(store.fs_path(location))
    (base / "stages" / "old").mkdir(parents=True)
    (base / "stages" / "old" / "gone.csv").write_text("old")
    local = tmp_path / "ws"
    manifest = store.pull(location, local)
    (local / "stages" / "old" / "gone.csv").unlink()
    for rel in ("report.json", "stages/load/summary.json", "gates/load.json"):
        atomic_write_text(local / rel, json.dumps({"rel": rel}))
    journal.calls.clear()
    store.push(local, location, manifest)

    assert (base / "gates/load.json").is_file() and not (base / "stages/old/gone.csv").exists()
    pending = base / ".relcert-pending"
    [record] = {p for _, p in journal.calls if Path(p).parent == pending and p.endswith(".json")}
    committed = journal.index("replace", record)
    removed = journal.index("remove", record, start=committed)
    stage = Path(record).with_suffix("")
    for folder in (stage, stage / "stages" / "load", stage / "gates"):
        assert journal.last("fsync", folder) < committed, folder
    for rel in ("report.json", "stages/load/summary.json", "gates/load.json"):
        moved = journal.index("replace", base / rel, start=committed)
        assert moved < journal.last("fsync", (base / rel).parent) < removed, rel
    deleted = journal.index("remove", base / "stages/old/gone.csv", start=committed)
    assert deleted < journal.last("fsync", base / "stages" / "old") < removed
