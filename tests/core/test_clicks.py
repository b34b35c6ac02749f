"""The click simulator and the benchmark numbers, on masks and a geometric decoder with known
answers; then the bundled tiny model held to floors a margin below docs/evaluation.md."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from napari_sam.core.clicks import (
    Click,
    ClickResults,
    ObjectRun,
    evaluate_image,
    next_click,
    reference_objects,
    simulate_object,
)
from napari_sam.core.errors import PromptError
from napari_sam.core.prompts import Prompts

SHAPE = (64, 80)
HALF = 5  # the geometric decoder draws an 11 x 11 square around each click


def rect(r0: int, c0: int, r1: int, c1: int, shape=SHAPE) -> np.ndarray:
    """Boolean mask of rows r0..r1 and columns c0..c1 (inclusive)."""
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


# --------------------------------------------------------------------------------------------
# next_click: where the simulated user clicks
# --------------------------------------------------------------------------------------------


def test_first_click_is_the_centre_of_the_object():
    ref = rect(10, 30, 20, 40)  # 11 x 11: one deepest pixel
    assert next_click(np.zeros(SHAPE, bool), ref) == Click(15, 35, True)


def test_included_background_gets_a_negative_click_at_its_centre():
    ref = rect(10, 10, 14, 14)
    pred = ref | rect(30, 40, 40, 50)
    assert next_click(pred, ref) == Click(35, 45, False)


def test_the_deeper_error_region_wins():
    ref = rect(0, 0, 30, 30)
    pred = rect(0, 0, 30, 30) & ~rect(5, 5, 13, 13)  # a 9 x 9 hole: depth 5
    pred |= rect(40, 50, 46, 56)  # 7 x 7 extra: depth 4
    assert next_click(pred, ref) == Click(9, 9, True)
    pred |= rect(40, 50, 50, 60)  # 11 x 11 extra: depth 6
    assert next_click(pred, ref) == Click(45, 55, False)


def test_equal_depths_give_a_negative_click_as_in_ritm():
    ref = rect(0, 0, 30, 30)
    pred = (ref & ~rect(5, 5, 13, 13)) | rect(40, 50, 48, 58)  # both 9 x 9: depth 5
    assert next_click(pred, ref) == Click(44, 54, False)


def test_the_image_border_is_a_border():
    ref = rect(0, 0, 9, SHAPE[1] - 1)  # a band along the top edge, 10 rows
    click = next_click(np.zeros(SHAPE, bool), ref)
    # Depth min(row + 1, 10 - row): deepest at rows 4 and 5, the first one taken.
    assert (click.row, click.positive) == (4, True)


def test_no_error_no_click_and_clicked_pixels_are_not_clicked_again():
    ref = rect(10, 30, 20, 40)
    assert next_click(ref, ref) is None
    clicked = np.zeros(SHAPE, bool)
    clicked[15, 35] = True
    again = next_click(np.zeros(SHAPE, bool), ref, clicked)
    assert again.positive and (again.row, again.col) != (15, 35)
    assert ref[again.row, again.col]
    single = np.zeros(SHAPE, bool)
    single[3, 3] = True
    assert next_click(np.zeros(SHAPE, bool), single, single) is None


# --------------------------------------------------------------------------------------------
# The simulator on a geometric decoder
# --------------------------------------------------------------------------------------------


@dataclass
class _Embedding:
    original_size: tuple[int, int] = SHAPE
    model_id: str = "geometric"
    key: str = "image"


class _Prediction:
    def __init__(self, mask: np.ndarray, call: int, emb: _Embedding) -> None:
        self._mask = mask
        self.embedding = emb
        self.best = np.array([0])
        self.n_objects = 1
        self.call = call

    def mask(self, obj: int = 0, candidate: int | None = None) -> np.ndarray:
        return self._mask

    def logits(self, obj: int = 0, candidate: int | None = None) -> np.ndarray:
        # Marked with the call's number, so a test can see which logits come back.
        return np.full((256, 256), float(self.call), np.float32)


class GeometricDecoder:
    """Known answers: the box's rectangle, plus an 11 x 11 square around each positive click,
    minus one around each negative click. Records every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def predict(self, embedding, prompts: Prompts, *, mask_input=None, multimask=None):
        m = np.zeros(embedding.original_size, bool)
        for b in prompts.boxes.astype(int):
            m |= rect(*b)
        for (r, c), label in zip(prompts.points.astype(int), prompts.point_labels, strict=True):
            square = rect(r - HALF, c - HALF, r + HALF, c + HALF)
            m = m | square if label == 1 else m & ~square
        self.calls.append({"prompts": prompts, "mask_input": mask_input, "multimask": multimask})
        return _Prediction(m, len(self.calls), embedding)


