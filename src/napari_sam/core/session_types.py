"""The parts of a session record: image identity, model, plane, commits and automatic runs.

Frozen dataclasses made from plain values (and :func:`image_sha256`), shared by
:mod:`napari_sam.core.session_record` (the :class:`~napari_sam.core.session_record.SessionRecord`
that holds them, with save and load) and :mod:`napari_sam.core.session_json` (their JSON form).
Import them from :mod:`napari_sam.core.session_record`, which re-exports them.

Nothing here imports torch: records are built from plain values and a loaded model's
attributes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NapariSamError, SessionError
from .lazy_arrays import chunk_shape
from .mask_prompts import StartMask
from .mask_rle import encode_mask
from .normalize import Normalization
from .prompts import Prompts

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import LoadedModel

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "AutoRunRecord",
    "CallRecord",
    "CommitRecord",
    "Entry",
    "ImageIdentity",
    "ModelRecord",
    "ObjectRecord",
    "PlaneRecord",
    "StepRecord",
    "image_sha256",
    "utc_now",
]

#: Value of the ``format`` key of every session file.
FORMAT = "napari-sam-session"
#: Schema version written; files of a higher version are refused with a clear message.
#: Version 2 adds refinement chains, start masks and label edits; a record that uses none of
#: them is still written as version 1 (see ``session_json.record_version``).
SCHEMA_VERSION = 2

_HASH_CHUNK = 64 << 20  # bytes hashed at a time, so that huge or lazy images stay cheap


def utc_now() -> str:
    """The current time as ISO 8601 text in UTC, to the second (``2024-05-01T12:00:00Z``)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------
# Image identity
# ------------------------------------------------------------------------------------------


