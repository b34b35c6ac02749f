"""Unusual and bad input in the widget: each case gives a message worded for the GUI (never a
traceback, never a command-line flag) and costs no labels. docs/bad-input.md lists the same
cases; keep the two in step.

Every test starts from a target labels layer "mine" that already holds an object (id 7) away
from the click, and checks that it is still there, untouched, at the end.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from gui_helpers import CLICK_RADII, CLICK_SCORES, disc, layer_named, wait_idle

pytestmark = pytest.mark.gui

SHAPE = (64, 80)
CLICK = (30, 40)
BEST_RADIUS = CLICK_RADII[int(np.argmax(CLICK_SCORES))]
OLD_ID = 7


def noise(shape=SHAPE, dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def gui_worded(messages: list[str]) -> None:
    """No traceback, no command-line flag, no library's exception type as the message."""
    for text in messages:
        assert "Traceback" not in text and 'File "' not in text, text
        assert not re.search(r"(^|\s)--[a-z]", text), f"CLI flag in a GUI message: {text}"
        assert not re.search(r"\((ValueError|TypeError|IndexError|KeyError):", text), text


def with_old_object(shape, dtype=np.int32) -> np.ndarray:
    """A label image of ``shape`` with object OLD_ID in the first corner of every plane."""
    data = np.zeros(shape, dtype)
    data[..., :4, :4] = OLD_ID
    return data


def open_image(make_widget, qtbot, engine, data, **image_kwargs):
    viewer, widget = make_widget(engine=engine)
    image = viewer.add_image(data, name="img", **image_kwargs)
    wait_idle(qtbot, widget)
    return viewer, widget, image


def add_target(viewer, widget, data, **kwargs):
    target = viewer.add_labels(data, name="mine", **kwargs)
    widget.target.value = target
    return target, np.array(target.data[0] if target.multiscale else target.data, copy=True)


def click_and_commit(viewer, widget, qtbot, point) -> tuple[float, float]:
    """Click ``point`` (data coordinates of "SAM points") and commit; where it landed."""
    points = layer_named(viewer, "SAM points")
    points.add(list(point))
    centre = landed(points, layer_named(viewer, "img"))
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    return centre


def landed(points, image) -> tuple[float, float]:
    """Where the last point of ``points`` lands in ``image``'s plane pixels (the widget maps
    it the same way: a rotation puts it a rounding error off the integer pixel)."""
    data = image.world_to_data(points.data_to_world(points.data[-1]))
    return tuple(float(v) for v in np.asarray(data)[-2:])


def old_labels_kept(target_data, before) -> None:
    old = before == OLD_ID
    assert old.any()
    np.testing.assert_array_equal(np.asarray(target_data)[old], OLD_ID)
    assert int((np.asarray(target_data) == OLD_ID).sum()) == int(old.sum())


def messages(notes, severity=None) -> list[str]:
    return [m for s, m in notes if severity is None or s == severity]


# ------------------------------------------------------------------------------------------
# Images: unusual ones work; blank, too thin or too large ones say why
# ------------------------------------------------------------------------------------------

IMAGES_THAT_WORK = {
    "4D (t, z, y, x)": lambda: ({"data": noise((2, 3, *SHAPE))}),
    "5D (t, c, z, y, x)": lambda: ({"data": noise((2, 2, 3, *SHAPE))}),
    "RGBA uint8": lambda: ({"data": (noise((*SHAPE, 4)) * 255).astype(np.uint8), "rgb": True}),
    "int64 beyond 2**53": lambda: ({"data": (noise() * 1e3).astype(np.int64) + 2**60}),
    "float64": lambda: ({"data": noise(dtype=np.float64)}),
    "bool": lambda: ({"data": noise() > 0.5}),
    "one pixel wide": lambda: ({"data": noise((SHAPE[0], 1))}),
    "one pixel high": lambda: ({"data": noise((1, SHAPE[1]))}),
    "rotated": lambda: ({"data": noise(), "rotate": 30}),
    "affine": lambda: (
        {"data": noise(), "affine": np.array([[1, 0.3, 5], [0.1, 1, 2], [0, 0, 1]])}
    ),
}


