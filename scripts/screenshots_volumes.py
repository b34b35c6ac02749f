"""The screenshots of docs/volumes.md: scans and stacks in napari with the widget.

Run by ``scripts/make_screenshots.py --only volumes`` (see there; it needs a display, e.g.
Xvfb). Every workflow runs in its own napari window with the bundled tiny model, so the
pictures show that model's real output (it is a test model, not a real SAM):

- the bundled brain MRI: a box on the tumour's key slice, propagation, the features table, a
  strip of slices; the labels saved as NIfTI and read back with their geometry;
- a synthetic CT (no CT is bundled), opened through napari-sam's reader from a NIfTI file made
  here: the soft-tissue and lung windows, a kidney propagated from one box;
- the synthetic 3D nuclei: propagation from a box and automatic 3D segmentation;
- the synthetic time-lapse of moving nuclei: every nucleus tracked from boxes on one frame
  (a strip of frames: one colour, one id, per nucleus), and the tracks' features.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from make_screenshots import save, wait

#: Width (pixels) of the volume screenshots.
WIDTH = 1000


def _viewer(ndim_title: str):
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title=f"napari-sam: {ndim_title}")
    viewer.window.resize(1400, 860)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-kit", "Segment Anything")
    return QApplication.instance(), viewer, widget


def _layer(viewer, name: str):
    return next(layer for layer in viewer.layers if layer.name == name)


def _box(z: int, mask: np.ndarray, pad: int = 2) -> np.ndarray:
    """The four corners of ``mask``'s bounding box on slice ``z`` (data coordinates)."""
    rows, cols = np.nonzero(mask)
    r0, r1 = rows.min() - pad, rows.max() + pad
    c0, c1 = cols.min() - pad, cols.max() + pad
    return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)


def _go_to(viewer, image, z: int) -> None:
    """Show slice ``z`` of ``image`` (its world position: scans have scale and origin)."""
    viewer.dims.set_point(0, float(image.data_to_world((z, 0, 0))[0]))


def _focus(viewer, image, z: int, mask: np.ndarray, zoom: float = 2.0) -> None:
    """Centre the 2D view on ``mask`` (on slice ``z``) and zoom in."""
    rows, cols = np.nonzero(mask)
    centre = image.data_to_world((z, rows.mean(), cols.mean()))
    viewer.camera.center = tuple(float(v) for v in centre[1:])
    viewer.camera.zoom = viewer.camera.zoom * zoom


def _strip(app, viewer, widget, image, zs: list[int], path: Path, caption="slice") -> None:
    """The canvas at several slices side by side, each captioned with its slice number."""
    from PIL import Image, ImageDraw, ImageFont

    shots = []
    for z in zs:
        _go_to(viewer, image, z)
        wait(app, widget)
        shots.append(np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3])
    # Crop the canvas's empty margins (the same box for every slice).
    rows, cols = np.nonzero(np.any([s.max(axis=2) > 12 for s in shots], axis=0))
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    tiles = []
    for z, shot in zip(zs, shots, strict=True):
        tile = Image.fromarray(shot).crop(box)
        font = ImageFont.load_default(size=max(12, tile.width // 10))
        ImageDraw.Draw(tile).text((8, 6), f"{caption} {z}", fill=(255, 255, 0), font=font)
        tiles.append(tile)
    w, h = tiles[0].size
    strip = Image.new("RGB", (w * len(tiles) + 4 * (len(tiles) - 1), h), (40, 40, 40))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (w + 4), 0))
    if strip.width > WIDTH:
        strip = strip.resize((WIDTH, round(strip.height * WIDTH / strip.width)), Image.LANCZOS)
    strip = strip.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    strip.save(path, optimize=True)
    print(f"{path}: {strip.width}x{strip.height}, {path.stat().st_size} bytes")


def _distinct_colours(labels) -> None:
    """Colours that tell a few ids apart at a glance (napari's are random)."""
    from napari.utils.colormaps import DirectLabelColormap

    palette = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f032e6", "#42d4f4", "#f58231"]
    colours = {None: "transparent", 0: "transparent"}
    colours.update(
        {k: palette[(k - 1) % len(palette)] for k in range(1, int(labels.data.max()) + 1)}
    )
    labels.colormap = DirectLabelColormap(color_dict=colours)
    labels.opacity = 0.8


def _features_dock(viewer, labels) -> None:
    viewer.layers.selection.active = labels
    viewer.window.add_plugin_dock_widget("napari", "Features table widget")


def _three_d(viewer, image, hide: tuple[str, ...] = ()) -> None:
    for layer in viewer.layers:
        if layer.name in ("SAM points", "SAM boxes", "SAM preview", *hide):
            layer.visible = False
    viewer.dims.ndisplay = 3
    image.rendering = "attenuated_mip"
    image.opacity = 0.35
    viewer.reset_view()  # before the angles: it resets them
    viewer.camera.angles = (-15, 35, 75)


