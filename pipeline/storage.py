"""Where a run's artifacts live, and how a task gets them onto its own host and back.

The artifacts root is `RELCERT_ARTIFACTS`: a URL with a protocol (`file:///abs/path`,
`s3://bucket/prefix`, `memory://x`, any fsspec protocol; `s3://` needs `s3fs`) or a plain
path (a local folder, made absolute), by default `<project>/artifacts`. A run lives at
`<root>/<dag_id>/<run_key>`: its *location*, a plain path when the root is one, else a URL.

Tasks never share a working folder. `workspace()` stages a run in: it copies the run's files
into a private temporary folder on this host (`RELCERT_WORKDIR` or the system temp folder),
the task works there with ordinary file APIs, and on exit the folder is staged out:

* only files that are new or whose sha256 differs from what was pulled are uploaded, and
  files the task deleted are deleted, so tasks of one run that work in parallel on different
  files (the mapped builds of `parts/<name>/`, the load and stress stages) never overwrite
  each other's files;
* before replacing or deleting a file, the store's current content is compared with what was
  pulled: if another task changed it meanwhile, `StoreConflict` names the file(s) and nothing
  is uploaded (optimistic concurrency; on a local store the check and the uploads run under
  a lock, on an object store a concurrent writer can still slip between check and upload);
* a task's upload is one unit (all its files or none of them), in three steps: every changed
  file is first written under the run's staging folder `.relcert-pending/<token>/`; then one
  commit record `.relcert-pending/<token>.json` (the files to move in, the files to delete)
  is written in one atomic step; then the files are moved into place (a rename on a
  filesystem, a copy and delete per object on an object store) and the record removed.
  Readers never list `.relcert-pending/`. A push killed before its commit record exists left
  only staging, which the next push of the run deletes (at once on a local store, where
  pushes hold the lock; after `STALE_PENDING_S` on an object store, where another task may
  still be staging); a push killed after it is finished by the next pull or push of the run
  (roll forward). So after a kill a pull sees every file of a task's upload or none (on an
  object store a pull that runs while another task's upload is being moved in may still see
  part of it: there is no lock there). Temporary files
  (`.<name>.*.tmp` from `pipeline._io.atomic_path`) and host-local lock files are never
  uploaded;
* outputs are uploaded on success and after an ordinary exception (files are complete,
  thanks to atomic local writes, and the final report needs a failed stage's partial
  outputs); a task killed outright uploads nothing, and a task killed while uploading
  uploads all or nothing. The temporary folder is always removed. On a local store a pull
  takes the run's lock shared, so it never copies a push that is being applied.

This module imports neither Airflow nor anything heavy beyond fsspec.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline._io import atomic_path, fsync_dir, makedirs_durably, sha256_file, sha256_stream

__all__ = [
    "ENV_ARTIFACTS",
    "ENV_WORKDIR",
    "STALE_PENDING_S",
    "ArtifactStore",
    "StoreConflict",
    "StoreError",
    "Transfer",
    "artifacts_location",
    "is_transient",
    "is_url",
    "workspace",
]

ENV_ARTIFACTS = "RELCERT_ARTIFACTS"
ENV_WORKDIR = "RELCERT_WORKDIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_LOG = logging.getLogger(__name__)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK = 1 << 20
#: a local store's lock file, inside the run folder (never pulled nor pushed)
_LOCK_NAME = ".relcert-store.lock"
#: a run's staging folder for uploads not yet in place: `<token>/<rel>` staged files and
#: `<token>.json` commit records (never listed, pulled nor pushed as run files)
_PENDING = ".relcert-pending"
#: on an object store (no lock), uncommitted staging older than this (s) is a dead push's
STALE_PENDING_S = 3600.0
# host-local leftovers: atomic_path temp files, lock files, assemble_models' staging folders,
# and the store's own staging folder
_TRANSIENT = (
    re.compile(r"^\..+\.tmp$"),
    re.compile(r"^\.(.*[.-])?lock$"),
    re.compile(r"^\..+\.(assemble|old)-.+$"),
    re.compile(r"^" + re.escape(_PENDING) + r"$"),
)


class StoreError(RuntimeError):
    """The artifacts store cannot do what was asked (bad location, missing run, ...)."""


class StoreConflict(StoreError):
    """Another task changed files of the run between this task's pull and its push."""

    def __init__(self, location: str, files: list[str]) -> None:
        self.location = location
        self.files = list(files)
        names = ", ".join(self.files[:10]) + (" ..." if len(self.files) > 10 else "")
        super().__init__(
            f"{location}: {len(self.files)} file(s) changed in the store by another task since "
            f"this task pulled the run: {names}; nothing was uploaded (retry the task)"
        )


