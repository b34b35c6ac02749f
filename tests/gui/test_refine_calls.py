"""Which SAM calls the widget's prompts stand for when shapes are masks, and how a follow-up
gets the previous logits (``napari_sam._refine``, plain values, no viewer)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._layers import PlanePrompts
from napari_sam._refine import LabelEdit, chain_calls, previous_masks, prompt_calls
from napari_sam._session import ObjectPreview, Preview
from napari_sam.core.errors import PromptError
from napari_sam.core.mask_prompts import StartMask, shape_prompt

SHAPE = (40, 60)
ELLIPSE = np.array([[5, 5], [5, 25], [25, 25], [25, 5]], float)
RECT = np.array([[20, 30], [20, 50], [35, 50], [35, 30]], float)


def _found(points=(), labels=(), shapes=()):
    """PlanePrompts with points and (kind, vertices) shapes, as plane_prompts gives them."""
    boxes = [[*v.min(0), *v.max(0)] for _, v in shapes]
    return PlanePrompts(
        np.array(points, float).reshape(-1, 2),
        np.array(labels, int),
        np.array(boxes, float).reshape(-1, 4),
        0,
        0,
        tuple(k for k, _ in shapes),
        tuple(v for _, v in shapes),
    )


def test_rectangles_stay_boxes_and_ellipses_become_calls_with_a_mask():
    found = _found([[10, 40]], [1], [("rectangle", RECT), ("ellipse", ELLIPSE)])
    calls = prompt_calls(found, per_point=False, image_shape=SHAPE, shapes_as_masks=True)
    assert [c.sources for c in calls] == [("box 1",), ("ellipse 2",)]
    rect, ellipse = calls
    assert rect.mask_input is None and rect.start is None and len(rect.prompts.points) == 1
    np.testing.assert_array_equal(
        ellipse.mask_input, shape_prompt("ellipse", ELLIPSE, SHAPE).logits
    )
    assert len(ellipse.prompts.points) == 1  # the points are shared, as with boxes
    np.testing.assert_allclose(ellipse.prompts.boxes[0], [5, 5, 25, 25])
    # Off: the ellipse is a box like any other, in one call.
    (plain,) = prompt_calls(found, per_point=False, image_shape=SHAPE, shapes_as_masks=False)
    assert plain.sources == ("box 1", "box 2") and plain.mask_input is None


def test_with_one_object_per_point_shapes_share_only_the_negatives():
    found = _found([[10, 40], [30, 10]], [1, 0], [("polygon", ELLIPSE[:3])])
    calls = prompt_calls(found, per_point=True, image_shape=SHAPE, shapes_as_masks=True)
    assert [c.sources for c in calls] == [("point 1",), ("polygon 1",)]
    assert calls[1].prompts.point_labels.tolist() == [0]
    only = _found(shapes=[("path", ELLIPSE)])
    (call,) = prompt_calls(only, per_point=False, image_shape=SHAPE, shapes_as_masks=True)
    assert call.start.shape == "path" and len(call.prompts.points) == 0


def test_an_edit_is_one_object_from_the_label():
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 10:30] = True
    plane = type("P", (), {"shape": SHAPE})()
    edit = LabelEdit(3, None, plane, StartMask(mask=mask, label=3))
    found = _found([[12, 15]], [1])
    (call,) = prompt_calls(
        found, per_point=True, image_shape=SHAPE, shapes_as_masks=False, edit=edit
    )
    assert call.start is edit.start and call.mask_input is edit.logits()
    two = _found([[12, 15]], [1], [("rectangle", RECT), ("rectangle", RECT + 1)])
    with pytest.raises(PromptError, match="label 3"):
        prompt_calls(two, per_point=False, image_shape=SHAPE, shapes_as_masks=False, edit=edit)


class _Embedding:
    model_id, key = "m", "k"


def _preview(call, logits):
    obj = ObjectPreview(
        masks=[np.zeros(SHAPE, bool)] * len(logits),
        scores=np.linspace(0.5, 0.9, len(logits)).astype(np.float32),
        best=len(logits) - 1,
        source="points",
        logits=logits,
    )
    return Preview(plane=None, objects=[obj], calls=[call])


def test_a_follow_up_gets_the_chosen_candidates_logits_and_its_chain():
    logits = np.random.default_rng(0).normal(size=(3, 256, 256)).astype(np.float32)
    (first,) = prompt_calls(_found([[10, 40]], [1]), **_opts())
    preview = _preview(first, logits)
    preview.candidate = 0  # the user chose candidate 1 of 3 with W
    previous = previous_masks(preview, ("m", "k"))
    (second,) = prompt_calls(_found([[10, 40], [12, 44]], [1, 1]), **_opts())
    (chained,) = chain_calls([second], previous, _Embedding())
    np.testing.assert_array_equal(chained.mask_input, logits[[0]])
    assert chained.steps[0].candidates == (0,) and len(chained.steps) == 1
    # Another image, or a moved first point: no follow-up.
    other = type("E", (), {"model_id": "m", "key": "other"})()
    assert chain_calls([second], previous, other)[0].mask_input is None
    (moved,) = prompt_calls(_found([[11, 40], [12, 44]], [1, 1]), **_opts())
    assert chain_calls([moved], previous, _Embedding())[0].mask_input is None


def _opts():
    return {"per_point": False, "image_shape": SHAPE, "shapes_as_masks": True}
