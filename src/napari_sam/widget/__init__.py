"""The napari dock widget, as small parts (see :mod:`.sam_widget` for the map)."""

from .sam_widget import SamWidget, auto_segment_command

__all__ = ["SamWidget", "auto_segment_command"]
