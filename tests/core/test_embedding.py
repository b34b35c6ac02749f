"""Image keys, the in-memory cache, the on-disk store and the image encoder run."""

from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest
import torch

from napari_sam.core.embedding import (
    EmbeddingCache,
    EmbeddingStore,
    ImageEmbedding,
    check_not_too_thin,
    check_rgb,
    compute_embedding,
    image_key,
)
from napari_sam.core.errors import Cancelled, ImageError


def fake_embedding(key: str, model_id: str = "m", value: float = 0.0) -> ImageEmbedding:
    return ImageEmbedding(
        features=torch.full((1, 4, 8, 8), value),
        original_size=(10, 20),
        input_size=(512, 1024),
        model_id=model_id,
        key=key,
    )


@pytest.fixture(scope="module")
def rgb(make_image):
    return make_image((200, 300))


@pytest.fixture(scope="module")
def computed(small_model, rgb):
    """The embedding of ``rgb`` and the progress calls made while computing it."""
    calls: list[tuple[int, int]] = []
    emb = compute_embedding(small_model, rgb, progress=lambda d, t: calls.append((d, t)))
    return emb, calls


# --------------------------------------------------------------------------------------------
# image_key
# --------------------------------------------------------------------------------------------


def test_image_key_is_stable_and_content_based():
    a = np.zeros((6, 8, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    assert len(image_key(a)) == 32
    b = a.copy()
    b[5, 7, 2] = 1
    assert image_key(b) != image_key(a)


def test_image_key_depends_on_shape_with_the_same_bytes():
    a = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    assert image_key(a) != image_key(a.reshape(8, 6, 3))


def test_image_key_of_a_view_equals_that_of_its_copy():
    big = np.random.default_rng(1).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    view = big[2:8, 3:9]
    assert not view.flags.c_contiguous
    assert image_key(view) == image_key(view.copy())


# --------------------------------------------------------------------------------------------
# EmbeddingCache
# --------------------------------------------------------------------------------------------


def test_cache_evicts_least_recently_used():
    cache = EmbeddingCache(max_items=2)
    cache.put(fake_embedding("a"))
    cache.put(fake_embedding("b"))
    assert cache.get("m", "a") is not None  # a becomes the most recently used
    cache.put(fake_embedding("c"))  # evicts b, not a
    assert len(cache) == 2
    assert cache.get("m", "b") is None
    assert cache.get("m", "a") is not None
    assert cache.get("m", "c") is not None
    cache.put(fake_embedding("d"))  # a was used before c: a goes
    assert cache.get("m", "a") is None
    assert cache.get("m", "c") is not None


def test_cache_keys_include_the_model():
    cache = EmbeddingCache()
    e1 = fake_embedding("k", "model-1")
    cache.put(e1)
    assert cache.get("model-1", "k") is e1
    assert cache.get("model-2", "k") is None


def test_cache_put_again_replaces_and_refreshes():
    cache = EmbeddingCache(max_items=2)
    cache.put(fake_embedding("a", value=1))
    cache.put(fake_embedding("b"))
    newer = fake_embedding("a", value=2)
    cache.put(newer)  # a is now most recent
    assert len(cache) == 2
    cache.put(fake_embedding("c"))
    assert cache.get("m", "a") is newer
    assert cache.get("m", "b") is None


def test_cache_clear():
    cache = EmbeddingCache()
    cache.put(fake_embedding("a"))
    cache.clear()
    assert len(cache) == 0
    assert cache.get("m", "a") is None


def test_cache_thread_safety_smoke():
    cache = EmbeddingCache(max_items=5)
    items = [fake_embedding(str(i)) for i in range(40)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(offset: int) -> None:
        try:
            start.wait()
            for j in range(400):
                e = items[(offset * 7 + j) % len(items)]
                cache.put(e)
                got = cache.get(e.model_id, items[(j * 3) % len(items)].key)
                assert got is None or got.key == items[(j * 3) % len(items)].key
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 5


# --------------------------------------------------------------------------------------------
# EmbeddingStore
# --------------------------------------------------------------------------------------------


def test_store_round_trip(tmp_path, computed):
    emb, _ = computed
    store = EmbeddingStore(tmp_path / "emb")
    path = store.save(emb)
    assert path == store.path_for(emb.model_id, emb.key)
    assert path.is_file()
    assert path.is_relative_to(tmp_path / "emb")
    assert not list(path.parent.glob("*.part"))
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    back = store.load(emb.model_id, emb.key)
    assert back is not None
    assert torch.equal(back.features, emb.features)
    assert back.features.dtype == torch.float32
    assert back.original_size == (200, 300)
    assert back.input_size == (683, 1024)
    assert isinstance(back.original_size[0], int)
    assert back.model_id == emb.model_id
    assert back.key == emb.key
    assert back.seconds == 0.0


def test_store_overwrites_atomically(tmp_path):
    store = EmbeddingStore(tmp_path)
    store.save(fake_embedding("k", value=1.0))
    path = store.save(fake_embedding("k", value=2.0))
    back = store.load("m", "k")
    assert back is not None
    assert float(back.features.max()) == 2.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.npz"]


def test_store_usage_and_clear_leave_other_stores_alone(tmp_path):
    store = EmbeddingStore(tmp_path / "emb")
    assert store.usage() == (0, 0)  # the folder does not exist yet
    paths = [store.save(fake_embedding(k, model_id=m)) for k, m in (("a", "m1"), ("b", "m2"))]
    tiles = tmp_path / "emb" / "tiles" / "m1" / "img.zarr"  # a tiled image's zarr store
    tiles.mkdir(parents=True)
    (tiles / "zarr.json").write_text("{}")
    (paths[0].parent / ".x.npz.part").write_bytes(b"partial")  # a killed write
    n, size = store.usage()
    assert n == 2 and size == sum(p.stat().st_size for p in paths) > 0
    assert store.clear() == 2
    assert store.usage() == (0, 0) and store.load("m1", "a") is None
    assert not (tmp_path / "emb" / "m1").exists() and (tiles / "zarr.json").is_file()


def test_store_missing_entry_is_none(tmp_path):
    store = EmbeddingStore(tmp_path / "never-created")
    assert store.load("m", "nothing") is None
    assert not (tmp_path / "never-created").exists()


def test_store_path_for_sanitises_model_id(tmp_path):
    store = EmbeddingStore(tmp_path)
    p = store.path_for("random:vit/b ..x", "abc")
    assert p.parent.parent == tmp_path
    assert p.parent.name == "random_vit_b_..x"
    assert p.name == "abc.npz"


def _damage_garbage(path):
    path.write_bytes(b"this is not an npz file at all" * 10)


def _damage_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_empty(path):
    path.write_bytes(b"")


def _damage_missing_member(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("features.npy", b"")  # not even an array


def _damage_flip_bytes(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_damage_garbage, _damage_truncate, _damage_empty, _damage_missing_member, _damage_flip_bytes],
)
def test_store_damaged_file_is_none(tmp_path, damage):
    store = EmbeddingStore(tmp_path)
    emb = ImageEmbedding(
        features=torch.arange(4 * 32 * 32, dtype=torch.float32).reshape(1, 4, 32, 32),
        original_size=(10, 20),
        input_size=(512, 1024),
        model_id="m",
        key="k",
    )
    path = store.save(emb)
    damage(path)
    assert store.load("m", "k") is None


def test_store_save_failure_leaves_no_part_file(tmp_path):
    store = EmbeddingStore(tmp_path)

    class Boom(RuntimeError):
        pass

    class BadTensor:
        def detach(self):
            raise Boom("no")

    bad = ImageEmbedding(
        features=BadTensor(),  # type: ignore[arg-type]
        original_size=(1, 1),
        input_size=(1024, 1024),
        model_id="m",
        key="k",
    )
    with pytest.raises(Boom):
        store.save(bad)
    assert list((tmp_path / "m").iterdir()) == []


# --------------------------------------------------------------------------------------------
# compute_embedding
# --------------------------------------------------------------------------------------------


def test_compute_embedding_geometry(computed, small_model, rgb):
    emb, _ = computed
    assert tuple(emb.features.shape) == (1, 32, 64, 64)
    assert emb.features.dtype == torch.float32
    assert emb.original_size == (200, 300)
    # The longest side becomes 1024; 200 * 1024 / 300 = 682.67 rounds to 683.
    assert emb.input_size == (683, 1024)
    assert emb.model_id == small_model.model_id
    assert emb.key == image_key(rgb)
    assert emb.seconds > 0
    assert emb.nbytes == 32 * 64 * 64 * 4
    assert torch.isfinite(emb.features).all()


def test_progress_once_per_encoder_block(computed, small_model):
    _, calls = computed
    n = len(small_model.sam.image_encoder.blocks)
    assert n == 2
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_cancel_between_blocks(small_model, rgb):
    polls = []
    progress = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 1  # let the encoder start, stop after its first block

    with pytest.raises(Cancelled):
        compute_embedding(
            small_model, rgb, progress=lambda d, t: progress.append(d), cancel=cancel
        )
    assert len(polls) == 2
    assert progress == []  # the check comes before the report of block 1
    for block in small_model.sam.image_encoder.blocks:
        assert not block._forward_hooks  # hooks removed after cancellation


def test_cancel_before_start_leaves_the_encoder_clean(small_model, computed, rgb):
    with pytest.raises(Cancelled):
        compute_embedding(small_model, rgb, cancel=lambda: True)
    for block in small_model.sam.image_encoder.blocks:
        assert not block._forward_hooks
    # A later plain run must not be affected by the cancelled one, and is deterministic.
    again = compute_embedding(small_model, rgb)
    assert torch.equal(again.features, computed[0].features)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "uint8"),
        (np.zeros((8, 8, 3, 1), np.uint8), "uint8"),
        ([[[0, 0, 0]]], "uint8"),
        (np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\).*\(8, 8, 4\)"),
        (np.zeros((0, 8, 3), np.uint8), r"\(0, 8, 3\)"),
    ],
)
def test_check_rgb_errors(image, match):
    with pytest.raises(ImageError, match=match):
        check_rgb(image)


def test_check_rgb_accepts_uint8_rgb():
    check_rgb(np.zeros((1, 1, 3), np.uint8))


def test_compute_embedding_checks_the_image_first(small_model):
    with pytest.raises(ImageError, match="prepare_image"):
        compute_embedding(small_model, np.zeros((8, 8), np.uint16))


@pytest.mark.parametrize(
    ("shape", "thin"),
    [((1, 2048), False), ((2048, 1), False), ((1, 2049), True), ((3000, 1), True)],
)
def test_images_too_thin_for_sams_resize_are_refused_before_the_encoder(shape, thin):
    """1024 across the longest side leaves int(1024 / 2049 + 0.5) = 0 pixels across."""
    if thin:
        with pytest.raises(ImageError, match=rf"{shape[0]}x{shape[1]} pixels, too thin"):
            check_not_too_thin(shape, 1024)
    else:
        check_not_too_thin(shape, 1024)


def test_compute_embedding_of_a_line_scan_says_it_is_too_thin(small_model):
    size = small_model.sam.image_encoder.img_size
    with pytest.raises(ImageError, match="too thin"):
        compute_embedding(small_model, np.zeros((1, 2 * size + 1, 3), np.uint8))
