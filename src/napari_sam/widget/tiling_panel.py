"""The tiling part: off / auto / tile size and halo, the tiles' status, and the "SAM tiles"
layer that shows which tiles of the current plane are embedded.

With tiling active the plane's embedding is a
:class:`~napari_sam.core.tiled_embedding.TiledEmbedding` (opened by the
:class:`~.plane_embedding.PlaneEmbedder` with its zarr store in the embeddings folder): clicks
and boxes embed the tiles they need here first (a task with progress and Cancel), then the
preview decodes them in their tiles (:func:`napari_sam._session.predict_objects`); automatic
segmentation runs tile by tile (:class:`~.auto_panel.AutoPanel`). Plain logic is in
:mod:`napari_sam._tiles`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Shapes
from qtpy.QtCore import QTimer

from .._layers import geometry_like
from .._tasks import Task
from .._tiles import (
    TILE_COLOURS,
    TilingSettings,
    describe_tiles,
    is_tiled,
    needed_tiles,
    tile_rectangles,
    tile_states,
)
from ..core.errors import Cancelled, NapariSamError
from ..core.tiling import DEFAULT_HALO, DEFAULT_OBJECT_SIZE, DEFAULT_TILE, TileGrid, needs_tiling
from .layer_menus import ROLE, add_quietly
from .messages import report

if TYPE_CHECKING:  # pragma: no cover
    from .._layers import Plane
    from .._session import PromptObject
    from ..core.tiled_embedding import TiledEmbedding
    from .sam_widget import SamWidget

MODES = ("off", "auto", "tile size")
#: How often (ms) the tiles' display follows a running tile job.
POLL_MS = 250


def _pair(label: str, value: tuple[int, int], minimum: int, tooltip: str) -> Container:
    rows = SpinBox(value=value[0], min=minimum, max=65536, tooltip=tooltip)
    cols = SpinBox(value=value[1], min=minimum, max=65536, tooltip=tooltip)
    return Container(widgets=[rows, cols], layout="horizontal", labels=False, label=label)


class TilingPanel(Container):
    """Tiling settings, the tiles' status line and their display in the viewer."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.mode = ComboBox(
            label="tiling",
            choices=list(MODES),
            value="off",
            tooltip="Large images: embed them tile by tile so that small objects keep their "
            "size. 'auto' tiles only images whose objects would shrink below what SAM "
            "resolves (longest side over 64 x the object size).",
        )
        self.tile = _pair("tile (rows, cols)", DEFAULT_TILE, 16, "Largest tile core in pixels.")
        self.halo = _pair(
            "halo (rows, cols)", DEFAULT_HALO, 0, "Context embedded around each tile, pixels."
        )
        self.object_size = SpinBox(
            label="object size (px)",
            value=DEFAULT_OBJECT_SIZE,
            min=2,
            max=4096,
            tooltip="Expected object diameter, for 'auto'.",
        )
        self.show_tiles = CheckBox(text="show tiles", value=True)
        self.store_button = PushButton(
            text="use store…",
            tooltip="Use tile embeddings made earlier (napari-sam embed IMAGE --tile ...).",
        )
        self.info = Label(value="")
        self.info.native.setWordWrap(True)
        super().__init__(
            widgets=[
                Label(value="<b>Large images</b>"),
                Container(widgets=[self.mode, self.tile, self.halo, self.object_size]),
                Container(
                    widgets=[self.show_tiles, self.store_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.info,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.layer: Shapes | None = None
        self.store: Path | None = None  # a store the user chose
        self._jobs: dict[str, set[int]] = {}  # kind of running job -> tiles it embeds
        self.finished: set[int] = set()  # tiles jobs reported done (thread-safe adds)
        self._drawn: tuple | None = None  # (geometry, states) shown in the layer
        self._removing = False
        self.timer = QTimer(host.native)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.refresh)
        self.chosen = False  # whether the mode was chosen (by the user, or set_tiling)
        self.mode.changed.connect(self._on_mode)
        self.object_size.changed.connect(self._on_settings)
        for w in (*self.tile, *self.halo):
            w.changed.connect(self._on_tile_size)
        self.show_tiles.changed.connect(lambda *_: self.refresh())
        self.store_button.clicked.connect(self._pick_store)
        host.connections.connect(
            "tiling", host.viewer.layers.events.removed, self._on_layer_removed
        )
        self._sync_controls()

    # -- settings --

    def settings(self) -> TilingSettings:
        """What the controls say (part of the plane's key: a change re-opens the tiles)."""
        mode = self.mode.value
        if mode == "off":
            return TilingSettings("off")
        if mode == "auto":
            return TilingSettings("auto", object_size=float(self.object_size.value))
        tile = (self.tile[0].value, self.tile[1].value)
        return TilingSettings(tile, (self.halo[0].value, self.halo[1].value), store=self.store)

    def grid_for(self, plane_shape: tuple[int, int]) -> TileGrid | None:
        """The tile grid of a plane (None: embedded whole)."""
        return self.settings().grid(plane_shape)

    def set_tiling(
        self, tiling: str | tuple[int, int], halo: tuple[int, int] | None = None
    ) -> None:
        """``"off"``, ``"auto"`` or a tile (rows, cols), with its halo (default: a sixth)."""
        from ..core.tiling import default_halo

        if isinstance(tiling, str):
            if tiling not in ("off", "auto"):
                raise NapariSamError(
                    f"tiling must be 'off', 'auto' or (rows, cols), not {tiling!r}"
                )
            self.chosen = True
            self.mode.value = tiling
            return
        tile = tuple(int(v) for v in tiling)
        halo = default_halo(tile) if halo is None else tuple(int(v) for v in halo)  # type: ignore[arg-type]
        if len(tile) != 2 or len(halo) != 2 or min(tile) < 16 or min(halo) < 0:
            raise NapariSamError(f"tile must be (rows, cols) >= 16 and halo >= 0: {tile}, {halo}")
        with self.mode.changed.blocked():
            self.mode.value = "tile size"
        self.chosen = True
        for box, value in ((self.tile, tile), (self.halo, halo)):
            for w, v in zip(box, value, strict=True):
                with w.changed.blocked():
                    w.value = v
        self._on_settings()

    def adopt_auto(self, image: Any, plane: Plane) -> bool:
        """Tile a large plane on disk ('auto') while no tiling mode was chosen.

        Embedding such a plane whole would read all of it (gigabytes for a slide) to shrink
        it to SAM's 1024 px, where small objects vanish; tiled, only the tiles prompts need
        are read. Planes in memory keep the default ('off'), as before.
        """
        from .._layers import level0
        from ..core.lazy_arrays import is_on_disk

        if self.chosen or self.mode.value != "off" or not needs_tiling(plane.shape):
            return False
        if not is_on_disk(level0(image)):
            return False
        with self.mode.changed.blocked():
            self.mode.value = "auto"
        self._sync_controls()
        h, w = plane.shape
        self._host.notify(
            f"{image.name} is {h} x {w} px and read from disk: tiling is now 'auto', so only "
            "the tiles you segment are read (Large images: choose 'off' to embed it whole)."
        )
        return True

    def _on_mode(self, *_: Any) -> None:
        self.chosen = True
        self._on_settings()

    def _on_tile_size(self, *_: Any) -> None:
        self.store = None  # the user's own size: a chosen store holds another tiling
        self._on_settings()

    def _on_settings(self, *_: Any) -> None:
        if self.mode.value != "tile size":
            self.store = None  # a chosen store has its own tiling
        self._sync_controls()
        self._host.on_settings_changed()
        self.refresh()

    def _sync_controls(self) -> None:
        mode = self.mode.value
        self.tile.visible = self.halo.visible = mode == "tile size"
        self.object_size.visible = mode == "auto"

    # -- a store made earlier --

    def _pick_store(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self.native, "Tile embedding store (.zarr)")
        if path:
            self.use_store(path)

    def use_store(self, path: str | Path | None) -> None:
        """Use the tile embeddings in ``path`` (None: the embeddings folder's, as by default).

        The store's tiling becomes the widget's; it is used only if it was made from this
        plane with this model and normalisation (else an error says what differs).
        """
        from ..core.tile_store import stored_tiling

        if path is None:
            self.store = None
            self._on_settings()
            return
        try:
            tiling = stored_tiling(path)
        except NapariSamError as e:
            self._host.error(e.for_gui())
            return
        self.set_tiling(tuple(tiling["tile"]), tuple(tiling["halo"]))  # type: ignore[arg-type]
        self.store = Path(path)
        self._on_settings()

    # -- the plane's tiles --

    def current(self, plane: Plane | None = None) -> TiledEmbedding | None:
        """The current plane's tiles (None when it is not tiled or not opened yet)."""
        embedder = self._host.plane_embedder
        embedded = embedder.embedded
        if embedded is None or embedded.key != embedder.key or not is_tiled(embedded.embedding):
            return None
        if plane is not None and embedded.plane != plane:
            return None
        return embedded.embedding

    @property
    def pending(self) -> set[int]:
        """Tiles that running jobs are embedding."""
        return set().union(*self._jobs.values())

    def plane_changed(self) -> None:
        """The plane, image, model or settings changed: the tiles shown are another's."""
        self._jobs.clear()
        self.finished = set()
        self.refresh()

    def plane_ready(self, tiled: TiledEmbedding) -> None:
        """The plane's tiles were opened: say what the store recomputed, show them."""
        if tiled.store is not None:
            for note in tiled.store.notes:
                self._host.notify(f"napari-sam: {note}")
            tiled.store.notes.clear()
        self.refresh()

    def on_tile(self, index: int) -> None:
        """A job made tile ``index`` available (called from its worker thread)."""
        self.finished.add(index)

    def track(self, kind: str, tiles: list[int]) -> None:
        """A job of ``kind`` starts embedding ``tiles``: show them pending and follow it."""
        self._jobs[kind] = set(tiles)
        self.timer.start()
        self.refresh()

    def untrack(self, kind: str) -> None:
        """The job of ``kind`` ended (done, cancelled or failed)."""
        self._jobs.pop(kind, None)
        if not self._jobs:
            self.timer.stop()
        self.refresh()

    def embed_first(self, objects: list[PromptObject], then: Callable[[], None]) -> bool:
        """Embed the tiles these SAM calls need before they are decoded; True if started.

        A task of kind ``embed`` (progress per tile, Cancel; the plane's own embedding task
        is over by now) whose end calls ``then`` (the preview, with the latest prompts).
        Also True while such a task runs: its end brings the preview up to date.
        """
        host = self._host
        tiled = self.current()
        if tiled is None:
            return False
        if host.runner.current("embed") is not None:
            return True
        missing = sorted(set(needed_tiles(tiled.grid, objects)) - set(tiled.embedded))
        if not missing:
            return False
        engine = host.model_panel.engine
        planes = host.plane_embedder
        generation = planes.generation.value
        n = len(missing)

        def job(task: Task) -> None:
            task.may_yield = lambda: not engine.in_forward()
            count = [0]

            def on_tile(index: int) -> None:
                self.on_tile(index)
                count[0] += 1
                task.label = f"embedding tile {min(count[0] + 1, n)} of {n}"

            tiled.ensure(
                engine, missing, progress=task.progress, cancel=task.is_cancelled, on_tile=on_tile
            )

        def done(task: Task, _result: Any, error: BaseException | None) -> None:
            self.untrack("embed")
            if not planes.generation.is_current(generation):
                planes.discarded += 1
                return
            if error is not None:
                host.output_panel.preview_failed()
                host.set_status(
                    "Tile embedding cancelled; the tiles embedded so far are kept."
                    if isinstance(error, Cancelled)
                    else report(error, "the tiles could not be embedded")
                )
                return
            then()

        self.track("embed", missing)
        host.runner.start("embed", f"embedding tile 1 of {n}", job, done)
        return True

    # -- display --

    def _plane_states(self) -> tuple[Any, Plane | None, TileGrid | None, list[str]]:
        """(image, plane, grid, state of every tile) for the current plane."""
        image, plane = self._host.image_layer(), self._host.plane_embedder.plane
        grid = None if image is None or plane is None else self.grid_for(plane.shape)
        if grid is None:
            return image, plane, None, []
        tiled = self.current(plane)
        if tiled is None or tiled.grid != grid:  # settings changed, the plane not yet
            return image, plane, grid, tile_states(len(grid), (), self.pending)
        embedded = set(self.finished) | set(tiled.embedded)
        return image, plane, grid, tile_states(len(grid), embedded, self.pending)

    def states(self) -> list[str]:
        """State of every tile of the current plane (empty when it is not tiled)."""
        return self._plane_states()[3]

    def refresh(self, *_: Any) -> None:
        """Status line and "SAM tiles" layer for the current plane and its tiles' states."""
        if self._host.closed:
            return
        image, plane, grid, states = self._plane_states()
        if grid is None or plane is None:
            self._remove_layer()
            self.info.value = self._untiled_text(plane)
            return
        self.info.value = describe_tiles(grid, states, plane.shape)
        if self.show_tiles.value:
            self._draw(image, plane, grid, states)
        else:
            self._remove_layer()

    def _untiled_text(self, plane: Plane | None) -> str:
        if plane is None:
            return ""
        h, w = plane.shape
        if self.mode.value == "off":
            if needs_tiling(plane.shape):
                return f"{h} x {w} px: small objects may be lost; choose tiling 'auto'."
            return ""
        return describe_tiles(None, [], plane.shape)

    def _draw(self, image: Any, plane: Plane, grid: TileGrid, states: list[str]) -> None:
        geometry = (image.unique_id, plane, grid, tuple(image.scale), tuple(image.translate))
        layer, viewer = self.layer, self._host.viewer
        if layer is not None and layer in viewer.layers and self._drawn is not None:
            if self._drawn == (geometry, tuple(states)):
                return
            if self._drawn[0] == geometry:
                self._colour(layer, states)
                self._drawn = (geometry, tuple(states))
                return
        self._remove_layer()
        edge = max(1.0, max(grid.image_shape) / 500)
        layer = Shapes(
            tile_rectangles(grid, plane.axes, plane.index),
            ndim=image.ndim,
            shape_type="rectangle",
            name="SAM tiles",
            edge_width=edge,
            features={"tile": np.arange(len(grid)), "state": states},
            metadata={ROLE: "tiles"},
            **geometry_like(image),
        )
        self._colour(layer, states)
        layer.editable = False
        self.layer = add_quietly(viewer, layer)
        self._drawn = (geometry, tuple(states))
        # Just above the image: prompts, preview and labels stay visible over the tiles.
        layers = viewer.layers
        if image in layers and self.layer in layers:
            src, dest = layers.index(self.layer), layers.index(image) + 1
            if src > dest:
                layers.move(src, dest)

    @staticmethod
    def _colour(layer: Shapes, states: list[str]) -> None:
        layer.features = {"tile": np.arange(len(states)), "state": states}
        layer.edge_color = np.array([TILE_COLOURS[s][0] for s in states])
        layer.face_color = np.array([TILE_COLOURS[s][1] for s in states])

    def _remove_layer(self) -> None:
        layer, self.layer, self._drawn = self.layer, None, None
        viewer = self._host.viewer
        if layer is not None and layer in viewer.layers:
            self._removing = True
            try:
                viewer.layers.remove(layer)
            finally:
                self._removing = False

    def _on_layer_removed(self, event: Any) -> None:
        if self.layer is not None and event.value == self.layer and not self._removing:
            # The user removed it: stop showing tiles until they ask again.
            self.layer, self._drawn = None, None
            with self.show_tiles.changed.blocked():
                self.show_tiles.value = False

    def stop(self) -> None:
        """Stop following jobs (the widget is closing)."""
        try:
            self.timer.stop()
        except RuntimeError:  # pragma: no cover - Qt object already deleted
            pass
