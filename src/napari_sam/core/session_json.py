"""Session records to and from plain JSON data, with version checks and validation.

:meth:`SessionRecord.to_json <napari_sam.core.session_record.SessionRecord.to_json>` and
``from_json`` use these. Reading checks the ``format`` and ``version`` keys first (a newer
version is refused with a message saying to update napari-sam), then every field, and names
the first bad one (``entries[3].calls[0].objects[1].candidate``) in a one-line
:class:`~napari_sam.core.errors.SessionError`. Keys a reader does not know are ignored: a
change that older readers would misunderstand increases :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import NapariSamError, SessionError
from .mask_prompts import SHAPE_KINDS, StartMask
from .mask_rle import decode_mask, encode_mask
from .normalize import Normalization
from .precision_plan import PrecisionPlan
from .prompts import make_prompts
from .session_types import (
    FORMAT,
    SCHEMA_VERSION,
    AutoRunRecord,
    CallRecord,
    CommitRecord,
    Entry,
    ImageIdentity,
    ModelRecord,
    ObjectRecord,
    PlaneRecord,
    StepRecord,
)

__all__ = [
    "Raw",
    "RecordLike",
    "SessionFields",
    "dumps",
    "entry_json",
    "record_to_dict",
    "record_version",
    "session_from_dict",
]


class RecordLike(Protocol):
    """What :func:`record_to_dict` reads of a record (a
    :class:`~napari_sam.core.session_record.SessionRecord` or :class:`SessionFields`).

    A protocol rather than the class itself, so that this module sits below
    ``session_record`` (which uses it) instead of importing it back.
    """

    @property
    def image(self) -> ImageIdentity: ...

    @property
    def entries(self) -> Sequence[Entry]: ...

    @property
    def session_id(self) -> str: ...

    @property
    def created(self) -> str: ...

    @property
    def software(self) -> str: ...


@dataclass(frozen=True)
class SessionFields:
    """The contents of a session file, read and checked (see :func:`session_from_dict`).

    Attributes
    ----------
    image : ImageIdentity
    entries : tuple of CommitRecord and AutoRunRecord
        In file order; each entry's plane fits ``image``.
    session_id, created, software : str
        As :class:`~napari_sam.core.session_record.SessionRecord` holds them.
    """

    image: ImageIdentity
    entries: tuple[Entry, ...]
    session_id: str
    created: str
    software: str


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _normalization(n: Normalization) -> dict[str, Any]:
    return {
        "method": n.method,
        "contrast_limits": None if n.contrast_limits is None else _lists(n.contrast_limits),
        "percentiles": list(n.percentiles),
        "channel_axis": n.channel_axis,
        "channels": None if n.channels is None else list(n.channels),
        "description": n.describe(),
    }


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _model(m: ModelRecord) -> dict[str, Any]:
    return {
        "name": m.name,
        "checkpoint_sha256": m.checkpoint_sha256,
        "checkpoint": m.checkpoint,
        "model_id": m.model_id,
        "precision": m.precision,
        "fast": m.fast,
        "device": m.device,
        "architecture": dict(m.architecture),
        "random_seed": m.random_seed,
    }


def _common(e: Entry) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "time": e.time,
        "target": e.target,
        "plane": {"axes": list(e.plane.axes), "index": list(e.plane.index)},
        "model": _model(e.model),
        "normalization": _normalization(e.normalization),
    }


def _prompts(p: Any) -> dict[str, Any]:
    return {
        "points": p.points.tolist(),
        "point_labels": p.point_labels.tolist(),
        "boxes": p.boxes.tolist(),
    }


def _start(s: StartMask) -> dict[str, Any]:
    if s.mask is not None:
        return {"label": s.label, "mask_rle": encode_mask(s.mask)}
    return {"shape": s.shape, "vertices": np.asarray(s.vertices, float).tolist()}


def _refinement(c: CallRecord) -> dict[str, Any]:
    """A call's version-2 keys, only when it has a chain or a start mask."""
    out: dict[str, Any] = {}
    if c.steps:
        out["refined_from"] = [
            {**_prompts(s.prompts), "candidates": list(s.candidates)} for s in c.steps
        ]
    if c.start is not None:
        out["start_mask"] = _start(c.start)
    return out


def uses_version_2(e: Entry) -> bool:
    """Whether an entry needs version 2 keys (refinement chains, start masks, label edits)."""
    if not isinstance(e, CommitRecord):
        return False
    return e.edit is not None or any(c.steps or c.start is not None for c in e.calls)