@pytest.mark.parametrize("case", list(IMAGES_THAT_WORK))
def test_unusual_images_segment_and_commit_on_the_shown_plane(
    case, make_widget, qtbot, geometric_engine, notes
):
    kwargs = IMAGES_THAT_WORK[case]()
    data = kwargs.pop("data")
    viewer, widget, image = open_image(make_widget, qtbot, geometric_engine, data, **kwargs)
    assert widget.embedding is not None, widget.status.value
    spatial = data.shape[: image.ndim]
    placement = {k: v for k, v in kwargs.items() if k in ("rotate", "affine")}
    target, before = add_target(viewer, widget, with_old_object(spatial), **placement)
    lead = tuple(viewer.dims.current_step[: image.ndim - 2])
    click = tuple(min(c, s - 1) for c, s in zip(CLICK, spatial[-2:], strict=True))
    centre = click_and_commit(viewer, widget, qtbot, (*lead, *click))

    assert widget.status.value == f"Committed label {OLD_ID + 1} to 'mine'.", notes
    assert not messages(notes), notes
    old_labels_kept(target.data, before)
    new = np.asarray(target.data) == OLD_ID + 1
    expected = np.zeros(spatial, bool)
    np.testing.assert_allclose(centre, click, atol=1e-9)
    expected[lead] = disc(spatial[-2:], centre, BEST_RADIUS) & (before[lead] == 0)
    np.testing.assert_array_equal(new, expected)  # this plane, these pixels, nothing else
    assert target.data.dtype == before.dtype


@pytest.mark.parametrize(
    ("case", "data", "limits", "why"),
    [
        ("constant", np.full(SHAPE, 5.0, np.float32), None, "has the value 5"),
        ("all NaN", np.full(SHAPE, np.nan, np.float32), None, "is NaN or infinite"),
        ("limits far off", noise(), (10.0, 20.0), "intensity settings map every pixel"),
    ],
)
def test_a_blank_plane_is_reported_and_costs_no_labels(
    case, data, limits, why, make_widget, qtbot, geometric_engine, notes
):
    kwargs = {} if limits is None else {"contrast_limits": limits}
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, data, **kwargs)
    warnings = messages(notes, "warning")
    assert len(warnings) == 1 and "SAM sees a blank image" in warnings[0], notes
    assert why in warnings[0]
    assert why in widget.status.value  # the status line keeps saying it
    target, before = add_target(viewer, widget, with_old_object(SHAPE))
    click_and_commit(viewer, widget, qtbot, CLICK)  # the user may still commit
    old_labels_kept(target.data, before)
    gui_worded(messages(notes))


def test_an_image_too_thin_for_sam_says_so_and_commits_nothing(
    make_widget, qtbot, geometric_engine, notes
):
    size = geometric_engine.model.sam.image_encoder.img_size
    data = noise((1, 2 * size + 1))
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, data)
    errors = messages(notes, "error")
    assert len(errors) == 1 and f"1x{2 * size + 1} pixels, too thin for SAM" in errors[0], notes
    assert widget.status.value.startswith("Error:") and "too thin" in widget.status.value
    target, before = add_target(viewer, widget, with_old_object(data.shape))
    click_and_commit(viewer, widget, qtbot, (0, 5))
    assert "Nothing committed: the image embedding was stopped by an error" in messages(notes)[-1]
    np.testing.assert_array_equal(target.data, before)
    gui_worded(messages(notes))


def test_an_image_larger_than_memory_says_so_and_commits_nothing(
    make_widget, qtbot, geometric_engine, notes
):
    """napari shows the plane (read on the GUI thread); reading it for SAM, in the worker,
    runs out of memory - as when a plane of a huge lazy volume does not fit in RAM."""
    import dask
    import dask.array as da

    def read(block):
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("Unable to allocate 40.0 GiB for an array")
        return block

    lazy = da.from_array(noise((4, *SHAPE)), chunks=(1, *SHAPE)).map_blocks(read)
    with dask.config.set(scheduler="synchronous"):  # blocks run in the reading thread
        viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, lazy)
        errors = messages(notes, "error")
        # The session panel, which hashes the image, may run out of memory too: same words.
        assert errors and all("not enough memory" in e for e in errors), notes
        assert any("the embedding could not be computed" in e for e in errors), notes
        assert widget.embedding is None
        target, before = add_target(viewer, widget, with_old_object((4, *SHAPE)))
        click_and_commit(viewer, widget, qtbot, (viewer.dims.current_step[0], *CLICK))
    assert "Nothing committed" in messages(notes)[-1]
    np.testing.assert_array_equal(target.data, before)
    gui_worded(messages(notes))


