"""Mask prompts in the widget: follow-up clicks refine the previous mask, shapes are masks,
and an existing label can be picked, refined and committed back in its place."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import CLICK_RADII, disc, layer_named, press, wait_idle

from napari_sam.cli import main
from napari_sam.core.mask_prompts import mask_to_logits, shape_prompt
from napari_sam.core.replay import replay_session
from napari_sam.core.session_record import SessionRecord

pytestmark = pytest.mark.gui

H, W = 96, 128


def _blobs() -> np.ndarray:
    """A bright rectangle (rows 12-47, cols 16-63) and a dim disc on a noisy background."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 40, (H, W)).astype(np.float32)
    img[12:48, 16:64] = 220
    yy, xx = np.mgrid[:H, :W]
    img[(yy - 0.7 * H) ** 2 + (xx - 0.7 * W) ** 2 < (0.15 * H) ** 2] = 140
    return img


@pytest.fixture
def spy(monkeypatch):
    """Records the ``mask_input`` of every ``predict`` call of an engine."""

    def install(engine):
        calls = []
        original = engine.predict

        def predict(embedding, prompts=None, **kwargs):
            calls.append((prompts, kwargs.get("mask_input")))
            return original(embedding, prompts, **kwargs)

        monkeypatch.setattr(engine, "predict", predict)
        return calls

    return install


def _widget(make_widget, qtbot, engine, image, *, refine=None):
    viewer, widget = make_widget(engine=engine)
    viewer.add_image(image, name="img")
    wait_idle(qtbot, widget)
    if refine is not None:
        widget.refine.value = refine
    return viewer, widget


def test_a_follow_up_click_refines_the_previous_mask(make_widget, qtbot, tiny_engine, spy):
    viewer, widget = _widget(make_widget, qtbot, tiny_engine, _blobs())
    assert widget.refine.value is False  # the tiny model's default (docs/evaluation.md)
    widget.refine.value = True
    calls = spy(tiny_engine)
    points = layer_named(viewer, "SAM points")
    points.add([30, 40])
    wait_idle(qtbot, widget)
    assert calls[-1][1] is None  # a first click: the points alone
    first = widget.preview
    expected = first.objects[0].logits[first.chosen(0)][None]

    points.add([20, 55])
    wait_idle(qtbot, widget)
    prompts, mask_input = calls[-1]
    np.testing.assert_array_equal(mask_input, expected)
    assert len(widget.preview.calls[0].steps) == 1
    # The previous mask changed SAM's answer: points alone give another mask.
    alone = tiny_engine.predict(widget.embedding, prompts, multimask=False)
    assert not np.array_equal(alone.mask(0, 0), widget.preview.masks()[0])

    points.add([40, 25])  # a third click continues the chain
    wait_idle(qtbot, widget)
    assert calls[-1][1] is not None and len(widget.preview.calls[0].steps) == 2

    widget.refine.value = False  # off: the points alone again
    wait_idle(qtbot, widget)
    assert calls[-1][1] is None


def test_the_chain_starts_afresh_on_another_plane(make_widget, qtbot, tiny_engine, spy):
    stack = np.stack([_blobs(), _blobs()[::-1].copy()])
    viewer, widget = _widget(make_widget, qtbot, tiny_engine, stack, refine=True)
    calls = spy(tiny_engine)
    points = layer_named(viewer, "SAM points")
    points.add([0, 30, 40])
    wait_idle(qtbot, widget)
    assert widget.preview is not None and widget.preview.objects[0].logits is not None
    viewer.dims.set_current_step(0, 1)
    wait_idle(qtbot, widget)
    # On slice 1 the same click plus one more would extend the chain of slice 0.
    points.add([[1, 30, 40], [1, 20, 55]])
    wait_idle(qtbot, widget)
    assert calls[-1][1] is None and widget.preview.calls[0].steps == ()
    # Deleting every point and clicking again starts afresh too.
    points.selected_data = set(range(len(points.data)))
    points.remove_selected()
    wait_idle(qtbot, widget)
    points.add([1, 30, 40])
    wait_idle(qtbot, widget)
    assert calls[-1][1] is None


def test_an_ellipse_is_a_mask_prompt_with_its_box(make_widget, qtbot, tiny_engine, spy):
    image = _blobs()
    viewer, widget = _widget(make_widget, qtbot, tiny_engine, image, refine=True)
    calls = spy(tiny_engine)
    boxes = layer_named(viewer, "SAM boxes")
    corners = np.array([[10, 14], [10, 66], [50, 66], [50, 14]], float)  # the rectangle
    boxes.add_ellipses(corners)
    wait_idle(qtbot, widget)
    prompts, mask_input = calls[-1]
    want = shape_prompt("ellipse", corners, (H, W))
    np.testing.assert_array_equal(np.reshape(mask_input, (256, 256)), want.logits)
    np.testing.assert_allclose(prompts.boxes[0], [10, 14, 50, 66])
    preview = widget.preview
    assert preview.objects[0].source == "ellipse 1" and preview.calls[0].start.shape == "ellipse"
    mask = preview.masks()[0]
    inside = np.zeros((H, W), bool)
    inside[8:53, 12:69] = True
    assert mask.sum() > 200 and mask[inside].sum() >= 0.9 * mask.sum()

    widget.refine.value = False  # off: the ellipse counts by its box, as before
    wait_idle(qtbot, widget)
    assert calls[-1][1] is None and widget.preview.objects[0].source == "box 1"


