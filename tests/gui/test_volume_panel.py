"""Volumes in the widget: propagate objects through a stack from a box on one slice (one undo
step), key slices of one object, and automatic segmentation linked through the stack."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import layer_named, wait_idle

from napari_sam._stack import SliceInput, key_slice_objects
from napari_sam.core.synthetic import make_nuclei_volume

pytestmark = pytest.mark.gui

#: Measured 0.606 (tiny model, fp32, the largest nucleus below, one box on its middle slice,
#: stop below predicted IoU 0.3); the floor sits a margin below.
TINY_PROPAGATED_DICE = 0.5


def _volume():
    s = make_nuclei_volume((16, 96, 96), n_objects=5, seed=3)
    ids, counts = np.unique(s.labels[s.labels > 0], return_counts=True)
    target = int(ids[np.argmax(counts)])
    zs = np.nonzero((s.labels == target).any(axis=(1, 2)))[0]
    return s, target, int(zs[len(zs) // 2])


def _box_on(z, mask2d):
    rows, cols = np.nonzero(mask2d)
    r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
    return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)


def test_a_box_on_one_slice_gives_the_whole_object_in_one_undo_step(
    make_widget, qtbot, tiny_engine
):
    s, target, z = _volume()
    viewer, widget = make_widget(engine=tiny_engine)
    image = viewer.add_image(s.image, name="nuclei", scale=(2.0, 0.5, 0.5))
    viewer.dims.current_step = (z, 0, 0)
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget.volume_panel.visible or not widget.native.isVisible()
    layer_named(viewer, "SAM boxes").add_rectangles(_box_on(z, s.labels[z] == target))
    wait_idle(qtbot, widget, timeout=120_000)
    widget.volume_panel.min_score.value = 0.3  # the tiny model's scores run low
    widget.propagate()
    wait_idle(qtbot, widget, timeout=300_000)
    labels = layer_named(viewer, "SAM labels")
    got = labels.data == 1
    ref = s.labels == target
    assert got[z].any() and got.any(axis=(1, 2)).sum() > 3, "only the prompted slice"
    dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    assert dice >= TINY_PROPAGATED_DICE, dice
    # Exactly what the core's propagation gives on the same slices and intensities.
    from napari_sam.core.normalize import Normalization
    from napari_sam.core.propagation import PropagationParams, objects_from_prompts, propagate
    from napari_sam.core.stack import SliceStack

    norm = Normalization("contrast_limits", contrast_limits=tuple(image.contrast_limits))
    box = _box_on(z, s.labels[z] == target)
    objects = objects_from_prompts(boxes=[(z, *box[:, 1:].min(0), *box[:, 1:].max(0))])
    want = propagate(
        tiny_engine, SliceStack.from_volume(s.image, 0, normalization=norm), objects,
        PropagationParams(min_score=0.3),
    )  # fmt: skip
    np.testing.assert_array_equal(got, want.labels == 1)
    row = labels.features[labels.features["index"] == 1].iloc[0]
    assert row["prompt"] == "propagated" and row["voxels"] == int(got.sum())
    assert row["volume"] == pytest.approx(got.sum() * 2.0 * 0.5 * 0.5)
    labels.undo()  # one Ctrl+Z removes the whole 3D write
    assert not labels.data.any()


def test_boxes_on_two_slices_that_overlap_are_one_object():
    a = SliceInput([], [], [(10.0, 10.0, 30.0, 30.0)])
    b = SliceInput([], [], [(12.0, 11.0, 31.0, 29.0), (60.0, 60.0, 70.0, 70.0)])
    c = SliceInput([(20.0, 20.0)], [1], [])  # a click inside the first object's box
    objects = key_slice_objects({3: a, 9: b, 12: c})
    assert sorted(objects) == [1, 2]
    assert [p.index for p in objects[1]] == [3, 9, 12]
    assert [p.index for p in objects[2]] == [9]


def test_propagate_on_a_2d_image_says_why(make_widget, qtbot, geometric_engine):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    wait_idle(qtbot, widget)
    messages = []
    widget.notify = messages.append
    widget.propagate()
    assert messages and "2D" in messages[-1]
    assert not widget.volume_panel.visible


def test_auto_segment_3d_links_through_the_stack(make_widget, qtbot, small_model):
    from napari_sam.core.engine import SamEngine

    viewer, widget = make_widget(engine=SamEngine(small_model))
    viewer.add_image(np.random.default_rng(0).random((4, 40, 40), dtype=np.float32), name="v")
    wait_idle(qtbot, widget)
    widget.points_per_side.value = 4
    widget.pred_iou_thresh.value = 0.0
    widget.stability_score_thresh.value = 0.0
    widget.auto_segment_3d()
    wait_idle(qtbot, widget, timeout=300_000)
    layer = layer_named(viewer, "v SAM auto 3D")
    assert layer.data.shape == (4, 40, 40) and layer.data.dtype == np.int32
    ids = set(np.unique(layer.data)) - {0}
    assert ids == set(layer.features["index"])
    assert "linking" in layer.metadata["napari_sam"]
