"""How the masks of one commit become label pixels.

A commit writes the chosen mask of every object of a preview into a labels plane as new
labels: where masks overlap the smaller one wins (a nucleus inside its cell stays visible),
and without ``overwrite`` pixels that already carry a label keep it. The napari glue
(:func:`napari_sam._layers.write_objects`) and session replay
(:mod:`napari_sam.core.replay`) both go through :func:`commit_pixels`, so that a replayed
commit writes exactly the pixels the original one wrote. Editing an existing label
(:func:`edit_pixels`, :func:`write_edit`) replaces that one label with a new mask instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .region_mask import RegionMask

__all__ = ["commit_pixels", "draw_objects", "edit_pixels", "write_commit", "write_edit"]


def draw_objects(masks: Sequence[np.ndarray | RegionMask], shape: tuple[int, int]) -> np.ndarray:
    """int32 (H, W): object ``i`` as ``i + 1``, smaller objects drawn over larger ones.

    ``masks`` are boolean (H, W) arrays or :class:`~napari_sam.core.region_mask.RegionMask`
    (drawn inside their boxes). Ties in area keep the earlier object on top (a stable sort),
    as the preview shows them.
    """
    drawn = np.zeros(shape, np.int32)
    regions = [
        m if isinstance(m, RegionMask) else RegionMask(0, 0, np.asarray(m, bool)) for m in masks
    ]
    areas = [r.area for r in regions]
    for i in np.argsort(areas, kind="stable")[::-1]:
        regions[i].paint(drawn, i + 1)
    return drawn


def commit_pixels(
    existing: np.ndarray, masks: Sequence[np.ndarray], *, overwrite: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels a commit writes, and which object each belongs to.

    Parameters
    ----------
    existing : ndarray
        (H, W) labels of the plane before the commit.
    masks : sequence of ndarray
        Boolean (H, W) chosen mask of every object, in preview order.
    overwrite : bool
        False: pixels that already carry a label keep it.

    Returns
    -------
    rows, cols : ndarray
        Pixel coordinates written.
    objects : ndarray
        For each of them, the index of the object that owns it.
    """
    drawn = draw_objects(masks, existing.shape[:2])
    target = drawn > 0
    if not overwrite:
        target &= existing == 0
    rows, cols = np.nonzero(target)
    return rows, cols, drawn[rows, cols] - 1


def write_commit(
    plane_labels: np.ndarray,
    masks: Sequence[np.ndarray],
    ids: Sequence[int | None],
    *,
    overwrite: bool,
) -> np.ndarray:
    """Write a commit with given label ids into an (H, W) labels plane, in place.

    Parameters
    ----------
    plane_labels : ndarray
        (H, W) labels, modified in place (it may be a view into a larger array).
    masks : sequence of ndarray
        Boolean (H, W) mask of every object.
    ids : sequence of int or None
        Label id of every object; None: the object is not written (its pixels stay as they
        were, as when the original commit left it without visible pixels).
    overwrite : bool
        See :func:`commit_pixels`.

    Returns
    -------
    ndarray
        int64 (n_objects,): pixels written per object.
    """
    rows, cols, objects = commit_pixels(plane_labels, masks, overwrite=overwrite)
    lut = np.array([-1 if i is None else int(i) for i in ids], np.int64)
    keep = lut[objects] >= 0
    plane_labels[rows[keep], cols[keep]] = lut[objects[keep]]
    return np.bincount(objects[keep], minlength=len(masks)).astype(np.int64)


def edit_pixels(
    existing: np.ndarray, mask: np.ndarray, label: int, *, overwrite: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The pixels an edit of ``label`` changes: that label becomes ``mask``, nothing else.

    Pixels of ``label`` outside ``mask`` are cleared to 0; pixels of ``mask`` get ``label``
    where they are 0 or already ``label`` (and, with ``overwrite``, also where another label
    is, as a commit with overwrite would). Pixels of other labels outside ``mask`` are never
    touched.

    Parameters
    ----------
    existing : ndarray
        (H, W) labels of the plane before the edit.
    mask : ndarray
        Boolean (H, W): the label's new extent.
    label : int
        The id being edited (> 0).
    overwrite : bool
        Whether ``mask`` may take pixels from other labels.

    Returns
    -------
    rows, cols : ndarray
        Pixels that change.
    values : ndarray
        Their new values (0 or ``label``), of ``existing``'s dtype.
    pixels : int
        Pixels that carry ``label`` afterwards.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != existing.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} for a plane of shape {existing.shape}")
    mine = existing == label
    take = mask if overwrite else mask & ((existing == 0) | mine)
    change = (mine & ~take) | (take & ~mine)
    rows, cols = np.nonzero(change)
    values = np.where(take[rows, cols], label, 0).astype(existing.dtype)
    return rows, cols, values, int(np.count_nonzero(take))


def write_edit(plane_labels: np.ndarray, mask: np.ndarray, label: int, *, overwrite: bool) -> int:
    """Apply :func:`edit_pixels` to an (H, W) labels plane in place; return its pixel count."""
    rows, cols, values, pixels = edit_pixels(plane_labels, mask, label, overwrite=overwrite)
    plane_labels[rows, cols] = values
    return pixels
