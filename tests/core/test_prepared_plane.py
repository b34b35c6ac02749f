"""Lazy planes prepared region by region: the same bytes as prepare_image, only the regions
asked for are read, and tiled embedding of a lazy plane reads only the blocks it needs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core import prepared_plane as pp
from napari_sam.core.embedding import image_key
from napari_sam.core.lazy_arrays import PlaneView, read_plane
from napari_sam.core.normalize import Normalization
from napari_sam.core.prepared_plane import PreparedPlane
from napari_sam.core.tile_store import StoreSignature, TileStore
from napari_sam.core.tiled_embedding import open_tiled, plane_key
from napari_sam.core.tiled_prompts import predict_tiled
from napari_sam.core.tiling import TileGrid


class Recorder:
    """An array-like that records every region read from it (as a lazy array would be)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.reads: list[tuple] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self._data[key]

    def pixels_read(self) -> list[int]:
        """Pixels (rows x cols, whatever the channels) of each read."""
        out = []
        for key in self.reads:
            sizes = [
                len(range(*k.indices(n)))
                for k, n in zip(key, self.shape, strict=False)
                if isinstance(k, slice)
            ]
            out.append(int(np.prod(sizes[:2])))
        return out


def _images():
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 4000, (70, 90), dtype=np.uint16)
    flt = rng.normal(size=(50, 60)).astype(np.float32)
    flt[3, 4], flt[10, 11] = np.nan, np.inf
    return {
        "uint16 percentile": (grey16, Normalization(), None),
        "uint16 limits": (grey16, Normalization(contrast_limits=(100, 3000)), None),
        "float with nan": (flt, Normalization(percentiles=(2, 98)), None),
        "bool": (grey16 > 2000, Normalization(method="percentile"), None),
        "uint8 rgb": (rng.integers(0, 255, (40, 30, 3), dtype=np.uint8), Normalization(), None),
        "rgba float": (rng.random((40, 30, 4), dtype=np.float32), Normalization(), True),
        "channels first": (
            rng.integers(0, 900, (2, 45, 55), dtype=np.uint16),
            Normalization(),
            None,
        ),
        "channels last, chosen": (
            rng.integers(0, 900, (45, 55, 5), dtype=np.int32),
            Normalization(channel_axis=-1, channels=(4, 1)),
            None,
        ),
        "constant": (np.full((30, 30), 7, np.uint16), Normalization(), None),
    }


@pytest.mark.parametrize("name", list(_images()))
def test_a_plane_prepared_by_regions_equals_prepare_image(name):
    data, norm, rgb = _images()[name]
    want = norm.apply(data, rgb=rgb)
    plane = PreparedPlane(Recorder(data), norm, rgb=rgb)
    assert plane.shape == want.shape and plane.dtype == np.uint8
    assert np.array_equal(plane.read(), want)
    assert np.array_equal(plane[5:17, 3:29], want[5:17, 3:29])
    assert np.array_equal(plane[-1, 2:4], want[-1, 2:4])
    assert np.array_equal(np.asarray(plane), want)
    assert plane.norm.method in ("contrast_limits", "none")


def test_only_the_region_asked_for_is_read():
    data = Recorder(np.arange(300 * 500, dtype=np.uint16).reshape(300, 500))
    plane = PreparedPlane(data, Normalization(contrast_limits=(0, 60000)))
    data.reads.clear()
    block = plane[100:164, 200:328]
    assert block.shape == (64, 128, 3)
    assert data.reads == [(slice(100, 164), slice(200, 328))]


def test_large_planes_fix_percentiles_from_a_sample_of_patches(monkeypatch):
    monkeypatch.setattr(pp, "SAMPLE_PIXELS", 64 * 64)
    monkeypatch.setattr(pp, "_PATCH", 16)
    rng = np.random.default_rng(2)
    values = rng.gamma(2.0, 300.0, (400, 600)).astype(np.float32)
    data = Recorder(values)
    plane = PreparedPlane(data, Normalization())
    (lo, hi) = plane.norm.contrast_limits[0]
    exact = np.percentile(values, (1.0, 99.8))
    assert lo == pytest.approx(exact[0], rel=0.35) and hi == pytest.approx(exact[1], rel=0.15)
    # 8 x 8 patches of 16 x 16 for the limits, small patches for the key: never the plane.
    assert max(data.pixels_read()) <= 64 * 64
    assert sum(data.pixels_read()) <= 64 * 16 * 16 + 16 * 64 * 64
    # Deterministic: the same limits and key each time (the store path depends on them).
    again = PreparedPlane(Recorder(values), Normalization())
    assert again.norm == plane.norm and again.key == plane.key


