"""Make the user guide's screenshots from a real napari window.

Opens napari with the widget, loads the "synthetic cells" sample, clicks an object, commits
it, draws a box, and runs automatic segmentation, all with the bundled tiny model; saves
``viewer.screenshot(canvas_only=False)`` at each step into ``docs/images/``. The volume
workflows of docs/volumes.md (``--only volumes``, :mod:`screenshots_volumes`): the bundled
brain MRI and a synthetic CT (window, box on the key slice, propagation, 3D view, features
table), the synthetic 3D nuclei (propagation, 3D automatic segmentation) and the synthetic
time-lapse (tracks).

Needs a display; on a server run it under Xvfb::

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/make_screenshots.py [--only volumes]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Largest PNG we keep in the repository.
MAX_BYTES = 300_000


def wait(app, widget, timeout: float = 300.0) -> None:
    """Let Qt run until the widget has nothing left to do."""
    start = time.monotonic()
    while True:
        app.processEvents()
        if not widget.busy:
            # Half a second more so that napari redraws the canvas and the dock's layout.
            for _ in range(25):
                app.processEvents()
                time.sleep(0.02)
            return
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"widget still busy after {timeout} s: {widget.status.value}")
        time.sleep(0.02)


def hide_notifications() -> None:
    """Close napari's pop-up notifications (e.g. deprecation notices)."""
    from qtpy.QtWidgets import QApplication, QDialog

    for top in QApplication.topLevelWidgets():
        for dialog in [top, *top.findChildren(QDialog)]:
            if type(dialog).__name__ == "NapariQtNotification":
                dialog.close()


def save(viewer, path: Path, width: int | None = None) -> None:
    """Screenshot of the whole window, as a small palette PNG (``width`` pixels wide)."""
    from PIL import Image

    hide_notifications()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(shot)[..., :3])
    if width is not None and img.width > width:
        height = round(img.height * width / img.width)
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    scale = 1.0
    while True:
        out = (
            img
            if scale == 1.0
            else img.resize(
                (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
            )
        )
        out = out.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out.save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES or scale < 0.5:
            break
        scale *= 0.85
    print(f"{path}: {img.width}x{img.height}, {path.stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument(
        "--only", choices=("2d", "volumes"), default=None, help="default: both sets"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_SAM_MODEL", "tiny")
    # segment-anything (torchvision, triton) before napari's OpenGL canvas exists: see
    # napari_sam._compat.
    import segment_anything  # noqa: F401
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if args.only != "volumes":
        two_d(args.out)
    if args.only != "2d":
        import screenshots_volumes

        screenshots_volumes.main(args.out)


def two_d(out: Path) -> None:
    """The 2D workflow of the user guide: click, box, commit, automatic segmentation."""
    import napari
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage as ndi

    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(1400, 860)
    app = QApplication.instance()
    layers = viewer.open_sample("napari-sam-kit", "synthetic_cells")
    image = next(layer for layer in layers if layer.name == "synthetic cells")
    reference = next(layer for layer in layers if layer.name == "reference labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-kit", "Segment Anything")
    widget.image.value = image
    wait(app, widget)

    # Pick the two largest reference objects away from the border: click one, box the other.
    ref = reference.data
    border = np.unique(np.concatenate([ref[0], ref[-1], ref[:, 0], ref[:, -1]]))
    ids, counts = np.unique(ref[ref > 0], return_counts=True)
    big = [k for k in ids[np.argsort(counts)[::-1]] if k not in border]
    dist = ndi.distance_transform_edt(reference.data == big[0])
    click = np.unravel_index(np.argmax(dist), dist.shape)
    rows, cols = np.nonzero(reference.data == big[1])

    points = next(layer for layer in viewer.layers if layer.name == "SAM points")
    boxes = next(layer for layer in viewer.layers if layer.name == "SAM boxes")
    points.add(np.asarray(click, float))
    wait(app, widget)
    save(viewer, out / "first-click.png")

    widget.commit()
    wait(app, widget)
    pad = 3
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    boxes.add_rectangles(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float))
    wait(app, widget)
    save(viewer, out / "box-and-commit.png")
    widget.commit()
    wait(app, widget)

    # The automatic segmentation gets its own view: the settings open, the manual labels off.
    widget.show_auto_settings(True)
    widget.points_per_side.value = 16
    widget.min_size.value = 30
    widget.auto_segment()
    wait(app, widget)
    for layer in viewer.layers:
        if layer.name in ("SAM labels", "SAM preview"):
            layer.visible = False
    save(viewer, out / "auto-segment.png")
    widget.close()
    viewer.close()


if __name__ == "__main__":
    main()