def test_clicks_until_the_object_is_right():
    ref = rect(20, 20, 30, 41)  # 11 x 22: two squares side by side
    decoder = GeometricDecoder()
    run = simulate_object(decoder, _Embedding(), ref, clicks=4, refine=False)
    # Click 1 at the first deepest pixel covers the left half (IoU 0.5), click 2 the right
    # half; then nothing is wrong: no more clicks, the IoU stays.
    assert run.clicks == [Click(25, 25, True), Click(25, 36, True)]
    assert run.ious == [0.5, 1.0, 1.0, 1.0]
    assert len(decoder.calls) == 2


def test_box_first_then_a_negative_click():
    ref = rect(20, 20, 40, 40) & ~rect(31, 31, 40, 40)  # an L: 341 px in a 21 x 21 box
    decoder = GeometricDecoder()
    run = simulate_object(decoder, _Embedding(), ref, clicks=2, box_first=True, refine=False)
    # The box includes the 10 x 10 corner: a negative click at its first deepest pixel
    # removes an 11 x 11 square, taking 21 reference pixels with it.
    assert run.clicks == [Click(35, 35, False)]
    np.testing.assert_allclose(run.ious, [341 / 441, 320 / 341])
    first, second = (c["prompts"] for c in decoder.calls)
    assert first.boxes.tolist() == [[20, 20, 40, 40]] and len(first.points) == 0
    assert second.boxes.tolist() == [[20, 20, 40, 40]]  # the box stays
    assert second.points.tolist() == [[35, 35]] and second.point_labels.tolist() == [0]


@pytest.mark.parametrize("refine", [True, False])
def test_refinement_passes_the_previous_logits(refine):
    ref = rect(20, 10, 30, 60)
    decoder = GeometricDecoder()
    simulate_object(decoder, _Embedding(), ref, clicks=3, refine=refine)
    first, *rest = decoder.calls
    assert first["mask_input"] is None and first["multimask"] is None  # engine default
    assert len(rest) == 2
    for k, call in enumerate(rest, start=1):
        if refine:
            # Call k + 1 gets call k's logits (one per object), with one candidate.
            assert call["mask_input"].shape == (1, 256, 256)
            assert np.all(call["mask_input"] == k) and call["multimask"] is False
        else:
            assert call["mask_input"] is None


def test_an_empty_reference_is_refused():
    with pytest.raises(PromptError, match="empty"):
        simulate_object(GeometricDecoder(), _Embedding(), np.zeros(SHAPE, bool))


# --------------------------------------------------------------------------------------------
# The numbers
# --------------------------------------------------------------------------------------------


def test_miou_and_noc_count_n_plus_one_for_objects_that_never_get_there():
    ious = np.array(
        [
            [0.5, 0.86, 0.95],  # 85 at click 2, 90 at click 3
            [0.9, 0.9, 0.9],  # both at click 1
            [0.2, 0.3, 0.88],  # 85 at click 3, never 90: counts N + 1 = 4
        ]
    )
    res = ClickResults(ious, ["a", "b", "c"], [[], [], []])
    np.testing.assert_allclose(res.miou(), ious.mean(axis=0))
    assert res.clicks_to_reach(0.85).tolist() == [2, 1, 3]
    assert res.clicks_to_reach(0.90).tolist() == [3, 1, 4]
    assert res.noc(0.85) == pytest.approx(2.0) and res.noc(0.90) == pytest.approx(8 / 3)
    assert res.summary_line() == ("mIoU@1=0.533 mIoU@3=0.910 NoC@85=2.00 NoC@90=2.67 objects=3")
    table = res.table()
    assert len(table) == 4 and table[0].split() == ["click", "mIoU", ">=0.85", ">=0.90"]
    assert table[3].split() == ["3", "0.910", "100.0%", "66.7%"]


def test_results_from_runs_and_as_json():
    runs = [ObjectRun([0.5, 1.0], [Click(1, 2, True), Click(3, 4, False)])]
    res = ClickResults.from_runs(runs, [(0, 7)], clicks=2)
    d = res.to_dict()
    assert d["miou"] == [0.5, 1.0] and d["noc85"] == 2.0 and d["noc90"] == 2.0
    assert d["objects"] == [{"object": [0, 7], "ious": [0.5, 1.0],
                             "clicks": [[1, 2, 1], [3, 4, 0]]}]  # fmt: skip
    empty = ClickResults.from_runs([], [], clicks=3)
    assert empty.n_objects == 0 and empty.n_clicks == 3 and np.isnan(empty.noc(0.85))


