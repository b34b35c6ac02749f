"""The napari dock widget: a facade over its parts.

Parts (each in its own module of :mod:`napari_sam.widget`):

- :class:`~.model_panel.ModelPanel`: image, model, device, intensities; loads the model.
- :class:`~.plane_embedding.PlaneEmbedder`: the current plane and its embedding; late
  embeddings are thrown away there.
- :class:`~.prompt_panel.PromptPanel`: prompt layers, point kind, candidates.
- :class:`~.preview.PreviewController`: prompts -> masks -> the preview layer.
- :class:`~.output_panel.OutputPanel`: the target labels; commit writes labels there.
- :class:`~.auto_panel.AutoPanel`: automatic segmentation.
- :class:`~.progress_panel.ProgressPanel` over the :class:`~.task_runner.TaskRunner` that
  runs every worker.
- :mod:`~.lifecycle`: event connections, keys, and noticing that napari closes us.

This class builds them, routes napari's events to them and keeps the public API that
scripts, tests and docs use (``commit``, ``segment``, ``auto_segment``, ``cancel``, ``busy``,
``preview``, ``embedding``, the controls as attributes...). Plain logic lives in
:mod:`napari_sam._session`, :mod:`napari_sam._layers` and :mod:`napari_sam._tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import Container, Label
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from .._compat import avoid_triton_llvm_clash
from .._session import Preview
from ..core.automatic import AutoParams
from ..core.normalize import Normalization
from .auto_panel import AutoPanel
from .cache_panel import EmbeddingCachePanel
from .label_editor import LabelEditor
from .layer_menus import selected
from .lifecycle import CloseWatcher, Connections, KeyBindings
from .model_panel import ModelPanel
from .output_panel import OutputPanel
from .plane_embedding import PlaneEmbedder
from .preview import PreviewController
from .progress_panel import ProgressPanel
from .prompt_panel import PromptPanel
from .session_panel import SessionPanel
from .task_runner import TaskRunner
from .tiling_panel import TilingPanel
from .volume_panel import VolumePanel

# Before anything imports torchvision (segment-anything does): see the function's notes.
avoid_triton_llvm_clash()

#: Delay (ms) that merges bursts of events (slider drags, contrast changes) into one update.
DEBOUNCE_MS = 120


class SamWidget(Container):
    """Segment Anything in napari: click points or draw boxes, preview, commit to labels.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are annotated.
    engine : SamEngine, optional
        A loaded model to use instead of the one chosen in the widget (scripts and tests;
        see :meth:`set_engine`). napari itself passes only the viewer.

    Notes
    -----
    Typical use: choose an image, click inside an object (the "SAM points" layer is active
    in add mode), look at the preview, press Shift+C to commit it as a new label. Drawing
    rectangles in "SAM boxes" segments one object per box. Keys (see
    :data:`napari_sam._session.KEYS`) work anywhere in the viewer while the widget is open.
    """

    def __init__(self, viewer: napari.viewer.Viewer, engine: Any = None) -> None:
        super().__init__(labels=False)
        # The canvas exists by now: this is where its OpenGL driver may have loaded LLVM.
        avoid_triton_llvm_clash()
        self.viewer = viewer
        self.closed = False
        self._closing = False  # napari's window is closing: ignore its events
        self._image_id: Any = None  # unique_id of the image the widget is set up for
        self.connections = Connections()
        self.runner = TaskRunner(self._report_unexpected, changed=self._tasks_changed)
        self.keys = KeyBindings(
            {
                "segment": self.segment,
                "commit": self.commit,
                "clear": self.clear_prompts,
                "toggle": self.toggle_point_label,
                "candidate": self.next_candidate,
                "edit": self.edit_label,
            },
            alive=lambda: not self.closed,
            owner=self,
        )
        self.plane_timer = self._timer(self._update_plane)
        self._sync_timer = self._timer(self._sync_image)

        self.plane_embedder = PlaneEmbedder(self)
        self.preview_controller = PreviewController(self)
        self.model_panel = ModelPanel(self, engine)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.prompt_panel = PromptPanel(self)
        self.label_editor = LabelEditor(self)
        self.output_panel = OutputPanel(self)
        self.auto_panel = AutoPanel(self)
        self.tiling_panel = TilingPanel(self)
        self.volume_panel = VolumePanel(self)
        self.session_panel = SessionPanel(self)
        self.cache_panel = EmbeddingCachePanel(self)
        self.progress_panel = ProgressPanel(self.runner, self.cancel)
        self.extend(
            [
                self.model_panel,
                self.status,
                self.prompt_panel,
                self.label_editor,
                self.output_panel,
                self.auto_panel,
                self.tiling_panel,
                self.volume_panel,
                self.session_panel,
                self.cache_panel,
                self.progress_panel,
            ]
        )
        self._expose_controls()
        self._connect_controls()
        self.keys.bind(viewer)
        layers = viewer.layers
        self._listen("viewer", layers.events.inserted, self._on_layer_inserted)
        self._listen("viewer", layers.events.removed, self._on_layer_removed)
        self._listen("viewer", layers.events.moved, self.refresh_choices)
        for event in ("current_step", "order", "ndisplay"):
            self._listen("viewer", getattr(viewer.dims.events, event), self._on_dims)
        for layer in layers:
            self._listen(f"name:{layer.unique_id}", layer.events.name, self.refresh_choices)

        self._watcher = CloseWatcher(
            self.native, self._cleanup, self._on_window_closing, self._on_window_stays
        )
        self.native.destroyed.connect(_cleanup_on_destroy(self))
        self.refresh_choices()
        active = viewer.layers.selection.active
        if isinstance(active, Image):
            with self.image.changed.blocked():
                self.image.value = active
        self._on_image_changed()

    # -- assembly --

    def _expose_controls(self) -> None:
        """The parts' controls as attributes of the widget (scripts and docs use them)."""
        parts = (self.model_panel, self.prompt_panel, self.output_panel)
        names = {
            self.model_panel: (
                "image",
                "model",
                "checkpoint",
                "device",
                "normalization",
                "percentile_low",
                "percentile_high",
            ),
            self.prompt_panel: (
                "points_layer",
                "boxes_layer",
                "point_kind",
                "per_point",
                "live",
                "refine",
                "candidate_info",
                "next_candidate_button",
            ),
            self.output_panel: (
                "target",
                "overwrite",
                "clear_after",
                "segment_button",
                "commit_button",
                "clear_button",
            ),
        }
        for part in parts:
            for name in names[part]:
                setattr(self, name, getattr(part, name))
        auto = self.auto_panel
        for name in (
            "points_per_side",
            "points_per_batch",
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_n_layers",
            "min_size",
        ):
            setattr(self, name, getattr(auto, name))
        self.auto_settings = auto.settings
        self.auto_toggle = auto.toggle
        self.auto_button = auto.button
        tiling = self.tiling_panel
        self.tiling_mode = tiling.mode
        self.show_tiles = tiling.show_tiles
        self.tiles_info = tiling.info
        self.progress = self.progress_panel.bar
        self.progress_text = self.progress_panel.text
        self.cancel_button = self.progress_panel.cancel_button

    def _connect_controls(self) -> None:
        self.image.changed.connect(self._on_image_changed)
        self.normalization.changed.connect(self._on_normalization_changed)
        self.percentile_low.changed.connect(self._on_normalization_changed)
        self.percentile_high.changed.connect(self._on_normalization_changed)
        self.next_candidate_button.clicked.connect(self.next_candidate)
        self.segment_button.clicked.connect(self.segment)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.auto_button.clicked.connect(self.auto_segment)

    def _timer(self, slot: Any) -> QTimer:
        timer = QTimer(self.native)
        timer.setSingleShot(True)
        timer.timeout.connect(slot)
        return timer

    def _listen(self, group: str, emitter: Any, callback: Any) -> None:
        self.connections.connect(group, emitter, callback)

    # -- services for the parts --

    def set_status(self, text: str) -> None:
        """Show a line in the widget's status label (replaced by the next one)."""
        if not self.closed:
            self.status.value = text

    def notify(self, text: str) -> None:
        show_info(text)

    def warn(self, text: str) -> None:
        show_warning(text)

    def error(self, text: str) -> None:
        show_error(text)

    def _report_unexpected(self, error: BaseException, what: str) -> None:
        from .messages import report

        self.set_status(report(error, what))

    def image_layer(self) -> Image | None:
        """The image being segmented (None when there is none)."""
        return self.model_panel.image_layer()

    def axis_labels(self) -> tuple[str, ...] | None:
        image = self.image_layer()
        return tuple(image.axis_labels) if image is not None else None

    def normalization_settings(self, image: Image | None = None) -> Normalization:
        """The intensity mapping chosen in the widget, for ``image``."""
        return self.model_panel.normalization_settings(image)

    def refresh_choices(self, *_: Any) -> None:
        """Re-read the layer menus (layers were added, removed, renamed or moved)."""
        if self.closed:
            return
        for combo in (self.image, self.points_layer, self.boxes_layer, self.target):
            with combo.changed.blocked():
                combo.reset_choices()

    def _tasks_changed(self) -> None:
        if not self.closed:
            self.progress_panel.refresh()
            if not self.runner.tasks():  # all done: new embeddings may be on disk
                self.cache_panel.refresh()

    # -- events from the parts --

    def on_settings_changed(self, *, now: bool = False) -> None:
        """The model, device or intensities changed: the plane's embedding must follow."""
        if now:
            self._update_plane()
        else:
            self.plane_timer.start(DEBOUNCE_MS)

    def on_plane_invalidated(self) -> None:
        """The plane, image, model or intensities changed: what was asked for them dies."""
        self.output_panel.drop_pending(
            "Commit dropped: the plane, image or model changed before its preview was ready."
        )
        self.preview_controller.show(None)
        self.label_editor.current(self.plane_embedder.plane)  # another plane ends an edit
        self.tiling_panel.plane_changed()
        self.volume_panel.plane_changed()

    def on_model_ready(self) -> None:
        self.prompt_panel.model_changed(self.engine.model)
        self._update_plane()
        self.auto_panel.model_ready()

    def on_model_failed(self) -> None:
        self.auto_panel.drop_pending()
        self.output_panel.drop_pending()

    def on_embedding_missing(self) -> None:
        if self.output_panel.commit_pending:
            self.output_panel.drop_pending()
            self.notify(
                f"Nothing committed: the image embedding was "
                f"{self.plane_embedder.missing_because}."
            )

    # -- napari events --

    def _active(self) -> bool:
        return not (self.closed or self._closing)

    def _on_layer_inserted(self, event: Any) -> None:
        if not self._active():
            return
        layer = event.value
        self._listen(f"name:{layer.unique_id}", layer.events.name, self.refresh_choices)
        self.refresh_choices()
        # Not while napari is still inserting the layer: adding our prompt layers from inside
        # its "inserted" event confuses its layer-list selection.
        self._sync_timer.start(0)

    def _on_layer_removed(self, event: Any) -> None:
        if not self._active():
            return
        layer = event.value
        self.connections.disconnect(f"name:{layer.unique_id}")
        preview = self.preview_controller
        if preview.layer is not None and layer == preview.layer:
            preview.layer = None
        prompts = (selected(self.points_layer), selected(self.boxes_layer))
        self.refresh_choices()
        if any(p is not None and p == layer for p in prompts):
            self.prompt_panel.on_layer_changed()
        self._sync_image()

    def _sync_image(self) -> None:
        """Follow the image menu when refreshing its choices changed its value silently."""
        if not self._active():
            return
        image = self.image_layer()
        if (None if image is None else image.unique_id) != self._image_id:
            self._on_image_changed()

    def _on_image_changed(self, *_: Any) -> None:
        if not self._active():
            return
        self.connections.disconnect("image")
        image = self.image_layer()
        self._image_id = None if image is None else image.unique_id
        if image is not None:
            ev = image.events
            self._listen("image", ev.data, self._on_image_data)
            self._listen("image", ev.contrast_limits, self._on_contrast_limits)
            for name in ("scale", "translate", "rotate", "shear", "affine"):
                self._listen("image", getattr(ev, name), self._on_dims)
            self.prompt_panel.ensure_layers(image)
        self.session_panel.image_changed(image)
        self.volume_panel.visible = image is not None and image.ndim - bool(image.rgb) > 2
        self._update_plane()

    def _on_image_data(self, *_: Any) -> None:
        self.plane_embedder.data_version += 1
        self.plane_timer.start(DEBOUNCE_MS)

    def _on_contrast_limits(self, *_: Any) -> None:
        if self.normalization.value == "contrast_limits":
            self.plane_timer.start(DEBOUNCE_MS)

    def _on_dims(self, *_: Any) -> None:
        if self._active():
            self.plane_timer.start(DEBOUNCE_MS)

    def _on_normalization_changed(self, *_: Any) -> None:
        self.model_panel.percentiles.visible = self.normalization.value == "percentile"
        self.on_settings_changed()

    def _update_plane(self, *, force: bool = False) -> None:
        if self._active():
            self.plane_embedder.update(force=force)

    # -- public API: state --

    @property
    def engine(self) -> Any:
        """The loaded :class:`~napari_sam.core.engine.SamEngine` (None until loaded)."""
        return self.model_panel.engine

    def set_engine(self, engine: Any) -> None:
        """Use an already loaded :class:`~napari_sam.core.engine.SamEngine`.

        For scripts and tests; it is used until the model or device control changes.
        """
        self.model_panel.set_engine(engine)
        self.prompt_panel.model_changed(engine.model)
        self._update_plane()

    @property
    def embedding(self) -> Any:
        """The :class:`~napari_sam.core.embedding.ImageEmbedding` of the current plane, if any."""
        return self.plane_embedder.embedding

    @property
    def preview(self) -> Preview | None:
        """What the preview layer shows (None when nothing)."""
        return self.preview_controller.preview

    @property
    def preview_layer(self) -> Labels | None:
        """The layer showing the preview, once there has been one."""
        return self.preview_controller.layer

    @property
    def discarded(self) -> int:
        """How many late results were thrown away (their plane, image or model changed)."""
        return self.plane_embedder.discarded

    @property
    def auto_settings_shown(self) -> bool:
        return self.auto_panel.settings_shown

    def auto_params(self) -> AutoParams:
        """The automatic segmentation settings of the widget."""
        return self.auto_panel.params()

    @property
    def busy(self) -> bool:
        """Whether work is running or scheduled (tests wait for this to become False)."""
        if self.closed:
            return False
        return bool(
            self.runner.busy
            or self.plane_timer.isActive()
            or self.preview_controller.pending
            or self.prompt_panel.activate_timer.isActive()
            or self._sync_timer.isActive()
            or self.output_panel.commit_pending
            or self.auto_panel.pending
        )

    # -- public API: tiling (large images, docs/large-images.md) --

    def set_tiling(
        self, tiling: str | tuple[int, int] = "auto", halo: tuple[int, int] | None = None
    ) -> None:
        """Tile large images: ``"auto"``, ``"off"`` or a tile ``(rows, cols)`` with its halo."""
        self.tiling_panel.set_tiling(tiling, halo)

    def use_tile_store(self, path: str | Path | None) -> None:
        """Use tile embeddings made earlier (``napari-sam embed IMAGE --tile ...``)."""
        self.tiling_panel.use_store(path)

    @property
    def tile_grid(self) -> Any:
        """The :class:`~napari_sam.core.tiling.TileGrid` of the current plane (None: whole)."""
        plane = self.plane_embedder.plane
        return None if plane is None else self.tiling_panel.grid_for(plane.shape)

    @property
    def tiles_embedded(self) -> list[int]:
        """Indices of the current plane's tiles whose embedding is available."""
        return [i for i, s in enumerate(self.tiling_panel.states()) if s == "embedded"]

    @property
    def tiles_layer(self) -> Any:
        """The "SAM tiles" Shapes layer showing the tiles (None when not shown)."""
        return self.tiling_panel.layer

    # -- public API: actions (buttons and keys) --

    def segment(self) -> None:
        """Compute the preview now (loading the model and the embedding if needed)."""
        if self.image_layer() is None:
            self.notify("Choose an image first.")
            return
        self.preview_controller.force = True
        self.model_panel.failed_key = None
        self._update_plane(force=True)
        self.preview_controller.schedule()

    def commit(self) -> None:
        """Write the previewed object(s) into the target labels layer (one undo step)."""
        self.output_panel.commit()

    def clear_prompts(self) -> None:
        """Remove the prompts of the current plane (those on other planes stay)."""
        self.prompt_panel.clear_plane()

    def toggle_point_label(self) -> None:
        """Switch new points between positive and negative."""
        self.prompt_panel.toggle_point_label()

    def next_candidate(self) -> None:
        """Show SAM's next candidate mask for an ambiguous click."""
        if not self.preview_controller.next_candidate():
            self.set_status("Only one candidate: SAM offers three for one click.")

    def edit_label(self, label: int | None = None) -> None:
        """Edit a label of the target layer (``label``, else the one under the mouse, else
        its selected label); again: stop editing."""
        if label is not None:
            self.label_editor.pick(label=label)
        else:
            self.label_editor.toggle(at_cursor=True)

    def auto_segment(self) -> None:
        """Segment every object of the current plane into a new labels layer (in a worker)."""
        self.auto_panel.run()

    def save_session(self, path: str | Path) -> Path | None:
        """Save the session of the current image (JSON, see docs/sessions.md)."""
        return self.session_panel.save_session(path)

    def load_session(self, path: str | Path) -> list[Labels]:
        """Open a session file of the current image; its labels come back as new layers."""
        return self.session_panel.load_session(path)

    def propagate(self) -> None:
        """Carry every prompted object through the stack from its key slice(s) (a worker)."""
        self.volume_panel.propagate()

    def auto_segment_3d(self) -> None:
        """Automatic segmentation of every slice, linked through the stack (a worker)."""
        self.volume_panel.auto_segment_3d()

    def embed_all_slices(self) -> None:
        """Embed every slice of the stack in the background, this slice first, then outward.

        Clicks, propagation and automatic segmentation go first; calling it again while it
        runs stops it (as does :meth:`cancel`). See docs/volumes.md.
        """
        self.volume_panel.embed_all()

    def show_auto_settings(self, show: bool | None = None) -> None:
        """Expand (or collapse, or toggle when None) the automatic segmentation settings."""
        self.auto_panel.show_settings(show)

    def cancel(self) -> None:
        """Cancel model loading, embedding, prediction and automatic segmentation."""
        self.auto_panel.drop_pending()
        self.output_panel.drop_pending()
        self.label_editor.leave("Stopped editing.")
        self.runner.cancel()

    # -- closing --

    def close(self) -> None:
        """Stop all work, unbind the keys and disconnect from the viewer, then close."""
        self._cleanup()
        super().close()

    def _on_window_closing(self) -> None:
        """napari's window is closing: stop every worker now, before Qt objects go."""
        self._closing = True
        self.runner.pause()

    def _on_window_stays(self) -> None:
        """napari did not close after all (the user said no): carry on."""
        self._closing = False
        self.runner.resume()
        self._update_plane()

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.runner.shutdown()
        self.progress_panel.close_all()
        self.tiling_panel.stop()
        for timer in (
            self.plane_timer,
            self._sync_timer,
            self.preview_controller.timer,
            self.prompt_panel.activate_timer,
        ):
            try:
                timer.stop()
            except RuntimeError:  # pragma: no cover - Qt object already deleted
                pass
        self.connections.disconnect_all()
        self.keys.unbind_all()


def _cleanup_on_destroy(widget: SamWidget) -> Any:
    """A slot for ``native.destroyed`` that holds no strong reference to the widget."""
    import weakref

    ref = weakref.ref(widget)

    def slot(*_: Any) -> None:
        w = ref()
        if w is not None:
            w._cleanup()

    return slot


def auto_segment_command(viewer: napari.viewer.Viewer) -> None:
    """Menu command (Layers > Segment): open the widget and auto-segment the active image."""
    dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-kit", "Segment Anything")
    dock.show()  # it may have been hidden
    active = viewer.layers.selection.active
    if isinstance(active, Image):
        widget.image.value = active
    widget.show_auto_settings(True)
    widget.auto_segment()
