"""Prompt validation and the napari (row, col) -> SAM (x, y) conversion."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.errors import PromptError
from napari_sam.core.prompts import NEGATIVE, POSITIVE, Prompts, make_prompts

# --------------------------------------------------------------------------------------------
# Shapes, labels and defaults
# --------------------------------------------------------------------------------------------


def test_points_only_default_labels_are_positive():
    p = make_prompts([[3, 4], [5, 6]])
    assert isinstance(p, Prompts)
    assert p.points.shape == (2, 2)
    assert p.points.dtype == np.float64
    np.testing.assert_array_equal(p.point_labels, [POSITIVE, POSITIVE])
    assert p.boxes.shape == (0, 4)


def test_boxes_only_gives_empty_points():
    p = make_prompts(boxes=[[1, 2, 3, 4]])
    assert p.points.shape == (0, 2)
    assert p.point_labels.shape == (0,)
    assert p.boxes.shape == (1, 4)


def test_single_box_as_flat_list_is_accepted():
    p = make_prompts(boxes=[1, 2, 3, 4])
    np.testing.assert_array_equal(p.boxes, [[1, 2, 3, 4]])


def test_empty_lists_are_treated_as_absent():
    p = make_prompts([], None, [[0, 0, 5, 5]])
    assert p.points.shape == (0, 2)
    assert p.boxes.shape == (1, 4)


@pytest.mark.parametrize("points", [[[1, 2, 3]], [1, 2], [[[1, 2]]]])
def test_points_of_wrong_shape(points):
    with pytest.raises(PromptError, match=r"points must be \(N, 2\)"):
        make_prompts(points)


@pytest.mark.parametrize("boxes", [[[1, 2, 3]], [1, 2, 3, 4, 5], [[[1, 2, 3, 4]]]])
def test_boxes_of_wrong_shape(boxes):
    with pytest.raises(PromptError, match=r"boxes must be \(B, 4\)"):
        make_prompts(boxes=boxes)


def test_label_count_must_match_points():
    with pytest.raises(PromptError, match="2 points but 1 point labels"):
        make_prompts([[1, 1], [2, 2]], [1])


@pytest.mark.parametrize("labels", [[2], [-1], [0.5]])
def test_labels_must_be_zero_or_one(labels):
    with pytest.raises(PromptError, match=r"must be 1 \(positive\) or 0 \(negative\)"):
        make_prompts([[1, 1]], labels)


def test_boolean_labels_are_accepted():
    p = make_prompts([[1, 1], [2, 2]], [True, False])
    np.testing.assert_array_equal(p.point_labels, [POSITIVE, NEGATIVE])


def test_only_negative_points_are_refused():
    with pytest.raises(PromptError, match="at least one positive point or a box"):
        make_prompts([[1, 1], [2, 2]], [0, 0])


def test_no_prompt_at_all_is_refused():
    with pytest.raises(PromptError, match="at least one positive point or a box"):
        make_prompts()


def test_negative_points_with_a_box_are_fine():
    p = make_prompts([[1, 1]], [0], [[0, 0, 4, 4]])
    np.testing.assert_array_equal(p.point_labels, [NEGATIVE])
    assert p.n_objects == 1


@pytest.mark.parametrize(
    ("points", "boxes"),
    [
        ([[np.nan, 1]], None),
        ([[1, np.inf]], None),
        (None, [[0, 0, np.nan, 3]]),
        ([[1, 1]], [[0, -np.inf, 3, 3]]),
    ],
)
def test_non_finite_coordinates(points, boxes):
    with pytest.raises(PromptError, match="finite"):
        make_prompts(points, None, boxes)


# --------------------------------------------------------------------------------------------
# Against the image
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "text"),
    [
        ((-0.6, 3), r"point \(-0\.6, 3\.0\)"),
        ((10, 20.0), r"point \(10\.0, 20\.0\)"),  # row 10 of a 10-row image is outside
        ((2, 19.6), r"point \(2\.0, 19\.6\)"),
        ((2, -3), r"point \(2\.0, -3\.0\)"),
    ],
)
def test_point_outside_the_image(point, text):
    with pytest.raises(PromptError, match=text + r" lies outside the 10x20 image") as info:
        make_prompts([[1, 1], point], image_shape=(10, 20))
    assert "prompts must be on the image" in str(info.value)


def test_points_on_the_pixel_edges_are_inside():
    p = make_prompts([[-0.5, -0.5], [9.5, 19.5], [0, 0], [9, 19]], image_shape=(10, 20))
    assert len(p.points) == 4


def test_outside_point_is_named_even_if_not_first():
    with pytest.raises(PromptError, match=r"\(3\.0, 25\.0\)"):
        make_prompts([[1, 1], [2, 2], [3, 25]], image_shape=(10, 20))


def test_box_is_clipped_to_the_image():
    p = make_prompts(boxes=[[-5, -3, 15, 30]], image_shape=(10, 20))
    np.testing.assert_array_equal(p.boxes, [[0, 0, 9, 19]])


def test_box_partly_outside_keeps_its_inside_corners():
    p = make_prompts(boxes=[[2, 3, 50, 4]], image_shape=(10, 20))
    np.testing.assert_array_equal(p.boxes, [[2, 3, 9, 4]])


@pytest.mark.parametrize(
    "box",
    [
        [-8, 2, -1, 5],  # above
        [12, 2, 15, 5],  # below
        [2, -9, 5, -0.5],  # left
        [2, 20, 5, 30],  # right
    ],
)
def test_box_missing_the_image(box):
    with pytest.raises(PromptError, match="misses the image"):
        make_prompts(boxes=[[0, 0, 3, 3], box], image_shape=(10, 20))


def test_missing_box_message_names_the_normalised_box():
    with pytest.raises(PromptError, match=r"box \[12\.0, 2\.0, 15\.0, 5\.0\] misses"):
        make_prompts(boxes=[[15, 5, 12, 2]], image_shape=(10, 20))


def test_box_corner_order_is_normalised():
    a = make_prompts(boxes=[[8, 9, 2, 3]])
    b = make_prompts(boxes=[[2, 9, 8, 3]])
    c = make_prompts(boxes=[[8, 3, 2, 9]])
    for p in (a, b, c):
        np.testing.assert_array_equal(p.boxes, [[2, 3, 8, 9]])


def test_without_image_shape_nothing_is_clipped():
    p = make_prompts([[-100, 500]], None, [[-5, -5, 500, 600]])
    np.testing.assert_array_equal(p.points, [[-100, 500]])
    np.testing.assert_array_equal(p.boxes, [[-5, -5, 500, 600]])


# --------------------------------------------------------------------------------------------
# Conversion to SAM's convention
# --------------------------------------------------------------------------------------------


def test_sam_points_are_xy_at_pixel_centres():
    # A non-square case where row and col are easy to tell apart.
    p = make_prompts([[3, 40], [0, 0], [9, 1]], image_shape=(10, 50))
    xy = p.sam_points()
    assert xy.dtype == np.float32
    np.testing.assert_array_equal(xy, [[40.5, 3.5], [0.5, 0.5], [1.5, 9.5]])


def test_sam_points_of_no_points():
    assert make_prompts(boxes=[[0, 0, 1, 1]]).sam_points().shape == (0, 2)


def test_sam_boxes_cover_the_corner_pixels():
    p = make_prompts(boxes=[[2, 5, 7, 30], [0, 0, 0, 0]], image_shape=(10, 50))
    xyxy = p.sam_boxes()
    assert xyxy.dtype == np.float32
    # x0 = col0, y0 = row0, x1 = col1 + 1, y1 = row1 + 1
    np.testing.assert_array_equal(xyxy, [[5, 2, 31, 8], [0, 0, 1, 1]])


def test_sam_boxes_after_clipping_and_reordering():
    p = make_prompts(boxes=[[12, 60, -3, 7]], image_shape=(10, 50))
    np.testing.assert_array_equal(p.sam_boxes(), [[7, 0, 50, 10]])


def test_sam_boxes_of_no_boxes():
    b = make_prompts([[1, 1]]).sam_boxes()
    assert b.shape == (0, 4)
    assert b.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "labels", "boxes", "single"),
    [
        ([[1, 1]], None, None, True),
        ([[1, 1], [2, 2]], None, None, False),
        ([[1, 1], [2, 2]], [1, 0], None, False),
        ([[1, 1]], None, [[0, 0, 3, 3]], False),
        (None, None, [[0, 0, 3, 3]], False),
    ],
)
def test_is_single_click(points, labels, boxes, single):
    assert make_prompts(points, labels, boxes).is_single_click is single


@pytest.mark.parametrize(
    ("points", "boxes", "n"),
    [
        ([[1, 1]], None, 1),
        ([[1, 1], [2, 2], [3, 3]], None, 1),
        (None, [[0, 0, 3, 3]], 1),
        (None, [[0, 0, 3, 3], [1, 1, 2, 2], [4, 4, 5, 5]], 3),
        ([[1, 1]], [[0, 0, 3, 3], [1, 1, 2, 2]], 2),
    ],
)
def test_n_objects(points, boxes, n):
    assert make_prompts(points, None, boxes).n_objects == n
