"""Checkpoint download, verification, saving and loading, against a loopback HTTP server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from loopback import LoopbackServer

from napari_sam.core import downloads, hashing, registry
from napari_sam.core.architecture import (
    OFFICIAL_ARCHITECTURES,
    SamArchitecture,
    build_sam,
    infer_architecture,
)
from napari_sam.core.checkpoints import (
    LoadedModel,
    cache_dir,
    checkpoints_dir,
    fetch_checkpoint,
    file_sha256,
    load_model,
    random_model,
    save_checkpoint,
)
from napari_sam.core.errors import Cancelled, CheckpointError
from napari_sam.core.registry import ModelSpec

TINY = SamArchitecture(
    32,
    2,
    2,
    (1,),
    image_size=1024,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
FILENAME = "mini_sam.pt"


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_sam():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return build_sam(TINY)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory, tiny_sam) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / FILENAME
    save_checkpoint(tiny_sam, TINY, path, meta={"trained_on": "nothing", "epochs": [1, 2]})
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NAPARI_SAM_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path, tiny_file):
    root = tmp_path / "srv"
    (root / "mirror").mkdir(parents=True)
    data = tiny_file.read_bytes()
    (root / FILENAME).write_bytes(data)
    (root / "mirror" / FILENAME).write_bytes(data)
    srv = LoopbackServer(root)
    yield srv
    srv.close()


def _spec(url: str, tiny_file: Path, **changes) -> ModelSpec:
    spec = ModelSpec(
        "mini",
        FILENAME,
        url,
        file_sha256(tiny_file),
        tiny_file.stat().st_size,
        TINY,
        "tiny test model",
    )
    return replace(spec, **changes)


@pytest.fixture
def mini(monkeypatch, server, tiny_file) -> ModelSpec:
    """Register model "mini" whose official address is the loopback server."""
    spec = _spec(f"{server.url}/{FILENAME}", tiny_file)
    monkeypatch.setitem(registry.MODELS, "mini", spec)
    return spec


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def _cache_files() -> list[str]:
    d = checkpoints_dir()
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].cpu()) for k in sa)


# --------------------------------------------------------------------------------------------
# locations, hashing, import cost
# --------------------------------------------------------------------------------------------


def test_import_is_lazy():
    code = (
        "import sys, napari_sam.core.checkpoints, napari_sam.core.device\n"
        "heavy = [m for m in ('torch', 'segment_anything', 'pooch', 'requests', 'napari',"
        " 'qtpy', 'PyQt5', 'PyQt6') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_dir_env_override(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    assert checkpoints_dir() == tmp_path / "cache" / "checkpoints"
    monkeypatch.delenv("NAPARI_SAM_CACHE")
    assert "napari-sam" in str(cache_dir())


def test_file_sha256_memo_and_invalidation(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 3_000_000)
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    key = hashing.file_key(p)
    hashing._MEMO[key] = {"sha256": "memoised"}
    assert file_sha256(p) == "memoised"
    p.write_bytes(b"b" * 10)  # new size / mtime: hashed again
    assert file_sha256(p) == hashlib.sha256(b"b" * 10).hexdigest()


# --------------------------------------------------------------------------------------------
# downloading
# --------------------------------------------------------------------------------------------


def test_download_progress_cache_and_load(mini, server, tiny_sam, monkeypatch):
    monkeypatch.setattr(downloads, "_CHUNK", 64 * 1024)
    calls = []
    path = fetch_checkpoint("mini", progress=lambda done, total: calls.append((done, total)))
    assert path == checkpoints_dir() / FILENAME
    assert _cache_files() == [FILENAME]  # no temporary left behind
    assert file_sha256(path) == mini.sha256
    assert server.hits == [f"/{FILENAME}"]

    dones = [d for d, _ in calls]
    assert len(calls) > 3
    assert dones == sorted(dones)
    assert calls[-1] == (mini.size, mini.size)
    assert all(total == mini.size for _, total in calls)

    # second time: served from the cache, no request, no progress
    calls.clear()
    lm = load_model("mini", device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert server.hits == [f"/{FILENAME}"]
    assert calls == []
    assert isinstance(lm, LoadedModel)
    assert type(lm.sam).__name__ == "Sam" and not lm.sam.training
    assert _same_weights(lm.sam, tiny_sam)
    assert lm.name == "mini"
    assert lm.architecture == TINY
    assert lm.checkpoint == path
    assert lm.sha256 == mini.sha256
    assert lm.device == "cpu"
    assert lm.meta == {"trained_on": "nothing", "epochs": [1, 2]}
    suffix = "" if lm.precision == "fp32" else f"-{lm.precision}"
    assert lm.model_id == f"mini-{mini.sha256[:16]}{suffix}"


def test_cache_survives_new_process_memo(mini, server):
    fetch_checkpoint("mini")
    hashing._MEMO.clear()  # as in a fresh process: verified again (by the record on disk)
    fetch_checkpoint("mini")
    assert len(server.hits) == 1


@pytest.mark.parametrize("how", ["arg", "env"])
def test_base_url_override(monkeypatch, server, tiny_file, how):
    spec = _spec(_dead_url() + "/" + FILENAME, tiny_file)  # official address unreachable
    monkeypatch.setitem(registry.MODELS, "mini", spec)
    base = server.url + "/mirror/"
    if how == "env":
        monkeypatch.setenv("NAPARI_SAM_BASE_URL", base)
        path = fetch_checkpoint("mini")
    else:
        path = fetch_checkpoint("mini", base_url=base)
    assert server.hits == [f"/mirror/{FILENAME}"]
    assert file_sha256(path) == spec.sha256


def test_offline(monkeypatch, tiny_file):
    url = _dead_url() + "/" + FILENAME
    monkeypatch.setitem(registry.MODELS, "mini", _spec(url, tiny_file))
    with pytest.raises(CheckpointError) as exc:
        fetch_checkpoint("mini")
    msg = str(exc.value)
    assert "\n" not in msg
    assert url in msg
    assert str(checkpoints_dir() / FILENAME) in msg
    assert "--checkpoint PATH" in msg
    assert "offline" in msg
    assert _cache_files() == []


def test_http_404(mini, server):
    with pytest.raises(CheckpointError, match=r"not found \(HTTP 404\)"):
        fetch_checkpoint("mini", base_url=server.url + "/nowhere")
    assert _cache_files() == []


def test_hash_mismatch(monkeypatch, mini):
    monkeypatch.setitem(registry.MODELS, "mini", replace(mini, sha256="ab" * 32))
    with pytest.raises(CheckpointError) as exc:
        fetch_checkpoint("mini")
    msg = str(exc.value)
    assert "abababababab..." in msg
    assert mini.sha256[:12] in msg
    assert "\n" not in msg
    assert _cache_files() == []


def test_truncated_response(mini, server):
    server.mode = "truncate"
    with pytest.raises(CheckpointError, match=r"cut off after \d+ of \d+ bytes \(truncated\)"):
        fetch_checkpoint("mini")
    assert _cache_files() == []


@pytest.mark.parametrize("known_size", [True, False])
def test_short_file_served(monkeypatch, mini, server, known_size):
    if not known_size:
        monkeypatch.setitem(registry.MODELS, "mini", replace(mini, size=None))
    server.mode = "short"
    with pytest.raises(CheckpointError, match="truncated" if known_size else "SHA-256"):
        fetch_checkpoint("mini")
    assert _cache_files() == []


def test_cancel_from_progress_leaves_nothing(mini, monkeypatch):
    monkeypatch.setattr(downloads, "_CHUNK", 64 * 1024)

    def progress(done, total):
        if done > 100_000:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        fetch_checkpoint("mini", progress=progress)
    assert _cache_files() == []


def test_corrupt_cached_file_is_replaced(mini, server, tiny_file):
    dest = checkpoints_dir() / FILENAME
    dest.parent.mkdir(parents=True)
    data = bytearray(tiny_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    dest.write_bytes(bytes(data))
    path = fetch_checkpoint("mini")
    assert server.hits == [f"/{FILENAME}"]
    assert file_sha256(path) == mini.sha256


def test_corrupt_cached_file_offline_is_not_loaded(monkeypatch, tiny_file):
    spec = _spec(_dead_url() + "/" + FILENAME, tiny_file)
    monkeypatch.setitem(registry.MODELS, "mini", spec)
    dest = checkpoints_dir() / FILENAME
    dest.parent.mkdir(parents=True)
    dest.write_bytes(tiny_file.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("mini")


def test_stale_temporaries_are_cleaned(mini):
    d = checkpoints_dir()
    d.mkdir(parents=True)
    old = d / f".{FILENAME}.1.deadbeef.part"
    fresh = d / f".{FILENAME}.2.cafecafe.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    fetch_checkpoint("mini")
    assert not old.exists()
    assert fresh.exists()


def test_unknown_model_and_missing_bundled(monkeypatch):
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        fetch_checkpoint("nope")
    spec = ModelSpec("bund", "does_not_exist.pt", None, "", None, None, "bundled")
    monkeypatch.setitem(registry.MODELS, "bund", spec)
    with pytest.raises(CheckpointError, match=r"bundled checkpoint .* missing"):
        fetch_checkpoint("bund")


# --------------------------------------------------------------------------------------------
# loading files
# --------------------------------------------------------------------------------------------


def test_load_napari_format_file_auto(tiny_file, tiny_sam):
    lm = load_model("auto", checkpoint=tiny_file, device="cpu")
    assert lm.name == "custom"
    assert lm.architecture == TINY
    assert lm.sha256 == file_sha256(tiny_file)
    assert _same_weights(lm.sam, tiny_sam)


def test_auto_without_checkpoint_is_an_error():
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_model("auto")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all" * 10, "truncated", "missing"],
    ids=["empty", "garbage", "truncated", "missing"],
)
def test_unreadable_files(tmp_path, tiny_file, content):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        data = tiny_file.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load_model("auto", checkpoint=path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "\n" not in msg
    assert any(w in msg for w in ("corrupt", "empty", "not found"))


class Payload:
    """Stands for arbitrary pickled code."""


def test_weights_only_refuses_pickled_objects(tmp_path, tiny_sam):
    path = tmp_path / "evil.pt"
    torch.save(
        {
            "napari_sam_format": 1,
            "architecture": TINY.to_dict(),
            "meta": {"x": Payload()},
            "state_dict": tiny_sam.state_dict(),
        },
        path,
    )
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(.*Payload\)"):
        load_model("auto", checkpoint=path)


def test_save_checkpoint_rejects_non_plain_meta(tmp_path, tiny_sam):
    with pytest.raises(TypeError, match="Payload"):
        save_checkpoint(tiny_sam, TINY, tmp_path / "x.pt", meta={"x": Payload()})
    assert list(tmp_path.iterdir()) == []


def test_load_uses_cpu_map_location_and_weights_only(monkeypatch, tiny_file):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model("auto", checkpoint=tiny_file, device="cpu")
    assert seen and seen[0]["map_location"] == "cpu" and seen[0]["weights_only"] is True


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix"])
def test_plain_state_dicts(monkeypatch, tmp_path, tiny_sam, wrap):
    # make TINY an "official" architecture so infer_architecture recognises it
    monkeypatch.setitem(OFFICIAL_ARCHITECTURES, "mini", TINY)
    sd = tiny_sam.state_dict()
    obj = {
        "plain": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {}},
        "module_prefix": {"module." + k: v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "plain.pth"
    torch.save(obj, path)
    lm = load_model("auto", checkpoint=path, device="cpu")
    assert lm.architecture == TINY
    assert lm.meta == {}
    assert _same_weights(lm.sam, tiny_sam)


def _fake_official_vit_b() -> dict[str, torch.Tensor]:
    # the two things infer_architecture reads: encoder width and number of blocks
    return {
        "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
        "image_encoder.blocks.11.norm1.weight": torch.zeros(768),
    }


def test_infer_official_vit_b():
    assert infer_architecture(_fake_official_vit_b()) == ("vit_b", OFFICIAL_ARCHITECTURES["vit_b"])


@pytest.mark.parametrize("nested", [False, True])
def test_wrong_model_type_requested(tmp_path, nested):
    path = tmp_path / "sam_vit_b.pth"
    sd = _fake_official_vit_b()
    torch.save({"model": sd} if nested else sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model("vit_h", checkpoint=path)
    assert "holds vit_b weights but vit_h was requested" in str(exc.value)
    assert str(path) in str(exc.value)


def test_napari_format_of_other_arch_requested_by_name(tmp_path, tiny_file):
    with pytest.raises(
        CheckpointError, match=r"custom SAM architecture .* but vit_b was requested"
    ):
        load_model("vit_b", checkpoint=tiny_file)


def test_not_sam_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"backbone.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="does not hold SAM weights"):
        load_model("auto", checkpoint=path)


def test_state_dict_mismatch(tmp_path, tiny_sam):
    sd = dict(tiny_sam.state_dict())
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "mismatch.pt"
    torch.save(
        {"napari_sam_format": 1, "architecture": TINY.to_dict(), "meta": {}, "state_dict": sd},
        path,
    )
    with pytest.raises(CheckpointError) as exc:
        load_model("auto", checkpoint=path)
    msg = str(exc.value)
    assert "1 missing (e.g. mask_decoder.iou_token.weight)" in msg
    assert "1 unexpected (e.g. extra.weight)" in msg


def test_newer_format_refused(tmp_path, tiny_sam):
    path = tmp_path / "future.pt"
    torch.save(
        {"napari_sam_format": 2, "architecture": {}, "meta": {}, "state_dict": {}},
        path,
    )
    with pytest.raises(CheckpointError, match="upgrade"):
        load_model("auto", checkpoint=path)


# --------------------------------------------------------------------------------------------
# random weights
# --------------------------------------------------------------------------------------------


def test_random_model_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = random_model(TINY, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = random_model(TINY, seed=1)
    c = random_model(TINY, seed=2)
    assert _same_weights(a.sam, b.sam)
    assert not _same_weights(a.sam, c.sam)
    assert a.name == "random:custom"
    assert a.checkpoint is None and a.sha256 is None
    assert a.model_id == b.model_id != c.model_id
    assert ":" not in a.model_id


def test_random_prefix_in_load_model(monkeypatch):
    monkeypatch.setitem(OFFICIAL_ARCHITECTURES, "mini", TINY)
    lm = load_model("random:mini", device="cpu")
    assert lm.name == "random:mini"
    assert lm.architecture == TINY
    with pytest.raises(CheckpointError, match="takes no checkpoint"):
        load_model("random:mini", checkpoint="x.pt")


def test_save_checkpoint_refuses_str_subclasses_in_meta(tmp_path, small_model):
    """A str subclass (like torch.__version__) would make the file unloadable later."""
    import torch

    from napari_sam.core.checkpoints import save_checkpoint

    with pytest.raises(TypeError, match="TorchVersion"):
        save_checkpoint(
            small_model.sam,
            small_model.architecture,
            tmp_path / "m.pt",
            meta={"torch": torch.__version__},
        )
    assert not (tmp_path / "m.pt").exists()


def test_model_id_separates_reduced_precision(mini, server):
    fp32 = load_model("mini", device="cpu", fast=True, precision="fp32")
    bf16 = load_model("mini", device="cpu", fast=True, precision="bf16")
    official = load_model("mini", device="cpu", fast=False, precision="fp32")
    # bf16 embeddings differ slightly from float32 ones: caches keyed by model_id keep them
    # apart; the official and fast float32 encoders agree and share.
    assert bf16.model_id == f"{fp32.model_id}-bf16"
    assert official.model_id == fp32.model_id


def test_load_model_stops_between_stages_when_cancelled():
    from napari_sam.core.checkpoints import load_model
    from napari_sam.core.errors import Cancelled

    asked = []

    def cancel_at(n):
        def cancel():
            asked.append(1)
            return len(asked) >= n

        return cancel

    for n in (1, 2, 3, 4):
        asked.clear()
        with pytest.raises(Cancelled, match="loading model tiny cancelled"):
            load_model("tiny", device="cpu", cancel=cancel_at(n))
        assert len(asked) == n  # it stopped at the n-th check, doing nothing after it
    asked.clear()
    assert load_model("tiny", device="cpu", cancel=lambda: False).name == "tiny"
