"""The embeddings-on-disk row: whether the widget keeps image embeddings on disk, how much
they take, and a button to delete them.

Embeddings are stored where ``napari-sam embed`` puts them
(:func:`napari_sam.core.locations.embeddings_dir`), one file per prepared image and model
(:class:`~napari_sam.core.embedding.EmbeddingStore`: keyed by the image's content, the model's
identity and its precision), so slices embedded once, in napari or on the command line, are
not computed again in a later session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, Label, PushButton

if TYPE_CHECKING:  # pragma: no cover
    from ..core.embedding import EmbeddingStore
    from .sam_widget import SamWidget

#: Environment variable: ``0`` starts the widget with embeddings kept in memory only.
ENV_ON_DISK = "NAPARI_SAM_EMBEDDINGS_ON_DISK"


def format_bytes(n: int) -> str:
    """``n`` bytes for people: 0 B, 12 KiB, 3.4 MiB, 1.2 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n} B"


class EmbeddingCachePanel(Container):
    """A check box (embeddings on disk), what the store holds, and a Clear button.

    The setting applies to the models the widget loads (an engine handed to
    :meth:`SamWidget.set_engine` keeps the store it was made with).
    """

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.on_disk = CheckBox(
            text="keep embeddings on disk",
            value=os.environ.get(ENV_ON_DISK, "1") != "0",
            tooltip="Store every image embedding on disk (where 'napari-sam embed' puts them), "
            "so slices embedded once are not computed again, in this or a later session.",
        )
        self.usage = Label(value="")
        self.clear_button = PushButton(
            text="clear", tooltip="Delete the stored embeddings (they are computed again)."
        )
        super().__init__(
            widgets=[self.on_disk, self.usage, self.clear_button],
            layout="horizontal",
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._seen: tuple | None = None  # the store's folder times when last counted
        self.on_disk.changed.connect(self._on_toggled)
        self.clear_button.clicked.connect(self.clear)
        self.refresh()

    def folder(self) -> Path | None:
        """The embeddings folder (whole planes and tile stores), or None when the setting is off.

        Tile stores of large images follow the same setting: "memory only" writes nothing.
        """
        if not self.on_disk.value:
            return None
        from ..core.locations import embeddings_dir

        return embeddings_dir()

    def store(self) -> EmbeddingStore | None:
        """The on-disk store for a model the widget loads, or None when the setting is off."""
        folder = self.folder()
        if folder is None:
            return None
        from ..core.embedding import EmbeddingStore

        return EmbeddingStore(folder)

    def refresh(self, *, force: bool = False) -> None:
        """Show how many embeddings the store holds and their size.

        Called whenever the widget's work is done: the files are only counted again when a
        model folder changed (its modification time), so a large store costs a few ``stat``
        calls, not one per file, after every click.
        """
        store = self.store()
        if store is None:
            self.usage.value = "(memory only)"
            self.usage.tooltip = ""
            self._seen = None
            return
        seen = _folder_times(store.folder)
        if seen == self._seen and not force:
            return
        self._seen = seen
        n, size = store.usage()
        self.usage.value = f"{n} stored, {format_bytes(size)}"
        self.usage.tooltip = str(store.folder)

    def clear(self) -> int:
        """Delete every stored embedding (those in memory stay); return how many went."""
        from ..core.embedding import EmbeddingStore
        from ..core.locations import embeddings_dir

        removed = EmbeddingStore(embeddings_dir()).clear()
        self.refresh(force=True)
        self._host.set_status(f"Deleted {removed} stored embedding(s).")
        return removed

    def _on_toggled(self, *_: Any) -> None:
        panel = self._host.model_panel
        if panel.engine is not None and not panel.injected:
            panel.engine.store = self.store()
        self.refresh()


def _folder_times(folder: Path) -> tuple:
    """Modification times of ``folder``'s subfolders (one per model): they change whenever an
    embedding file is added or removed there."""
    try:
        return tuple(
            sorted((d.name, d.stat().st_mtime_ns) for d in folder.iterdir() if d.is_dir())
        )
    except OSError:  # not created yet
        return ()
