"""Sessions in the widget: recorded commits, save/load, autosave after each commit, and the
offer to restore unsaved work when the same image is opened again."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import layer_named, wait_idle

from napari_sam.core.autosave import list_autosaves
from napari_sam.core.replay import replay_session
from napari_sam.core.session_record import SessionRecord

pytestmark = pytest.mark.gui


def _image(seed=4):
    return np.random.default_rng(seed).random((64, 80), dtype=np.float32)


def _commit_two_objects(viewer, widget, qtbot):
    points = layer_named(viewer, "SAM points")
    points.add([20, 25])
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    points.add([45, 60])
    wait_idle(qtbot, widget)
    widget.commit()
    wait_idle(qtbot, widget)
    return layer_named(viewer, "SAM labels")


def test_commits_are_recorded_saved_and_loaded_back(
    make_widget, qtbot, geometric_engine, tmp_path
):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(_image(), name="img")
    wait_idle(qtbot, widget)
    labels = _commit_two_objects(viewer, widget, qtbot)
    assert set(np.unique(labels.data)) == {0, 1, 2}
    record = widget.session_panel.record
    assert record is not None and [e.kind for e in record.entries] == ["commit", "commit"]

    path = widget.save_session(tmp_path / "session.json")
    assert path is not None and path.is_file()
    again = SessionRecord.load(path)
    assert len(again.entries) == 2 and again.image.sha256 == record.image.sha256

    viewer.layers.remove(labels)
    (loaded,) = widget.load_session(path)
    assert loaded.name == "SAM labels"
    np.testing.assert_array_equal(loaded.data, labels.data)
    np.testing.assert_allclose(loaded.scale, viewer.layers["img"].scale)


def test_replaying_a_widget_session_gives_the_same_labels(
    make_widget, qtbot, geometric_engine, tmp_path
):
    viewer, widget = make_widget(engine=geometric_engine)
    image = viewer.add_image(_image(seed=5), name="img")
    wait_idle(qtbot, widget)
    labels = _commit_two_objects(viewer, widget, qtbot)
    record = SessionRecord.load(widget.save_session(tmp_path / "s.json"))
    result = replay_session(record, image.data, engine_for=lambda _model: geometric_engine)
    assert result.identical, result.summary()
    np.testing.assert_array_equal(result.labels, labels.data)


def test_autosave_after_each_commit_and_recovery_on_reopening(
    make_widget, qtbot, geometric_engine
):
    data = _image(seed=6)
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(data, name="img")
    wait_idle(qtbot, widget)
    labels = _commit_two_objects(viewer, widget, qtbot)
    sha = widget.session_panel.record.image.sha256
    saved = list_autosaves(sha)
    assert len(saved) == 1 and saved[0].n_entries == 2
    expected = np.array(labels.data)
    widget.close()  # as if napari had crashed: the autosave stays

    viewer2, widget2 = make_widget(engine=geometric_engine)
    viewer2.add_image(data.copy(), name="same image, opened again")
    wait_idle(qtbot, widget2)
    assert widget2.session_panel.recovery_offered
    (restored,) = widget2.session_panel.restore()
    np.testing.assert_array_equal(restored.data, expected)
    assert not widget2.session_panel.recovery_offered
    # Work goes on in the recovered session: one autosave file, now with three entries.
    layer_named(viewer2, "SAM points").add([10, 70])
    widget2.target.value = restored
    wait_idle(qtbot, widget2)
    widget2.commit()
    wait_idle(qtbot, widget2)
    saved = list_autosaves(sha)
    assert len(saved) == 1 and saved[0].n_entries == 3


def test_discarding_the_offer_deletes_the_autosave(make_widget, qtbot, geometric_engine):
    data = _image(seed=7)
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(data, name="img")
    wait_idle(qtbot, widget)
    _commit_two_objects(viewer, widget, qtbot)
    sha = widget.session_panel.record.image.sha256
    widget.close()
    viewer2, widget2 = make_widget(engine=geometric_engine)
    viewer2.add_image(data, name="img")
    wait_idle(qtbot, widget2)
    assert widget2.session_panel.recovery_offered
    widget2.session_panel.discard()
    assert list_autosaves(sha) == []


def test_loading_a_session_of_another_image_is_refused(
    make_widget, qtbot, geometric_engine, tmp_path
):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(_image(seed=8), name="a")
    wait_idle(qtbot, widget)
    _commit_two_objects(viewer, widget, qtbot)
    path = widget.save_session(tmp_path / "a.json")
    b = viewer.add_image(_image(seed=9), name="b")
    widget.image.value = b
    wait_idle(qtbot, widget)
    before = [layer.name for layer in viewer.layers]
    assert widget.load_session(path) == []
    assert [layer.name for layer in viewer.layers] == before
    assert widget.status.value.startswith("Error:")
