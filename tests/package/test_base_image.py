"""The package image's base must be pinned by digest: a tag alone can move, so the same
package would build another image. It is refused before anything is built, unless the
operator allows it explicitly; then the image record says it is not reproducible.
(The build itself, with a container engine, is tests/package/test_image.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.package.image import (
    ALLOW_UNPINNED_ENV,
    BASE_IMAGE_ENV,
    DEFAULT_BASE_IMAGE,
    ImageError,
    ImageOptions,
    base_record,
    build_image,
)

pytestmark = pytest.mark.unit

TAG_ONLY = "docker.io/library/python:3.11-slim"
PINNED = "registry.example/python@sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (BASE_IMAGE_ENV, ALLOW_UNPINNED_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_base_named_by_a_tag_is_refused_naming_how_to_pin_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BASE_IMAGE_ENV, TAG_ONLY)
    with pytest.raises(ImageError, match=r"'docker\.io/library/python:3\.11-slim' is not pinned"):
        ImageOptions.from_env()
    for reference in ("python:3.11-slim@sha256:abc", "python@sha256:" + "AB" * 32, " "):
        with pytest.raises(ImageError, match="base image"):
            ImageOptions(base_image=reference)


def test_pinned_bases_are_accepted() -> None:
    assert ImageOptions.from_env().base_image == DEFAULT_BASE_IMAGE
    assert ImageOptions.from_env(base_image=PINNED).base_image == PINNED
    tagged_and_pinned = "python:3.11-slim-bookworm@sha256:" + "0f" * 32
    assert ImageOptions(base_image=tagged_and_pinned).allow_unpinned_base is False


def test_the_cli_refuses_a_tag_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert main(["package", "--run-dir", str(run), "--image", "--base-image", TAG_ONLY]) == 1
    err = capsys.readouterr().err
    assert "not pinned by digest" in err and ALLOW_UNPINNED_ENV in err
    assert "--allow-unpinned-base" in err and list(run.iterdir()) == []


def test_the_library_and_the_dag_task_refuse_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_image refuses before it looks for a container engine; the DAG's package task
    (options from the environment) before it pulls the run."""
    with pytest.raises(ImageError, match="not pinned by digest"):
        build_image(tmp_path / "missing.zip", tag="x:1", base_image=TAG_ONLY)
    from pipeline import orchestrate

    monkeypatch.setenv(BASE_IMAGE_ENV, TAG_ONLY)
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    ctx = {"build_image": True, "run_dir": str(tmp_path / "artifacts" / "dag" / "run")}
    with pytest.raises(ImageError, match=ALLOW_UNPINNED_ENV):
        orchestrate.package(ctx, progress=lambda _line: None)
    assert not (tmp_path / "artifacts").exists()


def test_an_allowed_tag_is_recorded_as_not_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BASE_IMAGE_ENV, TAG_ONLY)
    monkeypatch.setenv(ALLOW_UNPINNED_ENV, "1")
    options = ImageOptions.from_env()
    assert (options.base_image, options.allow_unpinned_base) == (TAG_ONLY, True)
    # what `podman image inspect` says of a local image, and what the record keeps of it
    facts = {"Id": "9" * 64, "Digest": "sha256:" + "1" * 64, "RepoDigests": []}
    record = base_record(TAG_ONLY, facts)
    assert record["pinned"] is False and "not reproducible" in record["warning"]
    assert record["digest"] == "sha256:" + "1" * 64 and record["image_id"] == "sha256:" + "9" * 64
    pinned = base_record(PINNED, facts)
    assert pinned["pinned"] is True and pinned["warning"] is None
    assert pinned["digest"] == "sha256:" + "ab" * 32
