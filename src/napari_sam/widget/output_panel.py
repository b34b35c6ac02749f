"""The output panel: the target Labels layer, and committing the preview into it.

A commit writes the previewed object(s) as new label ids in one undo step
(:func:`napari_sam._layers.write_objects`), adds one features row per object and the
provenance to the layer's metadata. A commit asked for while the preview is still coming waits
for it - but only on the plane, image and model it was asked on: any change drops it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label
from napari.layers import Labels

from .. import __version__
from .._layers import (
    Plane,
    add_features,
    check_target,
    geometry_like,
    level0,
    spatial_shape,
    write_objects,
)
from ..core.lazy_arrays import empty_labels
from ..core.normalize import Normalization
from .layer_menus import ROLE, add_quietly, selected, target_choices
from .messages import report
from .prompt_panel import button

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget

#: Metadata key of the provenance written into labels layers.
PROVENANCE = "napari_sam"


def provenance(image: Image, norm: Normalization, plane: Plane, engine: Any) -> dict[str, Any]:
    """Where a result came from: software, model, checkpoint, device, intensities, plane."""
    model = engine.model
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


class OutputPanel(Container):
    """Target labels, overwrite, clear-after-commit, and the Segment / Commit / Clear buttons."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.target = ComboBox(
            label="labels",
            choices=lambda _w: target_choices(host.viewer),
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
        self.segment_button = button(
            "Segment", "segment", "Compute the preview now (needed when live preview is off)."
        )
        self.commit_button = button(
            "Commit", "commit", "Write the previewed object(s) into the labels layer."
        )
        self.clear_button = button("Clear", "clear", "Remove the prompts of the current plane.")
        buttons = Container(
            widgets=[self.segment_button, self.commit_button, self.clear_button],
            layout="horizontal",
            labels=False,
        )
        super().__init__(
            widgets=[
                Label(value="<b>Output</b>"),
                Container(widgets=[self.target]),
                self.overwrite,
                self.clear_after,
                buttons,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._pending: int | None = None  # generation a commit waits in, if one does
        # Highest label id per target layer (unique_id), so that a commit does not scan a
        # whole volume for it; dropped when the layer's data is replaced or painted. Undo and
        # redo send no event: a value left too high only skips ids, it never reuses one.
        self._highest: dict[Any, int] = {}

    # -- a commit waiting for its preview --

    @property
    def commit_pending(self) -> bool:
        """Whether a commit waits for the preview of the plane it was asked on."""
        generation = self._host.plane_embedder.generation
        return self._pending is not None and generation.is_current(self._pending)

    def drop_pending(self, why: str | None = None) -> None:
        """Forget a waiting commit (its plane, image or model changed, or its input failed)."""
        if self._pending is not None:
            self._pending = None
            if why:
                self._host.set_status(why)

    def preview_ready(self) -> None:
        if self.commit_pending:
            self._pending = None
            self.commit()

    def preview_failed(self, *, nothing: bool = False, why: str | None = None) -> None:
        """The preview a commit may wait for will not come: ``nothing`` to preview, or
        prompts SAM cannot use (``why``)."""
        if self.commit_pending:
            self._pending = None
            if nothing:
                self._host.notify("Nothing to commit: click a point or draw a box first.")
            elif why:
                self._host.set_status(f"Nothing committed: {why}")
                self._host.warn(f"Nothing committed: {why}")

    # -- committing --

    def commit(self) -> None:
        """Write the previewed object(s) into the target labels layer (one undo step)."""
        host = self._host
        if host.image_layer() is None:
            host.notify("Choose an image first.")
            return
        preview = host.preview_controller
        runner = host.runner
        working = (
            any(runner.current(k) is not None for k in ("predict", "embed", "model"))
            or preview.pending
            or host.plane_timer.isActive()
        )
        if working or (preview.outdated and host.plane_embedder.embedded is not None):
            # Commit what the prompts ask for, not an older preview: wait for it.
            self._pending = host.plane_embedder.generation.value
            if not working:
                preview.force = True
                preview.schedule()
            host.set_status("Committing as soon as the preview is ready…")
            return
        missing = host.plane_embedder.missing_because
        if preview.preview is None and missing is not None:
            host.notify(
                f"Nothing committed: the image embedding was {missing}. Press Segment "
                "to compute it."
            )
            return
        if preview.preview is None or not preview.preview.objects:
            host.notify("Nothing to commit: click a point or draw a box first.")
            return
        if host.label_editor.edit is not None:
            host.label_editor.commit(preview.preview)
            return
        try:
            self._write()
        except Exception as e:  # a read-only or lazy layer, no memory...: say so, keep labels
            host.set_status(report(e, "the labels could not be written"))

    def _write(self) -> None:
        host = self._host
        preview = host.preview_controller.preview
        image = host.image_layer()
        engine = host.model_panel.engine
        assert preview is not None and image is not None and engine is not None
        labels = self.target_layer(image)
        placed_elsewhere = check_target(labels, image)
        written = write_objects(
            labels,
            preview.plane,
            preview.masks(),
            overwrite=self.overwrite.value,
            highest=self._highest.get(labels.unique_id),
        )
        if not written:
            host.warn(
                "Nothing written: existing labels cover the object(s). Tick 'overwrite "
                "existing labels' to replace them."
            )
            return
        norm = host.normalization_settings(image)
        prov = provenance(image, norm, preview.plane, engine)
        scores = preview.scores()
        where = preview.plane.describe(host.axis_labels())
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
                    "model": prov["model"],
                    "checkpoint_sha256": prov["checkpoint_sha256"],
                }
                for w in written
            ],
        )
        self._remember_highest(labels, written[-1].label)
        labels.metadata = {**labels.metadata, PROVENANCE: prov}
        by_object = {w.obj: w for w in written}
        n = len(preview.objects)
        self.record(
            labels,
            preview,
            [by_object[i].label if i in by_object else None for i in range(n)],
            [by_object[i].pixels if i in by_object else 0 for i in range(n)],
        )
        ids = ", ".join(str(w.label) for w in written)
        host.set_status(f"Committed label {ids} to {labels.name!r}.")
        if placed_elsewhere:
            host.warn(placed_elsewhere)
        if self.clear_after.value:
            host.prompt_panel.clear_plane()
        else:
            host.preview_controller.show(None)
            host.preview_controller.prompt_version += 1  # the same preview comes back on change

    def record(
        self,
        labels: Labels,
        preview: Any,
        ids: list[int | None],
        pixels: list[int],
        *,
        edit: int | None = None,
    ) -> None:
        """Add a commit (or an edit of label ``edit``) to the session, with each call's
        refinement chain (for replay and autosave)."""
        from ..core.session_record import CommitRecord, ModelRecord

        host = self._host
        image = host.image_layer()
        engine = host.model_panel.engine
        n = len(preview.objects)
        try:
            entry = CommitRecord.build(
                target=labels.name,
                plane=preview.plane,
                overwrite=self.overwrite.value,
                model=ModelRecord.from_model(engine.model),
                normalization=host.normalization_settings(image),
                prompts=[call.prompts for call in preview.calls],
                masks=preview.masks(),
                candidates=[preview.chosen(i) for i in range(n)],
                scores=preview.scores(),
                sources=[o.source for o in preview.objects],
                labels=ids,
                pixels=pixels,
                steps=[call.steps for call in preview.calls],
                starts=[call.start for call in preview.calls],
                edit=edit,
            )
        except Exception as e:  # the labels are written: never lose them over a record
            host.set_status(report(e, "the commit could not be recorded in the session"))
            return
        host.session_panel.record_entry(entry)

    def _remember_highest(self, labels: Labels, highest: int) -> None:
        uid = labels.unique_id
        if uid not in self._highest:
            group = f"highest:{uid}"

            def forget(*_: Any) -> None:
                self._highest.pop(uid, None)
                self._host.connections.disconnect(group)

            for event in (labels.events.data, labels.events.paint):
                self._host.connections.connect(group, event, forget)
        self._highest[uid] = highest

    def target_layer(self, image: Image) -> Labels:
        """The chosen labels layer, or a new "SAM labels" layer over ``image``.

        A new layer's memory follows what is committed or painted, not the size of the
        stack (:func:`empty_labels`: a large stack gets an in-memory zarr array).
        """
        host = self._host
        target = selected(self.target)
        if target is not None and target in host.viewer.layers:
            return target
        layer = Labels(
            empty_labels(spatial_shape(image), np.int32),
            name="SAM labels",
            metadata={ROLE: "labels"},
            **geometry_like(image),
        )
        layer = add_quietly(host.viewer, layer)
        self._remember_highest(layer, 0)  # new and empty: the first commit need not scan it
        host.refresh_choices()
        with self.target.changed.blocked():
            self.target.value = layer
        return layer