def is_url(location: str) -> bool:
    """Does `location` carry a protocol (`s3://...`, `file://...`)?"""
    return bool(_URL.match(location))


def artifacts_location(value: str | os.PathLike[str] | None = None) -> str:
    """The artifacts root: `value`, else `$RELCERT_ARTIFACTS`, else `<project>/artifacts`.

    A URL is returned as given (without a trailing slash); a plain path is made absolute
    (exactly what `Path(...).absolute()` gives).
    """
    raw = os.fspath(value) if value is not None else os.environ.get(ENV_ARTIFACTS)
    if not raw:
        raw = str(PROJECT_ROOT / "artifacts")
    if is_url(raw):
        if not raw.split("://", 1)[1].strip("/"):
            raise StoreError(f"{ENV_ARTIFACTS}={raw!r} names no bucket or folder")
        return raw.rstrip("/")
    return str(Path(raw).absolute())


def is_transient(rel: str) -> bool:
    """A path (relative to a run) that is host-local scratch and never leaves its host."""
    return any(rx.match(part) for part in PurePosixPath(rel).parts for rx in _TRANSIENT)


def _local_files(folder: Path) -> dict[str, Path]:
    """rel posix path -> file under `folder` (no transient files, no symlinks followed)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if not is_transient(rel) and path.is_file():
                files[rel] = path
    return files


@dataclass
class Transfer:
    """What one pull or push moved (for logs and measurements)."""

    files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def describe(self, verb: str) -> str:
        extra = f", deleted {len(self.deleted)}" if self.deleted else ""
        return (
            f"{verb} {len(self.files)} file(s), {self.bytes / 1e6:.2f} MB{extra} "
            f"in {self.seconds:.2f}s"
        )


@dataclass(frozen=True)
class ArtifactStore:
    """An fsspec filesystem and the artifacts root on it.

    `root` is the root as users see it (a plain absolute path or a URL); locations handed
    out (`run_location`, `location_of`) have the same form.
    """

    root: str
    fs: Any
    fs_root: str

    @classmethod
    def from_location(cls, location: str | os.PathLike[str] | None = None) -> ArtifactStore:
        """The store of `location` (default `$RELCERT_ARTIFACTS`, see `artifacts_location`)."""
        from fsspec.core import url_to_fs

        root = artifacts_location(location)
        try:
            fs, fs_root = url_to_fs(root)
        except (ImportError, ValueError) as exc:  # unknown protocol, driver not installed
            raise StoreError(f"cannot open the artifacts store {root!r}: {exc}") from exc
        return cls(root=root, fs=fs, fs_root=fs_root.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        """A filesystem of this host (or mounted on it): rename-atomic, lockable."""
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return "file" in protocols or "local" in protocols

    # -------------------------------------------------------------------------- locations

    def join(self, location: str, *parts: str) -> str:
        """`location` / parts, in the location's own form (plain path or URL)."""
        for part in parts:
            for piece in PurePosixPath(part).parts:
                if piece in ("..", "/", ".") or "\\" in piece or "\x00" in piece:
                    raise StoreError(f"unsafe path component {piece!r} in {part!r}")
        if not is_url(location):
            return str(Path(location, *parts))
        return posixpath.join(location, *parts)

    def run_location(self, dag_id: str, run_key: str) -> str:
        """`<root>/<dag_id>/<run_key>`."""
        return self.join(self.root, dag_id, run_key)

    def fs_path(self, location: str) -> str:
        """The filesystem path of a location inside this store (StoreError otherwise)."""
        location = os.fspath(location)
        if is_url(self.root):
            if not is_url(location):
                raise StoreError(f"{location!r} is not a location of the store {self.root}")
            if location != self.root and not location.startswith(self.root + "/"):
                raise StoreError(f"{location!r} is outside the artifacts store {self.root}")
            rest = location[len(self.root) :].strip("/")
        else:
            if is_url(location):
                raise StoreError(f"{location!r} is not a location of the store {self.root}")
            path = Path(location).absolute()
            root = Path(self.root)
            if not path.is_relative_to(root):
                raise StoreError(f"{location!r} is outside the artifacts store {self.root}")
            rel = path.relative_to(root).as_posix()
            rest = "" if rel == "." else rel
        parts = [p for p in rest.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise StoreError(f"unsafe location {location!r}")
        return posixpath.join(self.fs_root, *parts) if parts else self.fs_root

    def location_of(self, location: str, local_dir: str | os.PathLike[str], path: Any) -> str:
        """The store location of `path`, a file inside the workspace `local_dir` of
        `location` (relative paths are taken relative to the workspace)."""
        local = Path(local_dir).resolve()
        target = Path(path)
        target = (target if target.is_absolute() else local / target).resolve()
        if not target.is_relative_to(local):
            raise StoreError(f"{path} is not inside the workspace {local}")
        rel = target.relative_to(local).as_posix()
        return location if rel == "." else self.join(location, rel)

    # ------------------------------------------------------------------------------ reads

    def list_files(self, location: str) -> dict[str, str]:
        """rel posix path -> fs path of every file under `location` (no transient files)."""
        base = self.fs_path(location)
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, withdirs=False)
        except FileNotFoundError:
            return {}
        files = {}
        for path in found:
            rel = posixpath.relpath(path, base)
            if rel == "." or rel.startswith("../") or is_transient(rel):
                continue
            files[rel] = path
        return files

    def _sha256(self, fs_path: str) -> str | None:
        try:
            with self.fs.open(fs_path, "rb") as handle:
                return sha256_stream(handle)[0]
        except FileNotFoundError:
            return None

    def read_bytes(self, location: str) -> bytes:
        with self.fs.open(self.fs_path(location), "rb") as handle:
            return handle.read()

    def sha256(self, location: str) -> str:
        """The sha256 of the file at `location` (streamed); FileNotFoundError if missing."""
        digest = self._sha256(self.fs_path(location))
        if digest is None:
            raise FileNotFoundError(f"{location} does not exist in the artifacts store")
        return digest

    # ------------------------------------------------------------------ stage in / stage out

    def pull(
        self, location: str, local_dir: str | os.PathLike[str], transfer: Transfer | None = None
    ) -> dict[str, str]:
        """Copy every file of `location` into `local_dir`; returns {rel path: sha256}.

        A push that was committed but stopped part-way is finished first, so the copy holds
        all of every task's upload or none of it."""
        started = time.perf_counter()
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, str] = {}
        record = transfer if transfer is not None else Transfer()
        with self._reading(self.fs_path(location)):
            for rel, fs_path in sorted(self.list_files(location).items()):
                target = local.joinpath(*PurePosixPath(rel).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with self.fs.open(fs_path, "rb") as src, open(target, "wb") as dst:
                        digest, size = sha256_stream(src, dst)
                except FileNotFoundError:  # deleted by another task since the listing
                    target.unlink(missing_ok=True)
                    continue
                manifest[rel] = digest
                record.files.append(rel)
                record.bytes += size
        record.seconds = time.perf_counter() - started
        return manifest

    @contextlib.contextmanager
    def reading(self, location: str) -> Iterator[None]:
        """Read several files of the run at `location` as one state, the way `pull` does:
        an upload that was committed but stopped part-way (its task was killed) is finished
        first, and on a local store no upload is applied while the block runs (the run's
        lock, shared). So a reader never sees half of a task's upload. StoreError when an
        unfinished upload cannot be finished by this process (e.g. a read-only mount)."""
        base = self.fs_path(location)
        entered = False
        try:
            with self._reading(base):
                entered = True
                yield
        except (OSError, StoreError) as exc:
            if entered:
                raise
            raise StoreError(f"{location}: cannot read the run consistently: {exc}") from exc

    def _lock_file(self, fs_path: str, *, shared: bool) -> Any:
        """The run's lock file, opened: read-only for a shared lock when it exists (a reader
        may not be allowed to write), else created."""
        path = os.path.join(fs_path, _LOCK_NAME)
        if shared:
            with contextlib.suppress(FileNotFoundError):
                return open(path)
        makedirs_durably(fs_path)
        return open(path, "a+")

    @contextlib.contextmanager
    def _locked(self, fs_path: str, *, shared: bool = False) -> Iterator[None]:
        """On a local store, serialise pushes into one run folder (across processes); a
        shared lock (pulls) excludes pushes but not other pulls."""
        if not self.is_local:
            yield
            return
        with self._lock_file(fs_path, shared=shared) as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _reading(self, base: str) -> Iterator[None]:
        """Read a run consistently: finish committed pushes that stopped part-way, and on a
        local store hold the lock shared while reading (no push is applied meanwhile)."""
        if not self.is_local:
            self._recover(base, locked=False)
            yield
            return
        if not os.path.isdir(base):
            yield
            return
        while True:
            with self._locked(base, shared=True):
                if not self._pending_state(base)[0]:
                    yield
                    return
            with self._locked(base):
                self._recover(base, locked=True)

    # ------------------------------------------------------------ uploads as one unit

    def _pending_state(self, base: str) -> tuple[dict[str, str], dict[str, str]]:
        """The run's staging folder: ({token: commit record}, {token: staged folder})."""
        pending = posixpath.join(base, _PENDING)
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(pending)
        try:
            entries = self.fs.ls(pending, detail=True)
        except FileNotFoundError:
            return {}, {}
        records, staged = {}, {}
        for entry in entries:
            path = entry["name"].rstrip("/")
            name = posixpath.basename(path)
            if entry.get("type") == "directory":
                staged[name] = path
            elif name.endswith(".json") and not is_transient(name):
                records[name[: -len(".json")]] = path
        return records, staged

    def _recover(self, base: str, *, locked: bool) -> None:
        """Finish every committed push of the run (roll forward: its record says what to
        move in and delete; a staged file already gone was already moved); delete dead
        pushes' uncommitted staging: all of it when `locked` (no push is staging now), else
        only staging older than STALE_PENDING_S."""
        records, staged = self._pending_state(base)
        for token in sorted(records):
            try:
                with self.fs.open(records[token], "rb") as handle:
                    plan = json.loads(handle.read())
            except FileNotFoundError:  # finished by its own push meanwhile
                continue
            except ValueError as exc:
                raise StoreError(f"{records[token]}: unreadable commit record: {exc}") from exc
            _LOG.warning("storage: finishing upload %s into %s (its task stopped)", token, base)
            self._apply(base, token, plan["files"], plan["deleted"])
        for token, path in staged.items():
            if token in records:
                continue
            born = token.split("-", 1)[0]
            old = born.isdigit() and time.time() - int(born) > STALE_PENDING_S
            if locked or old:
                _LOG.warning("storage: removing an unfinished upload %s from %s", token, base)
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path, recursive=True)
        if locked:  # leftovers of a record being written when its push died
            with contextlib.suppress(FileNotFoundError):
                for path in self.fs.ls(posixpath.join(base, _PENDING), detail=False):
                    if is_transient(posixpath.basename(path.rstrip("/"))):
                        self.fs.rm(path, recursive=True)
        self._tidy_pending(base)

    @staticmethod
    def _fsync_folders(base: str, rels: list[str]) -> None:
        """fsync each folder (under `base`) that holds one of `rels`, once."""
        for folder in sorted({posixpath.dirname(posixpath.join(base, rel)) for rel in rels}):
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(folder)

    def _tidy_pending(self, base: str) -> None:
        with contextlib.suppress(OSError):  # not empty (another push), or already gone
            self.fs.rmdir(posixpath.join(base, _PENDING))

    def _stage(self, source: Path, fs_path: str) -> None:
        """Write one file of a push into the staging folder (complete before the commit)."""
        if self.is_local:
            makedirs_durably(os.path.dirname(fs_path))
            with open(source, "rb") as src, open(fs_path, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
        else:
            self.fs.put_file(str(source), fs_path)

    def _commit(self, base: str, token: str, files: list[str], deleted: list[str]) -> None:
        """Write the commit record in one atomic step: from here on the push happens."""
        record = posixpath.join(base, _PENDING, f"{token}.json")
        data = json.dumps({"token": token, "files": files, "deleted": deleted}).encode()
        if self.is_local:
            with atomic_path(record) as tmp:
                tmp.write_bytes(data)
        else:
            self.fs.pipe_file(record, data)

    def _move_in(self, staged: str, target: str) -> None:
        """Move a staged file over its target: readers see the old file or the new one."""
        if self.is_local:
            makedirs_durably(os.path.dirname(target))
            os.replace(staged, target)  # made durable by _apply (one fsync per folder)
        else:  # one put per object (a copy), then the staged object goes
            self.fs.cp_file(staged, target)
            self.fs.rm_file(staged)

    def _apply(self, base: str, token: str, files: list[str], deleted: list[str]) -> None:
        """Move a committed push's staged files into place, delete what it deleted, and
        remove its record and staging (idempotent: a roll forward may repeat any step). On
        a local store the folders it changed are fsynced before the record goes, so a crash
        never loses a move whose record is already gone."""
        stage = posixpath.join(base, _PENDING, token)
        for rel in files:
            with contextlib.suppress(FileNotFoundError):  # moved already
                self._move_in(posixpath.join(stage, rel), posixpath.join(base, rel))
        for rel in deleted:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(posixpath.join(base, rel))
        if self.is_local:
            self._fsync_folders(base, [*files, *deleted])
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(posixpath.join(base, _PENDING, f"{token}.json"))
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(stage, recursive=True)
        self._tidy_pending(base)

    def push(
        self,
        local_dir: str | os.PathLike[str],
        location: str,
        manifest: Mapping[str, str],
        transfer: Transfer | None = None,
    ) -> Transfer:
        """Upload the files of `local_dir` that are new or changed against `manifest` (what
        `pull` returned) and delete the files the task deleted, as one unit (see the module
        doc); StoreConflict (and nothing uploaded) if any of them changed in the store since
        the pull."""
        started = time.perf_counter()
        record = transfer if transfer is not None else Transfer()
        local = Path(local_dir)
        hashes = {}
        for rel, path in _local_files(local).items():
            hashes[rel] = sha256_file(path)
        changed = sorted(rel for rel, sha in hashes.items() if manifest.get(rel) != sha)
        gone = sorted(rel for rel in manifest if rel not in hashes and not is_transient(rel))
        if not changed and not gone:
            record.seconds = time.perf_counter() - started
            return record
        base = self.fs_path(location)
        with self._locked(base):
            self._recover(base, locked=self.is_local)
            current = self.list_files(location)
            conflicts, uploads, removals = [], [], []
            for rel in changed:
                if rel not in current:
                    # new here; if it was pulled, another task deleted it meanwhile
                    (conflicts if rel in manifest else uploads).append(rel)
                    continue
                theirs = self._sha256(current[rel])
                if theirs == hashes[rel]:
                    continue  # the store already holds exactly this content
                (uploads if theirs == manifest.get(rel) else conflicts).append(rel)
            for rel in gone:
                if rel not in current:
                    continue
                theirs = self._sha256(current[rel])
                if theirs is None:
                    continue
                (removals if theirs == manifest[rel] else conflicts).append(rel)
            if conflicts:
                raise StoreConflict(location, conflicts)
            if uploads or removals:
                self._push_unit(local, base, uploads, removals, record)
        record.seconds = time.perf_counter() - started
        return record

    def _push_unit(
        self, local: Path, base: str, uploads: list[str], removals: list[str], record: Transfer
    ) -> None:
        """Stage, commit, apply (see the module doc)."""
        token = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        stage = posixpath.join(base, _PENDING, token)
        size = 0
        try:
            for rel in uploads:
                path = local.joinpath(*PurePosixPath(rel).parts)
                self._stage(path, posixpath.join(stage, rel))
                size += path.stat().st_size
            if self.is_local:  # every staged file is durable before the commit record
                self._fsync_folders(stage, uploads)
        except Exception:  # nothing of this push is visible: drop what was staged
            with contextlib.suppress(Exception):
                self.fs.rm(stage, recursive=True)
            self._tidy_pending(base)
            raise
        self._commit(base, token, uploads, removals)
        self._apply(base, token, uploads, removals)
        record.files.extend(uploads)
        record.deleted.extend(removals)
        record.bytes += size


def _workdir() -> str | None:
    base = os.environ.get(ENV_WORKDIR)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return base or None


@contextlib.contextmanager
def workspace(
    ctx: Mapping[str, Any] | str,
    *,
    store: ArtifactStore | None = None,
    say: Callable[[str], None] | None = None,
    stats: dict[str, Transfer] | None = None,
) -> Iterator[Path]:
    """Stage a run in, yield its private local copy, stage it out (see the module doc).

    `ctx` is a run context (its `run_dir` is the run's location) or a location. Outputs are
    pushed on normal exit and after an ordinary Exception (which is then re-raised; a failed
    push is attached to it as a note); the temporary folder is always removed. `stats`, when
    given, receives the `pull` and `push` Transfers.
    """
    location = ctx if isinstance(ctx, str) else str(ctx["run_dir"])
    store = store or ArtifactStore.from_location()
    store.fs_path(location)  # fail early on a location outside the store
    report = say or _LOG.info
    tmp = Path(tempfile.mkdtemp(prefix="relcert-ws-", dir=_workdir()))
    pulled, pushed = Transfer(), Transfer()
    if stats is not None:
        stats.update(pull=pulled, push=pushed)
    try:
        local = tmp / (PurePosixPath(location.replace("\\", "/")).name or "run")
        manifest = store.pull(location, local, pulled)
        report(f"storage: {pulled.describe('pulled')} from {location}")
        try:
            yield local
        except Exception as exc:
            try:
                store.push(local, location, manifest, pushed)
                report(f"storage: after an error, {pushed.describe('pushed')} to {location}")
            except Exception as push_exc:
                exc.add_note(f"saving this task's outputs to {location} failed too: {push_exc}")
            raise
        store.push(local, location, manifest, pushed)
        report(f"storage: {pushed.describe('pushed')} to {location}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
