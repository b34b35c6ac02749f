"""CT windows and the once-per-volume normalisation of scans."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.errors import ImageError
from napari_sam.core.normalize import Normalization
from napari_sam.core.windows import (
    CT_WINDOWS,
    looks_like_ct,
    parse_window,
    volume_limits,
    volume_normalization,
    window_limits,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lung", (1500.0, -600.0)),
        ("Soft_Tissue", (400.0, 40.0)),
        ("soft tissue", (400.0, 40.0)),
        ("BONE", (1800.0, 400.0)),
        ("brain", (80.0, 40.0)),
        ("400,40", (400.0, 40.0)),
        (" 1500 , -600 ", (1500.0, -600.0)),
    ],
)
def test_parse_window(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lungs", r"Unknown window 'lungs': give WIDTH,LEVEL .* soft-tissue, lung"),
        ("400", "Unknown window"),
        ("400,40,3", "Unknown window"),
        ("0,40", "width must be a positive"),
        ("-10,40", "width must be a positive"),
        ("nan,40", "width must be a positive"),
    ],
)
def test_parse_window_errors(text, match):
    with pytest.raises(ImageError, match=match):
        parse_window(text)


def test_window_limits():
    assert window_limits(*CT_WINDOWS["soft-tissue"]) == (-160.0, 240.0)
    assert window_limits(*CT_WINDOWS["lung"]) == (-1350.0, 150.0)


def test_looks_like_ct():
    ct = np.full((3, 8, 8), -1024, np.int16)
    ct[:, 2:6, 2:6] = 60
    ct[1, 4, 4] = 700
    assert looks_like_ct(ct)
    assert not looks_like_ct(np.abs(ct))  # MRI-like: no air at -1000
    assert not looks_like_ct(np.full((2, 2), -1024, np.int16))  # no tissue
    assert looks_like_ct(np.zeros((2, 2)), modality="CT")
    assert not looks_like_ct(ct, modality="MR")
    assert not looks_like_ct(np.zeros((2, 2), bool))


def test_volume_limits_are_the_volume_percentiles():
    data = np.random.default_rng(0).normal(100, 20, (6, 30, 40)).astype(np.float32)
    data[0, 0, 0] = np.nan
    finite = data[np.isfinite(data)]
    lo, hi = volume_limits(data, (2.0, 98.0))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(finite, [2.0, 98.0])))
    assert volume_limits(np.full((3, 3), 5.0)) == (5.0, 5.0)
    assert volume_limits(np.full((3, 3), np.nan)) == (0.0, 0.0)


def test_large_volumes_are_sampled(monkeypatch):
    import napari_sam.core.windows as windows

    monkeypatch.setattr(windows, "MAX_SAMPLES", 1000)
    data = np.linspace(0, 1, 50 * 40 * 30).reshape(50, 40, 30)
    lo, hi = volume_limits(data, (0.0, 100.0))
    assert lo == 0.0 and hi > 0.99  # an even stride reaches both ends
    channels = np.stack([data, data * 2], axis=-1)[..., 1]  # a strided (non-contiguous) view
    assert volume_limits(channels, (0.0, 100.0))[1] > 1.98


def test_one_normalisation_for_all_slices():
    """Per slice, percentiles stretch a dark slice to full range; per volume it stays dark."""
    vol = np.zeros((2, 20, 20), np.uint16)
    vol[0] = np.arange(400).reshape(20, 20)  # values 0..399
    vol[1] = np.arange(400).reshape(20, 20) * 10  # values 0..3990
    norm = volume_normalization(vol, Normalization(percentiles=(0.0, 100.0)))
    assert norm.method == "contrast_limits" and norm.contrast_limits == (0.0, 3990.0)
    dark, bright = norm.apply(vol[0]), norm.apply(vol[1])
    assert bright.max() == 255 and dark.max() == round(399 * 255 / 3990)
    # Slice by slice, both slices would reach 255:
    assert Normalization(percentiles=(0.0, 100.0)).apply(vol[0]).max() == 255


def test_window_becomes_the_contrast_limits():
    vol = np.zeros((2, 4, 4), np.int16)
    norm = volume_normalization(vol, Normalization(), window=parse_window("lung"))
    assert norm.contrast_limits == (-1350.0, 150.0)
    plane = np.array([[-1350, -600], [150, 1000]], np.int16)
    np.testing.assert_array_equal(norm.apply(plane)[..., 0], [[0, 128], [255, 255]])


@pytest.mark.parametrize(
    "base", [Normalization(contrast_limits=(0, 10)), Normalization(method="percentile")]
)
def test_window_conflicts(base):
    with pytest.raises(ImageError, match="A CT window sets the contrast limits"):
        volume_normalization(np.zeros((2, 3, 3)), base, window=(400, 40))


@pytest.mark.parametrize(
    ("base", "dtype"),
    [
        (Normalization(), np.uint8),  # auto: uint8 as is
        (Normalization(method="none"), np.float32),
        (Normalization(contrast_limits=(0, 100)), np.uint16),
    ],
)
def test_settings_that_are_already_per_volume_are_kept(base, dtype):
    assert volume_normalization(np.ones((2, 3, 3), dtype), base) is base


def test_channels_get_one_pair_each_and_rgb_one_for_all():
    vol = np.zeros((2, 5, 5, 3), np.uint16)
    vol[..., 0] = 100
    vol[..., 1] = np.arange(25).reshape(5, 5)
    vol[..., 2] = 1000
    vol[0, 0, 0, 2] = 0
    per = volume_normalization(vol, Normalization(percentiles=(0, 100)), channels_last=True)
    assert per.contrast_limits == ((100.0, 100.0), (0.0, 24.0), (0.0, 1000.0))
    chosen = volume_normalization(
        vol, Normalization(percentiles=(0, 100), channels=(2, 1)), channels_last=True
    )
    assert chosen.contrast_limits == ((0.0, 1000.0), (0.0, 24.0))
    rgb = volume_normalization(
        vol, Normalization(percentiles=(0, 100)), channels_last=True, rgb=True
    )
    assert rgb.contrast_limits == (0.0, 1000.0)
    with pytest.raises(ImageError, match="the volume has 3"):
        volume_normalization(vol, Normalization(channels=(5,)), channels_last=True)
