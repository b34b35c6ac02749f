"""Session records: JSON round trips, schema and damage checks, mask encoding, image hashes."""

from __future__ import annotations

import json
import re
from typing import ClassVar

import numpy as np
import pytest

from napari_sam.core import session_record as sr
from napari_sam.core import session_types
from napari_sam.core.commits import commit_pixels, draw_objects, write_commit
from napari_sam.core.errors import NapariSamError, SessionError
from napari_sam.core.mask_rle import decode_mask, encode_mask
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.session_record import (
    AutoRunRecord,
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
    image_sha256,
)

MODEL = ModelRecord(
    name="vit_b",
    checkpoint_sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    checkpoint="/cache/sam_vit_b_01ec64.pth",
    model_id="vit_b-ec2df62732614e57",
    precision="fp32",
    fast=True,
    device="cpu",
    architecture={"encoder_embed_dim": 768, "encoder_global_attn_indexes": [2, 5, 8, 11]},
)


def _mask(shape, box):
    m = np.zeros(shape, bool)
    r0, c0, r1, c1 = box
    m[r0:r1, c0:c1] = True
    return m


def make_record() -> SessionRecord:
    """A stack session: a 2-box commit on z=1, a click on a transposed plane, an auto run."""
    image = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    record = SessionRecord(ImageIdentity.from_array(image, source="/data/stack.tif"))
    boxes = make_prompts([[5, 5]], [0], [[2, 2, 8, 10], [10, 12, 18, 25]])
    record.append(
        CommitRecord.build(
            target="SAM labels",
            plane=PlaneRecord((1, 2), (1, None, None)),
            overwrite=False,
            model=MODEL,
            normalization=Normalization(method="percentile", percentiles=(2, 98)),
            prompts=[boxes],
            masks=[_mask((20, 30), (2, 2, 9, 11)), _mask((20, 30), (10, 12, 19, 26))],
            candidates=[0, 0],
            scores=[0.91, 0.87],
            sources=["box 1", "box 2"],
            labels=[1, 2],
            pixels=[63, 126],
        )
    )
    record.append(
        CommitRecord.build(
            target="SAM labels",
            plane=PlaneRecord((2, 1), (2, None, None)),  # rows are the image's columns
            overwrite=True,
            model=MODEL,
            normalization=Normalization(method="contrast_limits", contrast_limits=(0, 1000)),
            prompts=[make_prompts([[4, 6]])],
            masks=[_mask((30, 20), (0, 0, 5, 5))],
            candidates=[2],
            scores=[0.5],
            sources=["points"],
            labels=[None],
            pixels=[0],
        )
    )
    from napari_sam.core.automatic import AutoParams

    record.append(
        AutoRunRecord.build(
            target="stack SAM auto",
            plane=PlaneRecord((1, 2), (0, None, None)),
            model=MODEL,
            normalization=Normalization(),
            params=AutoParams(points_per_side=8),
            labels=np.tile(np.arange(30, dtype=np.int32) % 3, (20, 1)),
        )
    )
    return record


def test_json_round_trip_keeps_everything():
    record = make_record()
    text = record.to_json()
    again = SessionRecord.from_json(text)
    assert again.to_json() == text
    assert again.image == record.image
    assert again.image.labels_shape == (3, 20, 30)
    assert [e.kind for e in again.entries] == ["commit", "commit", "auto"]
    first, second, auto = again.entries
    assert first.plane == PlaneRecord((1, 2), (1, None, None))
    assert second.plane.axes == (2, 1) and not first.overwrite and second.overwrite
    np.testing.assert_array_equal(first.calls[0].prompts.boxes, [[2, 2, 8, 10], [10, 12, 18, 25]])
    np.testing.assert_array_equal(first.calls[0].prompts.point_labels, [0])
    assert [o.label for o in again.commits[0].objects] == [1, 2]
    assert second.objects[0].label is None and second.objects[0].candidate == 2
    assert first.normalization == Normalization(method="percentile", percentiles=(2, 98))
    assert second.normalization.contrast_limits == (0.0, 1000.0)
    assert first.model == MODEL
    assert auto.params["points_per_side"] == 8 and auto.n_objects == 2
    np.testing.assert_array_equal(
        decode_mask(first.objects[1].mask, (20, 30)), _mask((20, 30), (10, 12, 19, 26))
    )
    assert again.targets() == ["SAM labels", "stack SAM auto"]


def test_file_is_readable_json_with_format_and_version(tmp_path):
    path = make_record().save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == ("napari-sam-session", 1)
    assert data["entries"][0]["normalization"]["description"] == "percentile 2-98"
    assert SessionRecord.load(path).to_json() == path.read_text()


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((7, 9), bool),
        np.ones((7, 9), bool),
        _mask((7, 9), (0, 0, 1, 1)),  # starts with True
        _mask((7, 9), (6, 8, 7, 9)),  # ends with True
        np.random.default_rng(1).random((64, 48)) > 0.5,
    ],
)
def test_mask_encoding_is_lossless(mask):
    text = encode_mask(mask)
    assert text.isascii()
    np.testing.assert_array_equal(decode_mask(text, mask.shape), mask)


