"""Fine-tuned models: xxh128-verified downloads, their container formats, pickled objects.

Files are made in the tests from the small random SAM (tests/conftest.py); downloads come from a
loopback HTTP server.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from loopback import LoopbackServer

from napari_sam.core import registry
from napari_sam.core.architecture import OFFICIAL_ARCHITECTURES, build_sam
from napari_sam.core.checkpoints import (
    checkpoints_dir,
    fetch_checkpoint,
    file_sha256,
    load_model,
    save_checkpoint,
)
from napari_sam.core.downloads import list_models
from napari_sam.core.errors import CheckpointError
from napari_sam.core.hashing import file_digests
from napari_sam.core.registry import ModelSpec

FILENAME = "mini_lm.pt"
#: What unpickling a Trap ran (a stand-in must leave it empty).
SPRUNG: list[str] = []


class Trap:
    """A pickled object whose code must never run when napari-sam reads a file."""

    def __init__(self) -> None:
        self.note = "optimiser state"

    def __setstate__(self, state):
        SPRUNG.append("setstate")
        self.__dict__.update(state)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, small_arch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NAPARI_SAM_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Let infer_architecture recognise the small SAM in plain state dicts.
    monkeypatch.setitem(OFFICIAL_ARCHITECTURES, "mini", small_arch)
    SPRUNG.clear()


@pytest.fixture(scope="module")
def weights(small_model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in small_model.sam.state_dict().items()}


def _training_checkpoint(weights) -> dict:
    """Like micro-sam's trainer writes them: weights under model_state, prefixed ``sam.``."""
    return {
        "model_state": {"sam." + k: v for k, v in weights.items()},
        "optimizer_state": {"lr": 1e-5},
        "epoch": 7,
    }


@pytest.fixture
def served(tmp_path, weights):
    """A micro-sam-style file on a loopback server; yields (server, file)."""
    root = tmp_path / "srv"
    root.mkdir()
    path = root / FILENAME
    torch.save(_training_checkpoint(weights), path)
    srv = LoopbackServer(root)
    yield srv, path
    srv.close()


def _spec(url: str, small_arch, **changes) -> ModelSpec:
    spec = ModelSpec(
        "mini_lm",
        FILENAME,
        url,
        "",
        None,
        small_arch,
        "a fine-tuned test model",
        domain="light microscopy",
        approx_size=1_000_000,
    )
    return replace(spec, **changes)


@pytest.fixture
def mini_lm(monkeypatch, served, small_arch) -> ModelSpec:
    server, path = served
    xxh = file_digests(path, ["xxh128"])["xxh128"]
    spec = _spec(f"{server.url}/{FILENAME}", small_arch, xxh128=xxh)
    monkeypatch.setitem(registry.MODELS, "mini_lm", spec)
    return spec


def _same(sam, weights) -> bool:
    sd = sam.state_dict()
    return sd.keys() == weights.keys() and all(torch.equal(sd[k], weights[k]) for k in sd)


# --------------------------------------------------------------------------------------------
# xxh128 downloads
# --------------------------------------------------------------------------------------------


def test_xxh128_is_poochs(tmp_path):
    """micro-sam's hashes are pooch's "xxh128:" ones: ours must be the same function."""
    import pooch

    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)) * 5000)
    digest = file_digests(p, ["xxh128"])["xxh128"]
    assert digest == pooch.file_hash(str(p), alg="xxh128")
    assert len(digest) == 32


def test_finetuned_download_and_load(mini_lm, served, weights):
    server, source = served
    lm = load_model("mini_lm", device="cpu")
    assert server.hits == [f"/{FILENAME}"]
    assert lm.checkpoint == checkpoints_dir() / FILENAME
    assert lm.name == "mini_lm"
    assert lm.sha256 == file_sha256(source)
    assert _same(lm.sam, weights)
    # cached: verified by its xxh128, not downloaded again
    assert load_model("mini_lm", device="cpu").checkpoint == lm.checkpoint
    assert len(server.hits) == 1
    # the same file given by path is recognised as the registry model
    assert load_model("auto", checkpoint=source, device="cpu").name == "mini_lm"


def test_xxh128_mismatch_is_refused(monkeypatch, mini_lm):
    monkeypatch.setitem(registry.MODELS, "mini_lm", replace(mini_lm, xxh128="cd" * 16))
    with pytest.raises(CheckpointError) as exc:
        fetch_checkpoint("mini_lm")
    msg = str(exc.value)
    assert "xxh128" in msg and "cdcdcdcdcdcd..." in msg and mini_lm.xxh128[:12] in msg
    assert "\n" not in msg
    assert not (checkpoints_dir() / FILENAME).exists()


