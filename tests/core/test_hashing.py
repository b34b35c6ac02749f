"""File hashes: computed once per version of a file, remembered across processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from napari_sam.core import hashing
from napari_sam.core.hashing import file_digests, file_sha256


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_MEMO", {})


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(os.urandom(3_000_000))
    return p


@pytest.fixture
def no_hashing(monkeypatch):
    """Make computing a hash fail: what is returned then came from memory or the record."""

    def refuse(algorithm):
        raise AssertionError(f"{algorithm} computed again")

    monkeypatch.setattr(hashing, "new_hasher", refuse)


def test_digests_are_correct(data):
    import xxhash

    raw = data.read_bytes()
    got = file_digests(data, ["sha256", "xxh128"])
    assert got == {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "xxh128": xxhash.xxh128_hexdigest(raw),
    }
    assert file_sha256(data) == got["sha256"]


def test_record_is_reused_by_another_process(data, tmp_path, monkeypatch, no_hashing):
    code = (
        "import sys; from napari_sam.core.hashing import file_digests\n"
        "print(file_digests(sys.argv[1], ['sha256', 'xxh128'])['sha256'])\n"
    )
    env = {**os.environ, "NAPARI_SAM_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(data)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    digest = out.stdout.strip()
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    # this process has no memo of the file and may not hash: the record answers
    assert file_sha256(data) == digest
    assert file_digests(data, ["xxh128"])["xxh128"]


def test_a_changed_file_is_hashed_again(data, monkeypatch):
    first = file_sha256(data)
    monkeypatch.setattr(hashing, "_MEMO", {})
    data.write_bytes(b"x" * 3_000_000)  # same size, new content and times
    second = file_sha256(data)
    assert second == hashlib.sha256(b"x" * 3_000_000).hexdigest() != first
    # touched only (same bytes, new mtime): not trusted, hashed again
    monkeypatch.setattr(hashing, "_MEMO", {})
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = hashing.new_hasher
    monkeypatch.setattr(hashing, "new_hasher", lambda a: calls.append(a) or real(a))
    assert file_sha256(data) == second
    assert calls == ["sha256"]


def test_damaged_record_is_ignored(data, monkeypatch):
    digest = file_sha256(data)
    record = hashing._record_path()
    record.write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(hashing, "_MEMO", {})
    assert file_sha256(data) == digest
    assert json.loads(record.read_text(encoding="utf-8"))["version"] == 1  # rewritten


def test_unwritable_cache_is_no_error(data, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(blocker))
    assert file_sha256(data) == hashlib.sha256(data.read_bytes()).hexdigest()


def test_record_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "MAX_RECORD_ENTRIES", 3)
    files = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]))
        file_sha256(p)
        files.append(str(p.resolve()))
    kept = json.loads(hashing._record_path().read_text(encoding="utf-8"))["files"]
    assert list(kept) == files[2:]


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        hashing.new_hasher("md5")


def test_loading_a_checkpoint_again_does_not_hash_it_again(tmp_path, monkeypatch, small_model):
    """The checkpoint's SHA-256 is computed at the first load only; a touched file again."""
    from napari_sam.core.checkpoints import load_model, save_checkpoint

    path = tmp_path / "m.pt"
    save_checkpoint(small_model.sam, small_model.architecture, path)
    calls = []
    real = hashing.new_hasher
    monkeypatch.setattr(hashing, "new_hasher", lambda a: calls.append(a) or real(a))
    first = load_model("auto", checkpoint=path, device="cpu", precision="fp32")
    assert calls.count("sha256") == 1
    monkeypatch.setattr(hashing, "_MEMO", {})  # a new process: the record answers
    second = load_model("auto", checkpoint=path, device="cpu", precision="fp32")
    assert calls.count("sha256") == 1 and second.sha256 == first.sha256
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_model("auto", checkpoint=path, device="cpu", precision="fp32")
    assert calls.count("sha256") == 2
