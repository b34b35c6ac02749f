"""The widget's plain logic (:mod:`napari_sam._session`) and its layer glue
(:mod:`napari_sam._layers`), on napari layer *models*: no viewer, no display needed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_sam._layers import (
    Plane,
    add_features,
    image_plane,
    plane_prompts,
    preview_array,
    preview_placement,
    write_objects,
)
from napari_sam._session import (
    Generation,
    ObjectPreview,
    Preview,
    build_objects,
    key_text,
    point_label,
)
from napari_sam.core.errors import ImageError, PromptError


def test_generation_marks_late_results():
    g = Generation()
    started = g.value
    assert g.is_current(started)
    g.bump()
    assert not g.is_current(started)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("positive", 1), ("Negative", 0), (True, 1), (0, 0), (1.0, 1), (None, 1), ("-", 0)],
)
def test_point_label(value, expected):
    assert point_label(value) == expected


def test_point_label_rejects_other_values():
    with pytest.raises(ValueError, match="neither"):
        point_label("maybe")


def test_build_objects_modes():
    pts = np.array([[10, 10], [20, 20], [30, 30]], float)
    lab = np.array([1, 0, 1])
    boxes = np.array([[0, 0, 5, 5], [40, 40, 50, 50]], float)
    shape = (64, 64)
    # Default: points describe one object; with boxes, one object per box (points shared).
    [one] = build_objects(pts, lab, np.zeros((0, 4)), per_point=False, image_shape=shape)
    assert one.sources == ("points",) and len(one.prompts.points) == 3
    [batch] = build_objects(pts, lab, boxes, per_point=False, image_shape=shape)
    assert batch.sources == ("box 1", "box 2") and batch.prompts.n_objects == 2
    # Per point: one object per positive point, negatives shared, boxes batched.
    objs = build_objects(pts, lab, boxes, per_point=True, image_shape=shape)
    assert [o.sources for o in objs] == [("point 1",), ("point 3",), ("box 1", "box 2")]
    assert objs[0].prompts.point_labels.tolist() == [1, 0]
    assert build_objects(np.zeros((0, 2)), [], [], per_point=False, image_shape=shape) == []
    with pytest.raises(PromptError, match="positive"):
        build_objects(pts[1:2], [0], [], per_point=True, image_shape=shape)


def _obj(scores, best=None, size=8):
    masks = [np.zeros((size, size), bool) for _ in scores]
    for k, m in enumerate(masks):
        m[: k + 1, : k + 1] = True
    scores = np.asarray(scores, np.float32)
    return ObjectPreview(masks, scores, int(np.argmax(scores)) if best is None else best, "x")


def test_preview_cycles_candidates_and_describes_them():
    p = Preview(plane=None, objects=[_obj([0.5, 0.9, 0.7])])
    assert p.chosen(0) == 1 and "2/3" in p.describe() and "(best)" in p.describe()
    assert [p.next_candidate() for _ in range(4)] == [2, 0, 1, 2]
    assert "3/3" in p.describe() and "0.70" in p.describe() and "best 0.90" in p.describe()
    single = Preview(plane=None, objects=[_obj([0.8])])
    assert single.next_candidate() is None and "1 object" in single.describe()
    many = Preview(plane=None, objects=[_obj([0.8]), _obj([0.6])])
    assert "2 objects" in many.describe()


def test_preview_label_image_keeps_small_objects_on_top():
    big = ObjectPreview([np.ones((6, 6), bool)], np.array([0.9]), 0, "a")
    small_mask = np.zeros((6, 6), bool)
    small_mask[2:4, 2:4] = True
    small = ObjectPreview([small_mask], np.array([0.9]), 0, "b")
    img = Preview(plane=None, objects=[small, big]).label_image()
    assert img[3, 3] == 1 and img[0, 0] == 2


def test_key_text():
    assert key_text("commit") == "Shift+C"


# ------------------------------------------------------------------------------------------
# _layers
# ------------------------------------------------------------------------------------------


def test_image_plane_of_a_stack_and_of_an_rgb_image():
    stack = Image(np.zeros((5, 20, 30)), scale=(2, 1, 1))
    plane = image_plane(stack, world_point=(6.0, 3, 4), displayed=(1, 2), world_ndim=3)
    assert plane == Plane(axes=(1, 2), index=(3, None, None), shape=(20, 30))
    assert plane.describe(stack.axis_labels) == "axis 0=3"
    rgb = Image(np.zeros((20, 30, 3), np.uint8), rgb=True)
    p2 = image_plane(rgb, world_point=(0, 0), displayed=(0, 1), world_ndim=2)
    assert p2.take(rgb.data).shape == (20, 30, 3)
    # Transposed view (x down, y across): rows are data axis 1.
    p3 = image_plane(stack, world_point=(0, 7, 0), displayed=(2, 1), world_ndim=3)
    assert p3.axes == (2, 1) and p3.shape == (30, 20) and p3.index == (0, None, None)
    assert p3.take(np.arange(5 * 20 * 30).reshape(5, 20, 30)).shape == (30, 20)


def test_image_plane_errors():
    stack = Image(np.zeros((5, 20, 30)))
    with pytest.raises(ImageError, match="2D"):
        image_plane(stack, (0, 0, 0), (0, 1, 2), 3)
    with pytest.raises(ImageError, match="outside"):
        image_plane(stack, (9, 0, 0), (1, 2), 3)


def test_prompts_in_world_coordinates_and_on_the_current_plane():
    image = Image(np.zeros((4, 40, 50)), scale=(3, 2, 2), translate=(0, 10, 20))
    plane = image_plane(image, (6.0, 0, 0), (1, 2), 3)  # slice 2
    points = Points(
        [[2, 5, 6], [3, 5, 6]],
        features=pd.DataFrame({"label": ["positive", "negative"]}),
        scale=(3, 2, 2),
        translate=(0, 10, 20),
    )
    world_2d = Points([[10 + 2 * 7, 20 + 2 * 8]])  # a 2D layer: lies on every slice
    shapes = Shapes(
        [np.array([[6, 1, 1], [6, 1, 4], [6, 3, 4], [6, 3, 1]], float)],
        shape_type="rectangle",
        scale=(1, 4, 4),
        translate=(0, 10, 20),
    )
    pts, lab, boxes, elsewhere, tilted, *_ = plane_prompts(
        points, shapes, image, plane, (6.0, 0, 0)
    )
    np.testing.assert_allclose(pts, [[5, 6]])
    assert lab.tolist() == [1] and elsewhere == 1 and tilted == 0
    np.testing.assert_allclose(boxes, [[2, 2, 6, 8]])
    pts2, *_ = plane_prompts(world_2d, None, image, plane, (6.0, 0, 0))
    np.testing.assert_allclose(pts2, [[7, 8]])


def test_prompts_with_bad_labels_raise():
    image = Image(np.zeros((10, 10)))
    plane = image_plane(image, (0, 0), (0, 1), 2)
    points = Points([[1, 1]], features=pd.DataFrame({"label": ["perhaps"]}))
    with pytest.raises(PromptError, match="perhaps"):
        plane_prompts(points, None, image, plane, (0, 0))


def test_preview_is_one_plane_thick_on_a_stack():
    image = Image(np.zeros((4, 10, 12)), scale=(3, 1, 1), translate=(1, 0, 0))
    plane = image_plane(image, (7.0, 0, 0), (1, 2), 3)  # slice 2
    shape, kwargs = preview_placement(image, plane)
    assert shape == (1, 10, 12) and kwargs["translate"][0] == pytest.approx(7.0)
    data = preview_array(image, plane, np.ones((10, 12), np.int32))
    assert data.shape == (1, 10, 12) and data.all()


def test_write_objects_one_undo_step_preserve_and_ids():
    labels = Labels(np.zeros((3, 8, 8), np.int32))
    labels.data[1, 0, 0] = 5
    plane = Plane(axes=(1, 2), index=(1, None, None), shape=(8, 8))
    a = np.zeros((8, 8), bool)
    a[0:3, 0:3] = True
    b = np.zeros((8, 8), bool)
    b[5:7, 5:7] = True
    written = write_objects(labels, plane, [a, b], overwrite=False)
    assert [(w.label, w.pixels) for w in written] == [(6, 8), (7, 4)]
    assert labels.data[1, 0, 0] == 5 and labels.data[1, 1, 1] == 6 and labels.data[1, 6, 6] == 7
    assert not labels.data[0].any() and not labels.data[2].any()
    labels.undo()
    assert labels.data.max() == 5
    labels.redo()
    written = write_objects(labels, plane, [a], overwrite=True)
    assert written[0].label == 8 and labels.data[1, 0, 0] == 8
    assert write_objects(labels, plane, [np.zeros((8, 8), bool)], overwrite=True) == []


def test_add_features_replaces_rows_of_reused_ids():
    labels = Labels(np.zeros((4, 4), np.int32))
    add_features(labels, [{"index": 1, "score": 0.5}])
    add_features(labels, [{"index": 1, "score": 0.7}, {"index": 2, "score": 0.9}])
    assert labels.features["index"].tolist() == [1, 2]
    assert labels.features["score"].tolist() == [0.7, 0.9]
