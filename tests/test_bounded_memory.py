"""The widget's data path on big and lazy data, without a viewer (napari layers only).

Planes of lazy and multiscale images are read region by region, label volumes of stacks are
lazy and still take commits and undo, candidate masks stay inside their bounding boxes.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from read_log import ReadLog

from napari_sam._layers import Plane, image_plane, level0, write_objects
from napari_sam._session import ObjectPreview, Preview, build_objects, predict_objects
from napari_sam.core import lazy_arrays
from napari_sam.core.engine import SamEngine
from napari_sam.core.lazy_arrays import REGION, empty_labels
from napari_sam.core.region_mask import RegionMask


def ramp(shape, dtype=np.uint16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 60_000).reshape(shape).astype(dtype)


def test_plane_of_a_lazy_stack_is_read_region_by_region():
    data = ramp((3, 2100, 2300))
    lazy = ReadLog(data)
    layer = Image(lazy, contrast_limits=(0, 1))
    lazy.reads.clear()
    plane = image_plane(layer, (1, 0, 0), (1, 2), 3)
    np.testing.assert_array_equal(plane.take(level0(layer)), data[1])
    # Before: np.asarray(data[plane]) asked for all 4.8 M pixels at once.
    assert 0 < lazy.largest_read() <= REGION * REGION
    assert all(key[0] == 1 for key, _, _ in lazy.reads)
    # Transposed display (x down, y across) reads the same regions.
    lazy.reads.clear()
    swapped = image_plane(layer, (2, 0, 0), (2, 1), 3)
    np.testing.assert_array_equal(swapped.take(level0(layer)), data[2].T)
    assert lazy.largest_read() <= REGION * REGION


def test_multiscale_image_reads_only_a_level_0_plane():
    full = ramp((4, 2048, 2048))
    levels = [ReadLog(full), ReadLog(full[:, ::2, ::2].copy()), ReadLog(full[:, ::4, ::4].copy())]
    layer = Image(levels, multiscale=True, contrast_limits=(0, 60_000))
    for level in levels:
        level.reads.clear()
    plane = image_plane(layer, (3, 0, 0), (1, 2), 3)
    assert plane.shape == (2048, 2048)
    np.testing.assert_array_equal(plane.take(level0(layer)), full[3])
    assert not levels[1].reads and not levels[2].reads
    assert {key[0] for key, _, _ in levels[0].reads} == {3}
    assert levels[0].largest_read() <= REGION * REGION


def test_commit_into_a_lazy_label_stack_and_undo(monkeypatch):
    monkeypatch.setattr(lazy_arrays, "DENSE_LABELS_BYTES", 0)  # a stack too big for NumPy
    shape = (6, 300, 2100)
    labels = Labels(empty_labels(shape, np.int32))
    data = labels.data
    assert not isinstance(data, np.ndarray) and data.nchunks_initialized == 0
    plane = Plane(axes=(1, 2), index=(4, None, None), shape=shape[1:])
    mask = np.zeros(shape[1:], bool)
    mask[10:40, 1500:1600] = True
    written = write_objects(labels, plane, [mask], overwrite=False, highest=0)
    assert [(w.label, w.pixels) for w in written] == [(1, int(mask.sum()))]
    assert np.array_equal(data[4] == 1, mask) and not np.any(data[3])
    assert data.nchunks_initialized == 1  # one chunk of one plane, not the volume
    # A second object; the highest id is found plane by plane (the stack is never loaded).
    other = np.zeros(shape[1:], bool)
    other[100:120, 10:30] = True
    written = write_objects(labels, plane, [other], overwrite=False)
    assert [w.label for w in written] == [2]
    labels.undo()
    assert not np.any(data[4] == 2) and np.array_equal(data[4] == 1, mask)
    labels.undo()
    assert not np.any(data[4]) and data.nchunks_initialized == 0
    labels.redo()
    assert np.array_equal(data[4] == 1, mask)


def test_candidates_are_kept_inside_their_boxes(small_model, make_image):
    engine = SamEngine(small_model)
    image = make_image((600, 800))
    emb = engine.embed(image)
    objects = build_objects(
        np.array([[300.0, 400.0]]), np.array([1]), np.zeros((0, 4)), per_point=False,
        image_shape=(600, 800),
    )  # fmt: skip
    [obj] = predict_objects(engine, emb, objects)
    assert obj.n_candidates == 3 and obj.shape == (600, 800)
    # Before: three full (600, 800) boolean arrays per object.
    assert all(isinstance(m, RegionMask) for m in obj.masks)
    pred = engine.predict(emb, objects[0].prompts)
    for k, m in enumerate(obj.masks):
        np.testing.assert_array_equal(m.full((600, 800)), pred.mask(0, k))
    preview = Preview(plane=None, objects=[obj])
    np.testing.assert_array_equal(preview.masks()[0], pred.mask(0, obj.best))
    np.testing.assert_array_equal(preview.label_image() == 1, pred.mask(0, obj.best))


def test_preview_of_regions_equals_preview_of_full_masks():
    shape = (50, 70)
    big = np.zeros(shape, bool)
    big[5:45, 5:60] = True
    small = np.zeros(shape, bool)
    small[20:25, 30:40] = True
    full = Preview(None, [ObjectPreview([small], np.array([0.9]), 0, "a"),
                          ObjectPreview([big], np.array([0.8]), 0, "b")])  # fmt: skip
    regions = Preview(
        None,
        [
            ObjectPreview([RegionMask.from_mask(small)], np.array([0.9]), 0, "a", shape),
            ObjectPreview([RegionMask.from_mask(big)], np.array([0.8]), 0, "b", shape),
        ],
    )
    np.testing.assert_array_equal(full.label_image(), regions.label_image())
    for a, b in zip(full.masks(), regions.masks(), strict=True):
        np.testing.assert_array_equal(a, b)
