"""Known-answer tests of napari_sam.core.label_ids."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.errors import LabelIdError
from napari_sam.core.label_ids import highest_id, id_limit, new_ids


@pytest.mark.parametrize(
    ("dtype", "limit"),
    [
        (np.uint8, 255),
        (np.int8, 127),
        (np.uint16, 65535),
        (np.int32, 2**31 - 1),
        (np.uint64, 2**64 - 1),
        (np.bool_, 1),
    ],
)
def test_id_limit(dtype, limit):
    assert id_limit(dtype) == limit


def test_id_limit_rejects_floats():
    with pytest.raises(LabelIdError, match="must be integers, not float32"):
        id_limit(np.float32)


def test_highest_id():
    assert highest_id(np.zeros((0, 4), np.uint8)) == 0
    assert highest_id(np.array([[-5, -1]], np.int8)) == 0
    assert highest_id(np.array([[3, 250]], np.uint8)) == 250
    assert highest_id(np.array([2**64 - 2], np.uint64)) == 2**64 - 2


def test_new_ids_up_to_the_limit_then_refused():
    assert list(new_ids(np.uint8, 252, 3)) == [253, 254, 255]
    assert list(new_ids(np.int8, -7, 2)) == [1, 2]
    assert list(new_ids(np.uint8, 255, 0)) == []
    with pytest.raises(LabelIdError, match=r"ids 254 to 256\. Nothing was written: use int32"):
        new_ids(np.uint8, 253, 3, target="the mask", hint="use int32")
    with pytest.raises(LabelIdError, match=r"^the mask is int16 \(ids up to 32767\)"):
        new_ids(np.int16, 32767, 1, target="the mask")
