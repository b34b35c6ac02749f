"""Segment Anything (SAM) for napari.

The package is split in three layers:

- :mod:`napari_sam.core`: image preparation, models and checkpoints, embeddings, prompts,
  prediction and automatic segmentation. It imports neither Qt nor napari, and imports torch
  and segment_anything lazily so that ``import napari_sam`` stays fast.
- :mod:`napari_sam.cli`: the ``napari-sam`` command line, built on the core.
- the napari layer (widgets, manifest contributions).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
