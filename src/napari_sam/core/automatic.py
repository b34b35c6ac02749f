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

from .embedding import CancelCheck, ImageEmbedding, ProgressCallback
from .engine import SamEngine
from .errors import Cancelled, NapariSamError
from .region_mask import RegionMask


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
    masks : list of ndarray or RegionMask
        Boolean (H, W) masks, or :class:`RegionMask` (a mask given inside its box).
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
    regions = [m if isinstance(m, RegionMask) else RegionMask(0, 0, m) for m in masks]
    areas = np.array([int(r.mask.sum()) for r in regions], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    ranks = [r for r in range(1, n + 1) if areas[order[r - 1]] >= max(min_size, 1)]
    while True:
        # Paint large first; repaint without objects that ended up (almost) hidden, so that
        # dropping a small object uncovers the object underneath instead of leaving a hole.
        painted = np.zeros(shape, np.int32)
        for rank in ranks:
            regions[order[rank - 1]].paint(painted, rank)
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


def _fast_batch(
    gen: Any, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple
) -> Any:
    """``SamAutomaticMaskGenerator._process_batch`` with the same results, computed sparingly.

    The official batch upsamples every candidate mask to the full crop in float32, then
    filters by predicted IoU, computes the stability score on the full masks and run-length
    encodes them. Here the predicted IoU filter comes first (it needs no mask), and each
    surviving candidate is upsampled only inside the box where its logits can exceed the
    lower stability threshold (:func:`~napari_sam.core.engine.upsample_region`; outside it
    they cannot, so the counts are the same). Masks stay as :class:`RegionMask`.
    """
    import torch
    from segment_anything.utils.amg import MaskData, is_box_near_crop_edge

    from .engine import upsample_region

    predictor = gen.predictor
    sam = predictor.model
    orig_h, orig_w = orig_size
    thr, offset = sam.mask_threshold, gen.stability_score_offset
    coords = predictor.transform.apply_coords(points, im_size)
    in_points = torch.as_tensor(coords, dtype=torch.float32, device=predictor.device)
    in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
    prompts = (in_points[:, None, :], in_labels[:, None])
    low_res, iou_preds, rows = _decode_filtered(
        sam, predictor.features, prompts, gen.pred_iou_thresh
    )
    n_cand = iou_preds.shape[1]
    iou_preds = iou_preds.flatten(0, 1).float().cpu()
    all_points = torch.as_tensor(points.repeat(n_cand, axis=0))
    keep = (
        torch.nonzero(iou_preds > gen.pred_iou_thresh)[:, 0]
        if gen.pred_iou_thresh > 0.0
        else torch.arange(len(iou_preds))
    )

    geometry = predictor  # has input_size and original_size (the crop's)
    inter, union, found = [], [], []
    for i in keep.tolist():
        logit_map = low_res[rows[i // n_cand], i % n_cand]
        region = upsample_region(logit_map, geometry, thr - offset, sam.image_encoder.img_size)
        if region is None:
            inter.append(0)
            union.append(0)
            found.append(None)
            continue
        logits, (y0, _, x0, _) = region
        inter.append(int((logits > thr + offset).sum()))
        union.append(int((logits > thr - offset).sum()))
        found.append((logits, y0, x0))
    # int32 / int32 -> float32, as calculate_stability_score does it.
    stability = torch.tensor(inter, dtype=torch.int32) / torch.tensor(union, dtype=torch.int32)
    if gen.stability_score_thresh > 0.0:
        passed = (stability >= gen.stability_score_thresh).nonzero()[:, 0].tolist()
    else:
        passed = list(range(len(found)))

    regions, boxes = [], []
    for j in passed:
        if found[j] is None:
            mask, y0, x0 = np.zeros((0, 0), bool), 0, 0
        else:
            logits, y0, x0 = found[j]
            mask = (logits > thr).cpu().numpy()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            # Trim to the mask's own box: less to keep and to paint later.
            mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            y0, x0 = y0 + int(rows[0]), x0 + int(cols[0])
            boxes.append([x0, y0, x0 + mask.shape[1] - 1, y0 + mask.shape[0] - 1])
        else:
            boxes.append([0, 0, 0, 0])
        regions.append(RegionMask(y0 + crop_box[1], x0 + crop_box[0], mask))

    sel = keep[torch.as_tensor(passed, dtype=torch.long)]
    data = MaskData(
        rles=regions,  # the key the official code expects; RegionMask instead of RLE
        iou_preds=iou_preds[sel],
        points=all_points[sel],
        stability_score=stability[torch.as_tensor(passed, dtype=torch.long)],
        boxes=torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4),
    )
    near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
    if torch.any(near_edge):
        data.filter(~near_edge)
    return data


def _decode_filtered(
    sam: Any, features: Any, prompts: tuple[Any, Any], iou_thresh: float
) -> tuple[Any, Any, dict[int, int]]:
    """Decode multimask prompts; low-resolution masks only of prompts with a candidate kept.

    Returns the low-resolution logits (P', 3, 256, 256) of the prompts that have a
    candidate with predicted IoU above ``iou_thresh``, all predicted IoUs (P, 3), and the map
    prompt index -> row of the logits. SAM drops the other candidates before looking at
    their masks, so they are not made (with the fast modules; otherwise all are made).
    """
    import torch

    from ._fast_modules import FastMaskDecoder
    from .engine import decode

    decoder = sam.mask_decoder
    if not isinstance(decoder, FastMaskDecoder) or features.shape[0] != 1:
        low_res, iou = decode(sam, features, points=prompts)
        return low_res, iou, {i: i for i in range(len(low_res))}
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=prompts, boxes=None, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        hs, src = decoder.run_transformer(features, pe, sparse, dense)
        iou = decoder.predict_iou(hs)[:, 1:]
        wanted = torch.arange(len(iou))
        if iou_thresh > 0.0:
            wanted = torch.nonzero((iou > iou_thresh).any(1))[:, 0]
        if len(wanted) == 0:
            low_res = iou.new_empty(0, iou.shape[1], 0, 0)
        else:
            src = src if src.shape[0] == 1 else src[wanted]
            size = features.shape[-2:]
            low_res = decoder.predict_low_res(hs[wanted], src, size, slice(1, None))
    return low_res, iou, {int(p): r for r, p in enumerate(wanted.tolist())}


def _fast_generate(gen: Any, image: np.ndarray) -> list[dict[str, Any]]:
    """``SamAutomaticMaskGenerator.generate`` for :func:`_fast_batch` results.

    Records hold a :class:`RegionMask` as ``segmentation``.
    """
    import torch
    from segment_anything.utils.amg import box_xyxy_to_xywh, mask_to_rle_pytorch, rle_to_mask

    shape = image.shape[:2]
    with torch.inference_mode():
        data = gen._generate_masks(image)
    if gen.min_mask_region_area > 0 and len(data["rles"]):
        # Rare path (SAM's hole / island clean-up): through RLEs of full masks, as SAM does.
        data["rles"] = mask_to_rle_pytorch(
            torch.as_tensor(np.stack([r.full(shape) for r in data["rles"]]))
        )
        data = gen.postprocess_small_regions(
            data, gen.min_mask_region_area, max(gen.box_nms_thresh, gen.crop_nms_thresh)
        )
        data["rles"] = [RegionMask(0, 0, rle_to_mask(rle)) for rle in data["rles"]]
    records = []
    for i, region in enumerate(data["rles"]):
        records.append(
            {
                "segmentation": region,
                "area": int(region.mask.sum()),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
        )
    return records


def _make_generator(
    engine: SamEngine,
    params: AutoParams,
    progress: ProgressCallback | None,
    cancel: CancelCheck | None,
    fast: bool = False,
    embedding: ImageEmbedding | None = None,
) -> Any:
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    class EnginePredictor(SamPredictor):
        """SamPredictor whose image embeddings come from the engine's cache.

        ``embedding``, when given, is that of the whole image (crop layer 0, the only crop
        of the image's size), e.g. a tile's read from an embedding store.
        """

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            if embedding is not None and image.shape[:2] == embedding.original_size:
                emb = embedding
            else:
                emb = engine.embed(np.ascontiguousarray(image), cancel=cancel)
            self.reset_image()
            self.features = emb.features
            self.original_size = emb.original_size
            self.input_size = emb.input_size
            self.is_image_set = True
            gen.step()

    class Generator(SamAutomaticMaskGenerator):
        """Adds progress and cancellation between batches of prompts (and the fast path)."""

        done = 0
        total = 1

        def step(self) -> None:
            self.done += 1
            if progress is not None:
                progress(min(self.done, self.total), self.total)

        def _process_batch(self, *args: Any, **kwargs: Any) -> Any:
            if cancel is not None and cancel():
                raise Cancelled("automatic segmentation cancelled")
            if fast:
                out = _fast_batch(self, *args, **kwargs)
            else:
                out = super()._process_batch(*args, **kwargs)
            self.step()
            return out

        def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
            return _fast_generate(self, image) if fast else super().generate(image)

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
    fast: bool | None = None,
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
    fast : bool, optional
        Post-process the candidate masks only where they can be (same masks as SAM's own
        generator, which is used when False). Default: ``engine.model.fast``.

    Returns
    -------
    AutoSegmentation
    """
    from .embedding import check_rgb

    check_rgb(rgb)
    params = params or AutoParams()
    records = generate_records(engine, rgb, params, progress=progress, cancel=cancel, fast=fast)
    labels, table = masks_to_labels(
        [r["segmentation"] for r in records],
        rgb.shape[:2],
        predicted_iou=np.array([r["predicted_iou"] for r in records]),
        stability_score=np.array([r["stability_score"] for r in records]),
        min_size=params.min_size,
    )
    return AutoSegmentation(labels=labels, table=table, params=params)


def count_steps(shape: tuple[int, int], params: AutoParams) -> int:
    """Progress steps of one image: an embedding per crop and a step per batch of prompts."""
    from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    crop_boxes, layer_idxs = generate_crop_boxes(
        shape, params.crop_n_layers, params.crop_overlap_ratio
    )
    grids = build_all_layer_point_grids(
        params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
    )
    return len(crop_boxes) + sum(
        math.ceil(len(grids[i]) / params.points_per_batch) for i in layer_idxs
    )


def generate_records(
    engine: SamEngine,
    rgb: np.ndarray,
    params: AutoParams,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    fast: bool | None = None,
    embedding: ImageEmbedding | None = None,
) -> list[dict[str, Any]]:
    """SAM's mask records of a prepared image, before they become labels.

    Each record is SAM's (``segmentation``, ``predicted_iou``, ``stability_score``, ...);
    ``segmentation`` is a :class:`RegionMask` on the fast path, else a boolean (H, W) array.
    ``embedding``: the image's embedding when the caller has it (else the engine's).
    Arguments otherwise as :func:`segment_automatically`.
    """
    if fast is None:
        fast = engine.model.fast
    gen = _make_generator(engine, params, progress, cancel, fast=fast, embedding=embedding)
    gen.total = count_steps(rgb.shape[:2], params)
    if cancel is not None and cancel():
        raise Cancelled("automatic segmentation cancelled")
    return gen.generate(rgb)
