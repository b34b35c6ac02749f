"""Volumes as stacks of slices: slice images, per-volume normalisation, all-slice embedding."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.embedding import EmbeddingStore
from napari_sam.core.engine import SamEngine
from napari_sam.core.errors import Cancelled, ImageError
from napari_sam.core.normalize import Normalization
from napari_sam.core.stack import (
    TABLE_COLUMNS,
    SliceStack,
    embed_slices,
    object_table,
    slice_order,
    volume_normalization,
)


def ramp_volume(shape=(4, 6, 8)) -> np.ndarray:
    """uint16 volume whose every voxel is different: slices and axes can be told apart."""
    return np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)


# --------------------------------------------------------------------------------------------
# slices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, -2])
def test_slices_along_any_axis_are_the_planes_of_the_other_two(axis):
    vol = ramp_volume()
    stack = SliceStack.from_volume(
        vol, axis, normalization=Normalization(contrast_limits=(0, 191))
    )
    ax = axis % 3
    assert stack.axis == ax
    assert stack.n_slices == vol.shape[ax]
    assert stack.plane_shape == tuple(s for a, s in enumerate(vol.shape) if a != ax)
    for i in range(stack.n_slices):
        plane = np.take(vol, i, axis=ax)
        rgb = stack.rgb(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (*plane.shape, 3)
        expected = np.rint(plane.astype(np.float32) * np.float32(255 / 191)).astype(np.uint8)
        np.testing.assert_array_equal(rgb[..., 0], expected)
        np.testing.assert_array_equal(rgb[..., 2], expected)


def test_percentiles_are_taken_once_for_the_whole_volume():
    """A dim slice stays dim: per-slice percentiles would stretch it to full range."""
    vol = np.zeros((2, 20, 20), np.float32)
    vol[0] = np.linspace(0, 100, 400).reshape(20, 20)
    vol[1] = vol[0] * 0.4
    stack = SliceStack.from_volume(vol, normalization=Normalization(percentiles=(0, 100)))
    assert stack.normalization == Normalization("contrast_limits", contrast_limits=(0.0, 100.0))
    assert stack.rgb(0).max() == 255
    assert stack.rgb(1).max() == 102
    # The default ("auto") is percentile for floats: resolved the same way.
    auto = SliceStack.from_volume(vol).normalization
    assert auto.method == "contrast_limits"
    lo, hi = auto.contrast_limits
    assert 0 <= lo < 1 and 99 < hi <= 100


def test_volume_normalization_keeps_other_methods_and_handles_colour():
    vol = np.zeros((3, 4, 5), np.uint8)
    assert volume_normalization(vol, Normalization()) == Normalization()  # uint8: as is
    limits = Normalization(contrast_limits=(5, 10))
    assert volume_normalization(vol.astype(float), limits) is limits
    colour = np.zeros((2, 4, 5, 3), np.float32)
    colour[..., 0] = 10.0
    colour[..., 1] = np.arange(5, dtype=np.float32)
    colour[..., 2] = np.nan
    norm = volume_normalization(colour, Normalization(percentiles=(0, 100)), rgb=True)
    assert norm.contrast_limits == ((10.0, 10.0), (0.0, 4.0), (0.0, 0.0))
    stack = SliceStack.from_volume(colour, 1, normalization=norm, rgb=True)
    rgb = stack.rgb(3)
    assert rgb.shape == (2, 5, 3)
    np.testing.assert_array_equal(rgb[0, :, 1], [0, 64, 128, 191, 255])


def test_a_callable_gives_the_slices():
    seen = []

    def rgb_of(i: int) -> np.ndarray:
        seen.append(i)
        return np.full((3, 4, 3), i, np.uint8)

    stack = SliceStack(rgb_of, (5, 3, 4))
    assert stack.rgb(2)[0, 0, 0] == 2 and seen == [2]
    assert stack.normalization is None
    with pytest.raises(ImageError, match="slice 5 does not exist along axis 0"):
        stack.rgb(5)
    bad = SliceStack(rgb_of, (5, 4, 4))
    with pytest.raises(ImageError, match=r"shape \(3, 4\), expected \(4, 4\)"):
        bad.rgb(1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SliceStack.from_volume(np.zeros((4, 5))), r"grey volume \(D0, D1, D2\)"),
        (lambda: SliceStack.from_volume(np.zeros((2, 4, 5, 3))), "grey volume"),
        (lambda: SliceStack.from_volume(np.zeros((2, 4, 5, 2)), rgb=True), "3 or 4 entries"),
        (lambda: SliceStack.from_volume(np.zeros((2, 4, 5)), 3), "axis 3 does not exist"),
        (lambda: SliceStack(lambda i: None, (0, 4, 5)), "non-empty 3D shape"),
    ],
)
def test_bad_volumes_get_a_clear_message(make, message):
    with pytest.raises(ImageError, match=message):
        make()


def test_planes_is_a_writable_view_with_the_axis_first():
    stack = SliceStack.from_volume(ramp_volume(), 2)
    labels = np.zeros((4, 6, 8), np.int32)
    stack.planes(labels)[3, 1, 2] = 7
    assert labels[1, 2, 3] == 7
    with pytest.raises(ImageError, match="expected a volume of shape"):
        stack.planes(np.zeros((4, 6, 7), np.int32))


# --------------------------------------------------------------------------------------------
# embedding all slices
# --------------------------------------------------------------------------------------------


def test_slice_order_goes_outward_from_the_start():
    assert slice_order(5, 1) == [1, 2, 0, 3, 4]
    assert slice_order(4, 3) == [3, 2, 1, 0]
    assert slice_order(1, 0) == [0]
    with pytest.raises(ImageError, match="slice 4 does not exist"):
        slice_order(4, 4)


class RecordingEngine(SamEngine):
    """The real engine, recording which images it embedded (by key)."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.computed: list[str] = []

    def embed(self, rgb, *, progress=None, cancel=None):
        new = self.cached_embedding(rgb) is None
        emb = super().embed(rgb, progress=progress, cancel=cancel)
        if new:
            self.computed.append(emb.key)
        return emb


