"""Session records: what was segmented, how, and with which prompts, as versioned JSON.

A :class:`SessionRecord` names the image (content hash, shape, dtype) and lists, in order,
every commit of SAM objects into a labels layer (its plane, prompts, chosen candidates, label
ids, overwrite setting, model and normalisation) and every automatic segmentation run.
:func:`napari_sam.core.replay.replay_session` re-runs SAM on it to recreate the labels, and
:mod:`napari_sam.core.autosave` keeps it (with the labels) in the user cache after every
commit. The format is documented in ``docs/sessions.md``.

The record's parts (:class:`ImageIdentity`, :class:`CommitRecord`, ...) are defined in
:mod:`napari_sam.core.session_types` and re-exported here; their JSON form is
:mod:`napari_sam.core.session_json`. Both sit below this module, so nothing imports back.

Nothing here imports torch: records are built from plain values and a loaded model's
attributes.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SessionError
from .locations import atomic_write  # re-exported: autosave and older callers import it here
from .session_json import dumps, entry_json, record_to_dict, session_from_dict
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
    image_sha256,
    utc_now,
)

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "AutoRunRecord",
    "CallRecord",
    "CommitRecord",
    "ImageIdentity",
    "ModelRecord",
    "ObjectRecord",
    "PlaneRecord",
    "SessionRecord",
    "StepRecord",
    "atomic_write",
    "image_sha256",
]


@dataclass
class SessionRecord:
    """Everything a session did to one image, in order.

    Attributes
    ----------
    image : ImageIdentity
    entries : list of CommitRecord and AutoRunRecord
    session_id : str
        Random identifier (names its autosave file).
    created : str
        ISO 8601 time (UTC).
    software : str
        The napari-sam version that started it.
    """

    image: ImageIdentity
    entries: list[Entry] = field(default_factory=list)
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=utc_now)
    software: str = field(default_factory=lambda: _software())
    _texts: dict[int, tuple[Entry, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def append(self, entry: Entry) -> None:
        """Add a commit or an automatic run (call it right after the labels were written)."""
        if not isinstance(entry, CommitRecord | AutoRunRecord):
            raise TypeError(f"expected a CommitRecord or AutoRunRecord, got {type(entry)}")
        entry.plane.check(self.image.labels_shape)
        self.entries.append(entry)

    @property
    def commits(self) -> list[CommitRecord]:
        """The commits, in order."""
        return [e for e in self.entries if isinstance(e, CommitRecord)]

    def targets(self) -> list[str]:
        """Names of the labels layers written to, in order of first use."""
        return list(dict.fromkeys(e.target for e in self.entries))

    def to_json(self) -> str:
        """The record as JSON text (see ``docs/sessions.md``)."""

        def render(entry: Entry) -> str:
            # Entries are frozen: their text is made once (holding the entry keeps its id).
            cached = self._texts.get(id(entry))
            if cached is None or cached[0] is not entry:
                cached = self._texts[id(entry)] = (entry, entry_json(entry))
            return cached[1]

        return dumps(record_to_dict(self, render))

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "session") -> SessionRecord:
        """Parse JSON text; SessionError for anything that is not a readable session."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SessionError(f"{where} is not a napari-sam session file ({e})") from None
        fields = session_from_dict(data, where)  # entries checked against the image there
        return cls(
            image=fields.image,
            entries=list(fields.entries),
            session_id=fields.session_id,
            created=fields.created,
            software=fields.software,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (a temporary file, then a rename); return the path."""
        path = Path(path)
        atomic_write(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SessionRecord:
        """Read a session file; SessionError (one line) when it cannot be used."""
        path = Path(path)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise SessionError(f"session file {path} not found") from None
        except OSError as e:
            raise SessionError(f"cannot read session file {path}: {e.strerror or e}") from None
        return cls.from_json(text, where=str(path))


def _software() -> str:
    from .. import __version__

    return f"napari-sam-kit {__version__}"
