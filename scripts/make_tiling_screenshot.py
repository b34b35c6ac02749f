"""Make docs/images/tiles.png: the widget tiling a large image, with the "SAM tiles" display.

A 600 x 1200 synthetic image of small nuclei, tiles of 256 px with a halo of 64; two clicks
and a box (three tiles embedded, green), committed; the bundled tiny model. Shares the
screenshot helpers of ``make_screenshots.py``. Needs a display; on a server::

    xvfb-run -a -s "-screen 0 1900x1000x24" python scripts/make_tiling_screenshot.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import ROOT, save, wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_SAM_MODEL", "tiny")

    # segment-anything before napari's OpenGL canvas exists: see napari_sam._compat.
    import napari
    import segment_anything  # noqa: F401
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam.core.synthetic import make_cells

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    syn = make_cells(
        (600, 1200), n_objects=60, radius_range=(6, 11), seed=3, polarity="bright", colour=False
    )
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(1880, 900)  # wide: the image is twice as wide as high
    app = QApplication.instance()
    image = viewer.add_image(syn.image, name="nuclei 600 x 1200")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-kit", "Segment Anything")
    widget.set_tiling((256, 256), halo=(64, 64))
    widget.image.value = image
    wait(app, widget)
    viewer.reset_view()

    ids, counts = np.unique(syn.labels[syn.labels > 0], return_counts=True)
    centres = []
    for k in ids[np.argsort(counts)[::-1]]:
        rr, cc = np.nonzero(syn.labels == k)
        centres.append((float(np.median(rr)), float(np.median(cc))))
    points = next(layer for layer in viewer.layers if layer.name == "SAM points")
    boxes = next(layer for layer in viewer.layers if layer.name == "SAM boxes")
    # The largest object left of the middle, the largest right of it: two tiles.
    left = next(c for c in centres if c[1] < 500)
    right = next(c for c in centres if c[1] > 800)
    for click in (left, right):
        points.add(np.asarray(click, float))
        wait(app, widget)
        widget.commit()
        wait(app, widget)
    r, c = next(c for c in centres if 550 < c[1] < 750)
    boxes.add_rectangles(
        np.array([[r - 14, c - 14], [r - 14, c + 14], [r + 14, c + 14], [r + 14, c - 14]])
    )
    wait(app, widget)
    save(viewer, args.out / "tiles.png")
    widget.close()
    viewer.close()


if __name__ == "__main__":
    main()
