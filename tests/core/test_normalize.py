"""Known-answer tests of napari_sam.core.normalize."""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_sam.core.errors import ImageError
from napari_sam.core.normalize import Normalization, prepare_image, resolve_method

REAL_IMAGE = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "usiigaci_phase_contrast_cells"
    / "set1_image_raw.tif"
)


def expected_linear(values, lo, hi):
    """Reference mapping lo -> 0, hi -> 255 in float64, clipped and rounded."""
    scaled = (np.asarray(values, dtype=np.float64) - lo) * 255.0 / (hi - lo)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def prepared(image, **kwargs):
    """prepare_image that also checks the output contract and that the input is untouched."""
    image = np.asarray(image)
    before = image.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division / cast / NaN warnings, ever
        out = prepare_image(image, **kwargs)
    assert out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous
    assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(image, before)
    return out


def grey(out):
    """Check that ``out`` is a grey image and return its single channel."""
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    return out[..., 0]


# --- output contract for every dtype -------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32, np.float64, np.bool_],
)
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4), (2, 5, 7)])
def test_every_dtype_and_layout_gives_uint8_rgb(dtype, shape):
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 100).astype(dtype)
    image.flags.writeable = False  # any in-place change of the input would raise
    out = prepared(image)
    assert out.shape == (5, 7, 3)


def test_non_contiguous_and_big_endian_input():
    image = np.arange(35, dtype=">u2").reshape(7, 5).T  # a transposed big-endian view
    out = prepared(image, contrast_limits=(0, 34))
    np.testing.assert_array_equal(grey(out), expected_linear(image, 0, 34))


# --- uint8 and bool ------------------------------------------------------------------------


def test_uint8_grey_passes_through_and_is_replicated():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(grey(prepared(image)), image)


def test_uint8_rgb_passes_through_identical():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepared(image), image)


def test_rgba_alpha_is_dropped():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    np.testing.assert_array_equal(prepared(image), image[..., :3])


def test_uint8_percentile_only_when_asked():
    image = np.arange(50, 151, dtype=np.uint8).reshape(1, 101)
    out = grey(prepared(image, method="percentile", percentiles=(0, 100)))
    assert out[0, 0] == 0 and out[0, -1] == 255


def test_bool_gives_0_and_255():
    image = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(grey(prepared(image)), image * np.uint8(255))
    np.testing.assert_array_equal(grey(prepared(image, method="none")), image * np.uint8(255))


# --- contrast limits -----------------------------------------------------------------------


def test_uint16_ramp_with_contrast_limits_maps_ends_exactly():
    image = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    out = grey(prepared(image, contrast_limits=(0, 4095)))
    assert out[0, 0] == 0 and out[-1, -1] == 255
    np.testing.assert_array_equal(out, expected_linear(image, 0, 4095))
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_int16_ct_values_with_negative_contrast_limits():
    image = np.array([[-3000, -1000, -500], [200, 1000, 3000]], dtype=np.int16)
    out = grey(prepared(image, contrast_limits=(-1000, 1000)))
    np.testing.assert_array_equal(out, [[0, 0, 64], [153, 255, 255]])


