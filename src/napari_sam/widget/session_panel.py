"""The session panel: every commit and automatic run recorded, autosaved after each one, saved
and loaded as a session file, and offered back after a crash.

The record itself and its files live in the core (:mod:`napari_sam.core.session_record`,
:mod:`napari_sam.core.autosave`, :mod:`napari_sam.core.replay`; format in docs/sessions.md).
Here: which image the record belongs to (identified by content, in a worker), when to
autosave (after every write, in a worker, the newest save superseding an older one still
waiting), and the Save / Load buttons and the "restore unsaved work" offer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.layers import Labels

from .._layers import geometry_like, level0
from .._tasks import Task
from .layer_menus import ROLE, add_quietly
from .messages import report

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from ..core.autosave import AutosaveInfo
    from ..core.session_record import Entry, SessionRecord
    from .sam_widget import SamWidget


#: Lazily read images (dask, zarr, memory-mapped) larger than this are not hashed for a
#: session: hashing reads every byte, and such data is not lost in a crash anyway.
LAZY_HASH_LIMIT = 2 * 1024**3
#: Labels larger than this (all targets together) are not autosaved: the snapshot would copy
#: them into memory on every commit (the session itself is still recorded and can be saved).
AUTOSAVE_LIMIT = 1024**3


def _source_path(image: Image) -> str | None:
    path = getattr(getattr(image, "source", None), "path", None)
    return str(path) if path else None


class SessionPanel(Container):
    """Save/Load session buttons, the recovery offer, and the record of the current image."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.save_button = PushButton(
            text="Save session…",
            tooltip="Save what SAM did to this image (prompts, models, label ids) as a session "
            "file; `napari-sam replay` recreates the labels from it.",
        )
        self.load_button = PushButton(
            text="Load session…",
            tooltip="Open a session file of this image: its labels come back as a new layer.",
        )
        self.recovery_text = Label(value="")
        self.restore_button = PushButton(text="Restore")
        self.discard_button = PushButton(text="Discard")
        self.recovery = Container(
            widgets=[
                self.recovery_text,
                Container(
                    widgets=[self.restore_button, self.discard_button],
                    layout="horizontal",
                    labels=False,
                ),
            ],
            labels=False,
            visible=False,
        )
        super().__init__(
            widgets=[
                Label(value="<b>Session</b>"),
                Container(
                    widgets=[self.save_button, self.load_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.recovery,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.record: SessionRecord | None = None
        self._image_id: Any = None  # unique_id of the image the record is (being) made for
        self._waiting: list[Entry] = []  # recorded before the image was identified
        self._offer: AutosaveInfo | None = None
        self.save_button.clicked.connect(self._ask_save)
        self.load_button.clicked.connect(self._ask_load)
        self.restore_button.clicked.connect(self.restore)
        self.discard_button.clicked.connect(self.discard)

    # -- which image --

    def image_changed(self, image: Image | None) -> None:
        """Start a record for ``image`` (identified by content in a worker)."""
        uid = None if image is None else image.unique_id
        if uid == self._image_id:
            return
        self._image_id = uid
        self.record = None
        self._waiting = []
        self._show_offer(None)
        if image is None:
            return
        data = level0(image)
        nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
        if not isinstance(data, np.ndarray) and nbytes > LAZY_HASH_LIMIT:
            self._host.set_status(
                "Sessions and autosave are off for this image: it is read lazily and larger "
                f"than {LAZY_HASH_LIMIT // 1024**3} GiB (identifying it would read all of it)."
            )
            return
        rgb = bool(image.rgb)
        source = _source_path(image)

        def job(task: Task) -> tuple[Any, Any]:
            from ..core.autosave import find_autosave
            from ..core.session_record import ImageIdentity, SessionRecord

            ident = ImageIdentity.from_array(data, rgb=rgb, source=source)
            task.check("looking for autosaves")
            record = SessionRecord(ident)
            return record, find_autosave(ident.sha256, exclude_session=record.session_id)

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            if uid != self._image_id:
                return  # another image was chosen meanwhile
            if error is not None:
                self._host.set_status(report(error, "the image could not be identified"))
                return
            self.record, offer = result
            for entry in self._waiting:
                self.record.append(entry)
            if self._waiting:
                self._waiting = []
                self._autosave()
            self._show_offer(offer)

        self._host.runner.start(
            "identity", "identifying the image", job, done, key=uid, uses_torch=False
        )

    # -- recording --

    def record_entry(self, entry: Entry) -> None:
        """Add a commit or automatic run (just written) and autosave."""
        if self.record is None:
            self._waiting.append(entry)  # the image's identity is still being computed
            return
        self.record.append(entry)
        self._autosave()

    def _autosave(self) -> None:
        record = self.record
        if record is None or not record.entries:
            return
        # Snapshots taken here, on the GUI thread: the layers keep changing while the worker
        # writes. A newer autosave cancels an older one that has not started.
        snapshot = dataclasses.replace(record, entries=list(record.entries))
        layers = [
            layer
            for layer in self._host.viewer.layers
            if isinstance(layer, Labels) and layer.name in record.targets()
        ]
        nbytes = sum(int(np.prod(x.data.shape)) * np.dtype(x.data.dtype).itemsize for x in layers)
        if nbytes > AUTOSAVE_LIMIT:
            self._host.set_status(
                f"Autosave skipped: the labels are larger than {AUTOSAVE_LIMIT // 1024**3} GiB "
                "(Save session… still records what you did)."
            )
            return
        arrays = {layer.name: np.array(layer.data) for layer in layers}

        def job(task: Task) -> Path:
            from ..core.autosave import autosave

            try:
                return autosave(snapshot, arrays)
            finally:
                arrays.clear()  # the copies go now, not when the worker object is collected

        def done(task: Task, path: Any, error: BaseException | None) -> None:
            if error is not None and not task.cancelled:
                # Never an error popup for a background save; the status says it.
                self._host.set_status(f"Autosave failed: {error}")

        self._host.runner.start("autosave", "autosaving", job, done, uses_torch=False)

    # -- files --

    def save_session(self, path: str | Path) -> Path | None:
        """Write the session of the current image to ``path`` (JSON); None if nothing to save."""
        if self.record is None or not self.record.entries:
            self._host.notify("Nothing to save yet: commit an object or run Auto segment first.")
            return None
        try:
            out = self.record.save(path)
        except (OSError, ValueError) as e:
            self._host.set_status(report(e, f"the session could not be saved to {path}"))
            return None
        self._host.set_status(f"Session saved to {out} ({len(self.record.entries)} entries).")
        return out

    def load_session(self, path: str | Path) -> list[Labels]:
        """Open a session file of the current image: its labels come back as new layers.

        The labels are rebuilt from the masks stored in the session (no model needed);
        layers written by automatic segmentation need ``napari-sam replay``.
        """
        from ..core.errors import NapariSamError
        from ..core.replay import check_image, recorded_labels
        from ..core.session_record import SessionRecord

        image = self._host.image_layer()
        if image is None:
            self._host.notify("Choose the session's image first.")
            return []
        try:
            record = SessionRecord.load(path)
            check_image(record, level0(image))
            layers = [
                self._add_labels(image, recorded_labels(record, target), target, "session")
                for target in record.targets()
                if any(e.target == target and e.kind == "commit" for e in record.entries)
            ]
        except (NapariSamError, OSError) as e:
            self._host.set_status(report(e, f"the session {path} could not be loaded"))
            return []
        self._host.set_status(
            f"Session loaded: {len(record.entries)} entries, {len(layers)} labels layer(s)."
        )
        return layers

    def _add_labels(self, image: Image, data: np.ndarray, name: str, how: str) -> Labels:
        # The recorded name when it is free, so that later commits keep recording into it.
        taken = {layer.name for layer in self._host.viewer.layers}
        layer = Labels(
            data.astype(np.int32, copy=False),
            name=name if name not in taken else f"{name} ({how})",
            metadata={ROLE: "labels"},
            **geometry_like(image),
        )
        return add_quietly(self._host.viewer, layer)

    def _ask_save(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save session", "session.json", "Session (*.json)"
        )
        if path:
            self.save_session(path)

    def _ask_load(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Load session", "", "Session (*.json)")
        if path:
            self.load_session(path)

    # -- recovery --

    def _show_offer(self, offer: AutosaveInfo | None) -> None:
        self._offer = offer
        self.recovery.visible = offer is not None
        if offer is not None:
            when = offer.saved.replace("T", " ").replace("Z", " UTC")
            self.recovery_text.value = (
                f"Unsaved work on this image from {when} ({offer.n_entries} entries): "
                "restore its labels?"
            )

    @property
    def recovery_offered(self) -> bool:
        """Whether an autosave of an earlier session of this image is offered."""
        return self._offer is not None

    def restore(self) -> list[Labels]:
        """Bring the offered autosave's labels back as new layers and continue its session."""
        from ..core.autosave import load_autosave
        from ..core.errors import NapariSamError

        offer, image = self._offer, self._host.image_layer()
        if offer is None or image is None:
            return []
        try:
            record, arrays = load_autosave(offer.path)
        except NapariSamError as e:
            self._host.set_status(report(e, "the autosave could not be restored"))
            return []
        layers = [self._add_labels(image, a, n, "recovered") for n, a in arrays.items()]
        if self.record is not None:
            # Keep recording into the recovered session (same session id: one autosave file).
            record.entries.extend(self.record.entries)
        self.record = record
        self._show_offer(None)
        self._host.set_status(f"Restored {len(layers)} labels layer(s) from the autosave.")
        return layers

    def discard(self) -> None:
        """Delete the offered autosave."""
        from ..core.autosave import discard_autosave

        if self._offer is not None:
            discard_autosave(self._offer.path)
        self._show_offer(None)
