"""Automatic ("segment everything") instance segmentation.

SAM's official :class:`~segment_anything.SamAutomaticMaskGenerator` does the work, with three
changes that matter to users: embeddings come from the engine (computed once, cached), the work
reports progress and can be cancelled between batches, and the overlapping masks it returns are
turned into one instance label image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .embedding import CancelCheck, ProgressCallback
from .engine import SamEngine
from .errors import Cancelled, NapariSamError


@dataclass(frozen=True)
class AutoParams:
    """Parameters of automatic segmentation (defaults are SAM's own).

    Attributes
    ----------
    points_per_side : int
        The prompt grid is ``points_per_side`` squared points per crop.
    points_per_batch : int
        Prompts decoded at once (memory vs speed).
    pred_iou_thresh : float
        Keep masks whose predicted IoU is at least this.
    stability_score_thresh : float
        Keep masks that barely change when the logit threshold moves by
        ``stability_score_offset``.
    stability_score_offset : float
    box_nms_thresh : float
        Box IoU above which duplicate masks are suppressed.
    crop_n_layers : int
        Extra layers of zoomed-in crops (helps small objects in large images; each layer costs
        4**n more embeddings).
    crop_nms_thresh : float
    crop_overlap_ratio : float
    crop_n_points_downscale_factor : int
    min_mask_region_area : int
        SAM's own hole/island clean-up (pixels); 0 disables it.
    min_size : int
        Objects with fewer visible pixels than this are dropped from the label image.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    min_size: int = 0

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SamAutomaticMaskGenerator``."""
        kw = asdict(self)
        kw.pop("min_size")
        return kw

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise NapariSamError("points_per_side and points_per_batch must be at least 1")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise NapariSamError(f"{name} must be between 0 and 1")
        if self.crop_n_layers < 0 or self.min_size < 0:
            raise NapariSamError("crop_n_layers and min_size must not be negative")


@dataclass
class AutoSegmentation:
    """Result of automatic segmentation.

    Attributes
    ----------
    labels : ndarray
        int32 (H, W) instance labels 1..N without overlaps, 0 is background.
    table : dict of str to ndarray
        One row per label: ``label``, ``area`` (visible pixels), ``bbox_y0``, ``bbox_x0``,
        ``bbox_y1``, ``bbox_x1`` (inclusive-exclusive), ``predicted_iou``, ``stability_score``.
    params : AutoParams
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    params: AutoParams = field(default_factory=AutoParams)

    @property
    def n_objects(self) -> int:
        """Number of objects in :attr:`labels`."""
        return len(self.table["label"])


def masks_to_labels(
    masks: list[np.ndarray],
    shape: tuple[int, int],
    *,
    predicted_iou: np.ndarray | None = None,
    stability_score: np.ndarray | None = None,
    min_size: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Overlapping boolean masks -> a non-overlapping int32 label image and its table.

    Larger masks are painted first so that smaller ones stay on top: where SAM returns a cell
    and its nucleus, both survive. Objects left with fewer than ``min_size`` visible pixels
    are dropped; labels are numbered 1..N from the largest object.

    Parameters
    ----------
    masks : list of ndarray
        Boolean (H, W) masks.
    shape : tuple of int
        (H, W) of the output.
    predicted_iou, stability_score : ndarray, optional
        Per-mask scores copied into the table (NaN when absent).
    min_size : int
        Minimum visible area in pixels.

    Returns
    -------
    labels : ndarray
    table : dict of str to ndarray
    """
    n = len(masks)
    piou = np.full(n, np.nan) if predicted_iou is None else np.asarray(predicted_iou, float)
    stab = np.full(n, np.nan) if stability_score is None else np.asarray(stability_score, float)
    areas = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    ranks = [r for r in range(1, n + 1) if areas[order[r - 1]] >= max(min_size, 1)]
    while True:
        # Paint large first; repaint without objects that ended up (almost) hidden, so that
        # dropping a small object uncovers the object underneath instead of leaving a hole.
        painted = np.zeros(shape, np.int32)
        for rank in ranks:
            painted[masks[order[rank - 1]]] = rank
        visible = np.bincount(painted.ravel(), minlength=n + 1)
        keep = [r for r in ranks if visible[r] > 0 and visible[r] >= min_size]
        if len(keep) == len(ranks):
            break
        ranks = keep
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    labels = lut[painted]

    from scipy import ndimage as ndi

    slices = ndi.find_objects(labels, max_label=len(keep))
    src = order[np.asarray(keep, dtype=np.int64) - 1] if keep else np.zeros(0, np.int64)
    table = {
        "label": np.arange(1, len(keep) + 1, dtype=np.int32),
        "area": visible[np.asarray(keep, dtype=np.int64)].astype(np.int64),
        "bbox_y0": np.array([s[0].start for s in slices], np.int64),
        "bbox_x0": np.array([s[1].start for s in slices], np.int64),
        "bbox_y1": np.array([s[0].stop for s in slices], np.int64),
        "bbox_x1": np.array([s[1].stop for s in slices], np.int64),
        "predicted_iou": piou[src].astype(np.float32),
        "stability_score": stab[src].astype(np.float32),
    }
    return labels, table


def _make_generator(
    engine: SamEngine,
    params: AutoParams,
    progress: ProgressCallback | None,
    cancel: CancelCheck | None,
) -> Any:
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    class EnginePredictor(SamPredictor):
        """SamPredictor whose image embeddings come from the engine's cache."""

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            emb = engine.embed(np.ascontiguousarray(image), cancel=cancel)
            self.reset_image()
            self.features = emb.features
            self.original_size = emb.original_size
            self.input_size = emb.input_size
            self.is_image_set = True
            gen.step()

    class Generator(SamAutomaticMaskGenerator):
        """Adds progress and cancellation between batches of prompts."""

        done = 0
        total = 1

        def step(self) -> None:
            self.done += 1
            if progress is not None:
                progress(min(self.done, self.total), self.total)

        def _process_batch(self, *args: Any, **kwargs: Any) -> Any:
            if cancel is not None and cancel():
                raise Cancelled("automatic segmentation cancelled")
            out = super()._process_batch(*args, **kwargs)
            self.step()
            return out

    gen = Generator(engine.model.sam, **params.generator_kwargs())
    gen.predictor = EnginePredictor(engine.model.sam)
    return gen


def segment_automatically(
    engine: SamEngine,
    rgb: np.ndarray,
    params: AutoParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> AutoSegmentation:
    """Segment every object in a prepared image.

    Parameters
    ----------
    engine : SamEngine
        The model (and its embedding cache).
    rgb : ndarray
        uint8 (H, W, 3) from :func:`napari_sam.core.normalize.prepare_image`.
    params : AutoParams, optional
        SAM's defaults when omitted.
    progress : callable, optional
        ``progress(done, total)`` over embeddings (one per crop) and prompt batches.
    cancel : callable, optional
        Polled between steps; :class:`~napari_sam.core.errors.Cancelled` is raised when it
        returns True.

    Returns
    -------
    AutoSegmentation
    """
    from segment_anything.utils.amg import generate_crop_boxes

    from .embedding import check_rgb

    check_rgb(rgb)
    params = params or AutoParams()
    gen = _make_generator(engine, params, progress, cancel)
    crop_boxes, layer_idxs = generate_crop_boxes(
        rgb.shape[:2], params.crop_n_layers, params.crop_overlap_ratio
    )
    gen.total = len(crop_boxes) + sum(
        math.ceil(len(gen.point_grids[i]) / params.points_per_batch) for i in layer_idxs
    )
    if cancel is not None and cancel():
        raise Cancelled("automatic segmentation cancelled")
    records = gen.generate(rgb)
    labels, table = masks_to_labels(
        [r["segmentation"] for r in records],
        rgb.shape[:2],
        predicted_iou=np.array([r["predicted_iou"] for r in records]),
        stability_score=np.array([r["stability_score"] for r in records]),
        min_size=params.min_size,
    )
    return AutoSegmentation(labels=labels, table=table, params=params)
