"""MobileSAM (``vit_t``): our TinyViT against MobileSAM's own code, on shared random weights.

MobileSAM's reference implementation comes from the test-only package ``mobilesam-mirror``
(module ``mobile_sam``). Both networks get one state dict; embeddings and masks must agree.
The forward comparisons use a narrow TinyViT (same stages, windows, resolutions and padding as
``vit_t``, fewer channels and blocks) to keep the suite fast; the full ``vit_t`` is checked for
its parameter names and shapes, its file format and its loading.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from napari_sam.core import _fast_modules
from napari_sam.core.acceleration import configure
from napari_sam.core.architecture import (
    OFFICIAL_ARCHITECTURES,
    SamArchitecture,
    build_sam,
    infer_architecture,
)
from napari_sam.core.checkpoints import load_model, random_model, save_checkpoint
from napari_sam.core.embedding import compute_embedding
from napari_sam.core.engine import SamEngine
from napari_sam.core.errors import CheckpointError

with warnings.catch_warnings():  # timm warns about MobileSAM re-registering TinyViT names
    warnings.simplefilter("ignore")
    mobile_sam = pytest.importorskip(
        "mobile_sam", reason="test oracle: pip install mobilesam-mirror"
    )

VIT_T = OFFICIAL_ARCHITECTURES["vit_t"]
#: vit_t's geometry (1024 input; stages at 256, 128, 64, 64; windows 7, 7, 14, 7, so every
#: attention stage pads its grid) with narrow stages. MobileSAM keeps the resolution before
#: the last stage only for widths 320, 448 and 576: the last width stays 320.
NARROW = dataclasses.replace(
    VIT_T,
    encoder_depth=5,
    encoder_num_heads=4,
    encoder_stage_dims=(16, 32, 48, 320),
    encoder_stage_depths=(1, 1, 2, 1),
    encoder_stage_heads=(1, 2, 3, 4),
)


def reference_sam(arch: SamArchitecture):
    """MobileSAM's network as ``mobile_sam.build_sam_vit_t`` builds it, for ``arch``."""
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

    grid = arch.embedding_size
    sam = Sam(
        image_encoder=TinyViT(
            img_size=arch.image_size,
            in_chans=3,
            num_classes=1000,
            embed_dims=list(arch.encoder_stage_dims),
            depths=list(arch.encoder_stage_depths),
            num_heads=list(arch.encoder_stage_heads),
            window_sizes=list(arch.encoder_stage_windows),
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def random_weights(sam, seed: int) -> dict[str, torch.Tensor]:
    """The network's initialisation with every default constant made random as well.

    Batch-norm statistics, norm scales and shifts and attention biases are constants (ones,
    zeros) at initialisation, which would hide mistakes in how they are used.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sam.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        noise = torch.randn(v.shape, generator=gen)
        if k.endswith("running_var"):
            v = 0.5 + torch.rand(v.shape, generator=gen)
        elif k.endswith(("running_mean", "attention_biases")) or (
            v.dim() == 1 and k.endswith("bias")
        ):
            v = v + 0.2 * noise
        elif v.dim() == 1 and k.endswith("weight"):  # norm scales
            v = 1.0 + 0.2 * noise
        out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair(one_thread, tmp_path_factory):
    """(MobileSAM's network, ours loaded from a napari-sam file) with the same random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = reference_sam(NARROW)
    weights = random_weights(ref, seed=1)
    ref.load_state_dict(weights)
    ref.eval()  # MobileSAM gathers its attention biases in eval(): after loading the weights
    path = tmp_path_factory.mktemp("vit_t") / "narrow.pt"
    ours = build_sam(NARROW)
    ours.load_state_dict(weights)
    save_checkpoint(ours, NARROW, path)
    return ref, load_model("auto", checkpoint=path, device="cpu", fast=False, precision="fp32")


@pytest.fixture(scope="module")
def rgb(make_image):
    return make_image((96, 144))


@pytest.fixture(scope="module")
def predictor(pair, rgb):
    p = mobile_sam.SamPredictor(pair[0])
    p.set_image(rgb)
    return p


# --------------------------------------------------------------------------------------------
# The architecture and the file format
# --------------------------------------------------------------------------------------------


def test_vit_t_parameters_are_mobilesams(one_thread):
    ref = mobile_sam.sam_model_registry["vit_t"]().state_dict()
    ours = build_sam(VIT_T, empty=True).state_dict()
    assert list(ours) == list(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in ref.items()
    }


def test_mobilesam_file_loads_unchanged(one_thread, tmp_path):
    """A state dict as MobileSAM saves it: recognised as vit_t, loaded bit for bit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        ref = mobile_sam.sam_model_registry["vit_t"]()
    weights = random_weights(ref, seed=3)
    path = tmp_path / "mobile_sam.pt"
    torch.save(weights, path)
    assert infer_architecture(weights) == ("vit_t", VIT_T)
    for name in ("auto", "vit_t"):
        lm = load_model(name, checkpoint=path, device="cpu")
        assert lm.architecture == VIT_T
        assert lm.name == ("custom" if name == "auto" else "vit_t")
        loaded = lm.sam.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())
        assert lm.sam.image_encoder.img_size == 1024
        assert len(lm.sam.image_encoder.blocks) == 12
    with pytest.raises(CheckpointError, match="holds vit_t weights but vit_b was requested"):
        load_model("vit_b", checkpoint=path)


def test_unknown_tiny_vit_is_a_clear_error(pair):
    weights = pair[1].sam.state_dict()  # the narrow TinyViT: no registered architecture
    with pytest.raises(CheckpointError, match=r"unknown TinyViT encoder \(stage widths"):
        infer_architecture(weights)


def test_architecture_round_trip_and_checks():
    d = VIT_T.to_dict()
    assert d["encoder_type"] == "tiny_vit" and d["encoder_stage_dims"] == [64, 128, 160, 320]
    assert SamArchitecture.from_dict(d) == VIT_T
    # ViT architectures are written as before: files stay readable by older versions.
    assert "encoder_type" not in OFFICIAL_ARCHITECTURES["vit_b"].to_dict()
    with pytest.raises(ValueError, match="must be"):
        dataclasses.replace(VIT_T, encoder_depth=11)
    with pytest.raises(ValueError, match="no encoder_stage"):
        dataclasses.replace(OFFICIAL_ARCHITECTURES["vit_b"], encoder_stage_dims=(1, 2))
    with pytest.raises(ValueError, match="unknown encoder_type"):
        dataclasses.replace(VIT_T, encoder_type="swin")


def test_random_vit_t_is_seeded(one_thread):
    a, b = random_model("vit_t", seed=4), random_model("vit_t", seed=4)
    assert a.name == "random:vit_t" and a.architecture == VIT_T
    sa, sb = a.sam.state_dict(), b.sam.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# Same weights, same results
# --------------------------------------------------------------------------------------------


def test_encoder_equals_mobilesam(pair):
    ref, ours = pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = ref.image_encoder(x)
        got = ours.sam.image_encoder(x)
    assert got.shape == want.shape == (1, 256, 64, 64)
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("fast", [False, True])
def test_embedding_equals_predictor_features(pair, rgb, predictor, fast):
    _, ours = pair
    configure(ours, fast=fast, precision="fp32")
    try:
        emb = compute_embedding(ours, rgb)
    finally:
        configure(ours, fast=False)
    assert emb.input_size == predictor.input_size
    assert emb.original_size == predictor.original_size
    scale = predictor.features.abs().max().item()
    torch.testing.assert_close(emb.features, predictor.features, atol=2e-5 * scale, rtol=0)


PROMPTS = [
    ({"points": [[20, 70]]}, {"point_coords": [[70.5, 20.5]], "point_labels": [1]}, True),
    ({"points": [[60, 30]]}, {"point_coords": [[30.5, 60.5]], "point_labels": [1]}, True),
    ({"boxes": [[5, 10, 40, 60]]}, {"box": [10, 5, 61, 41]}, False),
    (
        {"points": [[20, 30], [25, 35]], "point_labels": [1, 0], "boxes": [[5, 10, 40, 60]]},
        {
            "point_coords": [[30.5, 20.5], [35.5, 25.5]],
            "point_labels": [1, 0],
            "box": [10, 5, 61, 41],
        },
        False,
    ),
]


@pytest.mark.parametrize("fast", [False, True])
def test_masks_equal_mobilesam(pair, rgb, predictor, fast):
    """Clicks and boxes: same scores, low-resolution logits and masks as MobileSAM's predictor.

    The fast path adds napari-sam's decoder and the region-limited upsampling of the mask.
    """
    _, ours = pair
    configure(ours, fast=fast, precision="fp32")
    try:
        engine = SamEngine(ours)
        emb = engine.embed(rgb)
        nontrivial = 0
        for ours_kw, ref_kw, multimask in PROMPTS:
            pred = engine.predict(emb, multimask=multimask, **ours_kw)
            masks, scores, low_res = predictor.predict(
                **{k: np.array(v) for k, v in ref_kw.items()}, multimask_output=multimask
            )
            np.testing.assert_allclose(pred.scores[0], scores, atol=1e-4, rtol=0)
            np.testing.assert_allclose(pred.low_res_logits[0].numpy(), low_res, atol=1e-3, rtol=0)
            for k in range(len(scores)):
                np.testing.assert_array_equal(pred.mask(0, k), masks[k])
                nontrivial += 0 < masks[k].sum() < masks[k].size
        assert nontrivial >= 2  # all-empty or all-full masks would agree by accident
    finally:
        configure(ours, fast=False)


# --------------------------------------------------------------------------------------------
# Fast paths
# --------------------------------------------------------------------------------------------


def test_fast_modules_apply_to_vit_t(pair):
    _, ours = pair
    configure(ours, fast=True)
    try:
        sam = ours.sam
        assert isinstance(sam.mask_decoder, _fast_modules.FastMaskDecoder)
        assert isinstance(sam.prompt_encoder, _fast_modules.FastPromptEncoder)
        necks = [m for m in sam.image_encoder.neck if "LayerNorm" in type(m).__name__]
        assert necks and all(isinstance(m, _fast_modules.FastLayerNorm2d) for m in necks)
    finally:
        configure(ours, fast=False)
    assert not _fast_modules.is_swapped(ours.sam)


def test_bf16_embedding_error_is_bounded(one_thread, make_image):
    # A 256-pixel input: bfloat16 convolutions are slow on CPUs without bfloat16 units.
    arch = dataclasses.replace(NARROW, image_size=256)
    model = random_model(arch, seed=6, precision="fp32")
    rgb = make_image((64, 80))
    fp32 = compute_embedding(model, rgb)
    configure(model, precision="bf16")
    bf16 = compute_embedding(model, rgb)
    assert fp32.features.shape == bf16.features.shape == (1, 256, 16, 16)
    assert bf16.features.dtype == torch.float32
    assert bf16.model_id == f"{fp32.model_id}-bf16"
    rel = ((bf16.features - fp32.features).norm() / fp32.features.norm()).item()
    assert 0 < rel < 0.05


def test_auto_precision_is_fp32_for_tiny_vit(monkeypatch, one_thread):
    """bf16 is chosen automatically only where it was measured faster, for ViT encoders."""
    from napari_sam.core import acceleration, calibration
    from napari_sam.core.precision_plan import PrecisionPlan

    monkeypatch.setattr(calibration, "measured_plan", lambda: PrecisionPlan.uniform("bf16"))
    assert acceleration.resolve_precision("auto", "cpu") == "bf16"
    assert acceleration.resolve_precision("auto", "cpu", "tiny_vit") == "fp32"
    assert acceleration.resolve_precision("bf16", "cpu", "tiny_vit") == "bf16"
    model = random_model(dataclasses.replace(NARROW, image_size=256), precision="auto")
    assert model.precision == "fp32"
    assert configure(model, precision="bf16").precision == "bf16"


def test_progress_and_cancel_count_every_block(pair, rgb):
    from napari_sam.core.errors import Cancelled

    _, ours = pair
    seen = []
    compute_embedding(ours, rgb, progress=lambda done, total: seen.append((done, total)))
    n = sum(NARROW.encoder_stage_depths)
    assert seen == [(i, n) for i in range(1, n + 1)]
    calls = []
    with pytest.raises(Cancelled):
        compute_embedding(
            ours,
            rgb,
            progress=lambda done, total: calls.append(done),
            cancel=lambda: len(calls) >= 2,
        )
    assert calls == [1, 2]