def _dice(got: np.ndarray, ref: np.ndarray) -> float:
    return float(2 * (got & ref).sum() / max(got.sum() + ref.sum(), 1))


def _propagate(app, widget, min_score: float = 0.3) -> None:
    widget.volume_panel.min_score.value = min_score  # the tiny model's scores run low
    widget.propagate()
    wait(app, widget)


def mri(out: Path) -> None:
    """Brain MRI: box on slice 14, propagate, 3D, features; save as NIfTI, read back."""
    from napari_sam._reader import read_layers
    from napari_sam.core.io import write_labels

    app, viewer, widget = _viewer("brain MRI")
    image, reference = viewer.open_sample("napari-sam-kit", "mri_brain")
    reference.visible = False
    widget.image.value = image
    wait(app, widget)
    viewer.reset_view()  # the dock narrowed the canvas after the image was fitted
    z = 14
    _go_to(viewer, image, z)
    wait(app, widget)
    _focus(viewer, image, z, reference.data[z] > 0, zoom=2.5)
    _layer(viewer, "SAM boxes").add_rectangles(_box(z, reference.data[z] > 0))
    wait(app, widget)
    save(viewer, out / "mri-box-key-slice.png", WIDTH)
    _propagate(app, widget)
    labels = _layer(viewer, "SAM labels")
    ref = reference.data > 0
    print(f"MRI: 3D Dice {_dice(labels.data > 0, ref):.2f} against the tumour mask")
    _features_dock(viewer, labels)
    _go_to(viewer, image, z + 2)
    wait(app, widget)
    save(viewer, out / "mri-propagated.png", WIDTH)
    # Saved as NIfTI with the scan's geometry, and opened again next to the scan.
    geometry = image.metadata["napari_sam"]["geometry"]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_labels(Path(tmp) / "tumour.nii.gz", labels.data, geometry=geometry)
        (data, kwargs, kind), *_ = read_layers(str(path))
        again = viewer.add_labels(data, **kwargs)
        assert kind == "labels" and np.array_equal(again.data > 0, labels.data > 0)
        assert np.allclose(again.scale, image.scale) and np.allclose(
            again.translate, image.translate
        )
    viewer.layers.remove(again)
    # A few slices: the propagated label, and the reference mask's outline for comparison.
    for layer in viewer.layers:
        if layer.name in ("SAM points", "SAM boxes", "SAM preview"):
            layer.visible = False
    reference.visible, reference.contour, reference.opacity = True, 1, 1.0
    zs = [12, 14, 16, 18, 20]
    _strip(app, viewer, widget, image, zs, out / "mri-slices.png")
    widget.close()
    viewer.close()


