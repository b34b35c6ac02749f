"""Measuring segmentation quality against reference labels.

Used to report how good a model is (the tiny test model's numbers in the docs come from
``scripts/evaluate_tiny_sam.py``), and by tests that check masks, not just shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SamEngine


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def best_match_iou(labels: np.ndarray, reference: np.ndarray) -> float:
    """IoU of ``reference`` (a boolean mask) with the label of ``labels`` that fits it best.

    Only labels that touch ``reference`` can match; 0.0 when none does. With IoU >= 0.5 as
    "found", this gives the recall of an instance segmentation.
    """
    ids = np.unique(labels[reference])
    return max((iou(labels == i, reference) for i in ids if i), default=0.0)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel farthest from the mask's border: where a person would click."""
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive (row0, col0, row1, col1) box of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


@dataclass
class PromptScores:
    """IoU per reference object for a box prompt and for a single positive click."""

    box: list[float] = field(default_factory=list)
    click: list[float] = field(default_factory=list)

    def extend(self, other: PromptScores) -> None:
        """Add another image's scores."""
        self.box += other.box
        self.click += other.click

    def summary(self) -> dict[str, float]:
        """Mean IoUs and the number of objects."""
        return {
            "box_iou": float(np.mean(self.box)) if self.box else float("nan"),
            "click_iou": float(np.mean(self.click)) if self.click else float("nan"),
            "objects": len(self.box),
        }


def score_prompts(
    engine: SamEngine,
    rgb: np.ndarray,
    labels: np.ndarray,
    *,
    min_area: int = 20,
    max_objects: int | None = None,
    seed: int = 0,
) -> PromptScores:
    """Prompt the model once per reference object and measure the masks.

    For each object of ``labels`` (at least ``min_area`` pixels): one box (its tight bounding
    box) and, separately, one positive click at its most interior pixel, with the candidate
    chosen by predicted IoU, as the widget does.

    Parameters
    ----------
    engine : SamEngine
    rgb : ndarray
        Prepared uint8 (H, W, 3) image.
    labels : ndarray
        Reference instance labels (H, W).
    min_area : int
        Ignore smaller objects.
    max_objects : int, optional
        Evaluate a random subset of this size.
    seed : int
        For the subset.

    Returns
    -------
    PromptScores
    """
    emb = engine.embed(rgb)
    ids = [int(i) for i in np.unique(labels) if i]
    slices = ndi.find_objects(labels)
    ids = [i for i in ids if (labels[slices[i - 1]] == i).sum() >= min_area]
    if max_objects is not None and len(ids) > max_objects:
        ids = sorted(np.random.default_rng(seed).choice(ids, max_objects, replace=False).tolist())
    scores = PromptScores()
    if not ids:
        return scores
    masks = [labels == i for i in ids]
    boxes = np.array([bounding_box(m) for m in masks])
    pred = engine.predict(emb, boxes=boxes)
    for k, m in enumerate(masks):
        scores.box.append(iou(pred.mask(k), m))
    for m in masks:
        pred = engine.predict(emb, points=[interior_point(m)])
        scores.click.append(iou(pred.mask(), m))
    return scores
