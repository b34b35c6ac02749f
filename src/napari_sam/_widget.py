"""The napari dock widget: points and boxes in, labels out, automatic segmentation.

The widget is a magicgui :class:`~magicgui.widgets.Container`. It reads its controls and the
viewer's layers, starts background workers and shows their results; the decisions live in
:mod:`napari_sam._session` (what to predict, which candidate, what is stale) and the array
work in :mod:`napari_sam._layers` (planes, coordinates, writing labels).

Threads: model loading, image embeddings, mask prediction and automatic segmentation all run
in napari thread workers, so the window never waits for SAM. Workers never touch napari
objects; their results come back to the GUI thread, where a generation counter (and, for
predictions, a prompt version) decides whether they are still wanted.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.key_bindings import coerce_keybinding
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget

from . import __version__
from ._compat import avoid_triton_llvm_clash
from ._layers import (
    Plane,
    add_features,
    check_target,
    geometry_like,
    image_plane,
    level0,
    plane_prompts,
    preview_array,
    preview_placement,
    prompts_on_plane,
    spatial_shape,
    write_objects,
)
from ._session import (
    KEYS,
    Generation,
    Preview,
    build_objects,
    key_text,
    point_label,
    predict_objects,
)
from .core.automatic import AutoParams, segment_automatically
from .core.errors import Cancelled, NapariSamError
from .core.normalize import DEFAULT_PERCENTILES, Normalization
from .core.registry import DEFAULT_MODEL, MODELS

log = logging.getLogger(__name__)

# Before anything imports torchvision (segment-anything does): see the function's notes.
avoid_triton_llvm_clash()

#: Metadata key marking the layers this widget made (and what for).
ROLE = "napari_sam_role"
#: Metadata key of the provenance written into labels layers.
PROVENANCE = "napari_sam"
#: Values of the points layers' ``label`` feature.
POINT_LABELS = ("positive", "negative")
# Green and magenta stay distinct with red-green colour blindness.
POINT_COLOURS = {"positive": "#39ff14", "negative": "#ff2bd6"}

CUSTOM = "custom"
#: Environment variable naming the model the widget starts with (e.g. ``vit_h``, ``tiny``).
ENV_MODEL = "NAPARI_SAM_MODEL"
_NEW = "__new__"
_NONE = "__none__"
#: Delay (ms) that merges bursts of events (slider drags, contrast changes) into one update.
DEBOUNCE_MS = 120


@dataclass
class _Embedded:
    """The embedding of the current plane and what it was computed from."""

    key: tuple
    plane: Plane
    engine: Any
    embedding: Any
    rgb: np.ndarray
    cached: bool


class _Task:
    """A job in a worker thread: its progress and its cancel flag (set from the GUI)."""

    def __init__(self, kind: str, label: str, key: Any = None) -> None:
        self.kind = kind
        self.label = label
        self.key = key
        self._cancel = threading.Event()
        self.done = 0
        self.total = 0
        self.worker: Any = None
        self.pbar: Any = None

    def progress(self, done: int, total: int) -> None:
        """Progress callback for the core; called from the worker thread."""
        self.done, self.total = int(done), int(total)
        if self._cancel.is_set():
            # Model downloads only stop through their progress callback.
            raise Cancelled(f"{self.label} cancelled")

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_cancelled(self) -> bool:
        """Cancel check for the core (a callable)."""
        return self._cancel.is_set()


class _CloseWatcher(QObject):
    """Calls ``widget.close()`` when napari closes the dock widget around it.

    napari's close button takes the widget out of its dock (``setParent(None)``) and deletes
    the dock; neither closes the widget, so keys and layer connections would outlive it.
    """

    def __init__(self, widget: SamWidget) -> None:
        super().__init__(widget.native)
        self._widget = weakref.ref(widget)
        self._dock: QDockWidget | None = None
        self._had_parent = False
        widget.native.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            widget = self._widget()
            if widget is not None and widget.native.parentWidget() is not None:
                self._had_parent = True
            # napari finishes building the dock after the reparenting: look afterwards.
            QTimer.singleShot(0, self._check)
        return False

    def _check(self) -> None:
        widget = self._widget()
        if widget is None or widget.closed:
            return
        parent = widget.native.parentWidget()
        if parent is None:
            if self._had_parent:
                widget.close()  # taken out of its dock (napari's close button)
            return
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        if parent is not None and parent is not self._dock:
            self._dock = parent
            parent.destroyed.connect(self._on_dock_destroyed)

    def _on_dock_destroyed(self, *_: Any) -> None:
        widget = self._widget()
        if widget is not None and not widget.closed:
            widget.close()


def _available_devices() -> list[str]:
    """Devices to offer. Only asks torch when it is already imported: importing it here
    would stall napari for seconds when the widget opens (the model loader imports it in a
    worker; a device that turns out to be unavailable is reported then)."""
    if "torch" not in sys.modules:
        return ["auto", "cpu", "cuda", "mps"]
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        n = torch.cuda.device_count()
        if n > 1:
            devices += [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _model_choices() -> tuple[list[tuple[str, str]], str]:
    """Model menu entries and the default model.

    The default is ``$NAPARI_SAM_MODEL`` when it names a registered model, else the first
    official model already downloaded, else the registry's default (downloaded on first use).
    """
    from .core.checkpoints import checkpoints_dir

    choices = []
    default = None
    for name, spec in MODELS.items():
        if spec.url is None:
            choices.append((f"{name} (bundled test model, not a real SAM)", name))
            continue
        cached = (checkpoints_dir() / spec.filename).is_file()
        if cached and default is None:
            default = name
        choices.append((f"{name} ({'downloaded' if cached else 'downloads on first use'})", name))
    choices.append(("custom checkpoint file…", CUSTOM))
    wanted = os.environ.get(ENV_MODEL, "")
    if wanted in MODELS:
        default = wanted
    return choices, default or DEFAULT_MODEL


def _button(text: str, action: str | None = None, tooltip: str = "") -> PushButton:
    if action is not None:
        text = f"{text} ({key_text(action)})"
        tooltip = f"{tooltip} Shortcut: {key_text(action)}.".strip()
    return PushButton(text=text, tooltip=tooltip)


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
    rectangles in "SAM boxes" segments one object per box. Keys (see :data:`KEYS`) work
    anywhere in the viewer while the widget is open.
    """

    def __init__(self, viewer: napari.viewer.Viewer, engine: Any = None) -> None:
        super().__init__(labels=False)
        # The canvas exists by now: this is where its OpenGL driver may have loaded LLVM.
        avoid_triton_llvm_clash()
        self.viewer = viewer
        self.engine: Any = None
        self._engine_key: tuple | None = None
        self._injected: tuple | None = None
        self._failed_model: tuple | None = None
        self._generation = Generation()
        self._tasks: dict[str, _Task] = {}
        self._embedded: _Embedded | None = None
        self._plane: Plane | None = None
        self._plane_key: tuple | None = None
        self._stopped_key: tuple | None = None  # cancelled or failed: no automatic retry
        self._data_version = 0
        self._preview: Preview | None = None
        self._prompt_version = 0
        self._preview_version = -1
        self._predict_again = False
        self._force_preview = False
        self._commit_pending = False
        self._auto_pending = False
        self._connections: dict[str, list[tuple[Any, Callable]]] = {}
        self._bindings: list[tuple[Any, str, Callable, Any]] = []
        self._preview_layer: Labels | None = None
        #: How many late results were thrown away (the image, slice, model or normalisation
        #: had changed by the time they arrived).
        self.discarded = 0
        self._image_id: Any = None  # unique_id of the image the widget is set up for
        self._declined: set[str] = set()  # prompt menus the user set to "(none)"
        self._picked: set[str] = set()  # prompt menus where the user picked a layer
        self.closed = False
        if engine is not None:
            self._injected = ("injected", id(engine), str(engine.model.device))
            self.engine = engine
            self._engine_key = self._injected

        self._build_controls()
        self._plane_timer = self._timer(self._update_plane)
        self._preview_timer = self._timer(self._run_preview)
        self._progress_timer = self._timer(self._show_progress, single=False, interval=100)
        self._activate_timer = self._timer(self._activate_points)
        self._sync_timer = self._timer(self._sync_image)
        self._key_funcs = {
            "segment": self._key_handler(self.segment),
            "commit": self._key_handler(self.commit),
            "clear": self._key_handler(self.clear_prompts),
            "toggle": self._key_handler(self.toggle_point_label),
            "candidate": self._key_handler(self.next_candidate),
        }
        self._bind_keys(self.viewer)

        layers = self.viewer.layers
        self._connect("viewer", layers.events.inserted, self._on_layer_inserted)
        self._connect("viewer", layers.events.removed, self._on_layer_removed)
        self._connect("viewer", layers.events.moved, self._on_layers_moved)
        for event in ("current_step", "order", "ndisplay"):
            self._connect("viewer", getattr(self.viewer.dims.events, event), self._on_dims)
        for layer in layers:
            self._connect(f"name:{layer.unique_id}", layer.events.name, self._refresh_choices)

        self._watcher = _CloseWatcher(self)
        self.native.destroyed.connect(_cleanup_on_destroy(self))
        self._refresh_choices()
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            with self.image.changed.blocked():
                self.image.value = active
        self._on_image_changed()

    # --------------------------------------------------------------------------------------
    # Controls
    # --------------------------------------------------------------------------------------

    def _build_controls(self) -> None:
        models, default_model = _model_choices()
        self.image = ComboBox(
            label="image", choices=self._image_choices, tooltip="The image to segment."
        )
        self.model = ComboBox(
            label="model",
            choices=models,
            value=default_model,
            tooltip="\n".join(f"{n}: {s.description}" for n, s in MODELS.items())
            + "\ncustom: a SAM checkpoint file (ViT-B/L/H or napari-sam format)",
        )
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.pth *.pt *.bin", visible=False
        )
        self.device = ComboBox(
            label="device",
            choices=_available_devices(),
            value="auto",
            tooltip="auto: CUDA when available, else CPU. An unavailable device is reported "
            "when the model loads.",
        )
        self.normalization = ComboBox(
            label="intensities",
            choices=[
                ("contrast limits (as displayed)", "contrast_limits"),
                ("percentiles", "percentile"),
            ],
            tooltip="How the image is mapped to SAM's 8-bit RGB input. Contrast limits: what "
            "you see is what SAM sees. Percentiles: robust to outliers, ignores the display.",
        )
        lo, hi = DEFAULT_PERCENTILES
        self.percentile_low = FloatSpinBox(label="low %", value=lo, min=0, max=100, step=0.1)
        self.percentile_high = FloatSpinBox(label="high %", value=hi, min=0, max=100, step=0.1)
        self._percentiles = Container(
            widgets=[self.percentile_low, self.percentile_high],
            layout="horizontal",
            visible=False,
            label="percentiles",
        )
        settings = Container(
            widgets=[
                self.image,
                self.model,
                self.checkpoint,
                self.device,
                self.normalization,
                self._percentiles,
            ]
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)

        self.points_layer = ComboBox(
            name="points_layer",
            label="points",
            choices=self._points_choices,
            tooltip="Points layer with the clicks; its 'label' feature says positive or negative.",
        )
        self.boxes_layer = ComboBox(
            name="boxes_layer",
            label="boxes",
            choices=self._boxes_choices,
            tooltip="Shapes layer whose rectangles are boxes (one object per box).",
        )
        prompt_layers = Container(widgets=[self.points_layer, self.boxes_layer])
        self.point_kind = _button(
            "new points: positive",
            "toggle",
            "Whether the next points you add say 'this object' (positive) or 'not this' "
            "(negative).",
        )
        self.per_point = CheckBox(
            text="one object per positive point",
            tooltip="Each positive point gives its own object (negative points are shared); "
            "otherwise all points describe one object, or are shared by all boxes.",
        )
        self.live = CheckBox(
            text="live preview",
            value=True,
            tooltip="Update the preview whenever a prompt changes; otherwise press Segment.",
        )
        self.candidate_info = Label(value="")
        self.next_candidate_button = _button(
            "next candidate",
            "candidate",
            "A single click is ambiguous (part, object, whole): SAM proposes three masks. "
            "The one with the best predicted IoU is shown first.",
        )
        self.next_candidate_button.enabled = False

        self.target = ComboBox(
            label="labels",
            choices=self._target_choices,
            tooltip="Labels layer that receives committed objects.",
        )
        self.overwrite = CheckBox(
            text="overwrite existing labels",
            tooltip="Off: pixels that already carry a label keep it.",
        )
        self.clear_after = CheckBox(
            text="clear prompts after commit",
            value=True,
            tooltip="Remove the prompts of the current plane once their object is committed.",
        )
        self.segment_button = _button(
            "Segment", "segment", "Compute the preview now (needed when live preview is off)."
        )
        self.commit_button = _button(
            "Commit", "commit", "Write the previewed object(s) into the labels layer."
        )
        self.clear_button = _button("Clear", "clear", "Remove the prompts of the current plane.")
        buttons = Container(
            widgets=[self.segment_button, self.commit_button, self.clear_button],
            layout="horizontal",
            labels=False,
        )

        defaults = AutoParams()
        self.points_per_side = SpinBox(
            label="points per side", value=defaults.points_per_side, min=1, max=128
        )
        self.points_per_batch = SpinBox(
            label="points per batch", value=defaults.points_per_batch, min=1, max=1024
        )
        self.pred_iou_thresh = FloatSpinBox(
            label="min predicted IoU", value=defaults.pred_iou_thresh, min=0, max=1, step=0.01
        )
        self.stability_score_thresh = FloatSpinBox(
            label="min stability",
            value=defaults.stability_score_thresh,
            min=0,
            max=1,
            step=0.01,
        )
        self.box_nms_thresh = FloatSpinBox(
            label="box NMS IoU", value=defaults.box_nms_thresh, min=0, max=1, step=0.01
        )
        self.crop_n_layers = SpinBox(label="crop layers", value=defaults.crop_n_layers, max=3)
        self.min_size = SpinBox(label="min size (px)", value=defaults.min_size, max=10**9)
        self.auto_settings = Container(
            widgets=[
                self.points_per_side,
                self.points_per_batch,
                self.pred_iou_thresh,
                self.stability_score_thresh,
                self.box_nms_thresh,
                self.crop_n_layers,
                self.min_size,
            ],
            visible=False,
        )
        self.auto_settings_shown = False
        self.auto_toggle = PushButton(text="▸ automatic segmentation settings")
        self.auto_button = PushButton(
            text="Auto segment",
            tooltip="Segment every object of the current plane into a new labels layer.",
        )
        self.progress_text = Label(value="", visible=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.cancel_button = PushButton(
            text="Cancel",
            visible=False,
            tooltip="Stop loading the model, computing the embedding or segmenting.",
        )
        progress_row = Container(
            widgets=[self.progress, self.cancel_button], layout="horizontal", labels=False
        )

        self.extend(
            [
                settings,
                self.status,
                Label(value="<b>Prompts</b>"),
                prompt_layers,
                self.point_kind,
                self.per_point,
                self.live,
                self.candidate_info,
                self.next_candidate_button,
                Label(value="<b>Output</b>"),
                Container(widgets=[self.target]),
                self.overwrite,
                self.clear_after,
                buttons,
                Label(value="<b>Automatic segmentation</b>"),
                self.auto_toggle,
                self.auto_settings,
                self.auto_button,
                self.progress_text,
                progress_row,
            ]
        )

        self.image.changed.connect(self._on_image_changed)
        self.model.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.device.changed.connect(self._on_model_changed)
        self.normalization.changed.connect(self._on_normalization_changed)
        self.percentile_low.changed.connect(self._on_normalization_changed)
        self.percentile_high.changed.connect(self._on_normalization_changed)
        for combo in (self.points_layer, self.boxes_layer):
            combo.changed.connect(self._on_prompt_layer_changed)
            combo.changed.connect(self._remember_choice(combo))
        self.per_point.changed.connect(self._on_prompts_changed)
        self.live.changed.connect(self._on_prompts_changed)
        self.point_kind.clicked.connect(self.toggle_point_label)
        self.next_candidate_button.clicked.connect(self.next_candidate)
        self.segment_button.clicked.connect(self.segment)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.auto_toggle.clicked.connect(lambda: self.show_auto_settings())
        self.auto_button.clicked.connect(self.auto_segment)
        self.cancel_button.clicked.connect(self.cancel)

    def _timer(
        self, slot: Callable[[], None], *, single: bool = True, interval: int = 0
    ) -> QTimer:
        timer = QTimer(self.native)
        timer.setSingleShot(single)
        timer.setInterval(interval)
        timer.timeout.connect(slot)
        return timer

    def show_auto_settings(self, show: bool | None = None) -> None:
        """Expand (or collapse, or toggle when None) the automatic segmentation settings."""
        # Own state: ``visible`` reads False whenever the window is hidden.
        show = not self.auto_settings_shown if show is None else show
        self.auto_settings_shown = show
        self.auto_settings.visible = show
        arrow = "▾" if show else "▸"
        self.auto_toggle.text = f"{arrow} automatic segmentation settings"

    # choices of the layer menus ------------------------------------------------------------

    def _layers_of(self, kind: type, role: str | None = None) -> list[Any]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, kind) and (role is None or layer.metadata.get(ROLE) != role)
        ]

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._layers_of(Image)]

    def _points_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [(layer.name, layer) for layer in self._layers_of(Points)]
        # "(none)" before "new layer": when the chosen layer is deleted the menu falls back
        # to its first entry, which must not create a layer behind the user's back.
        return [*layers, ("(none)", _NONE), ("new layer", _NEW)]

    def _boxes_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [(layer.name, layer) for layer in self._layers_of(Shapes)]
        return [*layers, ("(none)", _NONE), ("new layer", _NEW)]

    def _target_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [(layer.name, layer) for layer in self._layers_of(Labels, role="preview")]
        # "new" first: never write into some other labels layer (a reference!) by default.
        return [("new layer 'SAM labels'", _NEW), *layers]

    def _refresh_choices(self, *_: Any) -> None:
        if self.closed:
            return
        for combo in (self.image, self.points_layer, self.boxes_layer, self.target):
            with combo.changed.blocked():
                combo.reset_choices()

    # --------------------------------------------------------------------------------------
    # Connections and keys
    # --------------------------------------------------------------------------------------

    def _connect(self, group: str, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._connections.setdefault(group, []).append((emitter, callback))

    def _disconnect(self, group: str) -> None:
        for emitter, callback in self._connections.pop(group, []):
            try:
                emitter.disconnect(callback)
            except (RuntimeError, ValueError, TypeError):  # pragma: no cover - already gone
                pass

    def _key_handler(self, method: Callable[[], Any]) -> Callable[[Any], None]:
        def handler(_target: Any) -> None:
            if not self.closed:
                method()

        handler.napari_sam_widget = weakref.ref(self)  # type: ignore[attr-defined]
        return handler

    def _bind_keys(self, target: Any) -> None:
        """Bind the plugin's keys on the viewer or on one of the plugin's own layers.

        ``overwrite=True``: a second widget (or a reopened one) takes the keys over instead
        of failing; what was bound before is restored when this widget closes.
        """
        for action, key in KEYS.items():
            func = self._key_funcs[action]
            previous = target.bind_key(key, func, overwrite=True)
            self._bindings.append((target, key, func, previous))

    def _unbind_keys(self) -> None:
        for target, key, func, previous in reversed(self._bindings):
            try:
                keymap = target.keymap
            except (RuntimeError, AttributeError):  # pragma: no cover - target deleted
                continue
            kb = coerce_keybinding(key)
            if keymap.get(kb) is not func:
                continue  # someone bound this key after us: leave theirs alone
            owner = getattr(previous, "napari_sam_widget", None)
            stale = owner is not None and (owner() is None or owner().closed)
            if previous is not None and not stale:
                target.bind_key(key, previous, overwrite=True)
            else:
                target.bind_key(key, None)
        self._bindings.clear()

    # --------------------------------------------------------------------------------------
    # Closing
    # --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop all work, unbind the keys and disconnect from the viewer, then close."""
        self._cleanup()
        super().close()

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks.values()):
            task.cancel()
            self._close_pbar(task)
        self._tasks.clear()
        timers = (self._plane_timer, self._preview_timer, self._progress_timer)
        for timer in (*timers, self._activate_timer, self._sync_timer):
            try:
                timer.stop()
            except RuntimeError:  # pragma: no cover - Qt object already deleted
                pass
        for group in list(self._connections):
            self._disconnect(group)
        self._unbind_keys()

    # --------------------------------------------------------------------------------------
    # Layer bookkeeping
    # --------------------------------------------------------------------------------------

    def _on_layer_inserted(self, event: Any) -> None:
        layer = event.value
        self._connect(f"name:{layer.unique_id}", layer.events.name, self._refresh_choices)
        self._refresh_choices()
        # Not while napari is still inserting the layer: adding our prompt layers from inside
        # its "inserted" event confuses its layer-list selection.
        self._sync_timer.start(0)

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        self._disconnect(f"name:{layer.unique_id}")
        if self._preview_layer is not None and layer == self._preview_layer:
            self._preview_layer = None
        prompts = (self._selected(self.points_layer), self._selected(self.boxes_layer))
        self._refresh_choices()
        if any(p is not None and p == layer for p in prompts):
            self._on_prompt_layer_changed()
        self._sync_image()

    def _sync_image(self) -> None:
        """Follow the image menu when refreshing its choices changed its value silently."""
        if self.closed:
            return
        image = self.image_layer()
        if (None if image is None else image.unique_id) != self._image_id:
            self._on_image_changed()

    def _on_layers_moved(self, _event: Any = None) -> None:
        self._refresh_choices()

    @staticmethod
    def _selected(combo: ComboBox) -> Any:
        value = combo.value
        return None if isinstance(value, str) else value

    def image_layer(self) -> Image | None:
        """The image being segmented (None when there is none)."""
        return self._selected(self.image)

    def _add_layer_quietly(self, layer: Any) -> Any:
        """Add a layer without making it the active one (clicks keep going where they went)."""
        active = self.viewer.layers.selection.active
        added = self.viewer.add_layer(layer)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return added

    def _new_points_layer(self, image: Image) -> Points:
        size = max(3, round(max(spatial_shape(image)[-2:]) / 80))
        layer = Points(
            np.zeros((0, image.ndim)),
            ndim=image.ndim,
            name="SAM points",
            features=pd.DataFrame({"label": pd.Categorical([], categories=list(POINT_LABELS))}),
            feature_defaults={"label": "positive"},
            face_color="label",
            face_color_cycle=POINT_COLOURS,
            border_color="white",
            border_width=0.15,
            size=size,
            metadata={ROLE: "points"},
            **geometry_like(image),
        )
        return self._add_layer_quietly(layer)

    def _new_boxes_layer(self, image: Image) -> Shapes:
        width = max(1, round(max(spatial_shape(image)[-2:]) / 400))
        layer = Shapes(
            ndim=image.ndim,
            name="SAM boxes",
            edge_color="#ffd700",
            face_color="transparent",
            edge_width=width,
            metadata={ROLE: "boxes"},
            **geometry_like(image),
        )
        return self._add_layer_quietly(layer)

    def _ensure_prompt_layers(self, image: Image) -> None:
        """Give the image prompt layers of its dimensionality.

        A layer the user picked is kept; otherwise one made by the widget is reused or a new
        one made. Other points and shapes layers are never taken as prompts unasked: they
        may hold anything (detections, measurements...).
        """
        made = False
        for combo, make, role in (
            (self.boxes_layer, self._new_boxes_layer, "boxes"),
            (self.points_layer, self._new_points_layer, "points"),
        ):
            if combo.name in self._declined:
                continue
            layer = self._selected(combo)
            ours = layer is not None and layer.metadata.get(ROLE) == role
            if (
                layer is not None
                and layer.ndim == image.ndim
                and (ours or combo.name in self._picked)
            ):
                continue
            own = [
                x
                for x in self.viewer.layers
                if x.metadata.get(ROLE) == role and x.ndim == image.ndim
            ]
            new = own[-1] if own else make(image)
            made = made or not own
            self._refresh_choices()
            with combo.changed.blocked():
                combo.value = new
        self._on_prompt_layer_changed()
        if made:
            # Ready to click: the first thing a user does is click on an object. Done
            # later: when the image was just added, napari selects it after telling us.
            self._activate_timer.start(0)

    def _remember_choice(self, combo: ComboBox) -> Callable[[Any], None]:
        # Only the user's own choices reach here: the widget's changes are made blocked.
        def slot(value: Any) -> None:
            self._declined.discard(combo.name)
            self._picked.discard(combo.name)
            if isinstance(value, str) and value == _NONE:
                self._declined.add(combo.name)
            elif not isinstance(value, str):
                self._picked.add(combo.name)

        return slot

    def _activate_points(self) -> None:
        points = self._selected(self.points_layer)
        if points is not None and points in self.viewer.layers:
            self.viewer.layers.selection.active = points
            points.mode = "add"

    def _on_prompt_layer_changed(self, *_: Any) -> None:
        if self.closed:
            return
        image = self.image_layer()
        for combo, make in (
            (self.points_layer, self._new_points_layer),
            (self.boxes_layer, self._new_boxes_layer),
        ):
            if combo.value == _NEW and image is not None:
                new = make(image)
                self._refresh_choices()
                with combo.changed.blocked():
                    combo.value = new
        self._disconnect("prompts")
        points = self._selected(self.points_layer)
        boxes = self._selected(self.boxes_layer)
        for layer in (points, boxes):
            if layer is None:
                continue
            self._connect("prompts", layer.events.data, self._on_prompt_data)
            for name in ("features", "scale", "translate", "rotate", "shear", "affine"):
                self._connect("prompts", getattr(layer.events, name), self._on_prompts_changed)
            if layer.metadata.get(ROLE) in ("points", "boxes") and not any(
                t == layer for t, *_ in self._bindings
            ):
                self._bind_keys(layer)
        if points is not None:
            self._show_point_kind(points)
        self._on_prompts_changed()

    # --------------------------------------------------------------------------------------
    # Image, plane, model, normalisation
    # --------------------------------------------------------------------------------------

    def _on_image_changed(self, *_: Any) -> None:
        if self.closed:
            return
        self._disconnect("image")
        image = self.image_layer()
        self._image_id = None if image is None else image.unique_id
        if image is not None:
            ev = image.events
            self._connect("image", ev.data, self._on_image_data)
            self._connect("image", ev.contrast_limits, self._on_contrast_limits)
            for name in ("scale", "translate", "rotate", "shear", "affine"):
                self._connect("image", getattr(ev, name), self._on_dims)
            self._ensure_prompt_layers(image)
        self._update_plane()

    def _on_image_data(self, *_: Any) -> None:
        self._data_version += 1
        self._plane_timer.start(DEBOUNCE_MS)

    def _on_contrast_limits(self, *_: Any) -> None:
        if self.normalization.value == "contrast_limits":
            self._plane_timer.start(DEBOUNCE_MS)

    def _on_dims(self, *_: Any) -> None:
        self._plane_timer.start(DEBOUNCE_MS)

    def _on_normalization_changed(self, *_: Any) -> None:
        self._percentiles.visible = self.normalization.value == "percentile"
        self._plane_timer.start(DEBOUNCE_MS)

    def _on_model_changed(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == CUSTOM
        self._injected = None
        self._failed_model = None
        self._update_plane()

    def normalization_settings(self, image: Image | None = None) -> Normalization:
        """The intensity mapping chosen in the widget, for ``image``."""
        image = image or self.image_layer()
        if self.normalization.value == "contrast_limits" and image is not None:
            return Normalization(
                method="contrast_limits", contrast_limits=tuple(image.contrast_limits)
            )
        low, high = self.percentile_low.value, self.percentile_high.value
        return Normalization(method="percentile", percentiles=(low, high))

    def _model_key(self) -> tuple | None:
        if self._injected is not None:
            return self._injected
        device = self.device.value
        if self.model.value == CUSTOM:
            path = self.checkpoint.value
            if not path or not Path(path).is_file():
                return None
            return ("auto", str(Path(path).expanduser().resolve()), device)
        return (self.model.value, None, device)

    def set_engine(self, engine: Any) -> None:
        """Use an already loaded :class:`~napari_sam.core.engine.SamEngine`.

        For scripts and tests; it is used until the model or device control changes.
        """
        self._injected = ("injected", id(engine), str(engine.model.device))
        self.engine = engine
        self._engine_key = self._injected
        self._update_plane()

    def _update_plane(self, *, force: bool = False) -> None:
        """Work out the current plane and make sure its embedding exists or is coming."""
        if self.closed:
            return
        image = self.image_layer()
        if image is None:
            self._invalidate(None)
            self._set_status("Open an image (File > Open Sample > napari-sam) to start.")
            return
        dims = self.viewer.dims
        try:
            plane = image_plane(image, dims.point, dims.displayed, dims.ndim)
        except NapariSamError as e:
            self._invalidate(None)
            self._set_status(str(e))
            return
        norm = self.normalization_settings(image)
        key = (image.unique_id, self._data_version, plane, norm, self._model_key())
        if key != self._plane_key:
            self._invalidate(key, plane)
        elif self._embedded is not None:
            self._schedule_preview()
            return
        if "embed" in self._tasks or (key == self._stopped_key and not force):
            return
        if not self._ensure_model(force=force):
            return
        self._stopped_key = None
        self._start_embedding(image, plane, norm, key)

    def _invalidate(self, key: tuple | None, plane: Plane | None = None) -> None:
        """Forget the embedding and preview of the previous plane; late results are stale."""
        self._generation.bump()
        self._plane_key = key
        self._plane = plane
        self._embedded = None
        self._stopped_key = None
        task = self._tasks.pop("embed", None)
        if task is not None:
            task.cancel()
            self._close_pbar(task)
        self._set_preview(None)

    def _ensure_model(self, *, force: bool = False) -> bool:
        """True when the chosen model is loaded; otherwise start loading it."""
        key = self._model_key()
        if key is None:
            self._set_status("Choose a checkpoint file for the custom model.")
            return False
        if self.engine is not None and self._engine_key == key:
            return True
        if key == self._failed_model and not force:
            return False
        running = self._tasks.get("model")
        if running is not None and running.key == key:
            return False
        name, checkpoint, device = key
        label = f"loading model {Path(checkpoint).name if checkpoint else name}"
        self._set_status(f"{label.capitalize()}…")

        def job(task: _Task) -> Any:
            from .core.checkpoints import load_model
            from .core.engine import SamEngine

            avoid_triton_llvm_clash()  # segment-anything imports torchvision
            model = load_model(name, checkpoint=checkpoint, device=device, progress=task.progress)
            return SamEngine(model)

        self._start_task("model", label, job, self._on_model_loaded, key=key)
        return False

    def _on_model_loaded(self, task: _Task, engine: Any, error: BaseException | None) -> None:
        if task.key != self._model_key():
            return  # another model was chosen meanwhile
        if error is not None:
            self._failed_model = task.key
            self._auto_pending = False
            self._commit_pending = False
            self._report(error, "the model could not be loaded")
            return
        self.engine = engine
        self._engine_key = task.key
        self._update_plane()
        if self._auto_pending:
            self._auto_pending = False
            self.auto_segment()

    def _start_embedding(self, image: Image, plane: Plane, norm: Normalization, key: tuple):
        data = level0(image)
        rgb_layer = bool(image.rgb)
        engine = self.engine
        generation = self._generation.value

        def job(task: _Task) -> tuple[Any, np.ndarray, bool]:
            rgb = norm.apply(plane.take(data), rgb=rgb_layer)
            cached = engine.cached_embedding(rgb) is not None
            emb = engine.embed(rgb, progress=task.progress, cancel=task.is_cancelled)
            return emb, rgb, cached

        def done(task: _Task, result: Any, error: BaseException | None) -> None:
            if not self._generation.is_current(generation) or self._plane_key != key:
                self.discarded += 1  # stale: the image, slice, model or normalisation changed
                return
            if error is not None:
                self._stopped_key = key
                self._commit_pending = False
                if isinstance(error, Cancelled):
                    self._set_status(
                        f"Embedding cancelled; press Segment ({key_text('segment')}) "
                        "to compute it."
                    )
                else:
                    self._report(error, "the embedding could not be computed")
                return
            embedding, rgb, cached = result
            self._embedded = _Embedded(key, plane, engine, embedding, rgb, cached)
            self._status_ready()
            self._schedule_preview()

        self._set_status("Computing the image embedding…")
        self._start_task("embed", "computing image embedding", job, done, key=key)

    def _status_ready(self) -> None:
        if self._embedded is None or self.engine is None:
            return
        model = self.engine.model
        emb = self._embedded.embedding
        took = "cached" if self._embedded.cached else f"{emb.seconds:.1f} s"
        where = self._embedded.plane.describe(self._axis_labels())
        self._set_status(
            f"{model.name} on {model.device} · embedding {took}" + (f" · {where}" if where else "")
        )

    def _axis_labels(self) -> tuple[str, ...] | None:
        image = self.image_layer()
        return tuple(image.axis_labels) if image is not None else None

    # --------------------------------------------------------------------------------------
    # Prompts and preview
    # --------------------------------------------------------------------------------------

    def _on_prompt_data(self, event: Any) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith(("adding", "removing")):
            return  # "about to change" events: the data is not there yet
        self._on_prompts_changed()

    def _on_prompts_changed(self, *_: Any) -> None:
        if self.closed:
            return
        self._prompt_version += 1
        self._schedule_preview()

    def _schedule_preview(self) -> None:
        if not self.closed:
            self._preview_timer.start(0)

    def _current_prompts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        image = self.image_layer()
        assert image is not None and self._plane is not None
        return plane_prompts(
            self._selected(self.points_layer),
            self._selected(self.boxes_layer),
            image,
            self._plane,
            self.viewer.dims.point,
        )

    def _run_preview(self) -> None:
        """Start a prediction for the current prompts (latest wins; results can be late)."""
        if self.closed:
            return
        force = self._force_preview
        if not (self.live.value or force or self._commit_pending):
            return
        embedded = self._embedded
        if embedded is None or embedded.key != self._plane_key or self._plane is None:
            return  # the embedding is coming; it schedules the preview
        if "predict" in self._tasks:
            self._predict_again = True
            return
        self._force_preview = False
        try:
            points, labels, boxes, elsewhere = self._current_prompts()
            objects = build_objects(
                points,
                labels,
                boxes,
                per_point=self.per_point.value,
                image_shape=self._plane.shape,
            )
        except NapariSamError as e:
            self._set_preview(None, str(e))
            self._commit_pending = False
            return
        version = self._prompt_version
        if not objects:
            hint = "Click inside an object, or draw a box."
            if elsewhere:
                hint += f" ({elsewhere} prompt(s) on other planes are ignored.)"
            self._set_preview(None, hint)
            self._preview_version = version
            if self._commit_pending:
                self._commit_pending = False
                show_info("Nothing to commit: click a point or draw a box first.")
            return
        engine = embedded.engine
        generation = self._generation.value
        plane = self._plane

        def job(task: _Task) -> Any:
            return predict_objects(engine, embedded.embedding, objects, task.is_cancelled)

        def done(task: _Task, result: Any, error: BaseException | None) -> None:
            again = self._predict_again
            self._predict_again = False
            current = self._generation.is_current(generation) and version == self._prompt_version
            if not current:
                self.discarded += 1
            if current:
                if error is not None:
                    self._commit_pending = False
                    if not isinstance(error, Cancelled):
                        self._report(error, "the prediction failed")
                    return
                self._preview_version = version
                self._set_preview(Preview(plane, result))
                if self._commit_pending:
                    self._commit_pending = False
                    self.commit()
            elif again or self._commit_pending or self.live.value:
                self._schedule_preview()

        self._start_task("predict", "predicting masks", job, done)

    def _set_preview(self, preview: Preview | None, message: str | None = None) -> None:
        self._preview = preview
        if preview is None:
            self.candidate_info.value = message or ""
            self.next_candidate_button.enabled = False
            if self._preview_layer is not None and self._preview_layer in self.viewer.layers:
                if np.any(self._preview_layer.data):
                    self._preview_layer.data = np.zeros_like(self._preview_layer.data)
            return
        self._draw_preview()

    def _draw_preview(self) -> None:
        preview = self._preview
        image = self.image_layer()
        if preview is None or image is None:
            return
        data = preview_array(image, preview.plane, preview.label_image())
        _, placement = preview_placement(image, preview.plane)
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers or layer.ndim != data.ndim:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            layer = Labels(
                data,
                name="SAM preview",
                opacity=0.6,
                metadata={ROLE: "preview"},
                **placement,
            )
            layer.editable = False
            self._preview_layer = self._add_layer_quietly(layer)
            self._bind_keys(self._preview_layer)
            self._place_preview_below_prompts()
        else:
            layer.data = data
            layer.scale = placement["scale"]
            layer.translate = placement["translate"]
        self.candidate_info.value = preview.describe()
        self.next_candidate_button.enabled = preview.n_candidates > 1

    def _place_preview_below_prompts(self) -> None:
        layers = self.viewer.layers
        prompts = [
            layers.index(layer)
            for layer in (self._selected(self.points_layer), self._selected(self.boxes_layer))
            if layer is not None and layer in layers
        ]
        if not prompts or self._preview_layer is None:
            return
        src = layers.index(self._preview_layer)
        dest = min(prompts)
        if src > dest:
            layers.move(src, dest)

    @property
    def embedding(self) -> Any:
        """The :class:`~napari_sam.core.embedding.ImageEmbedding` of the current plane, if any."""
        embedded = self._embedded
        return None if embedded is None or embedded.key != self._plane_key else embedded.embedding

    @property
    def preview(self) -> Preview | None:
        """What the preview layer shows (None when nothing)."""
        return self._preview

    @property
    def preview_layer(self) -> Labels | None:
        """The layer showing the preview, once there has been one."""
        return self._preview_layer

    # --------------------------------------------------------------------------------------
    # Actions (buttons and keys)
    # --------------------------------------------------------------------------------------

    def segment(self) -> None:
        """Compute the preview now (loading the model and the embedding if needed)."""
        if self.image_layer() is None:
            show_info("Choose an image first.")
            return
        self._force_preview = True
        self._failed_model = None
        self._update_plane(force=True)
        self._schedule_preview()

    def next_candidate(self) -> None:
        """Show SAM's next candidate mask for an ambiguous click."""
        if self._preview is None or self._preview.next_candidate() is None:
            self._set_status("Only one candidate: SAM offers three for one click.")
            return
        self._draw_preview()

    def toggle_point_label(self) -> None:
        """Switch new points between positive and negative."""
        points = self._selected(self.points_layer)
        if points is None:
            show_info("There is no points layer to add points to.")
            return
        current = self._default_point_label(points)
        new = "negative" if current == "positive" else "positive"
        if "label" not in points.features.columns:
            feats = points.features.copy()
            feats["label"] = pd.Categorical(
                ["positive"] * len(points.data), categories=list(POINT_LABELS)
            )
            points.features = feats
        column = points.features["label"]
        # Keep the column's own kind of value: a user's layer may say True/False or 1/0.
        if pd.api.types.is_bool_dtype(column):
            value: Any = new == "positive"
        elif pd.api.types.is_numeric_dtype(column):
            value = int(new == "positive")
        else:
            value = new
        defaults = dict(points.feature_defaults.iloc[0]) if len(points.feature_defaults) else {}
        points.feature_defaults = {**defaults, "label": value}
        self._show_point_kind(points)

    @staticmethod
    def _default_point_label(points: Points) -> str:
        defaults = points.feature_defaults
        if "label" not in defaults.columns or not len(defaults):
            return "positive"
        value = defaults["label"].iloc[0]
        try:
            return POINT_LABELS[1 - point_label(value)]
        except ValueError:
            return "positive"

    def _show_point_kind(self, points: Points) -> None:
        kind = self._default_point_label(points)
        self.point_kind.text = f"new points: {kind} ({key_text('toggle')})"

    def clear_prompts(self) -> None:
        """Remove the prompts of the current plane (those on other planes stay)."""
        image = self.image_layer()
        if image is None:
            return
        dims = self.viewer.dims
        try:
            plane = image_plane(image, dims.point, dims.displayed, dims.ndim)
        except NapariSamError as e:
            self._set_status(str(e))
            return
        for layer in (self._selected(self.points_layer), self._selected(self.boxes_layer)):
            doomed = set(prompts_on_plane(layer, image, plane, dims.point))
            if doomed:
                layer.selected_data = doomed
                layer.remove_selected()
        self._set_preview(None)

    def commit(self) -> None:
        """Write the previewed object(s) into the target labels layer (one undo step)."""
        if self.image_layer() is None:
            show_info("Choose an image first.")
            return
        outdated = self._preview_version != self._prompt_version or self._preview is None
        working = (
            "predict" in self._tasks
            or "embed" in self._tasks
            or "model" in self._tasks
            or self._preview_timer.isActive()
            or self._plane_timer.isActive()
        )
        if working or (outdated and self._embedded is not None):
            # Commit what the prompts ask for, not an older preview: wait for it.
            self._commit_pending = True
            if not working:
                self._force_preview = True
                self._schedule_preview()
            self._set_status("Committing as soon as the preview is ready…")
            return
        if self._preview is None or not self._preview.objects:
            show_info("Nothing to commit: click a point or draw a box first.")
            return
        try:
            self._write_preview()
        except NapariSamError as e:
            show_error(str(e))

    def _write_preview(self) -> None:
        preview = self._preview
        image = self.image_layer()
        assert preview is not None and image is not None and self.engine is not None
        labels = self._target_layer(image)
        check_target(labels, image)
        written = write_objects(
            labels, preview.plane, preview.masks(), overwrite=self.overwrite.value
        )
        if not written:
            show_warning(
                "Nothing written: existing labels cover the object(s). Tick 'overwrite "
                "existing labels' to replace them."
            )
            return
        norm = self.normalization_settings(image)
        provenance = self._provenance(image, norm, preview.plane)
        scores = preview.scores()
        where = preview.plane.describe(self._axis_labels())
        add_features(
            labels,
            [
                {
                    "index": w.label,
                    "predicted_iou": scores[w.obj],
                    "candidate": preview.chosen(w.obj),
                    "area": w.pixels,
                    "prompt": preview.objects[w.obj].source,
                    "plane": where,
                    "model": provenance["model"],
                    "checkpoint_sha256": provenance["checkpoint_sha256"],
                }
                for w in written
            ],
        )
        labels.metadata = {**labels.metadata, PROVENANCE: provenance}
        ids = ", ".join(str(w.label) for w in written)
        self._set_status(f"Committed label {ids} to {labels.name!r}.")
        if self.clear_after.value:
            self.clear_prompts()
        else:
            self._set_preview(None)
            self._prompt_version += 1  # so that the same preview comes back on change

    def _target_layer(self, image: Image) -> Labels:
        target = self._selected(self.target)
        if target is not None and target in self.viewer.layers:
            return target
        layer = Labels(
            np.zeros(spatial_shape(image), np.int32),
            name="SAM labels",
            metadata={ROLE: "labels"},
            **geometry_like(image),
        )
        layer = self._add_layer_quietly(layer)
        self._refresh_choices()
        with self.target.changed.blocked():
            self.target.value = layer
        return layer

    def _provenance(
        self, image: Image, norm: Normalization, plane: Plane, engine: Any = None
    ) -> dict[str, Any]:
        """Where a result came from; ``engine`` is the one that computed it (default: current)."""
        model = (engine or self.engine).model
        return {
            "software": f"napari-sam-kit {__version__}",
            "model": model.name,
            "checkpoint": str(model.checkpoint) if model.checkpoint else None,
            "checkpoint_sha256": model.sha256,
            "device": str(model.device),
            "normalization": norm.describe(level0(image).dtype),
            "image": image.name,
            "plane": plane.describe(tuple(image.axis_labels)),
        }

    # --------------------------------------------------------------------------------------
    # Automatic segmentation
    # --------------------------------------------------------------------------------------

    def auto_params(self) -> AutoParams:
        """The automatic segmentation settings of the widget."""
        return AutoParams(
            points_per_side=self.points_per_side.value,
            points_per_batch=self.points_per_batch.value,
            pred_iou_thresh=self.pred_iou_thresh.value,
            stability_score_thresh=self.stability_score_thresh.value,
            box_nms_thresh=self.box_nms_thresh.value,
            crop_n_layers=self.crop_n_layers.value,
            min_size=self.min_size.value,
        )

    def auto_segment(self) -> None:
        """Segment every object of the current plane into a new labels layer (in a worker)."""
        image = self.image_layer()
        if image is None:
            show_info("Choose an image first.")
            return
        dims = self.viewer.dims
        try:
            plane = image_plane(image, dims.point, dims.displayed, dims.ndim)
            params = self.auto_params()
        except NapariSamError as e:
            show_error(str(e))
            return
        self._failed_model = None
        if not self._ensure_model(force=True):
            self._auto_pending = True
            return
        norm = self.normalization_settings(image)
        data = level0(image)
        rgb_layer = bool(image.rgb)
        engine = self.engine
        version = self._data_version
        image_id = image.unique_id

        def job(task: _Task) -> Any:
            rgb = norm.apply(plane.take(data), rgb=rgb_layer)
            return segment_automatically(
                engine, rgb, params, progress=task.progress, cancel=task.is_cancelled
            )

        def done(task: _Task, result: Any, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, Cancelled):
                    self._set_status("Automatic segmentation cancelled.")
                else:
                    self._report(error, "automatic segmentation failed")
                return
            # The result belongs to the plane it was computed from and says so in its
            # metadata; it is dropped only when that image is gone or its data replaced.
            source = next((x for x in self.viewer.layers if x.unique_id == image_id), None)
            if source is None or version != self._data_version:
                show_warning("Automatic segmentation discarded: its image changed meanwhile.")
                return
            self._add_auto_result(source, plane, norm, params, result, engine)

        self._start_task("auto", "automatic segmentation", job, done)

    def _add_auto_result(
        self,
        image: Image,
        plane: Plane,
        norm: Normalization,
        params: AutoParams,
        result: Any,
        engine: Any,
    ) -> Labels:
        full = np.zeros(spatial_shape(image), np.int32)
        plane.put(full, result.labels)
        table = pd.DataFrame({k: np.asarray(v) for k, v in result.table.items()})
        table.insert(0, "index", table["label"].astype(np.int64))
        provenance = {
            **self._provenance(image, norm, plane, engine),
            "automatic": {k: getattr(params, k) for k in params.__dataclass_fields__},
        }
        layer = Labels(
            full,
            name=f"{image.name} SAM auto",
            features=table,
            metadata={PROVENANCE: provenance, ROLE: "auto"},
            **geometry_like(image),
        )
        layer = self._add_layer_quietly(layer)
        hint = (
            " Lower 'min predicted IoU' and 'min stability' to keep less certain objects."
            if result.n_objects == 0
            else ""
        )
        self._set_status(
            f"Automatic segmentation: {result.n_objects} objects in {layer.name!r}.{hint}"
        )
        return layer

    # --------------------------------------------------------------------------------------
    # Workers, progress, messages
    # --------------------------------------------------------------------------------------

    def _start_task(
        self,
        kind: str,
        label: str,
        job: Callable[[_Task], Any],
        on_done: Callable[[_Task, Any, BaseException | None], None],
        *,
        key: Any = None,
    ) -> _Task:
        old = self._tasks.pop(kind, None)
        if old is not None:
            old.cancel()
            self._close_pbar(old)
        task = _Task(kind, label, key)

        def run() -> tuple[bool, Any]:
            # Errors come back as values: napari's workers would also announce raised
            # exceptions (a cancellation included) as crashes with a traceback.
            try:
                return True, job(task)
            except Exception as e:
                return False, e

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)

        def returned(outcome: tuple[bool, Any]) -> None:
            ok, value = outcome
            self._finish(task, on_done, value if ok else None, None if ok else value)

        worker.returned.connect(returned)
        task.worker = worker
        self._tasks[kind] = task
        if kind != "predict":
            self._progress_timer.start()
            self._show_progress()
        worker.start()
        return task

    def _finish(
        self,
        task: _Task,
        on_done: Callable[[_Task, Any, BaseException | None], None],
        result: Any,
        error: BaseException | None,
    ) -> None:
        if self._tasks.get(task.kind) is task:
            del self._tasks[task.kind]
        self._close_pbar(task)
        if self.closed:
            return
        if task.cancelled and error is None and task.kind != "predict":
            error = Cancelled(f"{task.label} cancelled")
        try:
            on_done(task, result, error)
        except NapariSamError as e:
            show_error(str(e))
        self._show_progress()

    def _show_progress(self) -> None:
        if self.closed:
            return
        shown = [self._tasks[k] for k in ("auto", "model", "embed") if k in self._tasks]
        for task in shown:
            self._update_pbar(task)
        if not shown:
            self._progress_timer.stop()
            for w in (self.progress, self.progress_text, self.cancel_button):
                w.visible = False
            return
        task = shown[0]
        for w in (self.progress, self.progress_text, self.cancel_button):
            w.visible = True
        self.progress_text.value = f"{task.label.capitalize()}…"
        self.progress.max = max(task.total, 1)
        self.progress.value = min(task.done, max(task.total, 1))

    def _update_pbar(self, task: _Task) -> None:
        """Mirror a task in napari's activity dock (created on the GUI thread)."""
        from napari.utils import progress

        if task.pbar is None:
            task.pbar = progress(total=task.total or None, desc=f"napari-sam: {task.label}")
        if task.total and task.pbar.total != task.total:
            task.pbar.total = task.total
        if task.done > task.pbar.n:
            task.pbar.update(task.done - task.pbar.n)

    @staticmethod
    def _close_pbar(task: _Task) -> None:
        if task.pbar is not None:
            task.pbar.close()
            task.pbar = None

    def cancel(self) -> None:
        """Cancel model loading, embedding and automatic segmentation."""
        self._auto_pending = False
        self._commit_pending = False
        for kind in ("model", "embed", "auto", "predict"):
            task = self._tasks.get(kind)
            if task is not None:
                task.cancel()

    @property
    def busy(self) -> bool:
        """Whether work is running or scheduled (tests wait for this to become False)."""
        if self.closed:
            return False
        return bool(
            self._tasks
            or self._plane_timer.isActive()
            or self._preview_timer.isActive()
            or self._activate_timer.isActive()
            or self._sync_timer.isActive()
            or self._commit_pending
            or self._auto_pending
            or self._predict_again
        )

    def _set_status(self, text: str) -> None:
        """Show a line in the widget's status label (replaced by the next one)."""
        self.status.value = text

    def _report(self, error: BaseException, what: str) -> None:
        if isinstance(error, Cancelled):
            self._set_status(str(error).capitalize() + ".")
        elif isinstance(error, NapariSamError):
            self._set_status(f"Error: {error}")
            show_error(str(error))
        else:
            log.error("napari-sam: %s", what, exc_info=error)
            self._set_status(f"Error: {what} ({type(error).__name__}: {error})")
            show_error(f"napari-sam: {what} ({type(error).__name__}: {error})")


def _cleanup_on_destroy(widget: SamWidget) -> Callable[..., None]:
    """A slot for ``native.destroyed`` that holds no strong reference to the widget."""
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
