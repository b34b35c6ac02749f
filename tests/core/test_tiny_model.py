"""The bundled tiny model: registered, loadable offline, real SAM geometry, honest record.

Its mask quality is NOT asserted here yet: the checkpoint committed so far is under-trained
(docs/tiny-model.md gives the measured numbers). Coordinate conventions are checked against the
official ``SamPredictor`` in test_engine.py instead, which does not depend on trained weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.normalize import prepare_image
from napari_sam.core.registry import MODELS
from napari_sam.core.synthetic import make_cells


@pytest.fixture
def tiny(tiny_engine):
    return tiny_engine


def test_tiny_model_is_bundled_with_real_geometry_and_its_record(tiny):
    assert MODELS["tiny"].bundled_path.is_file()
    m = tiny.model
    assert m.name == "tiny" and m.checkpoint == MODELS["tiny"].bundled_path
    arch = m.architecture
    assert (arch.image_size, arch.patch_size, arch.embedding_size) == (1024, 16, 64)
    assert "NOT a real SAM" in m.meta["warning"]
    # The record says how it was made (scripts/train_tiny_sam.py reproduces it).
    assert m.meta["steps"] > 0 and m.meta["train_real_images"]
    assert "cb4df20a83_image.png" not in m.meta["train_real_images"]  # held out


def test_tiny_model_runs_the_full_resolution_path(tiny):
    s = make_cells((200, 320), seed=3, radius_range=(10, 30))
    emb = tiny.embed(prepare_image(s.image))
    assert tuple(emb.features.shape[-2:]) == (64, 64)
    assert emb.input_size == (640, 1024)
    pred = tiny.predict(emb, points=[[100, 160]])
    assert pred.low_res_logits.shape[-2:] == (256, 256)
    assert pred.mask().shape == (200, 320) and pred.n_candidates == 3
    assert np.isfinite(pred.scores).all()
