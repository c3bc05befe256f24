"""pipeline.storage: stage-in / stage-out of a run through fsspec, on real stores.

Every test runs on a plain local path, a `file://` URL and fsspec's `memory://` store (a
non-local protocol standing in for `s3://`: the same code path, no rename, one put per object).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline._io import atomic_path, atomic_write_text
from pipeline.storage import (
    ArtifactStore,
    StoreConflict,
    StoreError,
    artifacts_location,
    is_transient,
    workspace,
)

pytestmark = pytest.mark.unit

PROJECT = Path(__file__).resolve().parent.parent
DAG = "model_release_certification"


@pytest.fixture(params=["path", "file", "memory"])
def store(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    """The artifacts store, set as RELCERT_ARTIFACTS (and a private RELCERT_WORKDIR)."""
    if request.param == "path":
        root = str(tmp_path / "artifacts")
    elif request.param == "file":
        root = f"file://{tmp_path}/artifacts"
    else:
        root = f"memory://relcert-test-{uuid.uuid4().hex[:12]}/artifacts"
    monkeypatch.setenv("RELCERT_ARTIFACTS", root)
    monkeypatch.setenv("RELCERT_WORKDIR", str(tmp_path / "workdir"))
    result = ArtifactStore.from_location()
    yield result
    if request.param == "memory":
        _forget(result)


def _forget(store: ArtifactStore) -> None:
    """Empty a memory:// store (it lives as long as the process)."""
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.fs_root, recursive=True)


def _run(store: ArtifactStore, key: str = "run1") -> str:
    return store.run_location(DAG, key)


def _stored(store: ArtifactStore, location: str) -> dict[str, bytes]:
    return {rel: store.fs.cat_file(path) for rel, path in store.list_files(location).items()}