def ct_volume(shape=(40, 160, 192)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU with air, body, lungs, spine, liver and a kidney (its mask)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    n_z, h, w = shape
    hu = np.full(shape, -1000.0, np.float32)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 <= 1
    hu[body] = 30
    for side in (-1, 1):  # lungs in the upper slices
        lung = ((yy - 0.45 * h) / (0.25 * h)) ** 2 + (
            (xx - w / 2 - side * 0.2 * w) / (0.14 * w)
        ) ** 2
        hu[(lung <= 1) & (zz > 0.55 * n_z)] = -850
    spine = ((yy - 0.78 * h) / 9) ** 2 + ((xx - w / 2) / 9) ** 2 <= 1
    hu[spine] = 700
    liver = ((zz - 0.45 * n_z) / (0.3 * n_z)) ** 2 + ((yy - 0.45 * h) / (0.2 * h)) ** 2
    liver = liver + ((xx - 0.33 * w) / (0.15 * w)) ** 2 <= 1
    hu[liver] = 60
    kidney = ((zz - 0.3 * n_z) / (0.16 * n_z)) ** 2 + ((yy - 0.62 * h) / 14) ** 2
    kidney = kidney + ((xx - 0.68 * w) / 10) ** 2 <= 1
    hu[kidney] = 160
    hu += rng.normal(0, 12, shape).astype(np.float32)
    return hu.astype(np.int16), kidney


def ct(out: Path) -> None:
    """Synthetic CT from a NIfTI file: windows, a kidney from one box, features."""
    import SimpleITK as sitk

    from napari_sam.core.windows import CT_WINDOWS, window_limits

    hu, kidney = ct_volume()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        itk = sitk.GetImageFromArray(hu)
        itk.SetSpacing((0.8, 0.8, 2.5))  # x, y, z in mm
        sitk.WriteImage(itk, str(path), True)
        app, viewer, widget = _viewer("CT")
        (image,) = viewer.open(str(path), plugin="napari-sam-kit")
    widget.image.value = image
    wait(app, widget)
    viewer.reset_view()  # the dock narrowed the canvas after the image was fitted
    z = int(np.nonzero(kidney.any(axis=(1, 2)))[0].mean())
    _go_to(viewer, image, z)
    image.contrast_limits = window_limits(*CT_WINDOWS["lung"])
    wait(app, widget)
    save(viewer, out / "ct-lung-window.png", WIDTH)
    image.contrast_limits = window_limits(*CT_WINDOWS["soft-tissue"])  # what SAM sees too
    wait(app, widget)
    _focus(viewer, image, z, kidney[z], zoom=1.5)
    _layer(viewer, "SAM boxes").add_rectangles(_box(z, kidney[z]))
    wait(app, widget)
    save(viewer, out / "ct-window-box.png", WIDTH)
    _propagate(app, widget)
    labels = _layer(viewer, "SAM labels")
    print(f"CT: kidney 3D Dice {_dice(labels.data > 0, kidney):.2f}")
    _features_dock(viewer, labels)
    _go_to(viewer, image, z + 2)
    wait(app, widget)
    save(viewer, out / "ct-propagated.png", WIDTH)
    widget.close()
    viewer.close()


def zstack(out: Path) -> None:
    """3D nuclei: one nucleus propagated from a box; every nucleus by 3D automatic segmentation."""
    app, viewer, widget = _viewer("z-stack")
    image, reference = viewer.open_sample("napari-sam-kit", "nuclei_3d")
    widget.image.value = image
    wait(app, widget)
    viewer.reset_view()  # the dock narrowed the canvas after the image was fitted
    ids, counts = np.unique(reference.data[reference.data > 0], return_counts=True)
    target = reference.data == ids[np.argmax(counts)]
    zs = np.nonzero(target.any(axis=(1, 2)))[0]
    z = int(zs[len(zs) // 2])
    _go_to(viewer, image, z)
    wait(app, widget)
    _focus(viewer, image, z, target[z], zoom=1.0)
    _layer(viewer, "SAM boxes").add_rectangles(_box(z, target[z]))
    wait(app, widget)
    _propagate(app, widget)
    labels = _layer(viewer, "SAM labels")
    print(f"z-stack: 3D Dice {_dice(labels.data > 0, target):.2f} for the largest nucleus")
    _features_dock(viewer, labels)
    save(viewer, out / "zstack-propagated.png", WIDTH)
    # A quick setting, with the thresholds for the tiny model's low scores (docs above).
    widget.points_per_side.value = 12
    widget.pred_iou_thresh.value = 0.5
    widget.stability_score_thresh.value = 0.7
    widget.min_size.value = 20
    widget.auto_segment_3d()
    wait(app, widget, timeout=1800)
    auto = _layer(viewer, f"{image.name} SAM auto 3D")
    print(f"z-stack: automatic 3D segmentation found {len(auto.features)} objects")
    _three_d(viewer, image, hide=("SAM labels",))
    save(viewer, out / "zstack-auto3d.png", WIDTH)
    widget.close()
    viewer.close()


def timelapse(out: Path) -> None:
    """Moving nuclei: a box around each nucleus on the middle frame, tracked through time."""
    app, viewer, widget = _viewer("time-lapse")
    image, reference = viewer.open_sample("napari-sam-kit", "moving_nuclei")
    widget.image.value = image
    wait(app, widget)
    viewer.reset_view()  # the dock narrowed the canvas after the image was fitted
    t = image.data.shape[0] // 2
    _go_to(viewer, image, t)
    wait(app, widget)
    boxes = _layer(viewer, "SAM boxes")
    for k in np.unique(reference.data[t][reference.data[t] > 0]):
        boxes.add_rectangles(_box(t, reference.data[t] == k))
    wait(app, widget)
    save(viewer, out / "timelapse-boxes.png", WIDTH)
    _propagate(app, widget)
    labels = _layer(viewer, "SAM labels")
    spans = labels.features[["index", "slice_first", "slice_last"]].to_numpy().tolist()
    print(f"time-lapse: tracks (id, first frame, last frame): {spans}")
    for layer in viewer.layers:
        if layer.name in ("SAM points", "SAM boxes", "SAM preview"):
            layer.visible = False
    _distinct_colours(labels)
    frames = [0, 5, 10, 15]
    _strip(app, viewer, widget, image, frames, out / "timelapse-tracks.png", "frame")
    _features_dock(viewer, labels)
    save(viewer, out / "timelapse-features.png", WIDTH)
    widget.close()
    viewer.close()


def main(out: Path) -> None:
    """Every volume workflow, one napari window each."""
    for workflow in (mri, ct, zstack, timelapse):
        workflow(out)