def test_mask_encoding_is_compact():
    disc = np.hypot(*np.mgrid[-512:512, -512:512]) < 200
    assert len(encode_mask(disc)) < 2000  # a 1 MP plane with one object: ~1 kB


def test_damaged_masks_are_session_errors():
    with pytest.raises(SessionError, match="damaged"):
        decode_mask("not base64 !!", (4, 4))
    with pytest.raises(SessionError, match="does not fit the 5x5 plane"):
        decode_mask(encode_mask(np.ones((4, 4), bool)), (5, 5))


def test_image_hash_depends_on_values_shape_and_dtype_only():
    a = np.random.default_rng(0).integers(0, 4000, (4, 16, 24)).astype(np.uint16)
    h = image_sha256(a)
    assert image_sha256(a.astype(">u2")) == h  # byte order
    assert image_sha256(np.asfortranarray(a)) == h  # memory layout
    assert image_sha256(a.copy()) == h
    b = a.copy()
    b[3, 15, 23] += 1
    assert image_sha256(b) != h
    assert image_sha256(a.reshape(4, 24, 16)) != h
    assert image_sha256(a.astype(np.int32)) != h


def test_image_hash_of_large_or_lazy_arrays_reads_slices(monkeypatch):
    a = np.random.default_rng(0).integers(0, 255, (5, 40, 30), dtype=np.uint8)
    whole = image_sha256(a)
    # Every plane is "too big" to hash at once.
    monkeypatch.setattr(session_types, "_HASH_CHUNK", 100)

    class Lazy:  # like a dask or zarr array: indexing reads
        shape, dtype = a.shape, a.dtype
        reads: ClassVar[list] = []

        def __getitem__(self, key):
            out = a[key]
            Lazy.reads.append(out.nbytes)
            return out

    assert image_sha256(Lazy()) == whole
    assert len(Lazy.reads) == 5 * 14 and max(Lazy.reads) <= 100  # bands of 3 rows of 30 B
    assert image_sha256(a) == whole


def test_image_hash_of_a_chunked_lazy_plane_reads_each_chunk_once(monkeypatch):
    a = np.random.default_rng(1).integers(0, 4000, (100, 70), dtype=np.uint16)
    whole = image_sha256(a)
    monkeypatch.setattr(session_types, "_HASH_CHUNK", 4000)  # 28 rows of 140 B

    class Zarrish:  # chunks of 16 x 32: a row read would decompress 3 chunks for 140 B
        shape, dtype, chunks = a.shape, a.dtype, (16, 32)
        keys: ClassVar[list] = []

        def __getitem__(self, key):
            Zarrish.keys.append(key)
            return a[key]

    assert image_sha256(Zarrish()) == whole
    # Bands of 16 rows (whole chunks; 28 would cut chunks), each row of chunks read once.
    assert Zarrish.keys == [(slice(r, min(r + 16, 100)),) for r in range(0, 100, 16)]


def test_identity_of_rgb_image_has_labels_shape_without_colours():
    ident = ImageIdentity.from_array(np.zeros((10, 12, 3), np.uint8), rgb=True)
    assert ident.labels_shape == (10, 12) and ident.dtype == "uint8"


def test_plane_take_and_view_follow_the_axis_order():
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    plane = PlaneRecord((2, 1), (1, None, None))
    np.testing.assert_array_equal(plane.take(data), data[1].T)
    full = np.zeros((2, 3, 4), np.int32)
    plane.view(full)[0, 2] = 7  # row 0 = column 0 of the data, column 2 = data row 2
    assert full[1, 2, 0] == 7 and full.sum() == 7
    assert plane.describe() == "axis 0=1"
    assert PlaneRecord((0, 1), (None, None)).describe() == ""


@pytest.mark.parametrize(
    "plane",
    [
        PlaneRecord((1, 2), (3, None, None)),  # index past the end
        PlaneRecord((1, 2), (None, None, None)),  # no index on a sliced axis
        PlaneRecord((1, 2), (0, None)),  # wrong dimensionality
        PlaneRecord((1, 1), (0, None, 1)),
    ],
)
def test_append_refuses_planes_outside_the_image(plane):
    record = make_record()
    entry = record.entries[0]
    bad = CommitRecord(
        target=entry.target,
        plane=plane,
        overwrite=False,
        model=MODEL,
        normalization=entry.normalization,
        calls=entry.calls,
    )
    with pytest.raises(SessionError, match="does not exist in an image of shape"):
        record.append(bad)


def test_build_checks_one_value_per_object():
    with pytest.raises(NapariSamError, match="asks for 2 objects"):
        CommitRecord.build(
            target="t",
            plane=PlaneRecord((0, 1), (None, None)),
            overwrite=False,
            model=MODEL,
            normalization=Normalization(),
            prompts=[make_prompts(boxes=[[0, 0, 2, 2], [3, 3, 5, 5]])],
            masks=[np.zeros((8, 8), bool)],
            candidates=[0],
            scores=[0.5],
            sources=["box 1"],
            labels=[1],
            pixels=[4],
        )


