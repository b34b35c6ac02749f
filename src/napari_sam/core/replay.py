"""Replay a session: re-run SAM on every recorded prompt and recreate the labels.

Each commit is replayed with its recorded model, precision, normalisation, plane, prompts,
candidate, label ids and overwrite setting, into a label array that starts empty. With the
same model, precision and machine the labels are bit-identical (the same computation runs);
otherwise every object is compared with the mask stored in the session (identical, or its
IoU). Automatic segmentation runs are replayed too and compared by the hash of their labels.
A call that refined earlier predictions re-runs its recorded chain (its start mask, then each
step with the previous step's chosen logits as the mask prompt), and an edit of a label
replaces that label only (:func:`~napari_sam.core.commits.write_edit`), as in the widget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .commits import write_commit, write_edit
from .errors import DeviceError, NapariSamError, SessionError
from .mask_rle import decode_mask
from .prompts import make_prompts
from .session_record import (
    AutoRunRecord,
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    SessionRecord,
    image_sha256,
)

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import ImageEmbedding
    from .engine import SamEngine
    from .session_record import CallRecord

__all__ = [
    "AutoReplay",
    "ObjectReplay",
    "ReplayInputError",
    "ReplayResult",
    "check_image",
    "load_recorded_engine",
    "recorded_labels",
    "replay_session",
]

#: Returns the engine to replay entries recorded with a model (see :func:`replay_session`).
EngineFor = Callable[[ModelRecord], "SamEngine"]


class ReplayInputError(SessionError):
    """Replay needs another input from the user; ``needs`` says which.

    ``"other_image"``: the original image, or permission to use one that differs;
    ``"checkpoint"``: the checkpoint file of a custom model; ``"target"``: which labels
    layer to recreate. The CLI prints :attr:`cli_hint`, the widget :meth:`for_gui`.
    """

    def __init__(self, message: str, needs: str, *, cli_hint: str, gui_hint: str) -> None:
        super().__init__(message, cli_hint=cli_hint, gui_hint=gui_hint)
        self.needs = needs


@dataclass(frozen=True)
class ObjectReplay:
    """How one committed object came out when replayed.

    Attributes
    ----------
    entry : int
        1-based position of its commit among the session's entries.
    label : int or None
        Label id recorded (and written again).
    source : str
        Which prompt asked for it, e.g. ``"box 1"``.
    plane : str
        Where, e.g. ``"axis 0=3"`` (empty for 2D images).
    identical : bool
        Whether the replayed mask equals the recorded one pixel for pixel.
    iou : float
        IoU of the replayed and the recorded mask (1.0 when identical).
    pixels_recorded, pixels_replayed : int
        Pixels written with ``label`` then and now.
    """

    entry: int
    label: int | None
    source: str
    plane: str
    identical: bool
    iou: float
    pixels_recorded: int
    pixels_replayed: int

    def describe(self) -> str:
        """One line, e.g. ``"entry 2, label 5 (box 1): IoU 0.962"``."""
        where = f", {self.plane}" if self.plane else ""
        what = "not written" if self.label is None else f"label {self.label}"
        head = f"entry {self.entry}, {what} ({self.source}{where})"
        if self.identical:
            text = f"{head}: identical"
        else:
            text = f"{head}: IoU {self.iou:.4f} with the recorded mask"
        if self.pixels_recorded != self.pixels_replayed:
            text += f" ({self.pixels_recorded} px written then, {self.pixels_replayed} now)"
        return text


@dataclass(frozen=True)
class AutoReplay:
    """How an automatic segmentation run came out when replayed."""

    entry: int
    target: str
    identical: bool
    n_objects_recorded: int
    n_objects_replayed: int

    def describe(self) -> str:
        """One line."""
        head = f"entry {self.entry}, automatic segmentation into {self.target!r}"
        if self.identical:
            return f"{head}: identical ({self.n_objects_replayed} objects)"
        return (
            f"{head}: differs ({self.n_objects_replayed} objects, "
            f"{self.n_objects_recorded} recorded)"
        )


@dataclass
class ReplayResult:
    """The recreated labels and how each object compares with the session.

    Attributes
    ----------
    labels : ndarray
        int32 labels of the image (its shape without the RGB axis).
    target : str
        The labels layer they recreate.
    objects : list of ObjectReplay
    auto_runs : list of AutoReplay
    notes : list of str
        What differs from the recorded setup (model file, precision, device, image).
    """

    labels: np.ndarray
    target: str
    objects: list[ObjectReplay] = field(default_factory=list)
    auto_runs: list[AutoReplay] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Whether every object and run came out exactly as recorded."""
        return all(
            o.identical and o.pixels_recorded == o.pixels_replayed for o in self.objects
        ) and all(a.identical for a in self.auto_runs)

    def summary(self) -> str:
        """One line, e.g. ``"12 objects: 11 identical, 1 differs (lowest IoU 0.93)"``."""
        n = len(self.objects)
        same = sum(o.identical for o in self.objects)
        text = f"{n} object{'s' * (n != 1)}: {same} identical"
        if same < n:
            low = min(o.iou for o in self.objects)
            text += f", {n - same} differ{'s' * (n - same == 1)} (lowest IoU {low:.4f})"
        moved = sum(o.pixels_recorded != o.pixels_replayed for o in self.objects)
        if moved:
            text += f"; {moved} with other pixel counts written"
        if self.auto_runs:
            auto_same = sum(a.identical for a in self.auto_runs)
            text += f"; {len(self.auto_runs)} automatic run(s): {auto_same} identical"
        return text