# ------------------------------------------------------------------------------------------
# Target labels of another shape, dtype or placement
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "make", "says"),
    [
        (
            "another shape",
            lambda: with_old_object((60, 80)),
            "has shape (60, 80) but the image 'img' has shape (64, 80)",
        ),
        (
            "another dimensionality",
            lambda: with_old_object((2, *SHAPE)),
            "has shape (2, 64, 80) but the image 'img' has shape (64, 80)",
        ),
        (
            "multiscale",
            lambda: [with_old_object(SHAPE), with_old_object((32, 40))],
            "cannot write into the multiscale labels layer 'mine'",
        ),
    ],
)
def test_a_target_that_cannot_take_the_object_refuses_and_keeps_its_labels(
    case, make, says, make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    data = make()
    target, before = add_target(viewer, widget, data, multiscale=isinstance(data, list))
    click_and_commit(viewer, widget, qtbot, CLICK)
    errors = messages(notes, "error")
    assert len(errors) == 1 and says in errors[0], notes
    assert "choose another target or a new layer" in errors[0]
    assert widget.status.value.startswith("Error: ")
    np.testing.assert_array_equal(target.data[0] if target.multiscale else target.data, before)
    gui_worded(messages(notes))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint64, bool])
def test_targets_of_other_integer_types_keep_their_type(
    dtype, make_widget, qtbot, geometric_engine, notes
):
    """(A full uint8 target is refused with napari's Convert data type as the fix:
    test_widget_safety.py::test_uint8_target_full_refuses_clearly_and_keeps_labels.)"""
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    data = with_old_object(SHAPE, np.int32)
    if dtype is bool:  # napari stores boolean labels as uint8
        data = data.astype(bool)
    target, before = add_target(viewer, widget, data.astype(dtype))
    old_id = int(before.max())
    click_and_commit(viewer, widget, qtbot, CLICK)
    assert widget.status.value == f"Committed label {old_id + 1} to 'mine'.", notes
    assert target.data.dtype == before.dtype
    np.testing.assert_array_equal(target.data[before > 0], before[before > 0])
    assert int((target.data == old_id + 1).sum()) == int(disc(SHAPE, CLICK, BEST_RADIUS).sum())
    assert not messages(notes)


@pytest.mark.parametrize(
    ("placement", "differs"),
    [
        ({"scale": (2, 2)}, "scale"),
        ({"translate": (10, 0)}, "translate"),
        ({"rotate": 20}, "rotate"),
    ],
)
def test_a_target_placed_elsewhere_gets_the_object_pixel_for_pixel_and_a_note(
    placement, differs, make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    target, before = add_target(viewer, widget, with_old_object(SHAPE), **placement)
    click_and_commit(viewer, widget, qtbot, CLICK)
    assert widget.status.value == f"Committed label {OLD_ID + 1} to 'mine'."
    np.testing.assert_array_equal(target.data == OLD_ID + 1, disc(SHAPE, CLICK, BEST_RADIUS))
    old_labels_kept(target.data, before)
    warnings = messages(notes, "warning")
    assert len(warnings) == 1, notes
    assert (
        f"'mine' and 'img' differ in {differs}: the object was written pixel for pixel"
        in (warnings[0])
    )
    assert "Apply scale/transforms from Clipboard" in warnings[0]
    gui_worded(messages(notes))


# ------------------------------------------------------------------------------------------
# Prompt layers of another dimensionality or placement; prompts SAM cannot use
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_ndim", "layer_ndim", "kind"),
    [(3, 2, "points"), (2, 3, "points"), (3, 4, "points"), (3, 2, "boxes"), (2, 3, "boxes")],
)
def test_prompt_layers_of_another_dimensionality(
    image_ndim, layer_ndim, kind, make_widget, qtbot, geometric_engine, notes
):
    """A layer with fewer axes lies on every plane (as napari draws it); axes the image
    lacks do not matter. The object goes to the shown plane only."""
    shape = (3, *SHAPE)[-image_ndim:]
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise(shape))
    target, before = add_target(viewer, widget, with_old_object(shape))
    lead = [1] * (layer_ndim - 2)
    if kind == "points":
        layer = viewer.add_points(np.zeros((0, layer_ndim)), ndim=layer_ndim, name="mine p")
        widget.points_layer.value = layer
        layer.add([*lead, *CLICK])
        expected_2d = disc(SHAPE, CLICK, BEST_RADIUS)
    else:
        layer = viewer.add_shapes(ndim=layer_ndim, name="mine b")
        widget.boxes_layer.value = layer
        corners = [[20, 30], [20, 50], [40, 50], [40, 30]]
        layer.add_rectangles(np.array([[*lead, *c] for c in corners], float))
        expected_2d = np.zeros(SHAPE, bool)
        expected_2d[20:41, 30:51] = True
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    assert widget.status.value == f"Committed label {OLD_ID + 1} to 'mine'.", notes
    here = tuple(viewer.dims.current_step[-image_ndim:][:-2])
    expected = np.zeros(shape, bool)
    expected[here] = expected_2d & (before[here] == 0)
    np.testing.assert_array_equal(target.data == OLD_ID + 1, expected)
    old_labels_kept(target.data, before)
    assert not messages(notes)


