"""The prompt panel: which Points and Shapes layers hold the prompts, the kind of the next
point, and the candidate controls; it makes the prompt layers when the image needs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton
from napari.layers import Points, Shapes
from qtpy.QtCore import QTimer

from .._layers import prompts_on_plane
from .._session import key_text, point_label
from ..core.errors import NapariSamError
from .layer_menus import (
    NEW,
    NONE,
    POINT_LABELS,
    ROLE,
    add_quietly,
    new_boxes_layer,
    new_points_layer,
    prompt_choices,
    selected,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget


def button(text: str, action: str | None = None, tooltip: str = "") -> PushButton:
    """A push button; with ``action``, its shortcut is in its text and tooltip."""
    if action is not None:
        text = f"{text} ({key_text(action)})"
        tooltip = f"{tooltip} Shortcut: {key_text(action)}.".strip()
    return PushButton(text=text, tooltip=tooltip)


class PromptPanel(Container):
    """Prompt layers, point kind, one-object-per-point, live preview and candidates."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        viewer = host.viewer
        self.points_layer = ComboBox(
            name="points_layer",
            label="points",
            choices=lambda _w: prompt_choices(viewer, Points),
            tooltip="Points layer with the clicks; its 'label' feature says positive or negative.",
        )
        self.boxes_layer = ComboBox(
            name="boxes_layer",
            label="boxes",
            choices=lambda _w: prompt_choices(viewer, Shapes),
            tooltip="Shapes layer whose rectangles are boxes (one object per box).",
        )
        self.point_kind = button(
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
        self.refine = CheckBox(
            text="refine from previous mask",
            tooltip="A follow-up click on the same object gives SAM the previous mask too, "
            "and ellipses, polygons and paths count as masks, as SAM was trained. On by "
            "default for SAM models; off for the tiny test model, which was not trained so.",
        )
        self._refine_model: str | None = None
        self.live = CheckBox(
            text="live preview",
            value=True,
            tooltip="Update the preview whenever a prompt changes; otherwise press Segment.",
        )
        self.candidate_info = Label(value="")
        self.next_candidate_button = button(
            "next candidate",
            "candidate",
            "A single click is ambiguous (part, object, whole): SAM proposes three masks. "
            "The one with the best predicted IoU is shown first.",
        )
        self.next_candidate_button.enabled = False
        super().__init__(
            widgets=[
                Label(value="<b>Prompts</b>"),
                Container(widgets=[self.points_layer, self.boxes_layer]),
                self.point_kind,
                self.per_point,
                self.refine,
                self.live,
                self.candidate_info,
                self.next_candidate_button,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._declined: set[str] = set()  # menus the user set to "(none)"
        self._picked: set[str] = set()  # menus where the user picked a layer
        self.activate_timer = QTimer(host.native)
        self.activate_timer.setSingleShot(True)
        self.activate_timer.timeout.connect(self._activate_points)
        for combo in (self.points_layer, self.boxes_layer):
            combo.changed.connect(self.on_layer_changed)
            combo.changed.connect(self._remember_choice(combo))
        self.per_point.changed.connect(host.preview_controller.prompts_changed)
        self.refine.changed.connect(host.preview_controller.prompts_changed)
        self.live.changed.connect(host.preview_controller.prompts_changed)
        self.point_kind.clicked.connect(self.toggle_point_label)

    # -- prompt layers --

    def ensure_layers(self, image: Image) -> None:
        """Give the image prompt layers of its dimensionality.

        A layer the user picked is kept; otherwise one made by the widget is reused or a new
        one made. Other points and shapes layers are never taken as prompts unasked: they
        may hold anything (detections, measurements...).
        """
        viewer = self._host.viewer
        made = False
        for combo, make, role in (
            (self.boxes_layer, new_boxes_layer, "boxes"),
            (self.points_layer, new_points_layer, "points"),
        ):
            if combo.name in self._declined:
                continue
            layer = selected(combo)
            ours = layer is not None and layer.metadata.get(ROLE) == role
            if (
                layer is not None
                and layer.ndim == image.ndim
                and (ours or combo.name in self._picked)
            ):
                continue
            own = [
                x for x in viewer.layers if x.metadata.get(ROLE) == role and x.ndim == image.ndim
            ]
            new = own[-1] if own else add_quietly(viewer, make(image))
            made = made or not own
            self._host.refresh_choices()
            with combo.changed.blocked():
                combo.value = new
        self.on_layer_changed()
        if made:
            # Ready to click: the first thing a user does is click on an object. Done
            # later: when the image was just added, napari selects it after telling us.
            self.activate_timer.start(0)

    def _remember_choice(self, combo: ComboBox) -> Callable[[Any], None]:
        # Only the user's own choices reach here: the widget's changes are made blocked.
        def slot(value: Any) -> None:
            self._declined.discard(combo.name)
            self._picked.discard(combo.name)
            if isinstance(value, str) and value == NONE:
                self._declined.add(combo.name)
            elif not isinstance(value, str):
                self._picked.add(combo.name)

        return slot

    def _activate_points(self) -> None:
        points = selected(self.points_layer)
        if points is not None and points in self._host.viewer.layers:
            self._host.viewer.layers.selection.active = points
            points.mode = "add"

    def on_layer_changed(self, *_: Any) -> None:
        """A prompt menu changed: make a new layer if asked, listen to the chosen ones."""
        host = self._host
        if host.closed:
            return
        image = host.image_layer()
        for combo, make in (
            (self.points_layer, new_points_layer),
            (self.boxes_layer, new_boxes_layer),
        ):
            if combo.value == NEW and image is not None:
                new = add_quietly(host.viewer, make(image))
                host.refresh_choices()
                with combo.changed.blocked():
                    combo.value = new
        host.connections.disconnect("prompts")
        points = selected(self.points_layer)
        for layer in (points, selected(self.boxes_layer)):
            if layer is None:
                continue
            host.connections.connect("prompts", layer.events.data, self._on_prompt_data)
            for name in ("features", "scale", "translate", "rotate", "shear", "affine"):
                host.connections.connect(
                    "prompts", getattr(layer.events, name), self._on_prompts_changed
                )
            if layer.metadata.get(ROLE) in ("points", "boxes") and not host.keys.is_bound_on(
                layer
            ):
                host.keys.bind(layer)
        if points is not None:
            self._show_point_kind(points)
        self._on_prompts_changed()

    def _on_prompt_data(self, event: Any) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith(("adding", "removing")):
            return  # "about to change" events: the data is not there yet
        self._on_prompts_changed()

    def _on_prompts_changed(self, *_: Any) -> None:
        if not self._host.closed:
            self._host.preview_controller.prompts_changed()

    def model_changed(self, model: Any) -> None:
        """Set "refine from previous mask" to the default of a newly chosen model."""
        from ..core.refinement import uses_mask_prompts

        key = getattr(model, "model_id", None)
        if key != self._refine_model:
            self._refine_model = key
            self.refine.value = uses_mask_prompts(model)

    # -- point kind --

    def toggle_point_label(self) -> None:
        """Switch new points between positive and negative."""
        points = selected(self.points_layer)
        if points is None:
            self._host.notify("There is no points layer to add points to.")
            return
        new = "negative" if default_point_label(points) == "positive" else "positive"
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

    def _show_point_kind(self, points: Points) -> None:
        self.point_kind.text = f"new points: {default_point_label(points)} ({key_text('toggle')})"

    # -- clearing --

    def clear_plane(self) -> None:
        """Remove the prompts of the current plane (those on other planes stay)."""
        host = self._host
        image = host.image_layer()
        if image is None:
            return
        try:
            plane = host.plane_embedder.current_plane(image)
        except NapariSamError as e:
            host.set_status(e.for_gui())
            return
        for layer in (selected(self.points_layer), selected(self.boxes_layer)):
            doomed = set(prompts_on_plane(layer, image, plane, host.viewer.dims.point))
            if doomed:
                layer.selected_data = doomed
                layer.remove_selected()
        host.preview_controller.show(None)


def default_point_label(points: Points) -> str:
    """Whether the next point added to ``points`` will be positive or negative."""
    defaults = points.feature_defaults
    if "label" not in defaults.columns or not len(defaults):
        return "positive"
    try:
        return POINT_LABELS[1 - point_label(defaults["label"].iloc[0])]
    except ValueError:
        return "positive"