@pytest.fixture
def small_stack():
    rng = np.random.default_rng(0)
    return SliceStack.from_volume(rng.random((5, 24, 32)).astype(np.float32))


def test_embed_slices_starts_at_the_current_slice_then_outward(small_model, small_stack):
    from napari_sam.core.embedding import image_key

    engine = RecordingEngine(small_model)
    engine.cache.max_items = 3
    progress = []
    done = embed_slices(engine, small_stack, 2, progress=lambda d, t: progress.append((d, t)))
    keys = [image_key(small_stack.rgb(i)) for i in range(5)]
    assert [keys.index(k) for k in engine.computed] == [2, 3, 1, 4, 0]
    assert (done.computed, done.reused) == (5, 0)
    assert progress == [(d, 5) for d in range(1, 6)]
    assert engine.cache.max_items == 5  # grown to hold every slice
    again = embed_slices(engine, small_stack)  # from the middle: all in memory
    assert (again.computed, again.reused) == (0, 5)
    for i in range(5):  # the stack finds them by key without preparing the slice again
        assert small_stack.embedding(engine, i).key == keys[i]
    assert len(engine.computed) == 5


def test_embed_slices_subset_store_and_memory_limit(small_model, small_stack, tmp_path):
    store = EmbeddingStore(tmp_path)
    engine = RecordingEngine(small_model, store=store)
    engine.cache.max_items = 2
    done = embed_slices(engine, small_stack, 0, indices=[3, 0, 1], keep_in_memory=False)
    assert (done.computed, done.reused) == (3, 0)
    assert engine.cache.max_items == 2 and len(engine.cache) == 2
    # A new session (fresh engine, same store) reads them from disk.
    fresh = RecordingEngine(small_model, store=store)
    done = embed_slices(fresh, small_stack, 2, indices=[0, 1, 3, 4])
    assert (done.computed, done.reused) == (1, 3)
    with pytest.raises(ImageError, match="slice 9 does not exist"):
        embed_slices(fresh, small_stack, indices=[9])


