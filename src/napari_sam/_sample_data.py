"""Offline sample data for napari's File > Open Sample menu.

Only images that need no download: scikit-image's bundled ones, napari-sam's own synthetic
generator (which comes with ground-truth labels, handy to judge SAM's masks) and a real brain
MRI with its tumour mask shipped in ``napari_sam/data/samples`` (see ATTRIBUTION.md there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LayerData = list[tuple[Any, dict[str, Any], str]]


def coins() -> LayerData:
    """Greek coins on a plain background (scikit-image)."""
    from skimage import data

    return [(data.coins(), {"name": "coins"}, "image")]


def cell() -> LayerData:
    """A cell imaged by phase contrast (scikit-image)."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def ihc() -> LayerData:
    """Immunohistochemistry (IHC) staining, RGB (scikit-image)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "ihc", "rgb": True}, "image")]


def synthetic_cells() -> LayerData:
    """Cell-like objects in a float image, with their reference instance labels."""
    from .core.synthetic import make_cells

    s = make_cells((384, 512), seed=7, radius_range=(6, 40), polarity="bright", colour=False)
    return [
        (s.image, {"name": "synthetic cells"}, "image"),
        (s.labels, {"name": "reference labels", "visible": False}, "labels"),
    ]


def nuclei_3d() -> LayerData:
    """A (Z, Y, X) volume of nuclei, 2 µm between slices and 0.5 µm pixels."""
    from .core.synthetic import make_nuclei_volume

    s = make_nuclei_volume((24, 160, 160), n_objects=14, seed=1)
    meta = {"scale": (2.0, 0.5, 0.5), "units": ("um", "um", "um")}
    return [
        (s.image, {"name": "nuclei 3D", **meta}, "image"),
        (s.labels, {"name": "reference labels", "visible": False, **meta}, "labels"),
    ]


def moving_nuclei() -> LayerData:
    """A (T, Y, X) time-lapse of nuclei drifting across the frame, with their tracks."""
    from .core.synthetic import make_moving_nuclei

    s = make_moving_nuclei((16, 128, 128), n_objects=6, seed=2)
    meta = {"axis_labels": ("t", "y", "x")}
    return [
        (s.image, {"name": "moving nuclei", **meta}, "image"),
        (s.labels, {"name": "reference tracks", "visible": False, **meta}, "labels"),
    ]


SAMPLES = Path(__file__).parent / "data" / "samples"
"""Folder of the bundled sample scans."""


def mri_brain() -> LayerData:
    """A brain MRI (25 slices of 6.5 mm) with the reference mask of a tumour (pyradiomics).

    Opened like any NIfTI file by napari-sam's reader: physical scale and origin, patient
    orientation, percentile contrast, geometry in ``metadata["napari_sam"]``.
    """
    from ._reader import layer_data
    from .core.volume_io import read_volume

    image = layer_data(read_volume(SAMPLES / "brain1_image.nii.gz"), "brain MRI")
    mask = layer_data(
        read_volume(SAMPLES / "brain1_label.nii.gz"), "tumour (reference)", labels=True
    )
    mask[1]["opacity"] = 0.4
    return [image, mask]