def record_version(record: RecordLike) -> int:
    """The lowest schema version that holds ``record``: older readers still open it."""
    return 2 if any(uses_version_2(e) for e in record.entries) else 1


def _entry(e: Entry) -> dict[str, Any]:
    out = _common(e)
    if isinstance(e, AutoRunRecord):
        out.update(params=dict(e.params), n_objects=e.n_objects, labels_sha256=e.labels_sha256)
        return out
    out["overwrite"] = e.overwrite
    if e.edit is not None:
        out["edit"] = e.edit
    out["calls"] = [
        {
            **_prompts(c.prompts),
            **_refinement(c),
            "objects": [
                {
                    "source": o.source,
                    "candidate": o.candidate,
                    "predicted_iou": o.predicted_iou,
                    "label": o.label,
                    "pixels": o.pixels,
                    "area": o.area,
                    "mask_rle": o.mask,
                }
                for o in c.objects
            ],
        }
        for c in e.calls
    ]
    return out


class Raw(str):
    """JSON text already rendered by :func:`dumps` (at the depth where it is placed)."""


def entry_json(entry: Entry) -> Raw:
    """An entry's JSON text, indented for its place in a session file's ``entries`` list."""
    return Raw(dumps(_entry(entry), _depth=2))


def record_to_dict(record: RecordLike, render: Callable[[Entry], Any] = _entry) -> dict[str, Any]:
    """Plain JSON-ready data of a record (``format`` and ``version`` first).

    ``render`` turns each entry into data, or into :class:`Raw` text (see :func:`entry_json`):
    entries never change once recorded, so a session can keep their text and rewrite its
    file after every commit at the cost of one entry.
    """
    img = record.image
    return {
        "format": FORMAT,
        "version": record_version(record),
        "session_id": record.session_id,
        "created": record.created,
        "software": record.software,
        "image": {
            "sha256": img.sha256,
            "shape": list(img.shape),
            "dtype": img.dtype,
            "rgb": img.rgb,
            "source": img.source,
        },
        "entries": [render(e) for e in record.entries],
    }


def dumps(data: Any, indent: int = 1, _depth: int = 0) -> str:
    """JSON text with objects indented and arrays of numbers on one line (easy to read)."""
    if isinstance(data, Raw):
        return str(data)
    if isinstance(data, dict) and data:
        pad, inner = " " * indent * _depth, " " * indent * (_depth + 1)
        items = (
            f"{inner}{json.dumps(k)}: {dumps(v, indent, _depth + 1)}" for k, v in data.items()
        )
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, list) and any(isinstance(v, dict | Raw) for v in data):
        pad, inner = " " * indent * _depth, " " * indent * (_depth + 1)
        items = (inner + dumps(v, indent, _depth + 1) for v in data)
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(data, allow_nan=False, ensure_ascii=False)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