def test_int8_full_range():
    image = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    out = grey(prepared(image, contrast_limits=(-128, 127)))
    np.testing.assert_array_equal(out, np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_int32_large_values():
    image = np.array([[0, 50_000, 100_000, 200_000]], dtype=np.int32)
    out = grey(prepared(image, contrast_limits=(0, 100_000)))
    np.testing.assert_array_equal(out, [[0, 128, 255, 255]])


def test_float_contrast_limits_with_nan_and_inf():
    image = np.array([[np.nan, np.inf, -np.inf, 0.25, 0.5, 2.0]], dtype=np.float32)
    out = grey(prepared(image, contrast_limits=(0.0, 1.0)))
    np.testing.assert_array_equal(out, [[0, 255, 0, 64, 128, 255]])


def test_per_channel_contrast_limits():
    image = np.stack([np.full((4, 4), 100), np.full((4, 4), 100), np.full((4, 4), 100)])
    out = prepared(image.astype(np.uint16), contrast_limits=[(0, 100), (0, 200), (100, 300)])
    np.testing.assert_array_equal(out[0, 0], [255, 128, 0])


def test_equal_contrast_limits_give_a_step():
    image = np.array([[1, 5, 9]], dtype=np.uint16)
    np.testing.assert_array_equal(grey(prepared(image, contrast_limits=(5, 5))), [[0, 0, 255]])


def test_contrast_limits_on_uint8_rgb_are_applied():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    np.testing.assert_array_equal(prepared(image, contrast_limits=(0, 200)), 128)


# --- percentiles ---------------------------------------------------------------------------


def test_uint16_auto_uses_percentiles_1_and_99_8():
    image = np.arange(1001, dtype=np.uint16).reshape(7, 143)  # 1st pct = 10, 99.8th = 998
    out = grey(prepared(image))
    np.testing.assert_array_equal(out, expected_linear(image, 10, 998))
    assert out.ravel()[10] == 0 and out.ravel()[998] == 255 and out.ravel()[257] == 64
    assert np.all(out.ravel()[:11] == 0) and np.all(out.ravel()[998:] == 255)


def test_int8_and_int16_negative_values_with_percentiles():
    for dtype, values in [(np.int8, np.arange(-100, 101)), (np.int16, np.arange(-1000, 1001))]:
        image = values.astype(dtype).reshape(1, -1)
        out = grey(prepared(image, percentiles=(0, 100)))
        np.testing.assert_array_equal(out[0], expected_linear(values, values[0], values[-1]))


def test_percentiles_ignore_non_finite_values():
    finite = np.linspace(-5.0, 5.0, 200)
    with_bad = np.concatenate([finite, [np.nan, np.inf, -np.inf] * 10])
    out_ref = grey(prepared(finite.reshape(1, -1)))
    out = grey(prepared(with_bad.reshape(1, -1)))
    np.testing.assert_array_equal(out[0, :200], out_ref[0])
    np.testing.assert_array_equal(out[0, 200:], [0, 255, 0] * 10)


def test_percentiles_are_per_channel():
    image = np.stack([np.arange(100), np.arange(100) * 10 + 7]).reshape(2, 10, 10)
    out = prepared(image.astype(np.float32), percentiles=(0, 100))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 2], 0)


def test_sparse_image_falls_back_to_min_max():
    image = np.zeros((100, 100), dtype=np.uint16)
    image[0, :5] = [100, 200, 300, 400, 1000]  # 99.8th percentile is still 0
    out = grey(prepared(image))
    np.testing.assert_array_equal(out[0, :5], expected_linear([100, 200, 300, 400, 1000], 0, 1000))
    assert out[1:].max() == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_constant_image_gives_zeros(dtype):
    assert prepared(np.full((8, 8), 42, dtype=dtype)).max() == 0


def test_all_nan_image_gives_zeros():
    assert prepared(np.full((8, 8), np.nan)).max() == 0
    assert prepared(np.full((8, 8), np.nan), method="none").max() == 0


def test_method_none_clips_raw_values():
    image = np.array([[-5.0, 0.4, 100.6, 300.0, np.nan]])
    np.testing.assert_array_equal(grey(prepared(image, method="none")), [[0, 0, 101, 255, 0]])


