"""Refinement: when a prediction is a follow-up, the previous logits go back to the decoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_sam.core import refinement
from napari_sam.core.engine import SamEngine
from napari_sam.core.mask_prompts import mask_to_logits
from napari_sam.core.prompts import make_prompts
from napari_sam.core.registry import MODELS

H, W = 64, 96


@pytest.fixture(scope="module")
def engine(small_model):
    return SamEngine(small_model)


@pytest.fixture(scope="module")
def emb(engine, make_image):
    return engine.embed(make_image((H, W)))


def prompts(points=(), labels=None, boxes=None):
    return make_prompts(list(points) or None, labels, boxes, image_shape=(H, W))


def test_remember_keeps_the_chosen_candidate_of_each_object(engine, emb):
    p = prompts([(20, 70)])
    pred = engine.predict(emb, p)
    prev = refinement.remember(pred, p)
    assert prev.logits.shape == (1, 256, 256) and prev.logits.dtype == np.float32
    np.testing.assert_array_equal(prev.logits[0], pred.logits(0))  # the best one
    other = (int(pred.best[0]) + 1) % 3
    chosen = refinement.remember(pred, p, candidates=[other])
    np.testing.assert_array_equal(chosen.logits[0], pred.logits(0, other))
    assert (prev.model_id, prev.image_key) == (emb.model_id, emb.key)
    with pytest.raises(ValueError, match="2 candidates given for 1 objects"):
        refinement.remember(pred, p, candidates=[0, 1])


def test_what_counts_as_a_follow_up(engine, emb):
    box = [[2, 2, 30, 40]]
    first = prompts([(20, 70)], [1], box)
    prev = refinement.remember(engine.predict(emb, first), first)

    def follow(p):
        return refinement.follow_up_logits(prev, p, emb)

    # Same box, the old point kept, one point added (positive or negative): a follow-up.
    assert follow(prompts([(20, 70), (10, 10)], [1, 0], box)) is prev.logits
    assert follow(prompts([(20, 70), (10, 10), (11, 12)], [1, 1, 0], box)) is prev.logits
    # Anything else starts afresh.
    assert follow(first) is None  # nothing new
    assert follow(prompts([(21, 70), (10, 10)], [1, 0], box)) is None  # a point moved
    assert follow(prompts([(20, 70), (10, 10)], [0, 0], box)) is None  # a label changed
    assert follow(prompts([(10, 10), (20, 70)], [0, 1], box)) is None  # order changed
    assert follow(prompts([(20, 70), (10, 10)], [1, 0], [[2, 2, 30, 41]])) is None  # box
    assert follow(prompts([(20, 70), (10, 10)], [1, 0])) is None  # box removed
    assert refinement.follow_up_logits(None, first, emb) is None
    other_image = dataclasses.replace(emb, key="another image")
    assert refinement.follow_up_logits(prev, prompts([(20, 70), (1, 1)], [1, 0], box),
                                       other_image) is None  # fmt: skip


def test_a_follow_up_sends_the_previous_logits_with_one_candidate(engine, emb):
    first = prompts([(20, 70)])
    pred1 = refinement.predict(engine, emb, first, refine=True)
    assert pred1.n_candidates == 3  # a single click stays ambiguous
    prev = refinement.remember(pred1, first)
    second = prompts([(20, 70), (50, 10)], [1, 0])
    refined = refinement.predict(engine, emb, second, prev, refine=True)
    expected = engine.predict(emb, second, mask_input=pred1.logits(0), multimask=False)
    torch.testing.assert_close(refined.low_res_logits, expected.low_res_logits)
    plain = refinement.predict(engine, emb, second, prev, refine=False)
    torch.testing.assert_close(plain.low_res_logits, engine.predict(emb, second).low_res_logits)
    assert not torch.equal(refined.low_res_logits, plain.low_res_logits)


def test_a_starting_mask_is_used_when_not_a_follow_up(engine, emb):
    mask = np.zeros((H, W), bool)
    mask[5:25, 10:35] = True
    start = mask_to_logits(mask)
    p = prompts([(15, 20)])
    pred = refinement.predict(engine, emb, p, initial=start)
    expected = engine.predict(emb, p, mask_input=start, multimask=False)
    torch.testing.assert_close(pred.low_res_logits, expected.low_res_logits)
    # Without mask prompts (a model not trained with them), the prompts alone.
    alone = refinement.predict(engine, emb, p, refine=False, initial=start)
    torch.testing.assert_close(alone.low_res_logits, engine.predict(emb, p).low_res_logits)
    # A follow-up refines the previous mask, not the starting one.
    prev = refinement.remember(pred, p)
    q = prompts([(15, 20), (40, 80)], [1, 0])
    again = refinement.predict(engine, emb, q, prev, refine=True, initial=start)
    torch.testing.assert_close(
        again.low_res_logits,
        engine.predict(emb, q, mask_input=pred.logits(0), multimask=False).low_res_logits,
    )


def test_the_default_comes_from_the_registry(engine):
    assert refinement.uses_mask_prompts(engine.model)  # random weights: not registered
    assert refinement.uses_mask_prompts(None)
    assert not MODELS["tiny"].mask_prompts  # measured: see tests/core/test_clicks.py
    assert all(MODELS[name].mask_prompts for name in ("vit_b", "vit_l", "vit_h", "vit_t"))

    class Tiny:
        name = "tiny"

    assert not refinement.uses_mask_prompts(Tiny())
