"""Segment Anything (SAM) for napari.

The package is split in three layers:

- :mod:`napari_sam.core`: image preparation, models and checkpoints, embeddings, prompts,
  prediction and automatic segmentation. It imports neither Qt nor napari, and imports torch
  and segment_anything lazily so that ``import napari_sam`` stays fast.
- :mod:`napari_sam.cli`: the ``napari-sam`` command line, built on the core.
- the napari layer (widgets, manifest contributions).
"""

try:
    # Written at build and install time by setuptools-scm from the git tag (pyproject.toml).
    from ._version import __version__
except ImportError:  # a source tree that was never built or installed (e.g. on PYTHONPATH)
    #: setuptools-scm's ``fallback_version`` (pyproject.toml), the answer when there is none.
    __version__ = "0.0.0"

__all__ = ["__version__"]