def _rectangle(r0, c0, r1, c1) -> np.ndarray:
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


@pytest.mark.parametrize(
    ("case", "add", "says"),
    [
        (
            "point outside the image",
            lambda v: layer_named(v, "SAM points").add([30, 200]),
            "point (30.0, 200.0) lies outside the 64x80 image",
        ),
        (
            "box beside the image",
            lambda v: layer_named(v, "SAM boxes").add_rectangles(_rectangle(10, 100, 20, 120)),
            "misses the image",
        ),
        (
            "zero-area box",
            lambda v: layer_named(v, "SAM boxes").add_rectangles(_rectangle(20, 30, 20, 30)),
            "shape 1 of 'SAM boxes' is 0.0 x 0.0 pixels: a box needs some height and width",
        ),
        (
            "box squashed flat",
            lambda v: layer_named(v, "SAM boxes").add_rectangles(_rectangle(20, 30, 20.4, 50)),
            "is 0.4 x 20.0 pixels: a box needs some height and width",
        ),
    ],
)
def test_prompts_sam_cannot_use_are_explained_and_commit_nothing(
    case, add, says, make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    target, before = add_target(viewer, widget, with_old_object(SHAPE))
    add(viewer)
    wait_idle(qtbot, widget)
    assert says in widget.candidate_info.value  # said under the prompt controls at once
    widget.commit()
    wait_idle(qtbot, widget)
    warnings = messages(notes, "warning")
    assert len(warnings) == 1 and warnings[0].startswith("Nothing committed: "), notes
    assert says in warnings[0]
    assert widget.status.value.startswith("Nothing committed: ")
    np.testing.assert_array_equal(target.data, before)
    gui_worded(messages(notes))


def test_points_in_a_rotated_layer_land_on_the_image_pixel_under_them(
    make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, image = open_image(make_widget, qtbot, geometric_engine, noise())
    target, before = add_target(viewer, widget, with_old_object(SHAPE))
    points = viewer.add_points(np.zeros((0, 2)), name="tilted", rotate=30, translate=(5, 60))
    widget.points_layer.value = points
    world = np.array([30.0, 40.0])  # the image is not transformed: world = its pixels
    points.add(points.world_to_data(world))
    centre = landed(points, image)
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    np.testing.assert_allclose(centre, CLICK, atol=1e-9)
    np.testing.assert_array_equal(target.data == OLD_ID + 1, disc(SHAPE, centre, BEST_RADIUS))
    old_labels_kept(target.data, before)
    assert not messages(notes)


def test_a_box_tilted_against_the_image_uses_its_bounding_box_and_says_so(
    make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    target, before = add_target(viewer, widget, with_old_object(SHAPE))
    boxes = viewer.add_shapes(ndim=2, name="tilted", rotate=45, translate=(10, 40))
    widget.boxes_layer.value = boxes
    boxes.add_rectangles(_rectangle(10, 0, 30, 20))  # a diamond in the image
    corners = np.array([boxes.data_to_world(v) for v in boxes.data[0]])
    wait_idle(qtbot, widget)
    assert "1 box(es) are tilted against the image" in widget.candidate_info.value
    widget.commit()
    wait_idle(qtbot, widget)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    expected = np.zeros(SHAPE, bool)
    expected[round(lo[0]) : round(hi[0]) + 1, round(lo[1]) : round(hi[1]) + 1] = True
    np.testing.assert_array_equal(target.data == OLD_ID + 1, expected & (before == 0))
    old_labels_kept(target.data, before)
    assert not messages(notes)


def test_prompts_on_other_planes_are_ignored_and_said(make_widget, qtbot, geometric_engine, notes):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise((3, *SHAPE)))
    target, before = add_target(viewer, widget, with_old_object((3, *SHAPE)))
    here = viewer.dims.current_step[0]
    click_and_commit(viewer, widget, qtbot, ((here + 1) % 3, *CLICK))
    assert "(1 prompt(s) on other planes are ignored.)" in widget.candidate_info.value
    assert messages(notes) == ["Nothing to commit: click a point or draw a box first."], notes
    np.testing.assert_array_equal(target.data, before)


def test_an_object_covered_by_existing_labels_is_not_written(
    make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise())
    data = with_old_object(SHAPE)
    data[10:50, 20:60] = OLD_ID  # covers the clicked object
    target, before = add_target(viewer, widget, data)
    click_and_commit(viewer, widget, qtbot, CLICK)
    warnings = messages(notes, "warning")
    assert warnings == [
        "Nothing written: existing labels cover the object(s). Tick 'overwrite existing "
        "labels' to replace them."
    ], notes
    np.testing.assert_array_equal(target.data, before)


# ------------------------------------------------------------------------------------------
# A model that cannot be downloaded (offline)
# ------------------------------------------------------------------------------------------


def test_offline_download_says_what_to_do_in_the_widget(make_widget, qtbot, notes):
    """The conftest points downloads at a closed port: as offline as it gets."""
    from qtpy.QtWidgets import QApplication

    from napari_sam.core.checkpoints import checkpoints_dir

    viewer, widget = make_widget()
    viewer.add_image(noise(), name="img")
    wait_idle(qtbot, widget)
    panel = widget.model_panel
    assert panel.folder_help.native.isHidden()
    widget.model.value = "vit_b"
    wait_idle(qtbot, widget)
    errors = messages(notes, "error")
    assert len(errors) == 1 and "cannot download model 'vit_b'" in errors[0], notes
    assert "choose 'custom checkpoint file…' in the model menu" in errors[0]
    assert str(checkpoints_dir() / "sam_vit_b_01ec64.pth") in errors[0]
    gui_worded(errors)
    assert not panel.folder_help.native.isHidden()
    panel.copy_folder.native.click()
    assert QApplication.clipboard().text() == str(checkpoints_dir())
    assert widget.status.value == f"Copied {checkpoints_dir()} to the clipboard."
    widget.segment()  # what the buttons' tooltip says to do once the file is there
    wait_idle(qtbot, widget)
    assert len(messages(notes, "error")) == 2, "Segment did not try again"


def test_propagation_into_a_target_of_another_shape_is_refused_before_it_runs(
    make_widget, qtbot, geometric_engine, notes
):
    viewer, widget, _ = open_image(make_widget, qtbot, geometric_engine, noise((3, *SHAPE)))
    target, before = add_target(viewer, widget, with_old_object((3, 60, 80)))
    here = viewer.dims.current_step[0]
    layer_named(viewer, "SAM boxes").add_rectangles(
        np.array([[here, *c] for c in _rectangle(20, 30, 40, 50)], float)
    )
    wait_idle(qtbot, widget)
    widget.propagate()
    assert widget.runner.current("propagate") is None  # refused before any work
    errors = messages(notes, "error")
    assert len(errors) == 1, notes
    assert "has shape (3, 60, 80) but the image 'img' has shape (3, 64, 80)" in errors[0]
    np.testing.assert_array_equal(target.data, before)
