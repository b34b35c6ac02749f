"""Planes of lazy arrays read region by region; label volumes that cost what is written."""

from __future__ import annotations

import numpy as np
import pytest
from read_log import ReadLog

from napari_sam.core.label_ids import highest_id
from napari_sam.core.lazy_arrays import (
    DENSE_LABELS_BYTES,
    LABEL_CHUNK,
    REGION,
    chunk_shape,
    empty_labels,
    read_plane,
)


def volume(shape=(3, 2500, 2100), dtype=np.uint16) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)


def test_numpy_planes_are_views():
    data = volume((3, 40, 50))
    plane = read_plane(data, (1, slice(None), slice(None)), (1, 2))
    assert np.shares_memory(plane, data)
    np.testing.assert_array_equal(plane, data[1])


def test_a_lazy_plane_is_read_region_by_region_and_never_whole():
    data = volume()
    lazy = ReadLog(data)  # np.asarray(lazy) raises
    plane = read_plane(lazy, (2, slice(None), slice(None)), (1, 2))
    np.testing.assert_array_equal(plane, data[2])
    assert plane.dtype == np.uint16 and plane.flags.c_contiguous
    # Before: one read of the whole plane (5.25 M pixels). Now regions of REGION^2 at most,
    # each read once, all of them on plane 2.
    assert lazy.largest_read() <= REGION * REGION
    assert sum(n for _, n, _ in lazy.reads) == data[2].size
    assert all(key[0] == 2 for key, _, _ in lazy.reads)


def test_regions_are_whole_chunks():
    data = volume((2, 1000, 900))
    lazy = ReadLog(data, chunks=(1, 300, 700))
    plane = read_plane(lazy, (0, slice(None), slice(None)), (1, 2))
    np.testing.assert_array_equal(plane, data[0])
    for key, _, _ in lazy.reads:
        rows, cols = key[1], key[2]
        assert rows.start % 300 == 0 and (rows.stop - rows.start) in (1200, 1000)
        assert cols.start % 700 == 0
    assert chunk_shape(lazy) == (1, 300, 700)


def test_transposed_axes_and_rgb_planes():
    rgb = volume((4, 30, 20, 3), np.uint8)
    lazy = ReadLog(rgb)
    plane = read_plane(lazy, (1, slice(None), slice(None), slice(None)), (1, 2))
    np.testing.assert_array_equal(plane, rgb[1])
    # A plane along axes 0 and 2 (the viewer shows z and x).
    other = read_plane(ReadLog(rgb), (slice(None), 5, slice(None), slice(None)), (2, 0))
    np.testing.assert_array_equal(other, rgb[:, 5])
    with pytest.raises(ValueError, match="one index or slice"):
        read_plane(lazy, (1, slice(0, 3), slice(None), slice(None)), (1, 2))
    np.testing.assert_array_equal(read_plane(ReadLog(rgb), (2,), (1, 2)), rgb[2])


def test_dask_plane_is_computed_a_region_at_a_time():
    da = pytest.importorskip("dask.array")
    from dask.callbacks import Callback

    data = da.from_array(volume((3, 2048, 2048)), chunks=(1, 512, 512)) + 1
    chunks_per_compute = []

    class Count(Callback):
        def _start(self, dsk):
            chunks_per_compute.append(0)

        def _pretask(self, key, dsk, state):
            if isinstance(key, tuple) and key[0].startswith("add"):
                chunks_per_compute[-1] += 1

    with Count():
        plane = read_plane(data, (1, slice(None), slice(None)), (1, 2))
    np.testing.assert_array_equal(plane, volume((3, 2048, 2048))[1] + 1)
    # np.asarray(data[1]) computes all 16 chunks of the plane at once (and then copies
    # them into the result); here 4 chunks (a 1024 x 1024 region) at a time.
    assert sum(chunks_per_compute) == 16 and max(chunks_per_compute) == 4


def test_highest_id_of_a_lazy_stack_reads_one_plane_at_a_time():
    data = np.zeros((4, 300, 200), np.int32)
    data[2, 10, 10] = 7
    data[3, 5, 5] = 3
    lazy = ReadLog(data)
    # Before: np.max(lazy) loaded the whole volume (ReadLog refuses).
    assert highest_id(lazy) == 7
    assert lazy.largest_read() == 300 * 200