def _labelled(shape):
    """Labels 1 (a square), 2 (next to it) and 3 (far away) on a (64, 80) plane."""
    labels = np.zeros(shape, np.int32)
    labels[20:40, 20:40] = 1
    labels[20:40, 40:50] = 2
    labels[50:60, 60:75] = 3
    return labels


def test_edit_a_label_replaces_only_it_in_one_undo_step(make_widget, qtbot, geometric_engine, spy):
    rng = np.random.default_rng(1)
    viewer, widget = _widget(make_widget, qtbot, geometric_engine, rng.random((64, 80)))
    labels = viewer.add_labels(_labelled((64, 80)), name="mine")
    widget.target.value = labels
    wait_idle(qtbot, widget)
    calls = spy(geometric_engine)
    viewer.cursor.position = (30, 30)  # over label 1
    press(viewer, "Shift-E")
    assert widget.label_editor.edit is not None and widget.label_editor.edit.label == 1
    points = layer_named(viewer, "SAM points")
    points.add([30, 38])
    wait_idle(qtbot, widget)
    want = mask_to_logits(labels.data == 1)
    np.testing.assert_array_equal(np.reshape(calls[-1][1], (256, 256)), want)

    labels.data_setitem((np.array([5]), np.array([5])), 3)  # a brush stroke meanwhile
    before = np.array(labels.data)
    widget.commit()
    wait_idle(qtbot, widget)
    assert widget.label_editor.edit is None  # the commit ends the edit
    new = disc((64, 80), (30, 38), CLICK_RADII[1])  # the geometric decoder's best candidate
    expected = before.copy()
    expected[expected == 1] = 0
    expected[new & (before == 0) | new & (before == 1)] = 1  # label 2 keeps its pixels
    np.testing.assert_array_equal(labels.data, expected)
    assert labels.data[5, 5] == 3 and (labels.data == 3).sum() == (before == 3).sum()

    labels.undo()
    np.testing.assert_array_equal(labels.data, before)  # one step, exactly as it was


def test_edit_mode_is_left_by_the_key_and_by_cancel(make_widget, qtbot, geometric_engine):
    viewer, widget = _widget(make_widget, qtbot, geometric_engine, np.zeros((64, 80)))
    labels = viewer.add_labels(_labelled((64, 80)), name="mine")
    widget.target.value = labels
    labels.selected_label = 3
    widget.label_editor.button.clicked.emit()  # the button takes the selected label
    assert widget.label_editor.edit.label == 3
    widget.edit_label()
    assert widget.label_editor.edit is None
    widget.edit_label(label=2)
    assert widget.label_editor.edit.label == 2
    widget.cancel()
    assert widget.label_editor.edit is None
    labels.selected_label = 9  # not on the plane: a message, no edit
    widget.label_editor.button.clicked.emit()
    assert widget.label_editor.edit is None


def test_replaying_refined_and_edited_commits_is_identical(
    make_widget, qtbot, tiny_engine, tmp_path, capsys
):
    image = _blobs()
    viewer, widget = _widget(make_widget, qtbot, tiny_engine, image, refine=True)
    points = layer_named(viewer, "SAM points")
    points.add([30, 40])
    wait_idle(qtbot, widget)
    points.add([20, 55])  # a follow-up: refined
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    layer_named(viewer, "SAM boxes").add_ellipses(
        np.array([[56, 75], [56, 107], [88, 107], [88, 75]], float)
    )
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    assert set(np.unique(labels.data)) == {0, 1, 2}

    widget.edit_label(label=1)
    points.add([45, 30])
    wait_idle(qtbot, widget)
    points.add([15, 60])  # the edit's chain: label mask, then a refined step
    wait_idle(qtbot, widget)
    assert len(widget.preview.calls[0].steps) == 1
    widget.commit()
    wait_idle(qtbot, widget)

    path = widget.save_session(tmp_path / "s.json")
    record = SessionRecord.load(path)
    assert [e.edit for e in record.entries] == [None, None, 1]
    assert record.entries[0].calls[0].steps and record.entries[1].calls[0].start is not None
    result = replay_session(record, image, engine_for=lambda _model: tiny_engine)
    assert result.identical, result.summary()
    np.testing.assert_array_equal(result.labels, labels.data)
    # And from the command line, loading the recorded model as a user would.
    np.save(tmp_path / "img.npy", image)
    out = tmp_path / "labels.npy"
    assert main(["replay", str(path), "--image", str(tmp_path / "img.npy"), "-o", str(out)]) == 0
    assert "identical to the session" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out), labels.data)


def test_points_alone_are_recorded_as_before(make_widget, qtbot, geometric_engine):
    """Without mask prompts the record and its JSON are what older versions wrote."""
    viewer, widget = _widget(make_widget, qtbot, geometric_engine, np.zeros((64, 80)))
    widget.refine.value = False
    layer_named(viewer, "SAM points").add([20, 25])
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    record = widget.session_panel.record
    assert '"version": 1' in record.to_json()
    assert record.entries[0].calls[0].steps == () and record.entries[0].edit is None