def test_reference_objects_by_plane_with_min_area_and_subsets():
    labels = np.zeros((2, 20, 20), np.int32)
    labels[0, :5, :5] = 3  # 25 px
    labels[0, 10:12, 10:12] = 4  # 4 px: too small
    labels[1, :6, :6] = 3  # the same id on another plane is another object
    labels[1, 10:, 10:] = 9
    assert reference_objects(labels) == [(0, 3), (1, 3), (1, 9)]
    assert reference_objects(labels[0], min_area=4) == [(0, 3), (0, 4)]
    some = reference_objects(labels, max_objects=2, seed=1)
    assert len(some) == 2 and some == sorted(some)
    assert some == reference_objects(labels, max_objects=2, seed=1)
    assert reference_objects(np.zeros((5, 5), int)) == []


def test_evaluate_image_refuses_labels_of_another_shape():
    with pytest.raises(PromptError, match=re.escape("(64, 80) do not match the image (64x81)")):
        evaluate_image(None, np.zeros((64, 81, 3), np.uint8), np.zeros(SHAPE, int))


# --------------------------------------------------------------------------------------------
# The tiny model (floors a margin below the measured numbers in docs/evaluation.md)
# --------------------------------------------------------------------------------------------

#: Measured on these scenes (2 images, 12 objects, 4 clicks, refinement off, float32):
#: mIoU@1..4 = 0.729 0.703 0.664 0.655; refinement on: 0.729 0.409 0.415 0.386.
TINY_MIOU_1 = 0.65
TINY_MIOU_4 = 0.58


@pytest.fixture(scope="module")
def scenes():
    from napari_sam.core.normalize import prepare_image
    from napari_sam.core.synthetic import make_cells

    out = []
    for seed, shape in ((424242, (240, 352)), (424243, (256, 256))):
        s = make_cells(shape, seed=seed, radius_range=(8, 30))
        out.append((prepare_image(s.image), s.labels))
    return out


def _curves(engine, scenes, **kwargs) -> ClickResults:
    results = [evaluate_image(engine, rgb, lab, max_objects=6, **kwargs) for rgb, lab in scenes]
    return ClickResults(
        np.concatenate([r.ious for r in results]),
        [o for r in results for o in r.objects],
        [c for r in results for c in r.clicks],
    )


def test_tiny_model_click_curve_and_why_it_does_not_refine(tiny_engine, scenes):
    off = _curves(tiny_engine, scenes, clicks=4, refine=False)
    assert off.n_objects == 12
    m = off.miou()
    assert m[0] >= TINY_MIOU_1 and m[-1] >= TINY_MIOU_4, m
    # The tiny model never saw a mask prompt in training: refining makes it worse, which is
    # why the registry turns refinement off for it (ModelSpec.mask_prompts). Retrained with mask
    # prompts, this would fail: then measure again and flip the flag.
    on = _curves(tiny_engine, scenes, clicks=4, refine=True)
    np.testing.assert_array_equal(on.ious[:, 0], off.ious[:, 0])  # click 1: no previous mask
    assert on.miou()[1:].mean() < off.miou()[1:].mean() - 0.1, (on.miou(), m)
    default = _curves(tiny_engine, scenes[:1], clicks=2)
    np.testing.assert_array_equal(default.ious, off.ious[:6, :2])


def test_next_click_equals_the_whole_image_distance_transform():
    # The simulator computes depths inside each error region's box only; the answer must be
    # the one of the plain definition on the whole image.
    from scipy import ndimage as ndi

    def plain(pred, ref):
        depth = [ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
                 for m in (ref & ~pred, pred & ~ref)]  # fmt: skip
        positive = depth[0].max() > depth[1].max()
        r, c = np.unravel_index(np.argmax(depth[0] if positive else depth[1]), ref.shape)
        return Click(int(r), int(c), bool(positive))

    rng = np.random.default_rng(0)
    for _ in range(50):
        ref = ndi.binary_opening(rng.random(SHAPE) < rng.uniform(0.3, 0.9))
        pred = ndi.binary_opening(rng.random(SHAPE) < rng.uniform(0.3, 0.9))
        if (ref != pred).any():
            assert next_click(pred, ref) == plain(pred, ref)


def test_tiny_model_on_unseen_real_nuclei(tiny_engine):
    import imageio.v3 as iio
    import tifffile

    from napari_sam.core.normalize import prepare_image

    # H&E nuclei the model never saw (4d14a3629b, 10 of its 98 nuclei, 3 clicks, the model's
    # default: no refinement). Measured: mIoU@1..3 = 0.370 0.432 0.413.
    real = Path(__file__).parents[1] / "data" / "real"
    rgb = prepare_image(iio.imread(real / "4d14a3629b_image.png"))
    labels = tifffile.imread(real / "4d14a3629b_labels.tif").astype(np.int32)
    res = evaluate_image(tiny_engine, rgb, labels, clicks=3, max_objects=10)
    assert res.n_objects == 10
    m = res.miou()
    assert m[0] >= 0.3 and m[2] >= 0.33, m
