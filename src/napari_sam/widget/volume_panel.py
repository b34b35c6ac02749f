"""The volume panel: objects propagated through a stack from prompts on key slices, and
automatic segmentation linked through the stack (3D objects, or tracks over time).

Shown for images with more than two dimensions. The stack is the current plane moved along
the axis the user scrolls (the last slider used). The work runs in the core
(:func:`napari_sam.core.propagation.propagate`,
:func:`napari_sam.core.linking.segment_volume_automatically`) in a worker with progress and
cancel; the result is written as one undo step (:func:`napari_sam._stack.write_stack`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import Container, FloatSpinBox, Label, PushButton
from napari.layers import Labels

from .._layers import Plane, check_target, geometry_like, level0, spatial_shape
from .._stack import key_slice_objects, prompts_by_slice, slice_plane, write_stack
from .._tasks import Task
from ..core.errors import Cancelled, NapariSamError
from .layer_menus import ROLE, add_quietly, selected
from .messages import report
from .output_panel import PROVENANCE, provenance

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget


#: The embed-all button's text while nothing runs, and while it runs.
EMBED_ALL, STOP_EMBED_ALL = "Embed all slices", "Stop embedding slices"
#: Memory the embeddings of all slices may take (4 MiB a slice for the ViT models: 256
#: slices). Beyond it, slices are kept on disk only, or, with the disk store turned off, only
#: the slices nearest the current one are embedded.
ALL_SLICES_MEMORY_BYTES = 2**30


class VolumePanel(Container):
    """Propagate through the stack; Auto segment 3D."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        from ..core.propagation import PropagationParams

        self.min_score = FloatSpinBox(
            label="stop below predicted IoU",
            value=PropagationParams().min_score,
            min=0,
            max=1,
            step=0.05,
            tooltip="Propagation stops where SAM's predicted IoU for the next slice falls "
            "below this (or the mask vanishes, jumps in size or leaves the previous one). "
            "Lower it for models whose scores run low.",
        )
        self.propagate_button = PushButton(
            text="Propagate through stack",
            tooltip="Carry every prompted object from its key slice(s) through the stack "
            "into the labels layer (one Ctrl+Z). Boxes on different slices that overlap are "
            "one object.",
        )
        self.embed_all_button = PushButton(
            text=EMBED_ALL,
            tooltip="Compute the embeddings of every slice in the background (this slice first, "
            "then outward), so that moving through the stack and propagating never wait for "
            "the encoder. Clicks go first. Kept on disk when 'keep embeddings on disk' is on.",
        )
        self.auto3d_button = PushButton(
            text="Auto segment 3D",
            tooltip="Segment every slice automatically and link the objects through the "
            "stack (3D objects, or tracks over time) into a new labels layer.",
        )
        super().__init__(
            widgets=[
                Label(value="<b>Volume</b>"),
                Container(widgets=[self.min_score]),
                self.embed_all_button,
                Container(
                    widgets=[self.propagate_button, self.auto3d_button],
                    layout="horizontal",
                    labels=False,
                ),
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.propagate_button.clicked.connect(self.propagate)
        self.auto3d_button.clicked.connect(self.auto_segment_3d)
        self.embed_all_button.clicked.connect(self.embed_all)

    # -- the stack ---------------------------------------------------------------------------

    def _stack(self) -> tuple[Image, Plane, int, Any] | None:
        """(image, plane, axis, SliceStack) of what is shown, or None (with a notice)."""
        from ..core.stack import SliceStack

        host = self._host
        image = host.image_layer()
        if image is None:
            host.notify("Choose an image first.")
            return None
        try:
            plane = host.plane_embedder.current_plane(image)
        except NapariSamError as e:
            host.error(e.for_gui())
            return None
        if not plane.is_stack:
            host.notify("This image is 2D: there is no stack to go through.")
            return None
        axis = host.plane_embedder.scroll_axis(plane)
        data, rgb_layer = level0(image), bool(image.rgb)
        norm = host.normalization_settings(image)
        n = spatial_shape(image)[axis]

        def rgb_of(i: int) -> np.ndarray:
            return norm.apply(slice_plane(plane, axis, i).take(data), rgb=rgb_layer)

        return image, plane, axis, SliceStack(rgb_of, (n, *plane.shape), axis=0)

    def _target_fits(self, image: Image) -> bool:
        """Refuse a chosen target that cannot take the result now, not after minutes of work."""
        target = selected(self._host.output_panel.target)
        if target is None:
            return True  # a new layer is made for the result
        try:
            check_target(target, image)
        except NapariSamError as e:
            self._host.error(e.for_gui())
            return False
        return True

    def _model_ready(self) -> bool:
        if self._host.model_panel.ensure_model(force=True):
            return True
        self._host.notify("The model is loading: press the button again once it is loaded.")
        return False

    @staticmethod
    def _spacing(image: Image, plane: Plane, axis: int) -> tuple[float, float, float]:
        # napari's scale is negative on mirrored axes (scans shown in patient orientation):
        # voxel sizes are its magnitude.
        scale = np.abs(np.asarray(image.scale, float))
        return (scale[axis], scale[plane.axes[0]], scale[plane.axes[1]])

    # -- propagation ---------------------------------------------------------------------------

    def propagate(self) -> None:
        """Propagate every prompted object through the stack (in a worker)."""
        host = self._host
        stack = self._stack()
        if stack is None or not self._target_fits(stack[0]) or not self._model_ready():
            return
        image, plane, axis, slices = stack
        prompts = host.prompt_panel
        try:
            by_slice = prompts_by_slice(
                selected(prompts.points_layer),
                selected(prompts.boxes_layer),
                image,
                plane,
                axis,
                host.viewer.dims.point,
            )
            objects = key_slice_objects(by_slice)
        except NapariSamError as e:
            host.error(e.for_gui())
            return
        if not objects:
            host.notify("Nothing to propagate: draw a box (or click) on a slice first.")
            return
        from ..core.propagation import PropagationParams, propagate

        engine = host.model_panel.engine
        params = PropagationParams(min_score=self.min_score.value)
        spacing = self._spacing(image, plane, axis)
        norm = host.normalization_settings(image)
        version = host.plane_embedder.data_version

        def job(task: Task) -> Any:
            return propagate(
                engine, slices, objects, params, spacing=spacing,
                progress=task.progress, cancel=task.is_cancelled,
            )  # fmt: skip

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            if error is not None:
                host.set_status(report(error, "propagation failed"))
                return
            if image not in host.viewer.layers or version != host.plane_embedder.data_version:
                host.warn("Propagation discarded: its image changed meanwhile.")
                return
            self._write(image, plane, axis, result, norm, engine)

        task = host.runner.start("propagate", "propagating through the stack", job, done)
        if task is not None:
            host.set_status(f"Propagating {len(objects)} object(s) through the stack…")

    def _write(self, image: Image, plane: Plane, axis: int, result: Any, norm: Any, engine: Any):
        host = self._host
        labels = host.output_panel.target_layer(image)
        try:
            placed_elsewhere = check_target(labels, image)  # it may have changed meanwhile
            written = write_stack(
                labels, plane, axis, result.labels, overwrite=host.output_panel.overwrite.value
            )
        except Exception as e:  # a read-only layer, ids that do not fit...: labels kept
            host.set_status(report(e, "the propagated labels could not be written"))
            return
        if not written:
            host.warn("Nothing written: existing labels cover the propagated object(s).")
            return
        if placed_elsewhere:
            host.warn(placed_elsewhere)
        table = pd.DataFrame(dict(result.table))
        table = table[table["label"].isin(list(written))].copy()
        table.insert(0, "index", [written[int(k)] for k in table.pop("label")])
        table["prompt"] = "propagated"
        table["model"] = engine.model.name
        from .._layers import add_features

        add_features(labels, table.to_dict("records"))
        labels.metadata = {
            **labels.metadata,
            PROVENANCE: {
                **provenance(image, norm, plane, engine),
                "propagation": {"axis": axis, **_params(result.params)},
            },
        }
        ids = ", ".join(map(str, written.values()))
        host.set_status(f"Propagated label {ids} into {labels.name!r}.")

    # -- embeddings of every slice ---------------------------------------------------------------

    def embed_all(self) -> None:
        """Embed every slice of the stack in the background (or stop doing so)."""
        host = self._host
        if host.runner.current("embed_all") is not None:
            host.runner.cancel("embed_all")
            return
        stack = self._stack()
        if stack is None or not self._model_ready():
            return
        _image, plane, axis, slices = stack
        from ..core.stack import embed_slices, slice_order

        engine, start, n = host.model_panel.engine, plane.index[axis], slices.n_slices
        on_disk = engine.store is not None

        def job(task: Task) -> Any:
            fit = max(1, ALL_SLICES_MEMORY_BYTES // _embedding_bytes(engine))
            engine.cache.max_items = max(engine.cache.max_items, min(n, fit))
            # Without a disk store, slices beyond the memory budget would be thrown away
            # again: embed only the nearest ones.
            indices = None if on_disk or n <= fit else slice_order(n, start)[:fit]
            done = embed_slices(
                engine, slices, start, indices=indices, keep_in_memory=False,
                progress=task.progress, cancel=task.is_cancelled, preempt=task.outranked,
            )  # fmt: skip
            return done, n if indices is None else len(indices)

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            self.embed_all_button.text = EMBED_ALL
            host.cache_panel.refresh()
            if isinstance(error, Cancelled):
                host.set_status(
                    f"Embedding all slices stopped: {task.done}/{task.total or n} slices "
                    "embedded (they stay cached)."
                )
                return
            if error is not None:
                host.set_status(report(error, "embedding all slices failed"))
                return
            emb, total = result
            kept = "" if total == n else f" (the {total} nearest: memory only, see the disk box)"
            host.set_status(
                f"Embedded {total}/{n} slices{kept}: {emb.computed} computed, {emb.reused} "
                f"already stored, {emb.seconds:.1f} s. Moving through the stack and "
                "propagating use them."
            )

        # Said before the start: napari may process events while a task starts (its
        # activity bar), and a job over cached slices can be done by then.
        self.embed_all_button.text = STOP_EMBED_ALL
        host.set_status(f"Embedding all {n} slices, from slice {start} outward…")
        key = (*self._stack_key(), axis)
        if host.runner.start("embed_all", "embedding all slices", job, done, key=key) is None:
            self.embed_all_button.text = EMBED_ALL

    def _stack_key(self) -> tuple:
        """(image id, data version, plane, normalisation, model) of the current plane."""
        key = self._host.plane_embedder.key
        return (None,) * 5 if key is None else key

    def plane_changed(self) -> None:
        """Stop embedding all slices when the image, its data, the other axes' positions, the
        intensities or the model change (moving along the stack's own axis is fine)."""
        task = self._host.runner.current("embed_all")
        if task is None:
            return
        *then, axis = task.key
        now = self._host.plane_embedder.key
        if now is None:  # the image is gone (e.g. napari closing): nothing left to embed
            self._host.runner.cancel("embed_all")
            return
        same = [a == b for a, b in zip(then, now, strict=True)]
        if now[2] is not None and then[2] is not None:
            same[2] = slice_plane(now[2], axis, 0) == slice_plane(then[2], axis, 0)
        if not all(same):
            self._host.runner.cancel("embed_all")

    # -- 3D automatic segmentation -------------------------------------------------------------

    def auto_segment_3d(self) -> None:
        """Segment every slice automatically, linked through the stack (in a worker)."""
        host = self._host
        stack = self._stack()
        if stack is None or not self._model_ready():
            return
        image, plane, axis, slices = stack
        from ..core.linking import segment_volume_automatically

        engine = host.model_panel.engine
        params = host.auto_panel.params()
        spacing = self._spacing(image, plane, axis)
        norm = host.normalization_settings(image)

        def job(task: Task) -> Any:
            return segment_volume_automatically(
                engine, slices, params, spacing=spacing,
                progress=task.progress, cancel=task.is_cancelled,
            )  # fmt: skip

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            if error is not None:
                host.set_status(report(error, "automatic 3D segmentation failed"))
                return
            if image not in host.viewer.layers:
                host.warn("Automatic 3D segmentation discarded: its image is gone.")
                return
            full = np.zeros(spatial_shape(image), np.int32)
            for i in range(result.labels.shape[0]):
                slice_plane(plane, axis, i).put(full, result.labels[i])
            table = pd.DataFrame(dict(result.table))
            table.insert(0, "index", table["label"].astype(np.int64))
            layer = Labels(
                full,
                name=f"{image.name} SAM auto 3D",
                features=table,
                metadata={
                    ROLE: "auto",
                    PROVENANCE: {
                        **provenance(image, norm, plane, engine),
                        "automatic": _params(params),
                        "linking": {"axis": axis, **_params(result.link)},
                    },
                },
                **geometry_like(image),
            )
            add_quietly(host.viewer, layer)
            host.set_status(f"Automatic 3D segmentation: {len(table)} objects in {layer.name!r}.")

        host.runner.start("auto3d", "automatic 3D segmentation", job, done)


def _params(obj: Any) -> dict[str, Any]:
    """A parameters dataclass as a plain dict (for metadata)."""
    return {k: getattr(obj, k) for k in getattr(obj, "__dataclass_fields__", {})}


def _embedding_bytes(engine: Any) -> int:
    """Memory one image embedding of ``engine``'s model takes (float32 features)."""
    prompt_encoder = engine.model.sam.prompt_encoder
    h, w = prompt_encoder.image_embedding_size
    return int(prompt_encoder.embed_dim) * int(h) * int(w) * 4
