"""The automatic panel: settings, and segmenting the whole current plane into a new layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import Container, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Labels

from .._layers import Plane, geometry_like, level0, spatial_shape
from .._tasks import Task
from .._tiles import lazy_plane, open_plane_tiles
from ..core.automatic import AutoParams, segment_automatically
from ..core.errors import NapariSamError
from ..core.lazy_arrays import empty_labels
from ..core.normalize import Normalization
from .layer_menus import ROLE, add_quietly
from .messages import report
from .output_panel import PROVENANCE, provenance

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget


class AutoPanel(Container):
    """Automatic segmentation settings (collapsed by default) and the Auto segment button."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        d = AutoParams()
        self.points_per_side = SpinBox(
            label="points per side", value=d.points_per_side, min=1, max=128
        )
        self.points_per_batch = SpinBox(
            label="points per batch", value=d.points_per_batch, min=1, max=1024
        )
        self.pred_iou_thresh = FloatSpinBox(
            label="min predicted IoU", value=d.pred_iou_thresh, min=0, max=1, step=0.01
        )
        self.stability_score_thresh = FloatSpinBox(
            label="min stability", value=d.stability_score_thresh, min=0, max=1, step=0.01
        )
        self.box_nms_thresh = FloatSpinBox(
            label="box NMS IoU", value=d.box_nms_thresh, min=0, max=1, step=0.01
        )
        self.crop_n_layers = SpinBox(label="crop layers", value=d.crop_n_layers, max=3)
        self.min_size = SpinBox(label="min size (px)", value=d.min_size, max=10**9)
        self.settings = Container(
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
        self.settings_shown = False
        self.toggle = PushButton(text="▸ automatic segmentation settings")
        self.button = PushButton(
            text="Auto segment",
            tooltip="Segment every object of the current plane into a new labels layer.",
        )
        super().__init__(
            widgets=[
                Label(value="<b>Automatic segmentation</b>"),
                self.toggle,
                self.settings,
                self.button,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._pending: tuple | None = None  # (image id, plane, model key) waiting for a model
        self.toggle.clicked.connect(lambda: self.show_settings())

    def show_settings(self, show: bool | None = None) -> None:
        """Expand (or collapse, or toggle when None) the settings."""
        # Own state: ``visible`` reads False whenever the window is hidden.
        show = not self.settings_shown if show is None else show
        self.settings_shown = show
        self.settings.visible = show
        self.toggle.text = f"{'▾' if show else '▸'} automatic segmentation settings"

    def params(self) -> AutoParams:
        """The settings as :class:`~napari_sam.core.automatic.AutoParams`."""
        return AutoParams(
            points_per_side=self.points_per_side.value,
            points_per_batch=self.points_per_batch.value,
            pred_iou_thresh=self.pred_iou_thresh.value,
            stability_score_thresh=self.stability_score_thresh.value,
            box_nms_thresh=self.box_nms_thresh.value,
            crop_n_layers=self.crop_n_layers.value,
            min_size=self.min_size.value,
        )

    # -- a run waiting for its model --

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def drop_pending(self) -> None:
        self._pending = None

    def model_ready(self) -> None:
        """The model arrived: run a waiting request if it is still for what is shown."""
        pending, self._pending = self._pending, None
        if pending is not None and pending == self._request_key():
            self.run()
        elif pending is not None:
            self._host.set_status(
                "Automatic segmentation not started: the image, plane or model changed while "
                "the model loaded. Press Auto segment again."
            )

    def _request_key(self) -> tuple | None:
        host = self._host
        image = host.image_layer()
        if image is None:
            return None
        try:
            plane = host.plane_embedder.current_plane(image)
        except NapariSamError:
            return None
        return (image.unique_id, plane, host.model_panel.model_key())

    # -- running --

    def run(self) -> None:
        """Segment every object of the current plane into a new labels layer (in a worker)."""
        host = self._host
        image = host.image_layer()
        if image is None:
            host.notify("Choose an image first.")
            return
        try:
            plane = host.plane_embedder.current_plane(image)
            params = self.params()
        except NapariSamError as e:
            host.error(e.for_gui())
            return
        host.model_panel.failed_key = None
        if not host.model_panel.ensure_model(force=True):
            self._pending = self._request_key()
            return
        norm = host.normalization_settings(image)
        data = level0(image)
        rgb_layer = bool(image.rgb)
        engine = host.model_panel.engine
        version = host.plane_embedder.data_version
        image_id = image.unique_id
        tiling = host.tiling_panel
        settings = tiling.settings()
        grid = settings.grid(plane.shape)
        tiles = tiling.current(plane) if grid is not None else None
        folder = host.cache_panel.folder()  # read here: widgets belong to the GUI thread

        def job(task: Task) -> Any:
            task.may_yield = lambda: not engine.in_forward()
            if tiles is not None:  # the plane's tiles, with those embedded already
                return _segment_tiles(task, engine, tiles, params, tiling.on_tile)
            lazy = lazy_plane(data, plane, norm, rgb=rgb_layer) if grid is not None else None
            rgb = lazy if lazy is not None else norm.apply(plane.take(data), rgb=rgb_layer)
            task.check("normalising")
            if grid is not None:
                opened = open_plane_tiles(
                    engine,
                    rgb,
                    grid,
                    lazy.norm.describe() if lazy is not None else norm.describe(data.dtype),
                    folder=folder,
                    store=settings.store,
                )
                return _segment_tiles(task, engine, opened, params, tiling.on_tile)
            return segment_automatically(
                engine, rgb, params, progress=task.progress, cancel=task.is_cancelled
            )

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            if grid is not None:
                tiling.untrack("auto")
            if error is not None:
                host.set_status(report(error, "automatic segmentation failed"))
                return
            # The result belongs to the plane it was computed from and says so in its
            # metadata; it is dropped only when that image is gone or its data replaced.
            source = next((x for x in host.viewer.layers if x.unique_id == image_id), None)
            if source is None or version != host.plane_embedder.data_version:
                host.warn("Automatic segmentation discarded: its image changed meanwhile.")
                return
            layer = self._add_result(source, plane, norm, params, result, engine)
            if grid is not None:
                layer.metadata[PROVENANCE]["tiling"] = grid.to_dict()

        if grid is not None:
            tiling.track("auto", list(range(len(grid))))
        host.runner.start("auto", "automatic segmentation", job, done)

    def _record(
        self,
        layer: Labels,
        plane: Plane,
        norm: Normalization,
        params: Any,
        result: Any,
        engine: Any,
    ) -> None:
        """Add the run to the session (for replay and autosave)."""
        from ..core.session_record import AutoRunRecord, ModelRecord

        try:
            entry = AutoRunRecord.build(
                target=layer.name,
                plane=plane,
                model=ModelRecord.from_model(engine.model),
                normalization=norm,
                params=params,
                labels=result.labels,
            )
        except Exception as e:  # the layer exists: never lose it over a record
            self._host.set_status(report(e, "the run could not be recorded in the session"))
            return
        self._host.session_panel.record_entry(entry)

    def _add_result(
        self,
        image: Image,
        plane: Plane,
        norm: Normalization,
        params: AutoParams,
        result: Any,
        engine: Any,
    ) -> Labels:
        # The plane's labels in a layer the size of the image; the other planes of a stack
        # take no memory (empty_labels) until the user paints them.
        full = empty_labels(spatial_shape(image), np.int32)
        plane.put(full, result.labels)
        table = pd.DataFrame({k: np.asarray(v) for k, v in result.table.items()})
        table.insert(0, "index", table["label"].astype(np.int64))
        prov = {
            **provenance(image, norm, plane, engine),
            "automatic": {k: getattr(params, k) for k in params.__dataclass_fields__},
        }
        layer = Labels(
            full,
            name=f"{image.name} SAM auto",
            features=table,
            metadata={PROVENANCE: prov, ROLE: "auto"},
            **geometry_like(image),
        )
        layer = add_quietly(self._host.viewer, layer)
        self._record(layer, plane, norm, params, result, engine)
        hint = (
            " Lower 'min predicted IoU' and 'min stability' to keep less certain objects."
            if result.n_objects == 0
            else ""
        )
        self._host.set_status(
            f"Automatic segmentation: {result.n_objects} objects in {layer.name!r}.{hint}"
        )
        return layer


def _segment_tiles(task: Task, engine: Any, tiles: Any, params: AutoParams, on_tile: Any) -> Any:
    """Tiled automatic segmentation (in the worker), saying which tile it is in."""
    from ..core.tiled_automatic import segment_tiled

    n = len(tiles.grid)
    task.label = f"automatic segmentation, tile 1 of {n}"

    def tile_done(index: int) -> None:
        on_tile(index)
        task.label = f"automatic segmentation, tile {min(index + 2, n)} of {n}"

    return segment_tiled(
        engine, tiles, params, progress=task.progress, cancel=task.is_cancelled, on_tile=tile_done
    )