def image_sha256(data: Any) -> str:
    """SHA-256 of an image's pixel values, independent of how it is stored.

    The hash covers ``repr((shape, dtype name))`` followed by the values in C order as
    little-endian bytes, so the same pixels give the same hash whatever the file format,
    byte order or memory layout. NumPy, dask and zarr arrays work; large or lazy arrays are
    read in bands of whole chunks of at most about 64 MiB (:func:`_bands`).

    Parameters
    ----------
    data : array-like
        The image (all of it: every plane, and the RGB axis if any).

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    h = hashlib.sha256(repr((shape, dtype.name)).encode())
    little = dtype.newbyteorder("<")

    def feed(block: Any) -> None:
        arr = np.asarray(block)
        if arr.ndim > 1 and arr.nbytes > _HASH_CHUNK:
            for sub in arr:
                feed(sub)
            return
        h.update(np.ascontiguousarray(arr, dtype=little).data)

    if isinstance(data, np.ndarray) and data.nbytes <= _HASH_CHUNK:
        feed(data)
    else:
        for key in _bands(shape, dtype.itemsize, chunk_shape(data), _HASH_CHUNK):
            feed(data[key])
    return h.hexdigest()


def _bands(
    shape: tuple[int, ...], itemsize: int, chunks: tuple[int, ...] | None, limit: int
) -> Iterator[tuple[int | slice, ...]]:
    """Indices covering an array in C order, each of about ``limit`` bytes at most.

    The first axis whose trailing slices fit ``limit`` is cut into bands of whole chunks
    (one row of a 20,000 px zarr slide would decompress a row of chunks for a few KiB: a
    band of 1024 rows reads each chunk once); the axes before it are taken one index at a
    time. Concatenated, the bands are the array's values in C order.
    """
    axis = 0
    while axis < len(shape) - 1 and math.prod(shape[axis + 1 :]) * itemsize > limit:
        axis += 1
    per = max(1, math.prod(shape[axis + 1 :]) * itemsize)
    step = max(1, limit // per)
    if chunks is not None and len(chunks) == len(shape) and chunks[axis] > 0:
        step = max(chunks[axis], step // chunks[axis] * chunks[axis])
    for lead in np.ndindex(*shape[:axis]):
        for a in range(0, shape[axis], step):
            yield (*lead, slice(a, min(a + step, shape[axis])))


@dataclass(frozen=True)
class ImageIdentity:
    """Which image a session belongs to.

    Attributes
    ----------
    sha256 : str
        :func:`image_sha256` of the full image data.
    shape : tuple of int
        Shape of the data, RGB(A) axis included.
    dtype : str
        NumPy dtype name, e.g. ``"uint16"``.
    rgb : bool
        Whether the last axis holds RGB(A) colours (napari's ``layer.rgb``).
    source : str or None
        The file it was opened from, when known (informative: replay checks the hash).
    """

    sha256: str
    shape: tuple[int, ...]
    dtype: str
    rgb: bool = False
    source: str | None = None

    @classmethod
    def from_array(
        cls, data: Any, *, rgb: bool = False, source: str | os.PathLike[str] | None = None
    ) -> ImageIdentity:
        """Identify ``data`` (hashing all of it: about a second per GB)."""
        return cls(
            sha256=image_sha256(data),
            shape=tuple(int(s) for s in data.shape),
            dtype=np.dtype(data.dtype).name,
            rgb=bool(rgb),
            source=None if source is None else str(source),
        )

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of the labels of this image: its shape without the RGB(A) axis."""
        return self.shape[:-1] if self.rgb else self.shape

    def describe(self) -> str:
        """E.g. ``"uint16 (3, 512, 512), sha256 1a2b3c4d…"``."""
        return f"{self.dtype} {self.shape}, sha256 {self.sha256[:12]}…"


# ------------------------------------------------------------------------------------------
# Model, plane, masks
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """The model that produced a result, with what it takes to load it again.

    Attributes
    ----------
    name : str
        Registry name (``"vit_b"``, ``"tiny"``, ...), ``"custom"`` or ``"random:<arch>"``.
    checkpoint_sha256 : str or None
        SHA-256 of the checkpoint file (None for random weights).
    checkpoint : str or None
        Path of the checkpoint file when it was loaded (informative).
    model_id : str
        :attr:`napari_sam.core.checkpoints.LoadedModel.model_id`.
    precision : str
        Encoder precision used: ``"fp32"``, ``"bf16"``, ``"fp16"`` or a per-operation plan
        (``PrecisionPlan.name``, e.g. ``"linear=bf16,attention=fp32,neck=fp32"``).
    fast : bool
        Whether napari-sam's fast modules ran (same masks as the official ones to rounding).
    device : str
        Device it ran on, e.g. ``"cpu"`` or ``"cuda"``.
    architecture : dict
        :meth:`~napari_sam.core.architecture.SamArchitecture.to_dict`.
    random_seed : int or None
        Seed of random weights (``random:`` models only).
    """

    name: str
    checkpoint_sha256: str | None
    checkpoint: str | None
    model_id: str
    precision: str
    fast: bool
    device: str
    architecture: Mapping[str, Any] = field(default_factory=dict)
    random_seed: int | None = None

    @classmethod
    def from_model(cls, model: LoadedModel) -> ModelRecord:
        """Describe a loaded model (e.g. ``engine.model``)."""
        seed = model.meta.get("random_seed") if model.checkpoint is None else None
        return cls(
            name=model.name,
            checkpoint_sha256=model.sha256,
            checkpoint=None if model.checkpoint is None else str(model.checkpoint),
            model_id=model.model_id,
            precision=model.precision,
            fast=bool(model.fast),
            device=str(model.device),
            architecture=model.architecture.to_dict(),
            random_seed=None if seed is None else int(seed),
        )

    def key(self) -> str:
        """A hashable identity of every field (records hold a dict, so are not hashable)."""
        return json.dumps(
            [
                self.name,
                self.checkpoint_sha256,
                self.checkpoint,
                self.precision,
                self.fast,
                self.device,
                self.random_seed,
                self.architecture,
            ],
            sort_keys=True,
            default=str,
        )

    def describe(self) -> str:
        """E.g. ``"vit_b (sha256 ec2df627…, fp32, cpu)"``."""
        sha = f"sha256 {self.checkpoint_sha256[:8]}…, " if self.checkpoint_sha256 else ""
        return f"{self.name} ({sha}{self.precision}, {self.device})"


@dataclass(frozen=True)
class PlaneRecord:
    """A 2D plane of an nD image: the displayed axes and the index along every other axis.

    The same description as :class:`napari_sam._layers.Plane` without its shape
    (:meth:`from_plane` converts one).

    Attributes
    ----------
    axes : (int, int)
        Data axes shown as rows and as columns (in that order).
    index : tuple of (int or None)
        For every spatial axis of the image (not the RGB axis), the plane's index along it;
        None for the two displayed axes.
    """

    axes: tuple[int, int]
    index: tuple[int | None, ...]

    @classmethod
    def from_plane(cls, plane: Any) -> PlaneRecord:
        """From anything with ``axes`` and ``index`` (e.g. a ``_layers.Plane``)."""
        return cls(
            axes=(int(plane.axes[0]), int(plane.axes[1])),
            index=tuple(None if i is None else int(i) for i in plane.index),
        )

    def check(self, labels_shape: Sequence[int]) -> None:
        """Raise SessionError unless the plane exists in labels of ``labels_shape``."""
        a, b = self.axes
        ok = len(self.index) == len(labels_shape) and a != b
        ok = ok and all(
            (i is None) == (axis in (a, b)) and (i is None or 0 <= i < n)
            for axis, (i, n) in enumerate(zip(self.index, labels_shape, strict=False))
        )
        if not ok:
            raise SessionError(
                f"plane {self.describe() or 'of a 2D image'} (axes {list(self.axes)}, index "
                f"{list(self.index)}) does not exist in an image of shape {tuple(labels_shape)}"
            )

    def _slicer(self) -> tuple[int | slice, ...]:
        return tuple(slice(None) if i is None else i for i in self.index)

    def take(self, data: Any) -> np.ndarray:
        """The plane of ``data`` as (H, W) or (H, W, C) (trailing RGB axes kept)."""
        arr = np.asarray(data[self._slicer()])
        return np.swapaxes(arr, 0, 1) if self.axes[0] > self.axes[1] else arr

    def view(self, full: np.ndarray) -> np.ndarray:
        """A writable (H, W) view of the plane of the NumPy array ``full``."""
        v = full[self._slicer()]
        return v.T if self.axes[0] > self.axes[1] else v

    def describe(self) -> str:
        """E.g. ``"axis 0=3"`` (empty for a 2D image)."""
        return ", ".join(f"axis {a}={i}" for a, i in enumerate(self.index) if i is not None)


# ------------------------------------------------------------------------------------------
# Entries
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRecord:
    """One object of a commit: the candidate chosen, what it looked like, what was written.

    Attributes
    ----------
    source : str
        Which prompt(s) asked for it, e.g. ``"box 2"`` or ``"points"``.
    candidate : int
        Index of SAM's candidate that was committed.
    predicted_iou : float
        SAM's predicted IoU of that candidate.
    label : int or None
        Label id written; None when the object had no visible pixel left (not written).
    pixels : int
        Pixels written with ``label``.
    mask : str
        The candidate mask on the plane (before overlaps were resolved), as
        :func:`~napari_sam.core.mask_rle.encode_mask` text.
    area : int
        Pixels in ``mask``.
    """

    source: str
    candidate: int
    predicted_iou: float
    label: int | None
    pixels: int
    mask: str
    area: int


@dataclass(frozen=True)
class StepRecord:
    """An earlier prediction of a refinement chain: its prompts and the candidates kept.

    Its chosen candidates' low-resolution logits were the mask prompt of the next step.
    """

    prompts: Prompts
    candidates: tuple[int, ...]


@dataclass(frozen=True)
class CallRecord:
    """One SAM call of a commit: its prompts and the objects it asked for.

    A call with B boxes asks for B objects (its points shared by all); otherwise one.

    Attributes
    ----------
    prompts : Prompts
    objects : tuple of ObjectRecord
    steps : tuple of StepRecord
        The earlier predictions this call refined, oldest first (empty: it was predicted
        from its prompts, and ``start``, alone). Replay re-runs them to get its mask prompt.
    start : StartMask or None
        The mask prompt of the chain's first prediction: a drawn shape or an edited label.
    """

    prompts: Prompts
    objects: tuple[ObjectRecord, ...]
    steps: tuple[StepRecord, ...] = ()
    start: StartMask | None = None


@dataclass(frozen=True)
class CommitRecord:
    """Objects written into a labels layer at once (one undo step in napari).

    Attributes
    ----------
    target : str
        Name of the labels layer written to.
    plane : PlaneRecord
    overwrite : bool
        Whether the objects replaced existing labels.
    model : ModelRecord
    normalization : Normalization
        Settings that made SAM's input from the plane.
    calls : tuple of CallRecord
        The SAM calls, in the order their objects were previewed.
    time : str
        When it was committed (ISO 8601, UTC).
    edit : int or None
        The label id this commit edited (one object, written with
        :func:`~napari_sam.core.commits.write_edit`); None: new labels.
    """

    target: str
    plane: PlaneRecord
    overwrite: bool
    model: ModelRecord
    normalization: Normalization
    calls: tuple[CallRecord, ...]
    time: str = field(default_factory=utc_now)
    edit: int | None = None

    kind = "commit"

    @property
    def objects(self) -> list[ObjectRecord]:
        """All objects, in preview order (the order of the masks the commit wrote)."""
        return [o for c in self.calls for o in c.objects]

    @classmethod
    def build(
        cls,
        *,
        target: str,
        plane: Any,
        overwrite: bool,
        model: ModelRecord,
        normalization: Normalization,
        prompts: Sequence[Prompts],
        masks: Sequence[np.ndarray],
        candidates: Sequence[int],
        scores: Sequence[float],
        sources: Sequence[str],
        labels: Sequence[int | None],
        pixels: Sequence[int],
        steps: Sequence[Sequence[StepRecord]] | None = None,
        starts: Sequence[StartMask | None] | None = None,
        edit: int | None = None,
    ) -> CommitRecord:
        """Record a commit from what the widget has at hand.

        ``prompts`` holds one :class:`~napari_sam.core.prompts.Prompts` per SAM call (e.g.
        ``[o.prompts for o in build_objects(...)]``), and so do ``steps`` and ``starts``
        when given (each call's refinement chain and start mask); the other sequences hold
        one value per object, flattened over the calls in order (as ``Preview.masks()``
        does). ``edit``: the label id an edit replaced (one object).
        """
        steps = [()] * len(prompts) if steps is None else list(steps)
        starts = [None] * len(prompts) if starts is None else list(starts)
        if not len(steps) == len(starts) == len(prompts):
            raise NapariSamError(
                f"{len(steps)} chains and {len(starts)} start masks for {len(prompts)} calls"
            )
        n = sum(p.n_objects for p in prompts)
        per_object = (masks, candidates, scores, sources, labels, pixels)
        if any(len(s) != n for s in per_object):
            raise NapariSamError(
                f"a commit of {len(prompts)} SAM call(s) asks for {n} objects, but got "
                f"{[len(s) for s in per_object]} masks/candidates/scores/sources/labels/pixels"
            )
        objects = [
            ObjectRecord(
                source=str(src),
                candidate=int(k),
                predicted_iou=float(s),
                label=None if lab is None else int(lab),
                pixels=int(px),
                mask=encode_mask(m),
                area=int(np.count_nonzero(m)),
            )
            for m, k, s, src, lab, px in zip(*per_object, strict=True)
        ]
        if edit is not None and n != 1:
            raise NapariSamError(f"an edit of label {edit} has one object, not {n}")
        calls, first = [], 0
        for p, chain, start in zip(prompts, steps, starts, strict=True):
            mine = tuple(objects[first : first + p.n_objects])
            calls.append(CallRecord(p, mine, tuple(chain), start))
            first += p.n_objects
        return cls(
            target=str(target),
            plane=PlaneRecord.from_plane(plane),
            overwrite=bool(overwrite),
            model=model,
            normalization=normalization,
            calls=tuple(calls),
            edit=None if edit is None else int(edit),
        )


@dataclass(frozen=True)
class AutoRunRecord:
    """One automatic segmentation of a plane into a new labels layer.

    Attributes
    ----------
    target : str
        Name of the labels layer it created (the rest of the layer is 0).
    plane, model, normalization
        As in :class:`CommitRecord`.
    params : dict
        :class:`~napari_sam.core.automatic.AutoParams` fields.
    n_objects : int
        Objects found.
    labels_sha256 : str
        :func:`image_sha256` of the (H, W) int32 label plane it produced.
    time : str
    """

    target: str
    plane: PlaneRecord
    model: ModelRecord
    normalization: Normalization
    params: Mapping[str, Any]
    n_objects: int
    labels_sha256: str
    time: str = field(default_factory=utc_now)

    kind = "auto"

    @classmethod
    def build(
        cls,
        *,
        target: str,
        plane: Any,
        model: ModelRecord,
        normalization: Normalization,
        params: Any,
        labels: np.ndarray,
    ) -> AutoRunRecord:
        """Record a run from its AutoParams and its (H, W) label plane."""
        plane_labels = np.asarray(labels, np.int32)
        return cls(
            target=str(target),
            plane=PlaneRecord.from_plane(plane),
            model=model,
            normalization=normalization,
            params={k: getattr(params, k) for k in params.__dataclass_fields__},
            n_objects=len(np.setdiff1d(np.unique(plane_labels), [0])),
            labels_sha256=image_sha256(plane_labels),
        )


Entry = CommitRecord | AutoRunRecord