# ------------------------------------------------------------------------------------------
# Reading damaged, foreign and newer files
# ------------------------------------------------------------------------------------------


def _data():
    return json.loads(make_record().to_json())


def _error(data) -> str:
    with pytest.raises(SessionError) as info:
        SessionRecord.from_json(json.dumps(data), where="s.json")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_newer_version_asks_to_update():
    data = _data()
    data["version"] = sr.SCHEMA_VERSION + 1
    assert "newer napari-sam" in _error(data) and "update" in _error(data)


@pytest.mark.parametrize("version", [0, "1", None, 1.5])
def test_unknown_versions(version):
    data = _data()
    data["version"] = version
    assert "unknown session format version" in _error(data)


def test_other_json_is_not_a_session():
    assert "not a napari-sam session file" in _error({"format": "something else"})
    assert "must be a JSON object" in _error([1, 2, 3])


@pytest.mark.parametrize("text", ["", "{", b"\xff\xfe", "{'format': 1}"])
def test_not_json_at_all(text):
    with pytest.raises(SessionError, match=r"s\.json is not a napari-sam session file"):
        SessionRecord.from_json(text, where="s.json")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["image"].pop("sha256"), r"image\.sha256 is missing"),
        (lambda d: d["image"].update(shape=[3, 0, 4]), r"image\.shape must be a shape"),
        (
            lambda d: d["entries"][0]["calls"][0]["objects"][1].update(candidate=-1),
            r"entries\[0\]\.calls\[0\]\.objects\[1\]\.candidate must be an index >= 0",
        ),
        (
            lambda d: d["entries"][0]["calls"][0]["objects"].pop(),
            r"entries\[0\]\.calls\[0\]\.objects must hold 2 object",
        ),
        (lambda d: d["entries"][1].update(kind="propagate"), r"'propagate', which this"),
        (lambda d: d["entries"][1]["plane"].update(index=[5, None, None]), r"entries\[1\]: plane"),
        (
            lambda d: d["entries"][0]["calls"][0].update(point_labels=[3]),
            r"entries\[0\]\.calls\[0\]: point labels must be 1",
        ),
        (
            lambda d: d["entries"][0]["model"].update(precision="int8"),
            r"model\.precision must be fp32/bf16/fp16",
        ),
        (
            lambda d: d["entries"][0]["normalization"].update(method="gamma"),
            r"entries\[0\]\.normalization: Unknown normalization method .gamma.",
        ),
        (lambda d: d.update(entries={}), r"entries must be a list"),
    ],
)
def test_damage_is_named_precisely(edit, match):
    data = _data()
    edit(data)
    message = _error(data)
    assert message.startswith("s.json")
    assert re.search(match, message), message


def test_unknown_keys_are_ignored():
    data = _data()
    data["comment"] = "added by hand"
    data["entries"][0]["note"] = 1
    assert len(SessionRecord.from_json(json.dumps(data)).entries) == 3


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(SessionError, match="not found"):
        SessionRecord.load(tmp_path / "nope.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = make_record().save(tmp_path / "s.json")
    before = path.read_bytes()
    record = make_record()

    def disk_full(fd):  # the data is written but cannot be flushed
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(sr.os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            record.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


# ------------------------------------------------------------------------------------------
# How commits become pixels
# ------------------------------------------------------------------------------------------


def test_smaller_objects_are_drawn_over_larger_ones():
    big, small = _mask((6, 6), (0, 0, 6, 6)), _mask((6, 6), (2, 2, 4, 4))
    drawn = draw_objects([small, big], (6, 6))
    assert drawn[3, 3] == 1 and drawn[0, 0] == 2


def test_commit_pixels_keep_existing_labels_unless_overwriting():
    existing = np.zeros((6, 6), np.int32)
    existing[0, :] = 9
    masks = [_mask((6, 6), (0, 0, 3, 6))]
    rows, _, objects = commit_pixels(existing, masks, overwrite=False)
    assert len(rows) == 12 and set(objects) == {0}
    rows, _, _ = commit_pixels(existing, masks, overwrite=True)
    assert len(rows) == 18


def test_write_commit_uses_the_given_ids_and_skips_none():
    plane = np.zeros((6, 6), np.int32)
    masks = [_mask((6, 6), (0, 0, 2, 2)), _mask((6, 6), (4, 4, 6, 6))]
    pixels = write_commit(plane, masks, [7, None], overwrite=False)
    assert pixels.tolist() == [4, 0]
    assert set(np.unique(plane)) == {0, 7}


def test_entry_texts_are_reused_and_follow_changes_to_the_list():
    from napari_sam.core.session_json import dumps, record_to_dict

    record = make_record()
    first = record.to_json()
    assert record.to_json() == first == dumps(record_to_dict(record))  # cached = uncached
    record.entries[0], record.entries[1] = record.entries[1], record.entries[0]
    swapped = record.to_json()
    assert swapped != first and swapped == dumps(record_to_dict(record))
    assert [e["overwrite"] for e in json.loads(swapped)["entries"][:2]] == [True, False]