def test_float64_has_no_full_size_float64_intermediate():
    image = np.random.default_rng(3).random((500, 500))  # 2 MB of float64
    prepare_image(image[:5, :5])  # first-call set-up inside NumPy is not what we measure
    tracemalloc.start()
    try:
        prepare_image(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # output 0.75 MB + the percentiles' copy 2 MB + float64 blocks of 0.5 MB; one more
    # full-size float64 array would add 2 MB.
    assert peak < 1.75 * image.nbytes


def test_uint16_needs_no_float_copy_of_the_image():
    image = np.random.default_rng(4).gamma(2.0, 600.0, (1000, 1000)).astype(np.uint16)
    out_bytes = 3 * image.size
    prepare_image(image[:5, :5])
    tracemalloc.start()
    try:
        out = prepare_image(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # output 3 MB + the percentiles' uint16 copy 2 MB + blocks; a float32 copy of the image
    # alone would add 4 MB (there used to be two: 12 MB in all).
    assert peak < out_bytes + 1.5 * image.nbytes
    lo, hi = np.percentile(image, (1.0, 99.8))  # across the float64 blocks, still exact
    np.testing.assert_array_equal(grey(out), expected_linear(image, lo, hi))


# --- precision: wide integers, narrow ranges, zero-width ranges -----------------------------


def test_uint32_near_4e9_with_narrow_contrast_limits_keeps_every_level():
    offsets = np.arange(0, 1021, 4)  # 256 values 4 apart; float32 steps there are 256 apart
    image = (4_000_000_000 + offsets).astype(np.uint32).reshape(16, 16)
    out = grey(prepared(image, contrast_limits=(4e9, 4e9 + 1020)))
    np.testing.assert_array_equal(out.ravel(), expected_linear(offsets, 0, 1020))
    assert len(np.unique(out)) == 256


@pytest.mark.parametrize(
    ("dtype", "base", "width"),
    [
        (np.int64, -(2**62), 1024),  # float64 steps are 1024 apart there
        (np.int64, 2**62, 1024),
        (np.uint64, 2**64 - 8192, 6144),  # and 2048 apart here
    ],
)
def test_64_bit_integers_near_their_limits_are_exact(dtype, base, width):
    offsets = np.arange(0, width + 1, width // 256)
    image = np.array([base + int(o) for o in offsets], dtype=dtype).reshape(1, -1)
    expected = expected_linear(offsets, 0, width)
    out = grey(prepared(image, contrast_limits=(float(base), float(base + width))))
    np.testing.assert_array_equal(out[0], expected)
    out = grey(prepared(image, percentiles=(0, 100)))  # limits: the exact minimum and maximum
    np.testing.assert_array_equal(out[0], expected)
    below = np.array([[base - 1, base + width + 1]], dtype=dtype)
    np.testing.assert_array_equal(
        grey(prepared(below, contrast_limits=(base, base + width))), [[0, 255]]
    )


def test_float64_narrow_range_around_one():
    offsets = np.arange(256) * 1e-12
    image = (1.0 + offsets).reshape(16, 16)  # float32 holds all of them as 1.0
    out = grey(prepared(image, contrast_limits=(1.0, 1.0 + 255e-12)))
    np.testing.assert_array_equal(out, expected_linear(image, 1.0, 1.0 + 255e-12))
    assert len(np.unique(out)) == 256
    out = grey(prepared(image, percentiles=(0, 100)))
    np.testing.assert_array_equal(out, expected_linear(image, image.min(), image.max()))


def test_tiny_and_zero_width_ranges_give_no_inf_or_nan():
    tiny = 2.0**-140  # 255 / tiny is inf in float32
    values = np.array([[0.0, tiny / 2, tiny, 1.0, np.nan, np.inf, -np.inf]])
    expected = [[0, 128, 255, 255, 0, 255, 0]]  # tiny / 2 is 127.5 exactly
    np.testing.assert_array_equal(grey(prepared(values, contrast_limits=(0, tiny))), expected)
    subnormal = 2.0**-1069  # 255 / subnormal is inf even in float64
    scaled = values * (subnormal / tiny)
    np.testing.assert_array_equal(grey(prepared(scaled, contrast_limits=(0, subnormal))), expected)
    # zero width: a step, values above the limit are 255, the limit itself and NaN 0
    step = [[0, 255, 255, 255, 0, 255, 0]]
    np.testing.assert_array_equal(grey(prepared(values, contrast_limits=(0, 0))), step)
    big = np.array([[2**64 - 3, 2**64 - 2, 2**64 - 1]], dtype=np.uint64)
    np.testing.assert_array_equal(
        grey(prepared(big, contrast_limits=(2.0**64 - 2048, 2.0**64 - 2048))), [[255, 255, 255]]
    )


def float32_reference(image, lo=None, hi=None, percentiles=(1.0, 99.8)):
    """The mapping as it was computed before float64 (float32 throughout), for one channel."""
    values = np.asarray(image).astype(np.float32)
    if lo is None:
        lo, hi = (float(p) for p in np.percentile(values, percentiles))
    values -= np.float32(lo)
    values *= np.float32(255.0 / (hi - lo))
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"percentiles": (0.5, 99.5)}, {"contrast_limits": (100, 3000)}, {"method": "none"}],
)
def test_ordinary_uint8_and_uint16_images_are_mapped_as_before(kwargs):
    rng = np.random.default_rng(5)
    for image in (
        rng.gamma(2.0, 600.0, (300, 400)).astype(np.uint16),
        rng.integers(0, 256, (300, 400), dtype=np.uint8),
    ):
        out = grey(prepared(image, **kwargs))
        if kwargs.get("method") == "none" or (
            image.dtype == np.uint8 and "contrast_limits" not in kwargs
        ):
            reference = np.clip(image, 0, 255).astype(np.uint8)  # values as they are
        elif "contrast_limits" in kwargs:
            reference = float32_reference(image, *kwargs["contrast_limits"])
        else:
            reference = float32_reference(image, **kwargs)
        np.testing.assert_array_equal(out, reference)


# --- channels ------------------------------------------------------------------------------


def channel_stack(n, shape=(6, 10)):
    """``n`` uint16 channels, channel i constant except for a ramp offset by 1000 * i."""
    ramp = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    return np.stack([ramp + 1000 * i for i in range(n)])