def test_the_key_follows_content_settings_and_shape_without_reading_everything():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 255, (512, 512), dtype=np.uint8)
    data = Recorder(values)
    key = PreparedPlane(data, Normalization()).key
    assert sum(data.pixels_read()) <= 16 * 64 * 64
    assert PreparedPlane(values.copy(), Normalization()).key == key
    assert PreparedPlane(values, Normalization(method="percentile")).key != key
    changed = values.copy()
    changed[0, 0] += 1  # inside the first key patch
    assert PreparedPlane(changed, Normalization()).key != key
    assert PreparedPlane(values[:, :500], Normalization()).key != key


def test_plane_view_reads_regions_of_an_nd_plane_like_read_plane():
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 1000, (3, 40, 5, 60), dtype=np.uint16)
    for index, axes in (((1, None, 2, None), (1, 3)), ((2, None, 0, None), (3, 1))):
        view = PlaneView(stack, index, axes)
        key = tuple(slice(None) if i is None else i for i in index)
        whole = read_plane(stack, key, axes)
        if axes[0] > axes[1]:
            whole = np.swapaxes(whole, 0, 1)
        assert view.shape == whole.shape
        assert np.array_equal(view[3:9, 10:30], whole[3:9, 10:30])
        norm = Normalization()
        assert np.array_equal(PreparedPlane(view, norm).read(), norm.apply(whole))


GRID = TileGrid((300, 400), (150, 200), (30, 30))  # 2 x 2 tiles, blocks 210 x 260


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)


def test_a_lazy_plane_embeds_and_reads_only_the_tiles_a_box_needs(tiny_engine, image):
    data = Recorder(image)
    plane = PreparedPlane(data, Normalization())
    data.reads.clear()
    tiled = open_tiled(tiny_engine, plane, GRID)
    box = [[10, 20, 60, 80]]  # inside the top-left tile's core
    pred = predict_tiled(tiny_engine, tiled, boxes=box)
    assert tiled.embedded == [0]
    block = GRID.tiles[0].block_slices()
    assert data.reads and all(r == block for r in data.reads)  # that tile's block only
    eager = predict_tiled(tiny_engine, open_tiled(tiny_engine, image, GRID), boxes=box)
    assert np.array_equal(pred.mask(0), eager.mask(0))
    assert pred.score(0) == pytest.approx(eager.score(0))


def test_stored_tiles_are_used_only_for_the_pixels_they_were_computed_from(
    tiny_engine, image, tmp_path
):
    norm = Normalization()
    sig = StoreSignature.make(tiny_engine.model, norm.describe(np.uint8), GRID, n_planes=1)
    path = tmp_path / "s.zarr"
    first = PreparedPlane(image, norm)
    tiled = open_tiled(tiny_engine, first, GRID, store=TileStore.open(path, sig))
    tiled.ensure(tiny_engine)
    store = TileStore.open(path, sig)
    assert store.done_tiles() == [0, 1, 2, 3]
    assert store.tile_key(0, 3) == image_key(
        np.ascontiguousarray(image[GRID.tiles[3].block_slices()])
    )

    # Change pixels of the bottom-right tile only, away from the patches of the plane's key:
    # the plane key is the same, so the store is reused, but that tile is computed again.
    changed = image.copy()
    changed[225:232, 295:330] = 0  # between the key patches, in tile 3's block only
    second = PreparedPlane(changed, norm)
    assert plane_key(second) == plane_key(first)
    computed = []

    class Counting(type(tiny_engine)):
        def embed(self, rgb, **kw):
            computed.append(rgb.shape)
            return super().embed(rgb, **kw)

    counting = Counting(tiny_engine.model)
    reopened = open_tiled(counting, second, GRID, store=store)
    reopened.ensure(counting)
    assert len(computed) == 1  # tiles 0-2 reused, tile 3 recomputed
    assert any("tile 3" in note and "changed" in note for note in store.notes)
    assert TileStore.open(path, sig).tile_key(0, 3) == image_key(
        np.ascontiguousarray(changed[GRID.tiles[3].block_slices()])
    )
