"""napari with the widget in one busy state, closed right then: run by test_shutdown.py.

Usage: ``python close_scenarios.py STATE HOW`` with STATE one of ``download``, ``model``,
``embedding``, ``preview``, ``auto``, ``propagate``, ``samples`` and HOW ``viewer``
(``viewer.close()``) or ``window`` (the main window's close button). Prints ``CLEAN EXIT``
after napari's event loop has ended; the test also requires no traceback on stderr and exit
code 0 (an abort gives 134).
"""

from __future__ import annotations

import http.server
import sys
import threading
import time

import numpy as np

STATE, HOW = sys.argv[1], sys.argv[2]
TIMEOUT_S = 60


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves a 'checkpoint' of vit_b's size, 64 KiB every 50 ms: a download in progress."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(375_042_383))
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(b"\0" * 65536)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def _slow_engine(kind: str):
    """The tiny model with a slow encoder (cancellable between 'blocks') or a slow decoder."""
    from napari_sam.core.engine import SamEngine

    class Slow(SamEngine):
        def embed(self, rgb, *, progress=None, cancel=None, **kwargs):
            if kind == "embed":
                for i in range(600):  # 30 s in 50 ms blocks, like an encoder's blocks
                    if cancel is not None and cancel():
                        from napari_sam.core.errors import Cancelled

                        raise Cancelled("embedding cancelled")
                    if progress is not None:
                        progress(i, 600)
                    time.sleep(0.05)
            return super().embed(rgb, progress=progress, cancel=cancel, **kwargs)

        def predict(self, *args, **kwargs):
            if kind == "predict":
                time.sleep(1.5)  # a decoder step cannot be interrupted
            return super().predict(*args, **kwargs)

    return Slow.from_name("tiny", device="cpu")


def _click_once(viewer, point) -> None:
    """A positive click at ``point`` unless one was added already."""
    points = next(x for x in viewer.layers if x.name == "SAM points")
    if not len(points.data):
        points.add(point)


def main() -> None:
    import os

    if STATE == "download":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        os.environ["NAPARI_SAM_BASE_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        os.environ["NAPARI_SAM_MODEL"] = "vit_b"
    if STATE == "model":
        import napari_sam.core.checkpoints as checkpoints

        real = checkpoints.load_model

        def slow_load(*args, progress=None, **kwargs):
            for i in range(600):  # a long load, cancellable between its stages
                if progress is not None:
                    progress(i, 600)
                time.sleep(0.05)
            return real(*args, progress=progress, **kwargs)

        checkpoints.load_model = slow_load

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-kit", "Segment Anything")
    if STATE == "embed_all":  # the tiny model: 24 slices take seconds, closed mid-run
        from napari_sam.core.engine import SamEngine

        widget.set_engine(SamEngine.from_name("tiny", device="cpu"))
    if STATE in ("embedding", "preview", "propagate", "tiles"):
        kind = {"preview": "predict", "propagate": "predict"}.get(STATE, "embed")
        widget.set_engine(_slow_engine(kind))
    if STATE == "tiles":  # a click embedding its tile of a large plane read from disk
        widget.set_tiling((256, 256), (64, 64))
    if STATE == "samples":
        for key in ("coins", "cell", "ihc", "synthetic_cells", "nuclei_3d"):
            viewer.open_sample("napari-sam-kit", key)
    elif STATE in ("propagate", "embed_all"):
        from napari_sam.core.synthetic import make_nuclei_volume

        viewer.add_image(make_nuclei_volume((24, 96, 96), n_objects=4).image, name="stack")
    elif STATE == "tiles":
        import dask.array as da

        from napari_sam.core.synthetic import make_cells

        image = make_cells((600, 1200), seed=1).image
        viewer.add_image(da.from_array(image, chunks=(128, 128)), name="slide")
    else:
        from napari_sam.core.synthetic import make_cells

        viewer.add_image(make_cells((256, 256), seed=1).image.astype(np.float32), name="img")
    if STATE == "auto":
        widget.points_per_side.value = 48
        widget.pred_iou_thresh.value = 0.0
        widget.stability_score_thresh.value = 0.0

    start = time.monotonic()
    closed = []

    def reached() -> bool:
        runner = widget.runner
        if STATE == "samples":
            return True
        if STATE in ("download", "model"):
            task = runner.current("model")
            return task is not None and task.done > 0
        if STATE == "embedding":
            task = runner.current("embed")
            return task is not None and task.done > 0
        if STATE == "preview":
            if widget.embedding is None:
                return False
            _click_once(viewer, [128, 128])
            return runner.current("predict") is not None
        if STATE == "propagate":
            task = runner.current("propagate")
            if task is not None:
                return True
            if widget.embedding is None:
                return False
            boxes = next(x for x in viewer.layers if x.name == "SAM boxes")
            if not len(boxes.data):
                z = viewer.dims.current_step[0]
                boxes.add_rectangles(
                    np.array([[z, 20, 20], [z, 20, 60], [z, 60, 60], [z, 60, 20]])
                )
                widget.volume_panel.min_score.value = 0.0
            elif runner.current("predict") is None:
                widget.propagate()
            return False
        if STATE == "tiles":
            if widget.embedding is None:
                return False
            _click_once(viewer, [300, 600])
            task = runner.current("embed")
            return task is not None and task.done > 0
        if STATE == "embed_all":
            task = runner.current("embed_all")
            if task is None and widget.embedding is not None:
                widget.embed_all_slices()
                return False
            return task is not None and task.done > 0
        if STATE == "auto":
            if widget.engine is None or widget.embedding is None:
                return False
            task = runner.current("auto")
            if task is None:
                widget.auto_segment()
                return False
            return task.done > 0
        raise SystemExit(f"unknown state {STATE}")

    def poll() -> None:
        if closed:
            return
        if time.monotonic() - start > TIMEOUT_S:
            print(f"state {STATE} never reached", file=sys.stderr)
            os._exit(3)
        if not reached():
            QTimer.singleShot(20, poll)
            return
        closed.append(True)
        print(f"closing in state {STATE}", flush=True)
        if HOW == "viewer":
            viewer.close()
        else:
            viewer.window._qt_window.close()

    QTimer.singleShot(0, poll)
    napari.run()
    print("CLEAN EXIT", flush=True)


if __name__ == "__main__":
    main()
