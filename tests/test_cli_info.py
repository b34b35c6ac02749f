"""``napari-sam info`` and the per-operation ``--precision`` forms of the command line."""

from __future__ import annotations

import json

import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.core import calibration
from napari_sam.core.calibration import Calibration
from napari_sam.core.checkpoints import save_checkpoint


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "_MEMO", {})
    return tmp_path / "cache"


@pytest.fixture
def measured(monkeypatch):
    """Known calibration numbers: bf16 linear layers faster, bf16 attention slower."""
    runs = []

    def fake(threads=None):
        runs.append(threads)
        info = calibration.cpu_info()
        seconds = {
            "linear": {"fp32": 4.0, "bf16": 2.0, "int8": 5.0},
            "attention": {"fp32": 2.0, "bf16": 3.8},
        }
        return Calibration(calibration.machine_key(info, threads), {}, seconds, 0.25)

    monkeypatch.setattr(calibration, "calibrate", fake)
    return runs


def test_info_prints_every_section(capsys, measured, cache):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("[versions]", "[cpu]", "[gpu]", "[precision]"):
        assert section in out
    assert "torch kernels" in out and "threads" in out and "features" in out
    assert "auto on the CPU linear=bf16,attention=fp32,neck=fp32" in out
    assert "  linear     fp32    4.00  bf16    2.00  int8    5.00" in out
    assert "calibration     0.25 s" in out
    assert len(measured) == 1
    stored = json.loads((cache / calibration.RECORD_NAME).read_text(encoding="utf-8"))
    assert len(stored["entries"]) == 1
    assert main(["info"]) == 0  # remembered: not measured again
    assert len(measured) == 1
    assert main(["info", "--recalibrate"]) == 0
    assert len(measured) == 2


def test_per_operation_precision_on_the_command_line(capsys, tmp_path, small_model, small_arch):
    ckpt = tmp_path / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt)
    img = tmp_path / "cells.tif"
    tifffile.imwrite(img, (small_model.sam.pixel_mean.new_zeros(32, 48).numpy()).astype("uint8"))
    args = ["embed", str(img), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert main([*args, "--precision", "attention=fp32,linear=bf16"]) == 0
    err = capsys.readouterr().err
    assert "-linbf16-attfp32-neckfp32, cpu, linear=bf16,attention=fp32,neck=fp32)" in err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--precision", "attention=int8"])
    assert exc.value.code == 2
    assert "attention='int8' is not supported" in capsys.readouterr().err
    assert main([*args, "--precision", "linear=bf16", "--no-fast"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs napari-sam's fast modules" in err
