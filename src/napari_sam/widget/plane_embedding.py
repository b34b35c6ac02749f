"""The current plane and its image embedding: computed in a worker, thrown away when late.

Whenever the image, its data, the slice, the model or the normalisation changes, the plane
key changes and the :class:`~napari_sam._session.Generation` counter is bumped; an embedding
(or anything else) that arrives for an older generation is discarded and counted in
:attr:`PlaneEmbedder.discarded`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._layers import Plane, image_plane, level0, neighbour_planes, spatial_shape
from .._session import Generation, key_text
from .._tasks import Task
from .._tiles import is_tiled, lazy_plane, open_plane_tiles
from ..core.errors import Cancelled, NapariSamError
from ..core.normalize import Normalization
from .messages import report

#: How many planes on each side of the current one are embedded ahead of need.
PREFETCH_REACH = 2

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget


@dataclass
class Embedded:
    """The embedding of the current plane and what it was computed from."""

    key: tuple
    plane: Plane
    engine: Any
    embedding: Any
    #: SAM's input: a uint8 (H, W, 3) array, or a lazy tiled plane's PreparedPlane.
    rgb: Any
    cached: bool
    #: Why SAM's input is one flat colour (see :func:`blank_input_note`), or None.
    note: str | None = None


def blank_input_note(plane: np.ndarray, rgb: np.ndarray) -> str | None:
    """Why SAM's input ``rgb``, made from the image plane ``plane``, is one flat colour.

    None when it is not. SAM finds nothing in a blank image (every object would be a guess),
    so the user is told why it is blank: a plane of NaN, a constant plane, or intensity
    settings that map every pixel to the same grey (e.g. contrast limits far from the data).
    Costs two reductions of ``rgb``; ``plane`` is only looked at when ``rgb`` is blank.
    """
    if np.ptp(rgb.reshape(-1, rgb.shape[-1]), axis=0).any():
        return None
    values = np.asarray(plane)
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    pixels = values.reshape(values.shape[0] * values.shape[1], -1)  # a row per pixel
    if pixels.dtype.kind in "fc":
        pixels = pixels[np.isfinite(pixels).all(axis=1)]
    if not len(pixels):
        why = "every pixel of this plane is NaN or infinite"
        what = "Choose another image or plane"
    elif not np.ptp(pixels, axis=0).any():
        first = pixels[0]
        value = f"value {first[0]:g}" if len(first) == 1 else f"colour {tuple(first.tolist())}"
        some = "" if len(pixels) == values.shape[0] * values.shape[1] else " that is a number"
        why = f"every pixel{some} of this plane has the {value}"
        what = "Choose another image or plane"
    else:
        why = "the intensity settings map every pixel of this plane to the same grey"
        what = (
            "Set the contrast limits around the data (layer controls, right-click the "
            "slider to reset them) or choose intensities 'percentiles'"
        )
    return f"SAM sees a blank image: {why}, so there is nothing to segment. {what}."


class PlaneEmbedder:
    """Follows the displayed plane of the chosen image and keeps its embedding coming."""

    def __init__(self, host: SamWidget) -> None:
        self._host = host
        self.generation = Generation()
        self.plane: Plane | None = None
        self.key: tuple | None = None
        self.embedded: Embedded | None = None
        self.data_version = 0
        self._stopped_key: tuple | None = None  # cancelled or failed: no automatic retry
        #: Why the last embedding is missing ("cancelled", "stopped by an error") or None;
        #: it ends the sentence "the image embedding was ...".
        self.missing_because: str | None = None
        self._last_note: str | None = None  # the last blank-input warning shown
        #: How many late results were thrown away (the image, slice, model or normalisation
        #: had changed by the time they arrived).
        self.discarded = 0
        #: The key of the plane the prefetch job is embedding now (None between planes), and
        #: the event that stops it after that plane; both under ``_prefetch_lock``.
        self._prefetching: tuple | None = None
        self._prefetch_stop = threading.Event()
        self._prefetch_lock = threading.Lock()
        #: How many times moving onto a plane waited for its prefetch instead of restarting it.
        self.waited_for_prefetch = 0
        #: How many neighbouring planes were embedded ahead of need.
        self.prefetched = 0

    def current_plane(self, image: Image) -> Plane:
        """The plane of ``image`` the viewer shows now (raises NapariSamError if none)."""
        dims = self._host.viewer.dims
        return image_plane(image, dims.point, dims.displayed, dims.ndim)

    def update(self, *, force: bool = False) -> None:
        """Work out the current plane and make sure its embedding exists or is coming."""
        host = self._host
        image = host.image_layer()
        if image is None:
            self.invalidate(None)
            host.set_status("Open an image (File > Open Sample > napari-sam) to start.")
            return
        try:
            plane = self.current_plane(image)
        except NapariSamError as e:
            self.invalidate(None)
            host.set_status(e.for_gui())
            return
        host.tiling_panel.adopt_auto(image, plane)  # a large plane on disk: tile it
        norm = host.normalization_settings(image)
        key = (
            image.unique_id,
            self.data_version,
            plane,
            norm,
            host.model_panel.model_key(),
            host.tiling_panel.settings(),
        )
        if key != self.key:
            self.invalidate(key, plane)
        elif self.embedded is not None:
            host.preview_controller.schedule()
            return
        if host.runner.current("embed") is not None or (key == self._stopped_key and not force):
            return
        if not host.model_panel.ensure_model(force=force):
            return
        self._stopped_key = None
        self._start(image, plane, norm, key)

    def invalidate(self, key: tuple | None, plane: Plane | None = None) -> None:
        """Forget the embedding and preview of the previous plane; late results are stale."""
        self.generation.bump()
        self.key = key
        self.plane = plane
        self.embedded = None
        self._stopped_key = None
        self.missing_because = None
        self._host.runner.cancel("embed")
        self._host.on_plane_invalidated()

    def _start(self, image: Image, plane: Plane, norm: Normalization, key: tuple) -> None:
        host = self._host
        data = level0(image)
        rgb_layer = bool(image.rgb)
        engine = host.model_panel.engine
        generation = self.generation.value
        tiling = host.tiling_panel.settings()
        grid = tiling.grid(plane.shape)
        folder = host.cache_panel.folder()  # read here: widgets belong to the GUI thread

        def job(task: Task) -> tuple[Any, Any, bool, str | None]:
            task.check("reading the plane")
            lazy = lazy_plane(data, plane, norm, rgb=rgb_layer) if grid is not None else None
            if lazy is not None:  # a large plane on disk: only its tiles' blocks are read
                how, store = lazy.norm.describe(), tiling.store
                tiles = open_plane_tiles(engine, lazy, grid, how, folder=folder, store=store)
                return tiles, lazy, False, None
            values = plane.take(data)
            rgb = norm.apply(values, rgb=rgb_layer)
            note = blank_input_note(values, rgb)
            del values  # not held while the encoder runs
            task.check("normalising")
            if grid is not None:  # a large plane: its tiles are embedded when needed
                how = norm.describe(data.dtype)
                tiles = open_plane_tiles(engine, rgb, grid, how, folder=folder, store=tiling.store)
                return tiles, rgb, False, note
            cached = engine.cached_embedding(rgb) is not None
            task.may_yield = lambda: not engine.in_forward()
            emb = engine.embed(rgb, progress=task.progress, cancel=task.is_cancelled)
            return emb, rgb, cached, note

        def done(task: Task, result: Any, error: BaseException | None) -> None:
            if not self.generation.is_current(generation) or self.key != key:
                self.discarded += 1  # stale: the image, slice, model or normalisation changed
                return
            if error is not None:
                self._stopped_key = key
                cancelled = isinstance(error, Cancelled)
                self.missing_because = "cancelled" if cancelled else "stopped by an error"
                if cancelled:
                    host.set_status(
                        f"Embedding cancelled; press Segment ({key_text('segment')}) "
                        "to compute it."
                    )
                else:
                    host.set_status(report(error, "the embedding could not be computed"))
                host.on_embedding_missing()
                return
            embedding, rgb, cached, note = result
            self.embedded = Embedded(key, plane, engine, embedding, rgb, cached, note)
            if grid is not None:
                host.tiling_panel.plane_ready(embedding)
            self.status_ready()
            if note is not None and note != self._last_note:
                host.warn(note)  # once per cause, not on every blank slice of a stack
            self._last_note = note
            host.preview_controller.schedule()
            self.prefetch()

        # The plane being prefetched right now: let that job finish it (then stop) and wait
        # for its result at the torch gate, instead of cancelling it and starting again.
        with self._prefetch_lock:
            spare = self._prefetching == key and host.runner.current("prefetch") is not None
            if spare:
                self._prefetch_stop.set()
                self.waited_for_prefetch += 1
        host.set_status("Computing the image embedding…")
        host.runner.start(
            "embed",
            "computing image embedding",
            job,
            done,
            key=key,
            spare=("prefetch",) if spare else (),
        )

    def prefetch(self) -> None:
        """Embed the planes next to the current one, nearest first, while nothing else runs.

        Lowest priority: any other torch job cancels it (the runner's rule for background
        work), and it is started again when that job is done. Planes already cached cost a
        normalisation and a hash each.
        """
        host = self._host
        embedded, image = self.embedded, host.image_layer()
        if embedded is None or image is None or not embedded.plane.is_stack:
            return
        if is_tiled(embedded.embedding):
            return  # tiles are embedded where prompts need them, not ahead
        runner = host.runner
        if any(runner.current(k) is not None for k in ("model", "embed", "predict", "auto")):
            return  # they call prefetch again when they are done
        if runner.current("embed_all") is not None:
            return  # it embeds every slice, these included
        planes = neighbour_planes(
            embedded.plane,
            spatial_shape(image),
            self.scroll_axis(embedded.plane),
            PREFETCH_REACH,
        )
        if not planes:
            return
        data, rgb_layer, engine = level0(image), bool(image.rgb), embedded.engine
        norm = host.normalization_settings(image)
        # Each plane's key as update() makes it, to recognise a move onto the plane in work.
        context = embedded.key
        keys = [(*context[:2], plane, *context[3:]) for plane in planes]
        stop = self._prefetch_stop = threading.Event()

        def job(task: Task) -> int:
            computed = 0
            try:
                for i, plane in enumerate(planes):
                    task.check()
                    with self._prefetch_lock:
                        if stop.is_set():  # the user moved onto the plane just finished
                            break
                        self._prefetching = keys[i]
                    rgb = norm.apply(plane.take(data), rgb=rgb_layer)
                    if engine.cached_embedding(rgb) is None:
                        engine.embed(rgb, cancel=task.is_cancelled)
                        computed += 1
                    task.done, task.total = i + 1, len(planes)
            finally:
                with self._prefetch_lock:
                    self._prefetching = None
            return computed

        def done(task: Task, computed: Any, error: BaseException | None) -> None:
            if error is None:
                self.prefetched += computed

        runner.start("prefetch", "embedding neighbouring planes", job, done)

    def scroll_axis(self, plane: Plane) -> int:
        """The data axis the user moves along: the last slider used, else the first one."""
        dims = self._host.viewer.dims
        axis = int(dims.last_used) - (dims.ndim - plane.ndim)
        if 0 <= axis < plane.ndim and plane.index[axis] is not None:
            return axis
        return next(a for a, i in enumerate(plane.index) if i is not None)

    def status_ready(self) -> None:
        """Say which model embedded the plane, and how fast."""
        host = self._host
        engine = host.model_panel.engine
        if self.embedded is None or engine is None:
            return
        model = engine.model
        emb = self.embedded.embedding
        if is_tiled(emb):
            took = f"{len(emb.grid)} tiles, embedded when needed"
        else:
            took = "cached" if self.embedded.cached else f"{emb.seconds:.1f} s"
        where = self.embedded.plane.describe(host.axis_labels())
        note = self.embedded.note
        host.set_status(
            f"{model.name} on {model.device} · embedding {took}"
            + (f" · {where}" if where else "")
            + (f" · {note}" if note else "")
        )

    @property
    def embedding(self) -> Any:
        """The embedding of the current plane, if it has arrived."""
        embedded = self.embedded
        return None if embedded is None or embedded.key != self.key else embedded.embedding