def check_image(record: SessionRecord, image: Any, *, allow_other: bool = False) -> list[str]:
    """Check that ``image`` is the session's image; return notes (empty when it is).

    Raises
    ------
    SessionError
        When its shape differs (the planes would not exist), or its content differs and
        ``allow_other`` is False.
    """
    want = record.image
    got = ImageIdentity.from_array(image, rgb=want.rgb)
    if got.shape != want.shape:
        raise SessionError(
            f"the image has shape {got.shape} but the session was recorded on shape "
            f"{want.shape}: it is another image"
        )
    if got.sha256 == want.sha256:
        return []
    if not allow_other:
        raise ReplayInputError(
            f"the image ({got.describe()}) is not the session's image ({want.describe()})",
            "other_image",
            cli_hint="give the original with --image PATH, or pass --allow-other-image to "
            "replay on this one anyway",
            gui_hint="open the original image, or choose to replay on this one anyway",
        )
    return [f"replayed on another image ({got.describe()}) than recorded ({want.describe()})"]


def load_recorded_engine(
    rec: ModelRecord,
    *,
    device: str | None = None,
    precision: str | None = None,
    checkpoint: str | None = None,
    notes: list[str] | None = None,
) -> SamEngine:
    """Load the model an entry was recorded with (or the given replacement).

    Parameters
    ----------
    rec : ModelRecord
    device, precision : str, optional
        Default: as recorded (the recorded device falls back to ``"auto"``, with a note,
        when it is not available here).
    checkpoint : str, optional
        A checkpoint file to use instead of the recorded model.
    notes : list of str, optional
        Differences from the recorded model are appended here.

    Raises
    ------
    SessionError
        When a custom checkpoint is not where it was and none is given.
    """
    from .architecture import SamArchitecture
    from .checkpoints import load_model, random_model
    from .device import resolve_device
    from .engine import SamEngine
    from .registry import MODELS

    notes = notes if notes is not None else []
    if device is None:
        try:
            device = resolve_device(rec.device)
        except DeviceError:
            notes.append(f"recorded on {rec.device}, which is not available here")
            device = "auto"
    precision = precision or rec.precision
    if checkpoint is None and rec.name.startswith("random:"):
        try:
            arch = SamArchitecture.from_dict(rec.architecture)
        except (NapariSamError, TypeError) as e:
            raise SessionError(f"cannot rebuild the random model {rec.name}: {e}") from None
        model = random_model(
            arch, device=device, seed=rec.random_seed or 0, fast=rec.fast, precision=precision
        )
    elif checkpoint is None and rec.name in MODELS:
        model = load_model(rec.name, device=device, fast=rec.fast, precision=precision)
    else:
        path = checkpoint or rec.checkpoint
        if checkpoint is None and (path is None or not _is_file(path)):
            raise ReplayInputError(
                f"the session used the checkpoint {path} (sha256 {rec.checkpoint_sha256}), "
                "which is not there",
                "checkpoint",
                cli_hint="pass --checkpoint PATH",
                gui_hint="choose 'custom checkpoint file…' and select the file",
            )
        model = load_model(
            "auto", checkpoint=path, device=device, fast=rec.fast, precision=precision
        )
    got = ModelRecord.from_model(model)
    if got.checkpoint_sha256 != rec.checkpoint_sha256 or got.architecture != rec.architecture:
        notes.append(f"model {got.describe()} differs from the recorded {rec.describe()}")
    elif (got.precision, got.device) != (rec.precision, rec.device):
        notes.append(f"ran as {got.describe()}, recorded as {rec.describe()}")
    return SamEngine(model)