class _Obj:
    """A JSON object being read, with its place in the file for error messages."""

    def __init__(self, data: Any, where: str, file: str) -> None:
        if not isinstance(data, dict):
            raise SessionError(f"{file}: {where or 'the file'} must be a JSON object")
        self.data, self.where, self.file = data, where, file

    def fail(self, key: str, what: str) -> SessionError:
        place = f"{self.where}.{key}" if self.where else key
        return SessionError(f"{self.file} is damaged: {place} {what}")

    def get(self, key: str, check: Callable[[Any], bool], what: str, *, optional=False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.data[key]
        if value is None and optional:
            return None
        if not check(value):
            raise self.fail(key, f"must be {what}, not {value!r:.60}")
        return value

    def obj(self, key: str) -> _Obj:
        return _Obj(
            self.get(key, lambda v: isinstance(v, dict), "an object"), self._at(key), self.file
        )

    def objs(self, key: str) -> list[_Obj]:
        items = self.get(key, lambda v: isinstance(v, list), "a list")
        return [_Obj(v, f"{self._at(key)}[{i}]", self.file) for i, v in enumerate(items)]

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_plan(v: Any) -> bool:
    try:
        return isinstance(v, str) and PrecisionPlan.parse(v).name == v
    except NapariSamError:
        return False


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _check_version(o: _Obj) -> None:
    if o.data.get("format") != FORMAT:
        raise SessionError(
            f"{o.file} is not a napari-sam session file (its 'format' is "
            f"{o.data.get('format')!r}, expected {FORMAT!r})"
        )
    version = o.data.get("version")
    if not _is_int(version) or version < 1:
        raise SessionError(f"{o.file}: unknown session format version {version!r}")
    if version > SCHEMA_VERSION:
        raise SessionError(
            f"{o.file} was written by a newer napari-sam (session format {version}; this "
            f"version reads up to {SCHEMA_VERSION}): update napari-sam-kit to open it"
        )


def _read_model(o: _Obj) -> ModelRecord:
    seed = o.get("random_seed", _is_int, "an integer", optional=True)
    return ModelRecord(
        name=o.get("name", _is_str, "a string"),
        checkpoint_sha256=o.get("checkpoint_sha256", _is_str, "a string", optional=True),
        checkpoint=o.get("checkpoint", _is_str, "a string", optional=True),
        model_id=o.get("model_id", _is_str, "a string"),
        precision=o.get("precision", _is_plan, "fp32/bf16/fp16 or a per-operation plan"),
        fast=o.get("fast", _is_bool, "true or false"),
        device=o.get("device", _is_str, "a string"),
        architecture=o.get("architecture", lambda v: isinstance(v, dict), "an object"),
        random_seed=seed,
    )


def _read_normalization(o: _Obj) -> Normalization:
    try:
        return Normalization(
            method=o.get("method", _is_str, "a string"),
            contrast_limits=o.get(
                "contrast_limits", lambda v: isinstance(v, list), "a list", optional=True
            ),
            percentiles=tuple(
                o.get("percentiles", lambda v: isinstance(v, list) and len(v) == 2, "a pair")
            ),
            channel_axis=o.get("channel_axis", _is_int, "an integer", optional=True),
            channels=o.get("channels", _ints, "a list of integers", optional=True),
        )
    except NapariSamError as e:
        raise SessionError(f"{o.file} is damaged: {o.where}: {e}") from None
    except (TypeError, ValueError):
        raise o.fail("contrast_limits", "must be a pair or a list of pairs of numbers") from None


def _read_plane(o: _Obj) -> PlaneRecord:
    axes = o.get("axes", lambda v: _ints(v) and len(v) == 2, "two integers")
    index = o.get(
        "index",
        lambda v: isinstance(v, list) and all(x is None or _is_int(x) for x in v),
        "a list of integers and nulls",
    )
    return PlaneRecord(axes=(axes[0], axes[1]), index=tuple(index))


def _read_object(o: _Obj) -> ObjectRecord:
    return ObjectRecord(
        source=o.get("source", _is_str, "a string"),
        candidate=o.get("candidate", lambda v: _is_int(v) and v >= 0, "an index >= 0"),
        predicted_iou=float(o.get("predicted_iou", _is_num, "a number")),
        label=o.get("label", lambda v: _is_int(v) and v > 0, "a label id > 0", optional=True),
        pixels=o.get("pixels", lambda v: _is_int(v) and v >= 0, "a count >= 0"),
        mask=o.get("mask_rle", _is_str, "a string"),
        area=o.get("area", lambda v: _is_int(v) and v >= 0, "a count >= 0"),
    )


def _read_prompts(o: _Obj) -> Any:
    try:
        return make_prompts(
            o.get("points", lambda v: isinstance(v, list), "a list"),
            o.get("point_labels", lambda v: isinstance(v, list), "a list"),
            o.get("boxes", lambda v: isinstance(v, list), "a list"),
        )
    except NapariSamError as e:
        raise SessionError(f"{o.file} is damaged: {o.where}: {e}") from None


def _read_step(o: _Obj) -> StepRecord:
    prompts = _read_prompts(o)
    candidates = o.get("candidates", lambda v: _ints(v) and min(v, default=0) >= 0, "indices")
    if len(candidates) != prompts.n_objects:
        raise o.fail("candidates", f"must hold {prompts.n_objects} index(es) for these prompts")
    return StepRecord(prompts, tuple(candidates))


def _read_start(o: _Obj, shape: tuple[int, int] | None) -> StartMask:
    if "mask_rle" in o.data and shape is None:
        raise o.fail("mask_rle", "belongs to a plane that does not exist in the image")
    try:
        if "mask_rle" in o.data:
            rle = o.get("mask_rle", _is_str, "a string")
            label = o.get("label", lambda v: _is_int(v) and v > 0, "a label id", optional=True)
            return StartMask(mask=decode_mask(rle, shape), label=label)
        kind = o.get("shape", lambda v: v in SHAPE_KINDS, f"one of {', '.join(SHAPE_KINDS)}")
        vertices = o.get(
            "vertices",
            lambda v: isinstance(v, list) and all(isinstance(x, list) for x in v),
            "a list of (row, col) pairs",
        )
        return StartMask(shape=kind, vertices=np.asarray(vertices, float).reshape(-1, 2))
    except (NapariSamError, ValueError) as e:
        raise SessionError(f"{o.file} is damaged: {o.where}: {e}") from None


def _read_call(o: _Obj, shape: tuple[int, int] | None = None) -> CallRecord:
    prompts = _read_prompts(o)
    objects = tuple(_read_object(x) for x in o.objs("objects"))
    if len(objects) != prompts.n_objects:
        raise o.fail("objects", f"must hold {prompts.n_objects} object(s) for these prompts")
    steps = ()
    if "refined_from" in o.data:
        steps = tuple(_read_step(s) for s in o.objs("refined_from"))
    start = _read_start(o.obj("start_mask"), shape) if "start_mask" in o.data else None
    return CallRecord(prompts, objects, steps, start)


def _plane_shape(plane: PlaneRecord, image: ImageIdentity) -> tuple[int, int]:
    shape = image.labels_shape
    return (shape[plane.axes[0]], shape[plane.axes[1]])


def _read_entry(o: _Obj, image: ImageIdentity) -> Entry:
    kind = o.get("kind", _is_str, "a string")
    common = {
        "target": o.get("target", _is_str, "a string"),
        "plane": _read_plane(o.obj("plane")),
        "model": _read_model(o.obj("model")),
        "normalization": _read_normalization(o.obj("normalization")),
        "time": o.get("time", _is_str, "a string"),
    }
    if kind == "commit":
        try:
            common["plane"].check(image.labels_shape)
            shape: tuple[int, int] | None = _plane_shape(common["plane"], image)
        except SessionError:
            shape = None  # reported by the caller, after the entry is read
        edit = o.get("edit", lambda v: _is_int(v) and v > 0, "a label id > 0", optional=True)
        calls = tuple(_read_call(c, shape) for c in o.objs("calls"))
        if edit is not None and sum(len(c.objects) for c in calls) != 1:
            raise o.fail("calls", f"of an edit of label {edit} must hold one object")
        return CommitRecord(
            overwrite=o.get("overwrite", _is_bool, "true or false"),
            calls=calls,
            edit=edit,
            **common,
        )
    if kind == "auto":
        return AutoRunRecord(
            params=o.get("params", lambda v: isinstance(v, dict), "an object"),
            n_objects=o.get("n_objects", lambda v: _is_int(v) and v >= 0, "a count >= 0"),
            labels_sha256=o.get("labels_sha256", _is_str, "a string"),
            **common,
        )
    raise o.fail("kind", f"is {kind!r}, which this napari-sam does not know (commit, auto)")


def session_from_dict(data: Any, file: str = "session") -> SessionFields:
    """Read parsed JSON into checked session contents; SessionError naming the first problem.

    :meth:`SessionRecord.from_json <napari_sam.core.session_record.SessionRecord.from_json>`
    builds the record from them.
    """
    top = _Obj(data, "", file)
    _check_version(top)
    img = top.obj("image")
    image = ImageIdentity(
        sha256=img.get("sha256", lambda v: _is_str(v) and len(v) == 64, "a SHA-256 (64 hex)"),
        shape=tuple(img.get("shape", lambda v: _ints(v) and v and min(v) > 0, "a shape")),
        dtype=img.get("dtype", _is_str, "a dtype name"),
        rgb=img.get("rgb", _is_bool, "true or false"),
        source=img.get("source", _is_str, "a string", optional=True),
    )
    entries = []
    for entry in top.objs("entries"):
        e = _read_entry(entry, image)
        try:
            e.plane.check(image.labels_shape)
        except SessionError as err:
            raise SessionError(f"{file} is damaged: {entry.where}: {err}") from None
        entries.append(e)
    return SessionFields(
        image=image,
        entries=tuple(entries),
        session_id=top.get("session_id", _is_str, "a string"),
        created=top.get("created", _is_str, "a string"),
        software=top.get("software", _is_str, "a string"),
    )
