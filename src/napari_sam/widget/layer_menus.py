"""Which layers the widget offers in its menus, and the layers it makes itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Points, Shapes

from .._layers import geometry_like, spatial_shape

#: Metadata key marking the layers the widget made (and what for).
ROLE = "napari_sam_role"
#: Values of the points layers' ``label`` feature.
POINT_LABELS = ("positive", "negative")
# Green and magenta stay distinct with red-green colour blindness.
POINT_COLOURS = {"positive": "#39ff14", "negative": "#ff2bd6"}
#: Menu entries that are not layers.
NEW = "__new__"
NONE = "__none__"


def selected(combo: ComboBox) -> Any:
    """The layer chosen in a layer menu, or None for "(none)"/"new layer"."""
    value = combo.value
    return None if isinstance(value, str) else value


def layers_of(viewer: Any, kind: type, exclude_role: str | None = None) -> list[Any]:
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, kind)
        and (exclude_role is None or layer.metadata.get(ROLE) != exclude_role)
    ]


def image_choices(viewer: Any) -> list[tuple[str, Any]]:
    return [(layer.name, layer) for layer in layers_of(viewer, Image)]


def prompt_choices(viewer: Any, kind: type) -> list[tuple[str, Any]]:
    # Not the "SAM tiles" display: its rectangles are tiles, not boxes.
    layers = [(layer.name, layer) for layer in layers_of(viewer, kind, "tiles")]
    # "(none)" before "new layer": when the chosen layer is deleted the menu falls back to
    # its first entry, which must not create a layer behind the user's back.
    return [*layers, ("(none)", NONE), ("new layer", NEW)]


def target_choices(viewer: Any) -> list[tuple[str, Any]]:
    layers = [(layer.name, layer) for layer in layers_of(viewer, Labels, "preview")]
    # "new" first: never write into some other labels layer (a reference!) by default.
    return [("new layer 'SAM labels'", NEW), *layers]


def add_quietly(viewer: Any, layer: Any) -> Any:
    """Add a layer without making it the active one (clicks keep going where they went)."""
    active = viewer.layers.selection.active
    added = viewer.add_layer(layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return added


def new_points_layer(image: Image) -> Points:
    """An empty "SAM points" layer over ``image`` with a positive/negative ``label`` feature."""
    size = max(3, round(max(spatial_shape(image)[-2:]) / 80))
    return Points(
        np.zeros((0, image.ndim)),
        ndim=image.ndim,
        name="SAM points",
        features=pd.DataFrame({"label": pd.Categorical([], categories=list(POINT_LABELS))}),
        feature_defaults={"label": "positive"},
        face_color="label",
        face_color_cycle=POINT_COLOURS,
        border_color="white",
        border_width=0.15,
        size=size,
        metadata={ROLE: "points"},
        **geometry_like(image),
    )


def new_boxes_layer(image: Image) -> Shapes:
    """An empty "SAM boxes" layer over ``image``."""
    width = max(1, round(max(spatial_shape(image)[-2:]) / 400))
    return Shapes(
        ndim=image.ndim,
        name="SAM boxes",
        edge_color="#ffd700",
        face_color="transparent",
        edge_width=width,
        metadata={ROLE: "boxes"},
        **geometry_like(image),
    )
