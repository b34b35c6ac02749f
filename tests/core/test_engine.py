"""SamEngine: embedding reuse, prediction shapes, and equivalence with SAM's own predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.core import engine as engine_module
from napari_sam.core.embedding import EmbeddingStore, ImageEmbedding, compute_embedding
from napari_sam.core.engine import SamEngine, upsample_logits
from napari_sam.core.errors import PromptError
from napari_sam.core.prompts import make_prompts

H, W = 64, 96  # non-square: the resized height (682.67 -> 683) is rounded


@pytest.fixture(scope="module")
def rgb(make_image):
    return make_image((H, W))


@pytest.fixture(scope="module")
def emb(small_model, rgb):
    return compute_embedding(small_model, rgb)


@pytest.fixture(scope="module")
def engine(small_model, emb):
    eng = SamEngine(small_model)
    eng.cache.put(emb)
    return eng


@pytest.fixture(scope="module")
def predictor(small_model, rgb):
    from segment_anything import SamPredictor

    p = SamPredictor(small_model.sam)
    p.set_image(rgb)
    return p


@pytest.fixture
def counting_compute(monkeypatch, emb):
    """Replace the encoder run by one that returns the precomputed embedding and counts."""
    calls = []

    def fake(model, rgb, **kwargs):
        calls.append(rgb.shape)
        return emb

    monkeypatch.setattr(engine_module, "compute_embedding", fake)
    return calls


# --------------------------------------------------------------------------------------------
# Embedding reuse
# --------------------------------------------------------------------------------------------


def test_embed_computes_once(small_model, rgb, counting_compute, emb):
    eng = SamEngine(small_model)
    assert eng.cached_embedding(rgb) is None
    first = eng.embed(rgb)
    assert first is emb
    second = eng.embed(rgb)
    assert second is first
    third = eng.embed(rgb.copy())  # same content, another array
    assert third is first
    assert counting_compute == [(H, W, 3)]
    assert eng.cached_embedding(rgb) is first


def test_embed_different_image_computes_again(small_model, rgb, counting_compute):
    eng = SamEngine(small_model)
    eng.embed(rgb)
    other = rgb.copy()
    other[0, 0, 0] ^= 1
    eng.embed(other)
    assert len(counting_compute) == 2


def test_store_is_reused_across_engines(tmp_path, small_model, rgb, emb, monkeypatch):
    store = EmbeddingStore(tmp_path)
    monkeypatch.setattr(engine_module, "compute_embedding", lambda *a, **k: emb)
    SamEngine(small_model, store=store).embed(rgb)
    assert store.path_for(small_model.model_id, emb.key).is_file()

    def must_not_compute(*args, **kwargs):
        raise AssertionError("the stored embedding should have been used")

    monkeypatch.setattr(engine_module, "compute_embedding", must_not_compute)
    fresh = SamEngine(small_model, store=store)
    assert fresh.cached_embedding(rgb) is not None
    got = fresh.embed(rgb)
    assert torch.equal(got.features, emb.features)
    assert got.original_size == (H, W)
    assert got.input_size == emb.input_size
    assert len(fresh.cache) == 1  # loaded once from disk, then kept in memory
    assert fresh.embed(rgb) is got


def test_embed_passes_progress_and_cancel(small_model, rgb, monkeypatch, emb):
    seen = {}

    def fake(model, image, *, progress=None, cancel=None):
        seen.update(progress=progress, cancel=cancel)
        return emb

    monkeypatch.setattr(engine_module, "compute_embedding", fake)

    def p(done, total):
        pass

    def c():
        return False

    SamEngine(small_model).embed(rgb, progress=p, cancel=c)
    assert seen == {"progress": p, "cancel": c}


# --------------------------------------------------------------------------------------------
# Prediction shapes and options
# --------------------------------------------------------------------------------------------


def test_single_click_gives_three_candidates(engine, emb):
    pred = engine.predict(emb, points=[[20, 70]])
    assert pred.n_objects == 1
    assert pred.n_candidates == 3
    assert pred.scores.shape == (1, 3)
    assert pred.scores.dtype == np.float32
    assert pred.best.tolist() == [int(np.argmax(pred.scores[0]))]
    assert tuple(pred.low_res_logits.shape) == (1, 3, 256, 256)
    for k in range(3):
        m = pred.mask(0, k)
        assert m.shape == (H, W)
        assert m.dtype == np.bool_
    np.testing.assert_array_equal(pred.mask(), pred.mask(0, int(pred.best[0])))
    assert pred.score() == pytest.approx(float(pred.scores.max()))
    assert pred.score(0, 1) == pytest.approx(float(pred.scores[0, 1]))
    assert pred.masks.shape == (1, H, W)
    assert pred.embedding is emb


def test_boxes_give_one_object_each(engine, emb):
    boxes = [[2, 2, 30, 40], [35, 50, 60, 90], [10, 60, 20, 70]]
    pred = engine.predict(emb, boxes=boxes)
    assert pred.n_objects == 3
    assert pred.n_candidates == 1
    assert pred.scores.shape == (3, 1)
    assert pred.best.tolist() == [0, 0, 0]
    assert pred.masks.shape == (3, H, W)
    assert pred.masks.dtype == np.bool_


def test_points_with_boxes_share_the_points(engine, emb):
    pred = engine.predict(
        emb,
        points=[[10, 10], [50, 80]],
        point_labels=[1, 0],
        boxes=[[0, 0, 30, 40], [30, 50, 63, 95]],
    )
    assert pred.n_objects == 2
    assert pred.n_candidates == 1
    assert pred.masks.shape == (2, H, W)


def test_several_points_give_one_candidate(engine, emb):
    pred = engine.predict(emb, points=[[10, 10], [12, 14]])
    assert (pred.n_objects, pred.n_candidates) == (1, 1)


def test_multimask_override(engine, emb):
    assert engine.predict(emb, points=[[20, 70]], multimask=False).n_candidates == 1
    pred = engine.predict(emb, boxes=[[2, 2, 30, 40], [35, 50, 60, 90]], multimask=True)
    assert pred.scores.shape == (2, 3)
    assert pred.best.tolist() == pred.scores.argmax(axis=1).tolist()


def test_predict_accepts_validated_prompts(engine, emb):
    p = make_prompts([[20, 70]], image_shape=(H, W))
    a = engine.predict(emb, p)
    b = engine.predict(emb, points=[[20, 70]])
    np.testing.assert_array_equal(a.scores, b.scores)


def test_predict_validates_prompts_against_the_image(engine, emb):
    with pytest.raises(PromptError, match=f"outside the {H}x{W} image"):
        engine.predict(emb, points=[[H + 3, 5]])


def test_mask_input_round_trip(engine, emb):
    first = engine.predict(emb, points=[[20, 70]])
    logits = first.logits()
    assert logits.shape == (256, 256)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, first.low_res_logits[0, first.best[0]].numpy())
    again = engine.predict(emb, points=[[20, 70]], mask_input=logits, multimask=False)
    plain = engine.predict(emb, points=[[20, 70]], multimask=False)
    assert again.n_candidates == 1
    assert again.mask().shape == (H, W)
    # The mask prompt must reach the decoder.
    assert not torch.equal(again.low_res_logits, plain.low_res_logits)


def test_mask_input_for_several_objects(engine, emb):
    boxes = [[2, 2, 30, 40], [35, 50, 60, 90]]
    first = engine.predict(emb, boxes=boxes)
    per_object = np.stack([first.logits(0), first.logits(1)])
    a = engine.predict(emb, boxes=boxes, mask_input=per_object)
    b = engine.predict(emb, boxes=boxes, mask_input=per_object[0])  # broadcast to both
    assert a.n_objects == b.n_objects == 2
    torch.testing.assert_close(a.low_res_logits[0], b.low_res_logits[0])
    assert not torch.equal(a.low_res_logits[1], b.low_res_logits[1])


@pytest.mark.parametrize(
    "shape", [(128, 128), (256,), (1, 1, 256, 256), (256, 128), (3, 256, 256), ()]
)
def test_mask_input_of_wrong_shape(engine, emb, shape):
    with pytest.raises(PromptError, match="mask_input"):
        engine.predict(
            emb, boxes=[[2, 2, 30, 40], [35, 50, 60, 90]], mask_input=np.zeros(shape, np.float32)
        )


def test_candidate_out_of_range(engine, emb):
    click = engine.predict(emb, points=[[20, 70]])
    for k in (3, -1):
        with pytest.raises(PromptError, match=f"candidate {k} does not exist"):
            click.mask(0, k)
        with pytest.raises(PromptError, match="does not exist"):
            click.score(0, k)
        with pytest.raises(PromptError, match="does not exist"):
            click.logits(0, k)
    box = engine.predict(emb, boxes=[[2, 2, 30, 40]])
    with pytest.raises(PromptError, match=r"\(0\.\.0\)"):
        box.mask(0, 1)


def test_object_out_of_range(engine, emb):
    pred = engine.predict(emb, boxes=[[2, 2, 30, 40], [35, 50, 60, 90]])
    for obj in (2, -1):
        with pytest.raises(PromptError, match=f"object {obj} does not exist"):
            pred.mask(obj)


def test_segment_is_embed_then_predict(small_model, rgb, emb, counting_compute):
    eng = SamEngine(small_model)
    pred = eng.segment(rgb, points=[[20, 70]])
    assert pred.embedding is emb
    assert counting_compute == [(H, W, 3)]


# --------------------------------------------------------------------------------------------
# Geometry: upsampling, and agreement with segment_anything.SamPredictor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "input_size"),
    [((200, 300), (683, 1024)), ((300, 200), (1024, 683)), ((64, 64), (1024, 1024))],
)
def test_upsample_logits_matches_postprocess_masks(small_model, original, input_size):
    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 3, 256, 256, generator=g)
    fake = ImageEmbedding(
        features=torch.zeros(1),
        original_size=original,
        input_size=input_size,
        model_id="m",
        key="k",
    )
    ours = upsample_logits(low, fake)
    with torch.no_grad():
        theirs = small_model.sam.postprocess_masks(low, input_size, original)
    assert ours.shape == (2, 3, *original)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    single = upsample_logits(low[1, 2], fake)
    assert single.shape == original
    torch.testing.assert_close(single, theirs[1, 2], atol=1e-5, rtol=0)


def test_embedding_equals_predictor_features(emb, predictor):
    assert predictor.input_size == emb.input_size
    assert predictor.original_size == emb.original_size
    torch.testing.assert_close(predictor.features, emb.features, atol=1e-6, rtol=0)


def _assert_same(pred, masks, scores, low_res):
    assert pred.scores.shape == (1, len(scores))
    np.testing.assert_allclose(pred.scores[0], scores, atol=1e-5, rtol=0)
    for k in range(len(scores)):
        np.testing.assert_array_equal(pred.mask(0, k), masks[k])
    np.testing.assert_allclose(pred.low_res_logits[0].numpy(), low_res, atol=1e-4, rtol=0)


def _nontrivial(masks):
    return any(0 < m.sum() < m.size for m in masks)


@pytest.mark.parametrize(("row", "col"), [(20, 70), (50, 10), (0, 95), (63, 0), (31, 47)])
def test_click_equals_sam_predictor(engine, emb, predictor, row, col):
    pred = engine.predict(emb, points=[[row, col]])
    masks, scores, low_res = predictor.predict(
        point_coords=np.array([[col + 0.5, row + 0.5]]),
        point_labels=np.array([1]),
        multimask_output=True,
    )
    _assert_same(pred, masks, scores, low_res)


def test_click_masks_are_not_trivial(engine, emb):
    # Guards the equivalence tests: all-empty or all-full masks would agree by accident.
    pred = engine.predict(emb, points=[[20, 70]])
    assert _nontrivial([pred.mask(0, k) for k in range(3)])


@pytest.mark.parametrize("box", [(5, 10, 40, 60), (30, 0, 63, 95), (2, 80, 9, 90)])
def test_box_equals_sam_predictor(engine, emb, predictor, box):
    r0, c0, r1, c1 = box
    pred = engine.predict(emb, boxes=[box])
    masks, scores, low_res = predictor.predict(
        box=np.array([c0, r0, c1 + 1, r1 + 1]), multimask_output=False
    )
    _assert_same(pred, masks, scores, low_res)


def test_points_and_box_equal_sam_predictor(engine, emb, predictor):
    pred = engine.predict(
        emb, points=[[20, 30], [25, 35]], point_labels=[1, 0], boxes=[[5, 10, 40, 60]]
    )
    masks, scores, low_res = predictor.predict(
        point_coords=np.array([[30.5, 20.5], [35.5, 25.5]]),
        point_labels=np.array([1, 0]),
        box=np.array([10, 5, 61, 41]),
        multimask_output=False,
    )
    _assert_same(pred, masks, scores, low_res)


def test_mask_input_equals_sam_predictor(engine, emb, predictor):
    first = engine.predict(emb, points=[[20, 70]])
    logits = first.logits()
    pred = engine.predict(emb, points=[[20, 70], [22, 75]], mask_input=logits)
    masks, scores, low_res = predictor.predict(
        point_coords=np.array([[70.5, 20.5], [75.5, 22.5]]),
        point_labels=np.array([1, 1]),
        mask_input=logits[None],
        multimask_output=False,
    )
    _assert_same(pred, masks, scores, low_res)