def _is_file(path: str) -> bool:
    return Path(path).expanduser().is_file()


def _choose_target(record: SessionRecord, target: str | None) -> str:
    targets = record.targets()
    if not targets:
        raise SessionError("the session has no commits and no automatic runs: nothing to replay")
    if target is None:
        if len(targets) > 1:
            raise ReplayInputError(
                f"the session wrote to {len(targets)} labels layers "
                f"({', '.join(map(repr, targets))})",
                "target",
                cli_hint="choose one with --target NAME",
                gui_hint="choose the layer to recreate",
            )
        return targets[0]
    if target not in targets:
        raise SessionError(
            f"the session has no labels layer {target!r} (it has {', '.join(map(repr, targets))})"
        )
    return target


def recorded_labels(record: SessionRecord, target: str | None = None) -> np.ndarray:
    """The labels a session wrote, rebuilt from its stored masks without running SAM.

    Instant, and needs neither the image nor the model: each commit's recorded masks are
    written with the recorded ids and overwrite setting, as in :func:`replay_session`.

    Raises
    ------
    SessionError
        When the layer was made by an automatic segmentation (only its hash is stored:
        replay it instead), a stored mask is damaged, or the target is ambiguous.
    """
    target = _choose_target(record, target)
    labels = np.zeros(record.image.labels_shape, np.int32)
    for number, entry in enumerate(record.entries, 1):
        if entry.target != target:
            continue
        if isinstance(entry, AutoRunRecord):
            raise SessionError(
                f"{target!r} comes from an automatic segmentation (entry {number}), whose "
                "labels the session does not store: replay the session to recreate them"
            )
        shape = entry.plane.take(labels).shape
        masks = [decode_mask(o.mask, shape) for o in entry.objects]
        _write(entry, labels, masks)
    return labels