def test_cached_file_with_wrong_xxh128_is_downloaded_again(mini_lm, served):
    server, source = served
    dest = checkpoints_dir() / FILENAME
    dest.parent.mkdir(parents=True)
    data = bytearray(source.read_bytes())
    data[len(data) // 3] ^= 0x01
    dest.write_bytes(bytes(data))
    assert fetch_checkpoint("mini_lm") == dest
    assert server.hits == [f"/{FILENAME}"]
    assert dest.read_bytes() == source.read_bytes()


def test_list_models_says_what_is_cached(mini_lm, served):
    def status(name):
        return next(s for s in list_models() if s.spec.name == name)

    before = status("mini_lm")
    assert before.path == checkpoints_dir() / FILENAME and not before.cached
    assert status("tiny").cached and status("tiny").path.is_file()
    assert not status("vit_b").cached
    fetch_checkpoint("mini_lm")
    assert status("mini_lm").cached
    # a file of the wrong size where the size is known is not "cached"
    vit_b = status("vit_b").path
    vit_b.write_bytes(b"partial")
    assert not status("vit_b").cached
    assert [s.spec.name for s in list_models()] == list(registry.MODELS)


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "container", ["plain", "model_state", "module_sam_prefix", "model_state_with_decoder"]
)
def test_containers(tmp_path, weights, small_arch, container):
    if container == "plain":
        obj = weights
    elif container == "model_state":
        obj = _training_checkpoint(weights)
    elif container == "module_sam_prefix":
        obj = {"model_state": {"module.sam." + k: v for k, v in weights.items()}}
    else:  # micro-sam's extra instance-segmentation decoder next to SAM's weights
        obj = _training_checkpoint(weights)
        obj["model_state"]["decoder.head.weight"] = torch.zeros(3)
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    lm = load_model("auto", checkpoint=path, device="cpu")
    assert lm.architecture == small_arch
    assert _same(lm.sam, weights)


def test_half_precision_weights_are_loaded_as_float32(tmp_path, small_model, weights):
    path = tmp_path / "half.pt"
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_checkpoint(small_model.sam, small_model.architecture, path, state_dict=half)
    lm = load_model("auto", checkpoint=path, device="cpu")
    sd = lm.sam.state_dict()
    assert all(v.dtype == weights[k].dtype for k, v in sd.items())
    torch.testing.assert_close(
        sd["mask_decoder.iou_token.weight"], half["mask_decoder.iou_token.weight"].float()
    )
    # SAM's pixel statistics are not in any file: they come from the architecture
    mean = torch.tensor(small_model.architecture.pixel_mean).view(-1, 1, 1)
    assert torch.equal(lm.sam.pixel_mean, mean)
    assert torch.equal(
        lm.sam.pixel_std, torch.tensor(small_model.architecture.pixel_std).view(-1, 1, 1)
    )


def test_loading_skips_random_initialisation(tmp_path, small_model, small_arch):
    """The checkpoint's weights go into a network built without initialising it.

    Initialisation draws random numbers: the global random state shows whether it ran.
    """
    path = tmp_path / "m.pt"
    save_checkpoint(small_model.sam, small_arch, path)
    state = torch.random.get_rng_state()
    lm = load_model("auto", checkpoint=path, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same(lm.sam, small_model.sam.state_dict())
    build_sam(small_arch)  # the check can fail: building with initialisation draws numbers
    assert not torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------------------------
# Files with pickled objects
# --------------------------------------------------------------------------------------------


def _with_objects(tmp_path: Path, weights) -> Path:
    obj = _training_checkpoint(weights)
    obj["trainer"] = Trap()
    path = tmp_path / "with_objects.pt"
    torch.save(obj, path)
    return path


def test_pickled_objects_are_refused_with_the_way_out(tmp_path, weights):
    path = _with_objects(tmp_path, weights)
    with pytest.raises(CheckpointError) as exc:
        load_model("auto", checkpoint=path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "pickled Python objects" in msg and "Trap" in msg
    assert "--skip-pickled-objects" in msg and "skip_pickled_objects=True" in msg
    assert SPRUNG == []


def test_skip_pickled_objects_reads_the_weights_and_runs_nothing(tmp_path, weights):
    path = _with_objects(tmp_path, weights)
    lm = load_model("auto", checkpoint=path, device="cpu", skip_pickled_objects=True)
    assert _same(lm.sam, weights)
    assert SPRUNG == []
    # the stand-ins do not leak into later loads: the same file is refused again
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model("auto", checkpoint=path)


def test_a_pickled_object_instead_of_weights(tmp_path):
    path = tmp_path / "object.pt"
    torch.save(Trap(), path)
    with pytest.raises(CheckpointError, match=r"holds a pickled .*Trap object, not a dict"):
        load_model("auto", checkpoint=path, skip_pickled_objects=True)
    assert SPRUNG == []
