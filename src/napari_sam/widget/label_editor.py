"""Editing an existing label: pick it, refine it with clicks, commit it back in its place.

Shift+E (or the "Edit label" button) picks the label under the mouse in the target Labels
layer (the button, whose click leaves the mouse on the widget: the layer's selected label).
Its mask on the current plane becomes the first mask prompt (:mod:`napari_sam._refine`),
the clicks that follow reshape it, and the commit replaces that label only, in one undo step
(:func:`napari_sam._layers.write_edit`). Shift+E again, Cancel, or another plane or labels
layer leaves edit mode; so does the commit. (Escape stays napari's: it finishes a shape.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label

from .._layers import spatial_shape, write_edit
from .._refine import LabelEdit
from .._session import key_text
from ..core.errors import NapariSamError
from ..core.mask_prompts import StartMask
from .layer_menus import selected
from .messages import report
from .prompt_panel import button

if TYPE_CHECKING:  # pragma: no cover
    from .sam_widget import SamWidget


class LabelEditor(Container):
    """The "Edit label" button, what is being edited, and the edit's commit."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.button = button(
            "Edit label",
            "edit",
            "Refine an existing label: its mask is SAM's starting mask, your clicks reshape "
            "it, and Commit replaces that label only. The key picks the label under the "
            "mouse; the button the layer's selected label.",
        )
        self.info = Label(value="")
        super().__init__(widgets=[self.button, self.info], labels=False, layout="horizontal")
        self.margins = (0, 0, 0, 0)
        self.edit: LabelEdit | None = None
        self.button.clicked.connect(lambda *_: self.toggle(at_cursor=False))

    # -- entering and leaving --

    def toggle(self, *, at_cursor: bool = True) -> None:
        """Leave edit mode, or pick a label and enter it."""
        if self.edit is not None:
            self.leave("Stopped editing.")
        else:
            self.pick(at_cursor=at_cursor)

    def pick(self, *, at_cursor: bool = True, label: int | None = None) -> bool:
        """Start editing ``label``, the label under the mouse, or the selected label."""
        host = self._host
        image = host.image_layer()
        layer = selected(host.output_panel.target)
        if image is None:
            host.notify("Choose an image first.")
            return False
        if layer is None or layer not in host.viewer.layers:
            host.notify("Choose the labels layer to edit in the 'labels' menu first.")
            return False
        if tuple(layer.data.shape) != spatial_shape(image):
            host.notify(f"{layer.name!r} does not have the image's shape: it cannot be edited.")
            return False
        try:
            plane = host.plane_embedder.current_plane(image)
            existing = plane.take(layer.data)
        except NapariSamError as e:
            host.set_status(e.for_gui())
            return False
        if label is None and at_cursor:
            label = _label_at_cursor(host, image, plane, existing)
        if not label:
            label = int(layer.selected_label)
        mask = existing == label
        if label <= 0 or not mask.any():
            host.notify(
                f"No label {label} on this plane of {layer.name!r}: point at a label and press "
                f"{key_text('edit')}, or select it in the layer's controls."
            )
            return False
        self.leave()
        host.prompt_panel.clear_plane()  # the prompts now describe this label
        self.edit = LabelEdit(label, layer, plane, StartMask(mask=mask, label=label))
        self.info.value = f"editing label {label}"
        self.button.text = f"Stop editing ({key_text('edit')})"
        host.set_status(
            f"Editing label {label} of {layer.name!r}: click to add (positive) or remove "
            "(negative), then Commit to replace it."
        )
        host.preview_controller.prompts_changed()
        return True

    def leave(self, why: str | None = None) -> None:
        """Leave edit mode (nothing is written)."""
        if self.edit is None:
            return
        self.edit = None
        self.info.value = ""
        self.button.text = f"Edit label ({key_text('edit')})"
        if why:
            self._host.set_status(why)
        self._host.preview_controller.show(None)
        self._host.preview_controller.prompts_changed()

    def current(self, plane: Any) -> LabelEdit | None:
        """The edit, if it belongs to ``plane`` and its layer is still there."""
        edit = self.edit
        if edit is None:
            return None
        if edit.plane != plane or edit.layer not in self._host.viewer.layers:
            self.leave("Stopped editing: the plane or the labels layer changed.")
            return None
        return edit

    # -- committing --

    def commit(self, preview: Any) -> None:
        """Replace the edited label with the preview's mask (one undo step)."""
        host = self._host
        edit = self.edit
        assert edit is not None
        (mask,) = preview.masks()
        overwrite = host.output_panel.overwrite.value
        try:
            pixels = write_edit(edit.layer, preview.plane, mask, edit.label, overwrite=overwrite)
        except Exception as e:  # a read-only or lazy layer...: say so, keep the labels
            host.set_status(report(e, "the label could not be written"))
            return
        host.output_panel.record(edit.layer, preview, [edit.label], [pixels], edit=edit.label)
        self.leave()
        host.set_status(f"Label {edit.label} of {edit.layer.name!r} replaced ({pixels} px).")
        if host.output_panel.clear_after.value:
            host.prompt_panel.clear_plane()


def _label_at_cursor(host: SamWidget, image: Any, plane: Any, existing: np.ndarray) -> int:
    """The label id under the mouse on ``plane`` (0 when off the plane or the image)."""
    position = host.viewer.cursor.position
    if position is None or len(position) == 0:
        return 0
    world = np.array(host.viewer.dims.point, float)
    pos = np.asarray(position, float)
    world[len(world) - len(pos) :] = pos
    coords = np.asarray(image.world_to_data(world), float)
    r, c = (round(float(coords[a])) for a in plane.axes)
    if not (0 <= r < existing.shape[0] and 0 <= c < existing.shape[1]):
        return 0
    return int(existing[r, c])