def _write(entry: CommitRecord, labels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Write a commit's masks as the widget did; pixels written per object."""
    view = entry.plane.view(labels)
    if entry.edit is not None:
        (mask,) = masks
        return np.array([write_edit(view, mask, entry.edit, overwrite=entry.overwrite)])
    return write_commit(view, masks, [o.label for o in entry.objects], overwrite=entry.overwrite)


def _mask_input(
    engine: SamEngine, emb: ImageEmbedding, call: CallRecord, shape: tuple[int, int]
) -> np.ndarray | None:
    """The mask prompt a call was predicted with: its start mask refined through its steps."""
    from .refinement import predict

    logits = None if call.start is None else call.start.logits(shape)
    for step in call.steps:
        p = step.prompts
        prompts = make_prompts(p.points, p.point_labels, p.boxes, image_shape=shape)
        pred = predict(engine, emb, prompts, refine=True, initial=logits)
        if len(step.candidates) != pred.n_objects or max(step.candidates) >= pred.n_candidates:
            raise SessionError(f"a refinement step's candidates {step.candidates} do not exist")
        logits = np.stack([pred.logits(b, k) for b, k in enumerate(step.candidates)])
    return logits


def replay_session(
    record: SessionRecord,
    image: Any,
    *,
    target: str | None = None,
    engine_for: EngineFor | None = None,
    allow_other_image: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **model_options: Any,
) -> ReplayResult:
    """Recreate a labels layer of a session by running SAM again.

    Parameters
    ----------
    record : SessionRecord
    image : array-like
        The session's image (all of it), checked against the recorded hash.
    target : str, optional
        Which labels layer to recreate; needed only when the session wrote to several.
    engine_for : callable, optional
        ``engine_for(model_record) -> SamEngine``. Default: :func:`load_recorded_engine`
        with ``model_options`` (``device``, ``precision``, ``checkpoint``), one engine per
        recorded model.
    allow_other_image : bool
        Replay on an image whose content differs from the recorded one (same shape).
    progress : callable, optional
        ``progress(done, total)`` over the entries.

    Returns
    -------
    ReplayResult

    Raises
    ------
    SessionError
        Another image, an unknown target, damaged masks or candidates in the record.
    """
    notes = check_image(record, image, allow_other=allow_other_image)
    target = _choose_target(record, target)
    if engine_for is None:
        engines: dict[str, SamEngine] = {}

        def engine_for(rec: ModelRecord) -> SamEngine:
            key = rec.key()
            if key not in engines:
                engines[key] = load_recorded_engine(rec, notes=notes, **model_options)
            return engines[key]

    result = ReplayResult(np.zeros(record.image.labels_shape, np.int32), target, notes=notes)
    todo = [(i, e) for i, e in enumerate(record.entries, 1) if e.target == target]
    for done, (number, entry) in enumerate(todo):
        if progress is not None:
            progress(done, len(todo))
        engine = engine_for(entry.model)
        rgb = entry.normalization.apply(entry.plane.take(image), rgb=record.image.rgb)
        if isinstance(entry, CommitRecord):
            result.objects += _replay_commit(number, entry, engine, rgb, result.labels)
        else:
            result.auto_runs.append(_replay_auto(number, entry, engine, rgb, result.labels))
    if progress is not None:
        progress(len(todo), len(todo))
    return result


def _replay_commit(
    number: int, entry: CommitRecord, engine: SamEngine, rgb: np.ndarray, labels: np.ndarray
) -> list[ObjectReplay]:
    from .metrics import iou
    from .refinement import predict

    shape = rgb.shape[:2]
    emb = engine.embed(rgb)
    masks = []
    for call in entry.calls:
        p = call.prompts
        prompts = make_prompts(p.points, p.point_labels, p.boxes, image_shape=shape)
        try:
            start = _mask_input(engine, emb, call, shape)
        except NapariSamError as e:
            raise SessionError(f"entry {number}: {e}") from None
        pred = predict(engine, emb, prompts, refine=True, initial=start)
        for b, obj in enumerate(call.objects):
            if obj.candidate >= pred.n_candidates:
                raise SessionError(
                    f"entry {number}: candidate {obj.candidate} of {obj.source} does not "
                    f"exist (SAM gives {pred.n_candidates} for these prompts)"
                )
            masks.append(pred.mask(b, obj.candidate))
    objects = entry.objects
    pixels = _write(entry, labels, masks)
    out = []
    for obj, mask, px in zip(objects, masks, pixels, strict=True):
        recorded = decode_mask(obj.mask, shape)
        same = bool(np.array_equal(recorded, mask))
        out.append(
            ObjectReplay(
                entry=number,
                label=obj.label,
                source=obj.source,
                plane=entry.plane.describe(),
                identical=same,
                iou=1.0 if same else iou(recorded, mask),
                pixels_recorded=obj.pixels,
                pixels_replayed=int(px) if obj.label is not None else 0,
            )
        )
    return out


def _replay_auto(
    number: int, entry: AutoRunRecord, engine: SamEngine, rgb: np.ndarray, labels: np.ndarray
) -> AutoReplay:
    from .automatic import AutoParams, segment_automatically

    try:
        params = AutoParams(**entry.params)
    except (TypeError, NapariSamError) as e:
        raise SessionError(f"entry {number}: unusable automatic parameters ({e})") from None
    result = segment_automatically(engine, rgb, params)
    plane = np.asarray(result.labels, np.int32)
    labels[...] = 0  # the run created a new layer: nothing else is in it
    entry.plane.view(labels)[...] = plane
    return AutoReplay(
        entry=number,
        target=entry.target,
        identical=image_sha256(plane) == entry.labels_sha256,
        n_objects_recorded=entry.n_objects,
        n_objects_replayed=len(np.setdiff1d(np.unique(plane), [0])),
    )
