"""Mask prompts in the widget: which SAM calls the prompts stand for, and what mask each gets.

Three things give a SAM call a mask prompt (low-resolution logits, see
:mod:`napari_sam.core.mask_prompts` and :mod:`napari_sam.core.refinement`):

- **a follow-up click**: a call that extends a call of the preview on screen (same boxes,
  every earlier point kept, a point added; same image, plane and model) gets that preview's
  chosen candidate's logits, as in SAM's interactive training. Anything else starts afresh.
- **a drawn shape**: an ellipse, polygon or path in the boxes layer becomes its own call,
  with its box and the shape rasterised as the mask prompt (rectangles stay plain boxes).
- **an edited label**: its mask on the plane starts the chain of clicks that reshape it.

Follow-ups and shapes follow the "refine from previous mask" setting (default: the model's,
:func:`~napari_sam.core.refinement.uses_mask_prompts`); an edit always starts from the label.
Each call remembers its chain (start mask, earlier steps) so that a session replays it.
No napari and no Qt here: the widget passes plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._session import PromptObject, build_objects
from .core.errors import PromptError
from .core.mask_prompts import StartMask
from .core.prompts import NEGATIVE, make_prompts
from .core.refinement import PreviousMask, follow_up_logits
from .core.session_types import StepRecord

__all__ = ["LabelEdit", "chain_calls", "previous_masks", "prompt_calls"]


@dataclass(eq=False)
class LabelEdit:
    """An existing label being edited: its id, layer, plane, and its mask there at the pick.

    Attributes
    ----------
    label : int
    layer : napari.layers.Labels
        The labels layer it belongs to (the commit writes there).
    plane : Plane
        The image plane it was picked on (a :class:`napari_sam._layers.Plane`).
    start : StartMask
        The label's mask on that plane: the chain's first mask prompt.
    """

    label: int
    layer: Any
    plane: Any
    start: StartMask
    _logits: np.ndarray | None = None

    def logits(self) -> np.ndarray:
        """The start mask's (256, 256) logits (made once)."""
        if self._logits is None:
            self._logits = self.start.logits(tuple(self.plane.shape))
        return self._logits


def prompt_calls(
    found: Any,
    *,
    per_point: bool,
    image_shape: tuple[int, int],
    shapes_as_masks: bool,
    edit: LabelEdit | None = None,
) -> list[PromptObject]:
    """The SAM calls for the prompts of a plane (a :class:`napari_sam._layers.PlanePrompts`).

    Without shapes as masks (or drawn shapes), this is
    :func:`napari_sam._session.build_objects`. With them, each ellipse, polygon or path is a
    call of its own with the points it shares (all of them, or the negative ones with one
    object per positive point) and a :class:`StartMask`. While a label is edited, all prompts
    describe that one object, which starts from the label's mask.

    Raises
    ------
    PromptError
        For prompts SAM cannot use, and for more than one object while a label is edited.
    """
    kinds = found.kinds or ("rectangle",) * len(found.boxes)
    if edit is not None:
        calls = build_objects(
            found.points, found.labels, found.boxes, per_point=False, image_shape=image_shape
        )
        if sum(c.prompts.n_objects for c in calls) > 1:
            raise PromptError(
                f"editing label {edit.label} reshapes one object: use points (and at most one "
                "box), or press Cancel to stop editing"
            )
        return [replace(c, start=edit.start, mask_input=edit.logits()) for c in calls]
    shaped = [i for i, k in enumerate(kinds) if shapes_as_masks and k != "rectangle"]
    boxes = np.delete(np.asarray(found.boxes, float).reshape(-1, 4), shaped, axis=0)
    points, labels = found.points, found.labels
    calls = []
    if len(boxes) or not shaped or (per_point and (labels != NEGATIVE).any()):
        calls = build_objects(points, labels, boxes, per_point=per_point, image_shape=image_shape)
        rects = [i for i in range(len(kinds)) if i not in shaped]
        calls = [_renumber(c, rects) for c in calls]
    if per_point:
        points, labels = points[labels == NEGATIVE], labels[labels == NEGATIVE]
    for i in shaped:
        start = StartMask(shape=kinds[i], vertices=np.asarray(found.outlines[i], float))
        prompts = make_prompts(points, labels, found.boxes[i : i + 1], image_shape=image_shape)
        logits = start.logits(image_shape)
        calls.append(PromptObject(prompts, (f"{kinds[i]} {i + 1}",), logits, (), start))
    return calls


def _renumber(call: PromptObject, rects: Sequence[int]) -> PromptObject:
    """Name boxes by their place in the layer, not among the rectangles."""
    sources = tuple(
        f"box {rects[int(s.split()[1]) - 1] + 1}" if s.startswith("box ") else s
        for s in call.sources
    )
    return replace(call, sources=sources)


def previous_masks(preview: Any, made_with: tuple[str, str]) -> list[tuple[PromptObject, Any]]:
    """Each call of the shown preview with what a follow-up refines: its chosen candidates.

    Parameters
    ----------
    preview : Preview or None
        The preview on screen (its candidates as the user chose them).
    made_with : (str, str)
        The model id and image key of the embedding it was predicted on.

    Returns
    -------
    list of (PromptObject, PreviousMask)
        Calls whose predictions have no low-resolution logits (tiled) are left out.
    """
    if preview is None:
        return []
    out, first = [], 0
    for call in preview.calls:
        n = call.prompts.n_objects
        objs = range(first, first + n)
        first += n
        logits = [preview.objects[j].logits for j in objs]
        if any(x is None for x in logits):
            continue
        chosen = [preview.chosen(j) for j in objs]
        stack = np.stack([x[k] for x, k in zip(logits, chosen, strict=True)])
        out.append(
            (
                replace(call, steps=(*call.steps, StepRecord(call.prompts, tuple(chosen)))),
                PreviousMask(call.prompts, stack, *made_with),
            )
        )
    return out


def chain_calls(
    calls: list[PromptObject],
    previous: list[tuple[PromptObject, Any]],
    embedding: Any,
) -> list[PromptObject]:
    """Give every call that follows up a previous one that call's logits as its mask prompt.

    ``previous`` comes from :func:`previous_masks` (empty: refinement is off, or nothing to
    refine). A follow-up keeps the chain's start mask and adds the previous call as a step.
    """
    out = []
    for call in calls:
        for before, mask in previous:
            logits = follow_up_logits(mask, call.prompts, embedding)
            if logits is not None and _same_start(before.start, call.start):
                call = replace(call, mask_input=logits, steps=before.steps, start=before.start)
                break
        out.append(call)
    return out


def _same_start(a: StartMask | None, b: StartMask | None) -> bool:
    """Whether two calls start from the same mask (a moved shape starts a new chain)."""
    if a is None or b is None:
        return a is b
    if a.mask is not None or b.mask is not None:
        return a.mask is b.mask or (
            a.mask is not None and b.mask is not None and np.array_equal(a.mask, b.mask)
        )
    return a.shape == b.shape and np.array_equal(a.vertices, b.vertices)