def test_channels_first_with_channel_axis_0():
    image = channel_stack(3)
    out = prepared(image, channel_axis=0, contrast_limits=(0, 3000))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected_linear(image[c], 0, 3000))
    np.testing.assert_array_equal(prepared(image, contrast_limits=(0, 3000)), out)  # guessed


def test_channels_last_five_with_channel_selection():
    image = np.moveaxis(channel_stack(5, (12, 10)), 0, -1)  # (12, 10, 5)
    out = prepared(image, channels=[4, 0], contrast_limits=(0, 5000))
    np.testing.assert_array_equal(out[..., 0], expected_linear(image[..., 4], 0, 5000))
    np.testing.assert_array_equal(out[..., 1], expected_linear(image[..., 0], 0, 5000))
    np.testing.assert_array_equal(out[..., 2], 0)
    explicit = prepared(image, channel_axis=-1, channels=[4, 0], contrast_limits=(0, 5000))
    np.testing.assert_array_equal(explicit, out)


def test_two_channels_map_to_red_and_green():
    image = channel_stack(2)
    out = prepared(image, contrast_limits=(0, 2000))
    np.testing.assert_array_equal(out[..., 0], expected_linear(image[0], 0, 2000))
    np.testing.assert_array_equal(out[..., 1], expected_linear(image[1], 0, 2000))
    np.testing.assert_array_equal(out[..., 2], 0)


def test_single_selected_channel_is_grey():
    image = channel_stack(4)
    out = grey(prepared(image, channels=[2], contrast_limits=(0, 3000)))
    np.testing.assert_array_equal(out, expected_linear(image[2], 0, 3000))


def test_channel_axis_1():
    image = np.moveaxis(channel_stack(3), 0, 1)  # (6, 3, 10)
    out = prepared(image, channel_axis=1, contrast_limits=(0, 3000))
    np.testing.assert_array_equal(out[..., 1], expected_linear(image[:, 1], 0, 3000))


def test_rgb_false_reads_rgba_as_four_channels():
    image = np.random.default_rng(4).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    with pytest.raises(ImageError, match="has 4 channels"):
        prepare_image(image, rgb=False)
    np.testing.assert_array_equal(grey(prepared(image, rgb=False, channels=[3])), image[..., 3])


def test_rgb_true_with_small_first_axis():
    image = np.random.default_rng(5).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepared(image, rgb=True), image)
    np.testing.assert_array_equal(prepared(image, rgb=False), np.moveaxis(image, 0, -1))


def test_channel_selection_on_rgb():
    image = np.random.default_rng(6).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(prepared(image, channels=[2, 1, 0]), image[..., 2::-1])


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros(5), {}, r"shape \(5,\) \(1D\).*single 2D plane"),
        (np.zeros((2, 3, 4, 5)), {}, r"shape \(2, 3, 4, 5\) \(4D\)"),
        (np.zeros((0, 4)), {}, r"empty \(shape \(0, 4\)\)"),
        (np.zeros((4, 0, 3)), {}, "empty"),
        (np.zeros((4, 4), dtype=np.complex64), {}, "complex"),
        (np.array([["a", "b"]]), {}, "expected numbers"),
        (np.zeros((3, 3), dtype="m8[s]"), {}, "expected numbers"),
        (np.zeros((20, 64, 64)), {}, r"shape \(20, 64, 64\) looks like a 3D stack.*channel_axis"),
        (np.zeros((12, 10, 5)), {}, r"5 channels.*channels=\[\.\.\.\] \(indices 0 to 4\)"),
        (np.zeros((5, 12, 10)), {}, "has 5 channels"),
        (np.zeros((4, 4)), {"channel_axis": 0}, "is 2D"),
        (np.zeros((4, 4)), {"rgb": True}, "rgb=True"),
        (np.zeros((4, 4)), {"channels": [1]}, r"has 1 channel, the only valid index is 0\.$"),
        (np.zeros((4, 4, 5)), {"rgb": True}, "has 5 entries"),
        (np.zeros((4, 4, 3)), {"channel_axis": 3}, "out of range"),
        (np.zeros((3, 4, 3)), {"channel_axis": 0, "rgb": True}, "rgb=True"),
        (np.zeros((12, 10, 5)), {"channels": [5, 0]}, "Channel 5 .* valid indices are 0 to 4"),
        (np.zeros((12, 10, 5)), {"channels": [-1]}, "Channel -1 does not exist"),
        (np.zeros((4, 4, 4)), {"channels": [3]}, r"3 colour channels \(alpha excluded\)"),
        (np.zeros((12, 10, 5)), {"channels": []}, "1 to 3 channels"),
        (np.zeros((12, 10, 5)), {"channels": [0, 1, 2, 3]}, "1 to 3 channels"),
        (np.zeros((12, 10, 5)), {"channels": [0.5]}, "integers"),
        (np.zeros((4, 4)), {"contrast_limits": (5, 1)}, "lo <= hi"),
        (np.zeros((4, 4)), {"contrast_limits": (0, np.inf)}, "finite"),
        (np.zeros((4, 4)), {"contrast_limits": (0, 1, 2)}, "pair"),
        (np.zeros((4, 4)), {"contrast_limits": [(0, 1), (0, 2)]}, "2 pairs .* 1 selected"),
        (np.zeros((4, 4)), {"percentiles": (50, 10)}, "0 <= low < high <= 100"),
        (np.zeros((4, 4)), {"percentiles": (0, 101)}, "0 <= low < high <= 100"),
        (np.zeros((4, 4)), {"method": "zscore"}, "Unknown normalization method 'zscore'"),
        (np.zeros((4, 4)), {"method": "contrast_limits"}, "needs contrast_limits"),
        (np.zeros((4, 4)), {"method": "percentile", "contrast_limits": (0, 1)}, "were given"),
    ],
)
def test_errors(image, kwargs, match):
    with pytest.raises(ImageError, match=match):
        prepare_image(image, **kwargs)


