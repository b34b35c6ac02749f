"""Autosave: atomic files in the user cache, a size bound, recovery by image hash."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from napari_sam.core.autosave import (
    autosave,
    autosave_dir,
    autosave_limit,
    discard_autosave,
    find_autosave,
    list_autosaves,
    load_autosave,
    prune_autosaves,
)
from napari_sam.core.errors import NapariSamError, SessionError
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.session_record import (
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
)

MODEL = ModelRecord("tiny", "0" * 64, None, "tiny-0000", "fp32", True, "cpu", {})


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    monkeypatch.delenv("NAPARI_SAM_AUTOSAVE_MB", raising=False)
    return folder


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (2, 40, 50), dtype=np.uint8)


def session(img: np.ndarray, n_commits: int = 1) -> tuple[SessionRecord, np.ndarray]:
    """A record of ``n_commits`` box commits on plane 0, and its labels."""
    record = SessionRecord(ImageIdentity.from_array(img, source="/data/img.tif"))
    labels = np.zeros(img.shape, np.int32)
    for i in range(n_commits):
        mask = np.zeros((40, 50), bool)
        mask[i : i + 5, 2 * i : 2 * i + 5] = True
        labels[0][mask] = i + 1
        record.append(
            CommitRecord.build(
                target="SAM labels",
                plane=PlaneRecord((1, 2), (0, None, None)),
                overwrite=True,
                model=MODEL,
                normalization=Normalization(),
                prompts=[make_prompts(boxes=[[i, 2 * i, i + 4, 2 * i + 4]])],
                masks=[mask],
                candidates=[0],
                scores=[0.9],
                sources=["box 1"],
                labels=[i + 1],
                pixels=[25],
            )
        )
    return record, labels


def age(path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` older (mtime orders autosaves)."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_round_trip_in_the_user_cache(cache):
    record, labels = session(image(), 3)
    path = autosave(record, labels)
    assert path == cache / "autosave" / record.image.sha256 / f"{record.session_id}.npz"
    assert autosave_dir() == cache / "autosave"
    again, arrays = load_autosave(path)
    assert again.to_json() == record.to_json()
    assert list(arrays) == ["SAM labels"]
    np.testing.assert_array_equal(arrays["SAM labels"], labels)
    assert arrays["SAM labels"].dtype == np.int32


def test_several_layers_by_name():
    record, labels = session(image())
    other = (labels * 2).astype(np.uint16)
    _, arrays = load_autosave(autosave(record, {"cells": labels, "nuclei": other}))
    assert list(arrays) == ["cells", "nuclei"]
    np.testing.assert_array_equal(arrays["nuclei"], other)
    assert arrays["nuclei"].dtype == np.uint16


def test_labels_of_another_shape_are_refused():
    record, labels = session(image())
    with pytest.raises(NapariSamError, match=r"shape \(40, 50\), not the image's \(2, 40, 50\)"):
        autosave(record, labels[0])


def test_each_commit_replaces_the_sessions_file():
    img = image()
    record, labels = session(img, 1)
    path = autosave(record, labels)
    bigger, more = session(img, 2)
    bigger.session_id = record.session_id
    assert autosave(bigger, more) == path
    assert len(list(path.parent.iterdir())) == 1
    assert find_autosave(record.image.sha256).n_entries == 2


def test_recovery_finds_the_newest_autosave_of_the_same_image():
    img, other_img = image(0), image(1)
    old, old_labels = session(img, 1)
    new, new_labels = session(img, 2)
    other, other_labels = session(other_img, 3)
    age(autosave(old, old_labels), 60)
    autosave(new, new_labels)
    autosave(other, other_labels)
    sha = ImageIdentity.from_array(img).sha256  # what the widget computes on open
    found = find_autosave(sha)
    assert (found.session_id, found.n_entries, found.targets) == (
        new.session_id,
        2,
        ("SAM labels",),
    )
    assert found.image_sha256 == sha and found.size == found.path.stat().st_size
    # The session still in progress is not offered to itself.
    assert find_autosave(sha, exclude_session=new.session_id).session_id == old.session_id
    assert find_autosave("f" * 64) is None
    assert [i.session_id for i in list_autosaves(sha)] == [new.session_id, old.session_id]
    assert len(list_autosaves()) == 3


def test_damaged_autosaves_are_skipped_and_reported_on_load():
    img = image()
    good, labels = session(img, 1)
    age(autosave(good, labels), 60)
    bad, _ = session(img, 2)
    bad_path = autosave(bad, labels)
    bad_path.write_bytes(bad_path.read_bytes()[:200])  # truncated, as by a full disk
    assert find_autosave(good.image.sha256).session_id == good.session_id
    with pytest.raises(SessionError, match="is damaged"):
        load_autosave(bad_path)
    with pytest.raises(SessionError, match="not found"):
        load_autosave(bad_path.with_name("gone.npz"))


def test_a_zip_that_is_no_autosave_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, meta=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(SessionError, match="not a napari-sam autosave"):
        load_autosave(path)


def test_discard_removes_the_file_and_its_empty_folder():
    record, labels = session(image())
    path = autosave(record, labels)
    discard_autosave(path)
    assert not path.exists() and not path.parent.exists()
    assert find_autosave(record.image.sha256) is None


def test_the_folder_is_pruned_to_its_limit_oldest_first():
    saved = []
    for seed in range(5):
        record, labels = session(image(seed), 2)
        path = autosave(record, labels, limit=10**9)
        age(path, 100 * (5 - seed))  # seed 0 is the oldest
        saved.append(path)
    size = saved[0].stat().st_size
    assert all(abs(p.stat().st_size - size) < size // 4 for p in saved)
    # Room for about three: the two oldest go, the newest three stay.
    removed = prune_autosaves(int(3.5 * size))
    assert removed == saved[:2]
    assert [p.exists() for p in saved] == [False, False, True, True, True]
    assert not saved[0].parent.exists()
    total = sum(p.stat().st_size for p in (autosave_dir()).rglob("*.npz"))
    assert total <= 3.5 * size


def test_autosave_prunes_but_never_removes_the_file_it_wrote(monkeypatch):
    first, labels = session(image(0))
    age(autosave(first, labels), 60)
    monkeypatch.setenv("NAPARI_SAM_AUTOSAVE_MB", "0")  # nothing fits
    second, labels2 = session(image(1))
    path = autosave(second, labels2)
    assert path.exists()
    assert [i.session_id for i in list_autosaves()] == [second.session_id]


def test_limit_from_the_environment(monkeypatch):
    assert autosave_limit() == 500 * 10**6
    monkeypatch.setenv("NAPARI_SAM_AUTOSAVE_MB", "1.5")
    assert autosave_limit() == 1_500_000
    monkeypatch.setenv("NAPARI_SAM_AUTOSAVE_MB", "lots")
    with pytest.raises(NapariSamError, match=r"NAPARI_SAM_AUTOSAVE_MB='lots': expected a size"):
        autosave_limit()


def test_a_failed_save_leaves_the_previous_autosave_intact(monkeypatch):
    img = image()
    record, labels = session(img, 1)
    path = autosave(record, labels)
    before = path.read_bytes()
    bigger, more = session(img, 2)
    bigger.session_id = record.session_id
    real_open = zipfile.ZipFile.open
    calls = []

    def crash_on_labels(self, name, *args, **kwargs):
        calls.append(name)
        if name.startswith("labels"):  # meta and session are written, then it fails
            raise OSError(28, "No space left on device")
        return real_open(self, name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "open", crash_on_labels)
        with pytest.raises(OSError, match="No space"):
            autosave(bigger, more)
    assert calls[:2] == ["meta.npy", "session.npy"]
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert load_autosave(path)[0].to_json() == record.to_json()


def test_stale_temporary_files_are_removed():
    record, labels = session(image())
    path = autosave(record, labels)
    stale = path.parent / f".{path.name}.123.abcd.part"
    stale.write_bytes(b"partial")
    age(stale, 2 * 24 * 3600)
    fresh = path.parent / f".{path.name}.124.abce.part"  # another process writing right now
    fresh.write_bytes(b"partial")
    prune_autosaves(10**9)
    assert not stale.exists() and fresh.exists()


def test_labels_are_stored_compressed():
    img = np.zeros((1024, 1024), np.uint8)
    record = SessionRecord(ImageIdentity.from_array(img))
    labels = np.zeros((1024, 1024), np.int32)
    for i in range(100):  # 100 objects of 40x40 on a 10x10 grid
        r, c = divmod(i, 10)
        labels[100 * r + 30 : 100 * r + 70, 100 * c + 30 : 100 * c + 70] = i + 1
    path = autosave(record, labels)
    assert path.stat().st_size < labels.nbytes / 50
    np.testing.assert_array_equal(load_autosave(path)[1]["labels"], labels)