def test_empty_labels_of_a_plane_or_small_stack_is_numpy_of_a_large_stack_is_lazy():
    flat = empty_labels((30, 40))
    assert isinstance(flat, np.ndarray) and flat.dtype == np.int32 and not flat.any()
    small = empty_labels((10, 4096, 4096))  # 640 MiB, reserved but untouched
    assert isinstance(small, np.ndarray) and small.shape == (10, 4096, 4096)
    del small
    # 64 GiB as a NumPy array: np.zeros fails on most machines (Linux refuses more than
    # memory and swap), so the stack's labels are lazy.
    stack = empty_labels((50, 20, 4096, 4096))
    assert not isinstance(stack, np.ndarray)
    assert stack.shape == (50, 20, 4096, 4096) and stack.dtype == np.int32
    assert stack.chunks == (1, 1, LABEL_CHUNK, LABEL_CHUNK)
    assert stack.nchunks_initialized == 0 and stack.nbytes > DENSE_LABELS_BYTES
    stack[3, 7, 100:200, 1100:1200] = 5  # one chunk
    assert stack.nchunks_initialized == 1
    assert int(stack[3, 7, 150, 1150]) == 5 and int(stack[3, 6, 150, 1150]) == 0
    # napari paints with fancy indices; zeroed chunks are dropped again.
    idx = (np.array([3, 3]), np.array([7, 7]), np.array([100, 300]), np.array([1100, 1101]))
    assert stack[idx].tolist() == [5, 0]
    stack[3, 7, 100:200, 1100:1200] = 0
    assert stack.nchunks_initialized == 0


# ------------------------------------------------------------------------------------------
# Large TIFF files: mapped, not read
# ------------------------------------------------------------------------------------------


def test_large_plain_tiff_is_mapped_copy_on_write(tmp_path, monkeypatch):
    import tifffile

    from napari_sam.core import lazy_arrays
    from napari_sam.core.io import read_image
    from napari_sam.core.volume_io import read_volume

    data = volume((5, 64, 48))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX"})
    small = read_image(path)
    assert type(small) is np.ndarray  # below MAP_BYTES: read into memory, as before
    monkeypatch.setattr(lazy_arrays, "MAP_BYTES", data.nbytes)
    mapped = read_image(path)
    # Before: the whole file was decoded into memory.
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, data)
    mapped[0, 0, 0] = 9  # copy-on-write: the array is writable, the file never changes
    np.testing.assert_array_equal(tifffile.imread(path), data)
    vol = read_volume(path)
    assert isinstance(vol.data, np.memmap) and vol.geometry.axes == "zyx"
    np.testing.assert_array_equal(vol.data, data)
    assert vol.geometry.spacing[1:] == (0.5, 0.5)


def test_compressed_tiff_is_read(tmp_path, monkeypatch):
    import tifffile

    from napari_sam.core import lazy_arrays
    from napari_sam.core.io import read_image

    monkeypatch.setattr(lazy_arrays, "MAP_BYTES", 0)
    data = volume((3, 40, 30))
    tifffile.imwrite(tmp_path / "z.tif", data, compression="zlib", photometric="minisblack")
    out = read_image(tmp_path / "z.tif")
    assert type(out) is np.ndarray  # a compressed file cannot be mapped
    np.testing.assert_array_equal(out, data)


def test_samples_of_mapped_data_read_whole_rows_only():
    from napari_sam.core.lazy_arrays import sample_values

    data = volume((20, 500, 400))
    lazy = ReadLog(data)
    sample = sample_values(lazy, 50_000)
    assert 50_000 <= sample.size <= 55_000 and sample.dtype == data.dtype
    # Only the rows of the sample were read (a strided sample reads every page).
    assert sum(n for _, n, _ in lazy.reads) == sample.size
    # (plane, band of rows): 8 planes, 4 bands of whole consecutive rows in each.
    assert len(lazy.reads) == 8 * 4
    assert all(isinstance(key[0], int) and key[1].step is None for key, _, _ in lazy.reads)
    rgb = ReadLog(volume((200, 300, 3), np.uint8))
    assert sample_values(rgb, 1000).size == 8 * 300 * 3  # at least 8 rows
    assert len(rgb.reads) == 4  # bands of pixel rows, not single pixels
    assert sample_values(data[:2, :3], 100).tolist() == data[:2, :3].reshape(-1).tolist()


def test_volume_statistics_of_a_mapped_file_are_sampled(tmp_path):
    from napari_sam.core.volume_io import looks_like_labels
    from napari_sam.core.windows import volume_limits

    rng = np.random.default_rng(0)
    data = rng.normal(1000, 100, (12, 700, 600)).clip(0).astype(np.uint16)
    path = tmp_path / "v.raw"
    data.tofile(path)
    mapped = np.memmap(path, np.uint16, "c", shape=data.shape)
    lo, hi = volume_limits(mapped)
    ref = volume_limits(data)
    assert abs(lo - ref[0]) < 5 and abs(hi - ref[1]) < 5
    assert not looks_like_labels(mapped)
    labels = np.zeros(data.shape, np.uint16)
    labels[3, 100:200, 50:90] = 2
    labels.tofile(path)
    assert looks_like_labels(np.memmap(path, np.uint16, "c", shape=data.shape))