def test_resolve_method():
    assert resolve_method("auto", np.uint8) == "none"
    assert resolve_method("auto", np.bool_) == "none"
    assert resolve_method("auto", np.uint16) == "percentile"
    assert resolve_method("auto", np.uint8, (0, 10)) == "contrast_limits"
    assert resolve_method("percentile", np.uint8) == "percentile"


# --- Normalization -------------------------------------------------------------------------


def test_normalization_apply_matches_prepare_image():
    image = channel_stack(5)
    norm = Normalization(method="percentile", percentiles=[2, 98], channels=[4, 0])
    np.testing.assert_array_equal(
        norm.apply(image), prepare_image(image, percentiles=(2, 98), channels=[4, 0])
    )
    assert norm.channels == (4, 0) and norm.percentiles == (2.0, 98.0)
    hash(norm)
    with pytest.raises(dataclasses.FrozenInstanceError):
        norm.method = "none"  # type: ignore[misc]


def test_normalization_apply_with_rgb_and_per_channel_limits():
    image = np.full((3, 4, 3), 100, dtype=np.uint16)
    norm = Normalization(contrast_limits=[[0, 100], [0, 200], [100, 300]])
    assert norm.contrast_limits == ((0.0, 100.0), (0.0, 200.0), (100.0, 300.0))
    np.testing.assert_array_equal(norm.apply(image, rgb=True)[0, 0], [255, 128, 0])


def test_normalization_describe():
    assert Normalization(contrast_limits=(0, 4095)).describe() == "contrast limits 0-4095"
    assert Normalization(method="percentile").describe() == "percentile 1-99.8"
    assert Normalization().describe(np.uint16) == "percentile 1-99.8"
    assert Normalization().describe(np.uint8) == "none (values as they are)"
    assert Normalization().describe() == "auto (uint8 as is, else percentile 1-99.8)"
    assert (
        Normalization(contrast_limits=(-1000, 1000), channel_axis=0, channels=(4, 0)).describe()
        == "contrast limits -1000 to 1000; channel axis 0; channels 4, 0"
    )
    assert (
        Normalization(contrast_limits=((0, 1), (2.5, 10))).describe()
        == "contrast limits 0-1, 2.5-10"
    )


def test_normalization_validates_method():
    with pytest.raises(ImageError, match="Unknown normalization method"):
        Normalization(method="fancy")  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="needs contrast_limits"):
        Normalization(method="contrast_limits")


# --- a real microscopy image ---------------------------------------------------------------


@pytest.mark.skipif(not REAL_IMAGE.exists(), reason="shared Usiigaci sample image not present")
def test_real_phase_contrast_image():
    import tifffile

    image = tifffile.imread(REAL_IMAGE)
    assert image.dtype == np.uint16 and image.shape == (1022, 1024)
    out = grey(prepared(image))
    assert out.shape[:2] == (1022, 1024)
    counts = np.bincount(out.ravel(), minlength=256)
    assert np.count_nonzero(counts) > 100  # uses most of the 8-bit range
    assert 0.002 < counts[0] / out.size < 0.05  # about 1 % clipped to black
    assert 0.0005 < counts[255] / out.size < 0.02  # about 0.2 % clipped to white
