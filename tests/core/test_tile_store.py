"""The zarr embedding store: signatures checked on open, never silently reused, resumable."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sam import __version__
from napari_sam.core.errors import EmbeddingStoreError
from napari_sam.core.tile_store import STORE_FORMAT, StoreSignature, TileStore
from napari_sam.core.tiling import TileGrid

GRID = TileGrid((300, 500), (128, 128), (32, 32))  # 3 x 4 tiles


def signature(**changes) -> StoreSignature:
    model = SimpleNamespace(model_id="tiny-0123456789abcdef", sha256="ab" * 32, precision="fp32")
    sig = StoreSignature.make(model, "percentile 1-99.8", GRID, n_planes=2)
    return replace(sig, **changes)


def features(seed: int) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).standard_normal((1, 8, 64, 64)).astype(np.float32)
    )


def test_signature_holds_model_normalisation_tiles_and_versions():
    d = signature().to_dict()
    assert d["model_id"] == "tiny-0123456789abcdef" and d["checkpoint_sha256"] == "ab" * 32
    assert d["normalization"] == "percentile 1-99.8" and d["precision"] == "fp32"
    assert d["tiling"]["tile"] == [128, 128] and d["tiling"]["halo"] == [32, 32]
    assert d["software_version"] == __version__ and d["format"] == STORE_FORMAT
    assert d["n_planes"] == 2


def test_tiles_round_trip_exactly_and_persist(tmp_path):
    path = tmp_path / "emb.zarr"
    store = TileStore.open(path, signature())
    assert store.n_tiles == 12 and store.done_tiles(0) == []
    store.check_plane(0, "key0")
    f = features(1)
    store.save(0, 5, f, (1024, 1024))
    assert store.has(0, 5) and not store.has(1, 5) and store.done_tiles(0) == [5]
    again = TileStore.open(path, signature())
    assert again.done_tiles(0) == [5] and again.input_size == (1024, 1024)
    assert torch.equal(again.load(0, 5), f)
    assert again.load(0, 4) is None
    again.check_plane(0, "key0")  # same content: nothing happens
    assert again.notes == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_id": "vit_b-0000"}, "model_id"),
        ({"checkpoint_sha256": "cd" * 32}, "checkpoint_sha256"),
        ({"precision": "bf16"}, "precision"),
        ({"normalization": "contrast limits 0-4095"}, "normalization"),
        ({"tiling": TileGrid((300, 500), (256, 256), (32, 32)).to_dict()}, "tiling"),
        ({"software_version": "0.0.1"}, "software_version"),
    ],
)
def test_a_store_made_differently_is_reported_or_recomputed(tmp_path, change, field):
    path = tmp_path / "emb.zarr"
    store = TileStore.open(path, signature())
    store.check_plane(0, "key0")
    store.save(0, 0, features(0), (1024, 1024))
    other = signature(**change)
    with pytest.raises(EmbeddingStoreError, match=field) as info:
        TileStore.open(path, other)
    assert "delete it or choose another path" in str(info.value)
    assert TileStore.open(path, signature()).done_tiles(0) == [0]  # untouched
    fresh = TileStore.open(path, other, on_mismatch="recompute")
    assert fresh.done_tiles(0) == [] and field in fresh.notes[0]
    assert TileStore.open(path, other).signature == other


def test_a_plane_with_other_content_is_never_reused(tmp_path):
    store = TileStore.open(tmp_path / "emb.zarr", signature())
    store.check_plane(1, "key-a")
    store.save(1, 3, features(3), (1024, 1024))
    with pytest.raises(EmbeddingStoreError, match=r"plane 1 .* holds another image"):
        store.check_plane(1, "key-b")
    assert store.has(1, 3)
    store.check_plane(1, "key-b", on_mismatch="recompute")
    assert not store.has(1, 3) and "plane 1" in store.notes[0]
    reopened = TileStore.open(tmp_path / "emb.zarr", signature())
    assert reopened.done_tiles(1) == []
    reopened.check_plane(1, "key-b")  # now bound to the new content


def test_folders_that_are_not_our_stores_are_never_emptied(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    for mode in ("error", "recompute"):
        with pytest.raises(EmbeddingStoreError, match="not a zarr store"):
            TileStore.open(mine, signature(), on_mismatch=mode)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(EmbeddingStoreError, match="made by something else"):
        TileStore.open(other, signature(), on_mismatch="recompute")
    assert (other / "zarr.json").exists()
    a_file = tmp_path / "emb.zarr.txt"
    a_file.write_text("x")
    with pytest.raises(EmbeddingStoreError, match="is a file"):
        TileStore.open(a_file, signature())


def test_a_damaged_tile_is_recomputed_not_used(tmp_path):
    path = tmp_path / "emb.zarr"
    store = TileStore.open(path, signature())
    store.save(0, 2, features(2), (1024, 1024))
    chunks = [p for p in (path / "features").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == 1
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # truncated
    again = TileStore.open(path, signature())
    assert again.load(0, 2) is None and not again.has(0, 2)


def test_indices_outside_the_store_are_refused(tmp_path):
    store = TileStore.open(tmp_path / "emb.zarr", signature())
    with pytest.raises(IndexError):
        store.has(2, 0)
    with pytest.raises(IndexError):
        store.save(0, 12, features(0), (1024, 1024))
