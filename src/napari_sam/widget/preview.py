"""The live preview: the current prompts -> SAM's masks (in a worker) -> the preview layer.

The latest prompts win: a prediction that arrives after the prompts (or the plane) changed is
dropped and a new one is started. The preview belongs to the plane it was computed for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer

from .._layers import plane_prompts, preview_array, preview_placement
from .._refine import chain_calls, previous_masks, prompt_calls
from .._session import Preview, predict_objects
from .._tasks import Task
from ..core.errors import Cancelled, NapariSamError
from .layer_menus import ROLE, add_quietly, selected
from .messages import report

if TYPE_CHECKING:  # pragma: no cover
    from .sam_widget import SamWidget


class PreviewController:
    """Predicts masks for the current prompts and draws them in the "SAM preview" layer."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.preview: Preview | None = None
        self.layer: Labels | None = None
        self.prompt_version = 0  # bumped by every prompt change
        self.preview_version = -1  # the prompt version the preview shows
        self._again = False  # prompts changed while a prediction ran
        self.force = False  # compute even with live preview off (Segment, Commit)
        self.note: str | None = None  # said after the preview's description
        self.made_with = ("", "")  # model id and image key of the preview's embedding
        self.timer = QTimer(host.native)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.run)

    @property
    def outdated(self) -> bool:
        """Whether the preview does not show the current prompts."""
        return self.preview is None or self.preview_version != self.prompt_version

    @property
    def pending(self) -> bool:
        """Whether a prediction is scheduled or coming."""
        return self.timer.isActive() or self._again

    def prompts_changed(self) -> None:
        self.prompt_version += 1
        self.schedule()

    def schedule(self) -> None:
        if not self._host.closed:
            self.timer.start(0)

    def run(self) -> None:
        """Start a prediction for the current prompts (latest wins; results can be late)."""
        host = self._host
        if host.closed:
            return
        if not (host.prompt_panel.live.value or self.force or host.output_panel.commit_pending):
            return
        planes = host.plane_embedder
        embedded = planes.embedded
        if embedded is None or embedded.key != planes.key or planes.plane is None:
            return  # the embedding is coming; it schedules the preview
        if host.runner.current("predict") is not None:
            self._again = True
            return
        self.force = False
        plane = planes.plane
        try:
            found = plane_prompts(
                selected(host.prompt_panel.points_layer),
                selected(host.prompt_panel.boxes_layer),
                host.image_layer(),
                plane,
                host.viewer.dims.point,
            )
            edit = host.label_editor.current(plane)
            refine = host.prompt_panel.refine.value
            objects = prompt_calls(
                found,
                per_point=host.prompt_panel.per_point.value,
                image_shape=plane.shape,
                shapes_as_masks=refine,
                edit=edit,
            )
            if refine:  # a follow-up click refines the mask on screen
                previous = previous_masks(self.preview, self.made_with)
                objects = chain_calls(objects, previous, embedded.embedding)
        except NapariSamError as e:
            self.show(None, e.for_gui())
            host.output_panel.preview_failed(why=e.for_gui())
            return
        version = self.prompt_version
        if not objects:
            hint = "Click inside an object, or draw a box."
            if edit is not None:
                hint = f"Editing label {edit.label}: click to add to it or remove from it."
            if found.elsewhere:
                hint += f" ({found.elsewhere} prompt(s) on other planes are ignored.)"
            self.show(None, hint)
            self.preview_version = version
            host.output_panel.preview_failed(nothing=True)
            return
        if host.tiling_panel.embed_first(objects, self._after_tiles):
            return  # the tiles these prompts need come first (a task with progress)
        engine = embedded.engine
        generation = planes.generation.value

        def job(task: Task) -> Any:
            return predict_objects(engine, embedded.embedding, objects, task.is_cancelled)

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            again, self._again = self._again, False
            current = planes.generation.is_current(generation) and version == self.prompt_version
            if not current:
                planes.discarded += 1
                if again or host.output_panel.commit_pending or host.prompt_panel.live.value:
                    self.schedule()
                return
            if error is not None:
                host.output_panel.preview_failed()
                if not isinstance(error, Cancelled):
                    host.set_status(report(error, "the prediction failed"))
                return
            self.preview_version = version
            self.made_with = (embedded.embedding.model_id, embedded.embedding.key)
            self.note = _tilted_note(found.tilted)
            self.show(Preview(plane, result, calls=objects))
            host.output_panel.preview_ready()
            planes.prefetch()  # a click cancelled it: carry on embedding ahead

        host.runner.start("predict", "predicting masks", job, done)

    def _after_tiles(self) -> None:
        """The tiles the prompts needed are embedded: predict (live preview off too)."""
        self.force = True
        self.schedule()

    # -- drawing --

    def show(self, preview: Preview | None, message: str | None = None) -> None:
        """Show ``preview`` (or clear the preview layer and show ``message``)."""
        self.preview = preview
        panel = self._host.prompt_panel
        if preview is None:
            panel.candidate_info.value = message or ""
            panel.next_candidate_button.enabled = False
            layer = self.layer
            if layer is not None and layer in self._host.viewer.layers and np.any(layer.data):
                layer.data = np.zeros_like(layer.data)
            return
        self.draw()

    def draw(self) -> None:
        preview = self.preview
        host = self._host
        image = host.image_layer()
        if preview is None or image is None:
            return
        data = preview_array(image, preview.plane, preview.label_image())
        _, placement = preview_placement(image, preview.plane)
        layer = self.layer
        viewer = host.viewer
        if layer is None or layer not in viewer.layers or layer.ndim != data.ndim:
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
            layer = Labels(
                data, name="SAM preview", opacity=0.6, metadata={ROLE: "preview"}, **placement
            )
            layer.editable = False
            self.layer = add_quietly(viewer, layer)
            host.keys.bind(self.layer)
            self._place_below_prompts()
        else:
            layer.data = data
            layer.scale = placement["scale"]
            layer.translate = placement["translate"]
        host.prompt_panel.candidate_info.value = preview.describe() + (
            f" · {self.note}" if self.note else ""
        )
        host.prompt_panel.next_candidate_button.enabled = preview.n_candidates > 1

    def _place_below_prompts(self) -> None:
        layers = self._host.viewer.layers
        panel = self._host.prompt_panel
        prompts = [
            layers.index(layer)
            for layer in (selected(panel.points_layer), selected(panel.boxes_layer))
            if layer is not None and layer in layers
        ]
        if not prompts or self.layer is None:
            return
        src = layers.index(self.layer)
        dest = min(prompts)
        if src > dest:
            layers.move(src, dest)

    def next_candidate(self) -> bool:
        """Show SAM's next candidate; False when there is only one."""
        if self.preview is None or self.preview.next_candidate() is None:
            return False
        self.draw()
        return True


def _tilted_note(tilted: int) -> str | None:
    """What the user should know about boxes drawn tilted against the image's pixel grid."""
    if not tilted:
        return None
    return (
        f"{tilted} box(es) are tilted against the image (their layer is rotated or sheared "
        "relative to it): SAM used their bounding box in the image's pixel grid"
    )