def test_cancel_stops_embedding_and_keeps_what_was_done(small_model, small_stack):
    engine = RecordingEngine(small_model)
    progress = []
    with pytest.raises(Cancelled):
        embed_slices(
            engine,
            small_stack,
            progress=lambda d, t: progress.append(d),
            cancel=lambda: len(progress) >= 2,
        )
    assert len(engine.computed) == 2
    assert embed_slices(engine, small_stack).computed == 3


def test_a_preempted_slice_is_abandoned_then_encoded_again(small_model, small_stack):
    engine = RecordingEngine(small_model)
    polls, progress = [], []

    def preempt():  # a click arrives while the third slice is in the encoder
        polls.append(len(engine.computed))
        return len(engine.computed) == 2 and polls.count(2) == 1

    done = embed_slices(
        engine, small_stack, 2, progress=lambda d, t: progress.append(d), preempt=preempt
    )
    # The scheduler got its turn (progress) after slice 2 was given up, before it was redone.
    assert progress == [1, 2, 2, 3, 4, 5]
    assert (done.computed, done.reused) == (5, 0) and len(engine.computed) == 5
    with pytest.raises(Cancelled):  # a real cancel during the encoder still stops it
        embed_slices(
            RecordingEngine(small_model), small_stack, progress=lambda d, t: None,
            cancel=lambda: True, preempt=lambda: False,
        )  # fmt: skip


def test_stored_embeddings_are_not_reused_by_another_precision_or_model(
    small_model, small_stack, tmp_path
):
    import dataclasses

    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.embedding import EmbeddingCache

    store = EmbeddingStore(tmp_path)
    assert embed_slices(SamEngine(small_model, store=store), small_stack).computed == 5
    same = SamEngine(small_model, store=store, cache=EmbeddingCache())
    assert all(small_stack.cached_embedding(same, i) is not None for i in range(5))
    bf16 = SamEngine(dataclasses.replace(small_model, precision="bf16"), store=store)
    other = SamEngine(random_model(small_model.architecture, device="cpu", seed=1), store=store)
    for engine in (bf16, other):
        assert engine.model_id != small_model.model_id
        assert all(small_stack.cached_embedding(engine, i) is None for i in range(5))


# --------------------------------------------------------------------------------------------
# object_table
# --------------------------------------------------------------------------------------------


def test_object_table_known_answers():
    labels = np.zeros((5, 4, 6), np.int32)
    labels[1:4, 0:2, 0:3] = 3  # 3 slices x 6 px = 18 voxels
    labels[0, 3, 5] = 1
    labels[4, 3, 5] = 1  # slices 0 and 4, none between
    table = object_table(labels, 0, spacing=(2.0, 0.5, 0.25))
    assert list(table) == list(TABLE_COLUMNS)
    np.testing.assert_array_equal(table["label"], [1, 3])
    np.testing.assert_array_equal(table["slice_first"], [0, 1])
    np.testing.assert_array_equal(table["slice_last"], [4, 3])
    np.testing.assert_array_equal(table["n_slices"], [2, 3])
    np.testing.assert_array_equal(table["voxels"], [2, 18])
    np.testing.assert_allclose(table["volume"], [0.5, 4.5])
    along_cols = object_table(labels, 2, ids=[3, 2])
    np.testing.assert_array_equal(along_cols["label"], [3, 2])
    np.testing.assert_array_equal(along_cols["slice_first"], [0, -1])
    np.testing.assert_array_equal(along_cols["slice_last"], [2, -1])
    np.testing.assert_array_equal(along_cols["n_slices"], [3, 0])
    np.testing.assert_array_equal(along_cols["voxels"], [18, 0])
    assert np.isnan(along_cols["volume"]).all()
    empty = object_table(np.zeros((2, 3, 4), np.int32))
    assert all(len(v) == 0 for v in empty.values())
    with pytest.raises(ImageError, match="3D label volume"):
        object_table(np.zeros((3, 4), np.int32))
    with pytest.raises(ImageError, match="one value per axis"):
        object_table(labels, spacing=(1.0, 1.0))