def _seed(store: ArtifactStore, location: str, files: dict[str, str]) -> None:
    """Write `files` straight into the store (as another task's push would)."""
    base = store.fs_path(location)
    for rel, text in files.items():
        store.fs.makedirs(f"{base}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe_file(f"{base}/{rel}", text.encode())


# ---------------------------------------------------------------------------- locations


def test_artifacts_location_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RELCERT_ARTIFACTS", raising=False)
    assert artifacts_location() == str(PROJECT / "artifacts")
    monkeypatch.chdir(tmp_path)
    assert artifacts_location("rel/arts") == str(tmp_path / "rel/arts")
    assert artifacts_location("s3://bucket/prefix/") == "s3://bucket/prefix"
    monkeypatch.setenv("RELCERT_ARTIFACTS", "memory://x/y")
    assert artifacts_location() == "memory://x/y"
    with pytest.raises(StoreError):
        artifacts_location("s3://")


def test_run_locations_keep_the_roots_form(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    if store.root.startswith(("file://", "memory://")):
        assert location == f"{store.root}/{DAG}/run1"
    else:  # a plain path stays a plain local path (what reports print today)
        assert location == str(tmp_path / "artifacts" / DAG / "run1")
    assert store.fs_path(location).endswith(f"/artifacts/{DAG}/run1")
    with pytest.raises(StoreError):
        store.fs_path("/somewhere/else" if "://" not in store.root else "memory://other/x")
    with pytest.raises(StoreError):
        store.join(location, "../escape")


def test_transient_names():
    assert is_transient(".report.json.k2j3.tmp")
    assert is_transient("stages/load/.requests.csv.abc.tmp")
    assert is_transient(".gx/.lock")
    assert is_transient(".models.assemble-x1/model_info.json")
    assert is_transient(".relcert-pending/1790000000-ab12/report.json")
    assert not is_transient(".gx/expectations/relcert_build.json")
    assert not is_transient("report.tmp.json")


# -------------------------------------------------------------------------- pull / push


def test_pull_push_round_trip(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    assert store.pull(location, tmp_path / "empty") == {}  # a run not written yet
    files = {"conf.json": "{}\n", "stages/load/summary.json": '{"a": 1}\n', ".gx/x.json": "x"}
    _seed(store, location, files)
    manifest = store.pull(location, tmp_path / "a")
    assert sorted(manifest) == sorted(files)
    for rel, text in files.items():
        assert (tmp_path / "a" / rel).read_text() == text
    import hashlib

    assert manifest["conf.json"] == hashlib.sha256(b"{}\n").hexdigest()
    # nothing changed: nothing moves
    assert store.push(tmp_path / "a", location, manifest).files == []


def test_only_new_or_changed_files_are_pushed(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    _seed(store, location, {"conf.json": "{}", "models/a.onnx": "A", "keep.txt": "k"})
    local = tmp_path / "ws"
    manifest = store.pull(location, local)
    atomic_write_text(local / "models/a.onnx", "A2")
    atomic_write_text(local / "stages/load/summary.json", "{}")
    atomic_write_text(local / "keep.txt", "k")  # rewritten with the same bytes
    (local / "conf.json").unlink()
    pushed = store.push(local, location, manifest)
    assert pushed.files == ["models/a.onnx", "stages/load/summary.json"]
    assert pushed.deleted == ["conf.json"]
    assert _stored(store, location) == {
        "models/a.onnx": b"A2",
        "stages/load/summary.json": b"{}",
        "keep.txt": b"k",
    }


def test_parallel_tasks_on_different_files_keep_both(store: ArtifactStore, tmp_path: Path):
    """Two mapped build tasks (or load and stress) pull the same run and write disjoint files."""
    location = _run(store)
    _seed(store, location, {"conf.json": "{}"})
    a, b = tmp_path / "a", tmp_path / "b"
    ma, mb = store.pull(location, a), store.pull(location, b)
    atomic_write_text(a / "parts/one/model.onnx", "one")
    atomic_write_text(b / "parts/two/model.onnx", "two")
    assert store.push(a, location, ma).files == ["parts/one/model.onnx"]
    assert store.push(b, location, mb).files == ["parts/two/model.onnx"]
    assert _stored(store, location) == {
        "conf.json": b"{}",
        "parts/one/model.onnx": b"one",
        "parts/two/model.onnx": b"two",
    }


def test_a_file_changed_by_another_task_is_a_conflict(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    _seed(store, location, {"data_docs/index.html": "v0", "gone.txt": "g"})
    a, b = tmp_path / "a", tmp_path / "b"
    ma, mb = store.pull(location, a), store.pull(location, b)
    atomic_write_text(a / "data_docs/index.html", "from A")
    store.push(a, location, ma)
    atomic_write_text(b / "data_docs/index.html", "from B")
    atomic_write_text(b / "gates/stress.json", "{}")
    with pytest.raises(StoreConflict) as caught:
        store.push(b, location, mb)
    assert caught.value.files == ["data_docs/index.html"]
    assert "data_docs/index.html" in str(caught.value)
    # nothing of B was uploaded, A's version survives
    assert _stored(store, location) == {"data_docs/index.html": b"from A", "gone.txt": b"g"}

    # the same new file created by two tasks: identical content is fine, different is not
    c, d = tmp_path / "c", tmp_path / "d"
    mc, md = store.pull(location, c), store.pull(location, d)
    for folder in (c, d):
        atomic_write_text(folder / "data_docs/static/style.css", "same")
    atomic_write_text(c / "new.txt", "C")
    atomic_write_text(d / "new.txt", "D")
    store.push(c, location, mc)
    with pytest.raises(StoreConflict) as caught:
        store.push(d, location, md)
    assert caught.value.files == ["new.txt"]

    # deleting a file another task changed meanwhile is a conflict too
    e, f = tmp_path / "e", tmp_path / "f"
    me, mf = store.pull(location, e), store.pull(location, f)
    atomic_write_text(e / "gone.txt", "changed")
    store.push(e, location, me)
    (f / "gone.txt").unlink()
    with pytest.raises(StoreConflict, match=r"gone\.txt"):
        store.push(f, location, mf)
    assert _stored(store, location)["gone.txt"] == b"changed"


def test_temp_and_lock_files_never_move(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    local = tmp_path / "ws"
    manifest = store.pull(location, local)
    atomic_write_text(local / "report.json", "{}")
    (local / ".report.html.q8w2.tmp").write_text("half a report")  # a writer that died
    (local / ".gx").mkdir()
    (local / ".gx/.lock").write_text("")
    (local / ".models.assemble-k1").mkdir()
    (local / ".models.assemble-k1/model.onnx").write_text("staging")
    with atomic_path(local / "stages/x.csv") as tmp:
        tmp.write_text("partial")  # pushed while still being written: must not appear
        store.push(local, location, manifest)
    assert set(_stored(store, location)) == {"report.json"}


def test_local_uploads_replace_by_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On a local store a reader never sees a half-copied file: a new inode is renamed in."""
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    store = ArtifactStore.from_location()
    location = _run(store)
    _seed(store, location, {"report.json": "old"})
    target = Path(store.fs_path(location)) / "report.json"
    before = target.stat().st_ino
    local = tmp_path / "ws"
    manifest = store.pull(location, local)
    atomic_write_text(local / "report.json", "new")
    store.push(local, location, manifest)
    assert target.read_text() == "new" and target.stat().st_ino != before
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".relcert-store.lock",
        "report.json",
    ]


# ---------------------------------------------------------------------------- workspace


def test_workspace_pushes_and_is_removed(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    _seed(store, location, {"conf.json": '{"x": 1}'})
    with workspace({"run_dir": location}) as local:
        assert local.is_relative_to(tmp_path / "workdir")
        assert json.loads((local / "conf.json").read_text()) == {"x": 1}
        atomic_write_text(local / "gates/build.json", "{}")
        kept = local
    assert not kept.exists()
    assert list((tmp_path / "workdir").iterdir()) == []
    assert _stored(store, location) == {"conf.json": b'{"x": 1}', "gates/build.json": b"{}"}


def test_a_crash_mid_task_pushes_complete_files_only(store: ArtifactStore, tmp_path: Path):
    """An exception in the task: files it finished are saved (the report needs a failed
    stage's outputs), the file it was writing is not, the exception propagates."""
    location = _run(store)
    with pytest.raises(RuntimeError, match="engine crashed"), workspace(location) as local:
        atomic_write_text(local / "stages/load/requests.csv", "a,b\n1,2\n")
        with atomic_path(local / "stages/load/summary.json") as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("engine crashed")
    assert _stored(store, location) == {"stages/load/requests.csv": b"a,b\n1,2\n"}
    assert list((tmp_path / "workdir").iterdir()) == []


def test_a_failed_push_after_a_crash_is_noted_on_the_error(store: ArtifactStore, tmp_path):
    location = _run(store)
    _seed(store, location, {"data_docs/index.html": "v0"})
    with pytest.raises(ValueError, match="table broken") as caught, workspace(location) as local:
        atomic_write_text(local / "data_docs/index.html", "mine")
        _seed(store, location, {"data_docs/index.html": "theirs"})
        raise ValueError("table broken")
    assert any("data_docs/index.html" in note for note in caught.value.__notes__)
    assert _stored(store, location) == {"data_docs/index.html": b"theirs"}


def test_a_conflict_on_exit_fails_the_task(store: ArtifactStore, tmp_path: Path):
    location = _run(store)
    _seed(store, location, {"data_docs/index.html": "v0"})
    with pytest.raises(StoreConflict), workspace(location) as local:
        atomic_write_text(local / "data_docs/index.html", "mine")
        _seed(store, location, {"data_docs/index.html": "theirs"})
    assert list((tmp_path / "workdir").iterdir()) == []


_KILLED_TASK = """
import sys, time
from pipeline._io import atomic_write_text
from pipeline.storage import workspace
with workspace(sys.argv[1]) as local:
    atomic_write_text(local / "stages/stress/tests.csv", "complete\\n")
    with open(local / "stages/stress/big.bin", "wb") as handle:
        handle.write(b"x" * 1000)  # a plain (non-atomic) write in progress
        print("ready", flush=True)
        time.sleep(60)
"""


def test_a_killed_task_uploads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RELCERT_ARTIFACTS", f"file://{tmp_path}/artifacts")
    monkeypatch.setenv("RELCERT_WORKDIR", str(tmp_path / "workdir"))
    store = ArtifactStore.from_location()
    location = _run(store)
    _seed(store, location, {"conf.json": "{}"})
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TASK, location], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _stored(store, location) == {"conf.json": b"{}"}


# a push that dies part-way: the store's N-th file write ("upload": a copy into a local
# store, a put into an object store) or N-th rename/copy into place ("move") kills the pushing
# process (SIGKILL: no finally, no except runs); local stores only (memory:// is per process)
_DYING_PUSH = """
import json, os, shutil, signal, sys
from pathlib import Path
from pipeline.storage import ArtifactStore
root, location, local, manifest, step, after = sys.argv[1:]
module, name = (shutil, "copyfileobj") if step == "upload" else (os, "replace")
original, calls = getattr(module, name), []
def dying(*args, **kwargs):
    if len(calls) == int(after):
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(args)
    return original(*args, **kwargs)
store, pulled = ArtifactStore.from_location(root), json.loads(Path(manifest).read_text())
setattr(module, name, dying)
store.push(Path(local), location, pulled)
print("pushed everything")
"""


class _Killed(BaseException):
    """A kill, in-process (memory://): no `except Exception` of the store catches it."""


def _push_killed(store, local: Path, location: str, manifest: dict, step: str, after: int):
    """Push `local`, killed at the `after`-th (0-based) write ("upload") or move ("move")."""
    if store.is_local:
        saved = local.parent / f"{local.name}.manifest.json"
        saved.write_text(json.dumps(manifest))
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        argv = [store.root, location, str(local), str(saved), step, str(after)]
        done = subprocess.run(
            [sys.executable, "-c", _DYING_PUSH, *argv], env=env, capture_output=True, text=True
        )
        assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-2000:]
        return
    name = "put_file" if step == "upload" else "cp_file"
    original, calls = getattr(type(store.fs), name), []

    def dying(*args, **kwargs):
        if len(calls) == after:
            raise _Killed()
        calls.append(args)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.fs), name, dying)
        with pytest.raises(_Killed):
            store.push(local, location, manifest)


def _old_and_new(store: ArtifactStore, tmp_path: Path) -> tuple[str, dict, dict, Path, dict]:
    """A run of 30 files; a task's workspace that rewrites 20, adds 5 and deletes 3."""
    location = _run(store)
    old = {f"stages/load/part{i:02d}.csv": f"old {i}\n" for i in range(30)}
    _seed(store, location, old)
    local = tmp_path / "task"
    manifest = store.pull(location, local)
    new = dict(old)
    for i in range(20):
        new[f"stages/load/part{i:02d}.csv"] = f"new {i}\n"
    for i in range(5):
        new[f"stages/stress/extra{i}.csv"] = f"extra {i}\n"
    for i in range(27, 30):
        del new[f"stages/load/part{i:02d}.csv"]
        (local / f"stages/load/part{i:02d}.csv").unlink()
    for rel, text in new.items():
        if old.get(rel) != text:
            atomic_write_text(local / rel, text)
    encode = lambda files: {rel: text.encode() for rel, text in files.items()}  # noqa: E731
    return location, encode(old), encode(new), local, manifest


def _pulled(store: ArtifactStore, location: str, folder: Path) -> dict[str, bytes]:
    manifest = store.pull(location, folder)
    return {rel: (folder / rel).read_bytes() for rel in manifest}


def test_a_push_killed_while_uploading_leaves_the_old_run_whole(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Killed after 12 of its 25 files are in the store's staging: the store shows the old
    content entirely, a pull sees none of the half-upload, the next push clears it."""
    location, old, new, local, manifest = _old_and_new(store, tmp_path)
    _push_killed(store, local, location, manifest, "upload", after=12)
    assert _stored(store, location) == old
    assert _pulled(store, location, tmp_path / "reader") == old
    base = store.fs_path(location)
    assert store.fs.exists(f"{base}/.relcert-pending")  # the dead push's staging, unlisted

    # the task retried: its push goes through whole, and the dead push's staging is gone
    monkeypatch.setattr("pipeline.storage.STALE_PENDING_S", -1.0)  # object store: by age
    retry = tmp_path / "retry"
    again = store.pull(location, retry)
    for rel in set(old) - set(new):
        (retry / rel).unlink()
    for rel, data in new.items():
        if old.get(rel) != data:
            atomic_path_write(retry / rel, data)
    store.push(retry, location, again)
    assert _stored(store, location) == new
    assert not store.fs.exists(f"{base}/.relcert-pending")


def test_a_push_killed_while_moving_in_is_finished_by_the_next_pull(
    store: ArtifactStore, tmp_path: Path
):
    """Killed after its commit record and 7 of 25 moves into place: the upload happened; the
    next pull finishes it (roll forward) and sees the new content entirely, never a mix."""
    location, old, new, local, manifest = _old_and_new(store, tmp_path)
    # on a local store the commit record is renamed into place too: the 9th rename is a move
    _push_killed(store, local, location, manifest, "move", after=8 if store.is_local else 7)
    raw = _stored(store, location)
    assert raw != old and raw != new  # the store itself was left mid-way
    assert _pulled(store, location, tmp_path / "reader") == new
    assert _stored(store, location) == new
    assert not store.fs.exists(f"{store.fs_path(location)}/.relcert-pending")


def atomic_path_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def test_location_of_workspace_files(store: ArtifactStore):
    location = _run(store)
    with workspace(location) as local:
        atomic_write_text(local / "report.html", "<html></html>")
        assert store.location_of(location, local, local / "report.html") == store.join(
            location, "report.html"
        )
        with pytest.raises(StoreError):
            store.location_of(location, local, local.parent)


# --------------------------------------------------------- the DAG's tasks, end to end


def _shas(store: ArtifactStore, location: str) -> dict[str, str]:
    import hashlib

    return {rel: hashlib.sha256(data).hexdigest() for rel, data in _stored(store, location).items()}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}


def test_a_plain_path_store_keeps_plain_local_paths(tmp_path: Path, monkeypatch):
    """The default kind of store: the run context and returned paths are local paths, as
    before; the run folder holds conf.json and targets.yaml."""
    from pipeline import orchestrate

    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("RELCERT_WORKDIR", str(tmp_path / "workdir"))
    assert orchestrate.artifacts_root() == tmp_path / "artifacts"
    ctx = orchestrate.prepare_run(DAG, "manual__x", None, {})
    run = tmp_path / "artifacts" / DAG / orchestrate.run_key("manual__x")
    assert ctx["run_dir"] == str(run)
    assert json.loads((run / "conf.json").read_text())["run_dir"] == str(run)
    assert (run / "targets.yaml").is_file()
    monkeypatch.setenv("RELCERT_ARTIFACTS", "memory://somewhere/artifacts")
    root = orchestrate.artifacts_root()
    assert str(root / DAG) == f"memory://somewhere/artifacts/{DAG}"
