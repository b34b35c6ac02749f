"""Device resolution."""

from __future__ import annotations

import pytest
import torch

from napari_sam.core.device import resolve_device
from napari_sam.core.errors import DeviceError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")


def test_cpu():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"


@no_cuda
def test_auto_is_cpu_without_cuda():
    assert resolve_device("auto") == "cpu"
    assert resolve_device() == "cpu"


@no_cuda
@pytest.mark.parametrize("req", ["cuda", "cuda:0"])
def test_cuda_unavailable(req):
    with pytest.raises(DeviceError) as exc:
        resolve_device(req)
    msg = str(exc.value)
    assert "CUDA was requested" in msg
    assert "--device cpu" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("req", ["gpu", "cuda:x", "cuda:-1", "tpu", ""])
def test_unknown(req):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(req)


def test_mps_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


def test_mps_only_when_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("mps") == "mps"


def test_with_fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("value", ["", "-1", " -1,0 "])
def test_hidden_gpus_are_not_probed(monkeypatch, value):
    def probe():
        raise AssertionError("CUDA probed although CUDA_VISIBLE_DEVICES hides every GPU")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    monkeypatch.setattr(torch.cuda, "is_available", probe)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build, as far as we know
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match=r"CUDA_VISIBLE_DEVICES=.* hides every GPU"):
        resolve_device("cuda")


def test_visible_gpus_are_probed(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_thread_count_from_the_environment(monkeypatch):
    import torch

    from napari_sam.core.device import configure_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("NAPARI_SAM_THREADS", "1")
        assert configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("NAPARI_SAM_THREADS")
        assert configure_threads() == torch.get_num_threads() == 1  # unset: left as it is
        for bad in ("0", "two", "-3"):
            monkeypatch.setenv("NAPARI_SAM_THREADS", bad)
            with pytest.raises(DeviceError, match="not a positive number of threads"):
                configure_threads()
    finally:
        torch.set_num_threads(before)
