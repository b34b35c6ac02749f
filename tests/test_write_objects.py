"""Label ids written into napari Labels layers never wrap around (no Qt, no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_sam._layers import Plane, write_objects
from napari_sam.core.errors import LabelIdError

PLANE = Plane(axes=(0, 1), index=(None, None), shape=(8, 8))


def box(r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    mask = np.zeros((8, 8), bool)
    mask[r0:r1, c0:c1] = True
    return mask


def refused(
    labels: Labels,
    masks: list[np.ndarray],
    *,
    overwrite: bool,
    match: str,
    after_undo: np.ndarray | None = None,
) -> None:
    """Check that writing ``masks`` raises and leaves data and undo history untouched.

    ``after_undo``: the data one undo step back (default: unchanged, no earlier step).
    """
    before = labels.data.copy()
    with pytest.raises(LabelIdError, match=match):
        write_objects(labels, PLANE, masks, overwrite=overwrite)
    np.testing.assert_array_equal(labels.data, before)
    assert labels.data.dtype == before.dtype
    labels.undo()  # the refused write recorded nothing: undo takes back the step before
    np.testing.assert_array_equal(labels.data, before if after_undo is None else after_undo)


def test_uint8_full_with_overwrite_keeps_the_object_under_the_new_one():
    data = np.zeros((8, 8), np.uint8)
    data[2:6, 2:6] = 255  # the nucleus the user boxes again, with overwrite ticked
    labels = Labels(data)
    # Before the fix id 256 was cast to 0: 16 labelled pixels became background.
    refused(labels, [box(2, 2, 6, 6)], overwrite=True, match=r"uint8 \(ids up to 255\)")
    assert (labels.data == 255).sum() == 16


def test_uint8_full_without_overwrite_does_not_write_a_vanishing_object():
    data = np.zeros((8, 8), np.uint8)
    data[0, 0] = 255
    labels = Labels(data, name="nuclei")
    # Before the fix the new object got 256 -> 0: it vanished and the commit reported it.
    refused(labels, [box(4, 4, 8, 8)], overwrite=False, match="'nuclei'.*would need id 256")


def test_uint8_two_objects_past_the_end_would_merge_into_object_1():
    data = np.zeros((8, 8), np.uint8)
    data[0, 0], data[0, 7] = 1, 254
    labels = Labels(data)
    # 255 fits, 256 -> 0 and 257 -> 1 do not: 257 used to merge into object 1.
    refused(
        labels,
        [box(2, 0, 4, 3), box(2, 4, 4, 7), box(5, 0, 8, 3)],
        overwrite=False,
        match="ids 255 to 257.*Convert data type > int32",
    )


def test_uint16_up_to_its_last_id_then_refused():
    data = np.zeros((8, 8), np.uint16)
    data[0, 0] = 65534
    labels = Labels(data.copy())
    written = write_objects(labels, PLANE, [box(2, 2, 4, 4)], overwrite=False)
    assert [(w.label, w.pixels) for w in written] == [(65535, 4)]
    assert (labels.data == 65535).sum() == 4
    refused(
        labels, [box(5, 5, 7, 7)], overwrite=False, match="would need id 65536", after_undo=data
    )


def test_int8_refused_past_127_and_negative_ids_do_not_lower_new_ones():
    data = np.zeros((8, 8), np.int8)
    data[0, 0] = 127
    refused(Labels(data), [box(2, 2, 4, 4)], overwrite=False, match=r"int8 \(ids up to 127\)")
    data[0, 0] = -3  # only a negative label: the new object is 1, not -2
    labels = Labels(data)
    written = write_objects(labels, PLANE, [box(2, 2, 4, 4)], overwrite=False)
    assert written[0].label == 1 and labels.data[2, 2] == 1 and labels.data[0, 0] == -3


def test_int32_ids_follow_the_largest_and_keep_the_dtype():
    data = np.zeros((8, 8), np.int32)
    data[0, 0] = 70_000
    labels = Labels(data)
    written = write_objects(labels, PLANE, [box(2, 2, 4, 4), box(5, 5, 8, 8)], overwrite=False)
    assert [w.label for w in written] == [70_001, 70_002]
    assert labels.data.dtype == np.int32
    assert labels.data[3, 3] == 70_001 and labels.data[6, 6] == 70_002


def test_uint64_ids_above_int64_are_exact():
    data = np.zeros((8, 8), np.uint64)
    data[0, 0] = 2**63 + 5
    labels = Labels(data)
    written = write_objects(labels, PLANE, [box(2, 2, 4, 4)], overwrite=False)
    assert written[0].label == 2**63 + 6 and int(labels.data[2, 2]) == 2**63 + 6


def test_a_known_highest_id_is_used_and_a_stale_one_is_not():
    data = np.zeros((3, 8, 8), np.int32)
    data[0, 0, 0] = 4  # on another plane
    data[1, 7, 7] = 2
    labels = Labels(data)
    plane = Plane(axes=(1, 2), index=(1, None, None), shape=(8, 8))
    # A caller that tracks the largest id (9, say, from ids given out earlier) saves the scan.
    written = write_objects(labels, plane, [box(0, 0, 2, 2)], overwrite=False, highest=9)
    assert written[0].label == 10
    # A value below an id on the plane itself is stale: the layer is scanned instead.
    written = write_objects(labels, plane, [box(3, 3, 5, 5)], overwrite=False, highest=1)
    assert written[0].label == 11
