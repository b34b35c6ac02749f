"""The model registry: entries, their published hashes, domains, sizes and descriptions."""

from __future__ import annotations

import re

import pytest

from napari_sam.core.architecture import OFFICIAL_ARCHITECTURES
from napari_sam.core.registry import (
    DOMAINS,
    MODELS,
    SPEEDS,
    ModelSpec,
    format_size,
    get_spec,
    models_by_domain,
)

FINETUNED = {
    "vit_b_lm": ("light microscopy", "vit_b"),
    "vit_l_lm": ("light microscopy", "vit_l"),
    "vit_t_lm": ("light microscopy", "vit_t"),
    "vit_b_em_organelles": ("electron microscopy", "vit_b"),
    "vit_l_em_organelles": ("electron microscopy", "vit_l"),
    "vit_t_em_organelles": ("electron microscopy", "vit_t"),
    "vit_b_histopathology": ("histology", "vit_b"),
    "vit_b_medical_imaging": ("medical", "vit_b"),
}


def test_every_entry_is_complete():
    filenames = [s.filename for s in MODELS.values()]
    assert len(set(filenames)) == len(filenames)
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.domain in DOMAINS and spec.speed in SPEEDS
        assert spec.description and "\n" not in spec.description
        if spec.url is None:  # bundled
            assert spec.bundled_path is not None and spec.bundled_path.is_file()
            continue
        assert spec.url.startswith("https://")
        assert spec.architecture is not None
        assert spec.hashes, f"{name} would be downloaded unverified"
        for alg, digest in spec.hashes.items():
            length = {"sha256": 64, "xxh128": 32}[alg]
            assert re.fullmatch(f"[0-9a-f]{{{length}}}", digest)
        assert spec.size_bytes is not None and spec.size_bytes > 10**7


def test_published_hashes_are_pinned():
    """The values of shared/notes (Meta's SHA-256; micro-sam's xxh128, commit 3acdcd7)."""
    assert MODELS["vit_b"].hashes == {
        "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    }
    assert MODELS["vit_t"].hashes == {"xxh128": "8eadbc88aeb9d8c7e0b4b60c3db48bd0"}
    assert MODELS["vit_b_lm"].xxh128 == "fe9252a29f3f4ea53c15a06de471e186"
    assert MODELS["vit_b_medical_imaging"].xxh128 == "40169f1e3c03a4b67bff58249c176d92"
    assert MODELS["vit_t_em_organelles"].url.endswith("/greedy-whale/1/files/vit_t.pt")


@pytest.mark.parametrize(("name", "expected"), FINETUNED.items())
def test_finetuned_models(name, expected):
    domain, arch = expected
    spec = get_spec(name)
    assert spec.domain == domain
    assert spec.architecture == OFFICIAL_ARCHITECTURES[arch]
    assert spec.filename == f"{name}.pt"
    assert spec.speed == {"vit_b": "medium", "vit_l": "slow", "vit_t": "fast"}[arch]
    assert not spec.sha256 and spec.xxh128  # micro-sam publishes xxh128 only


def test_models_by_domain():
    groups = models_by_domain()
    assert list(groups) == list(DOMAINS)  # every domain has a model, in menu order
    assert [s.name for s in groups["general"]] == ["vit_b", "vit_l", "vit_h", "vit_t"]
    assert [s.name for s in groups["histology"]] == ["vit_b_histopathology"]
    assert [s.name for s in groups["test"]] == ["tiny"]
    assert sorted(s.name for g in groups.values() for s in g) == sorted(MODELS)
    some = [MODELS["tiny"], MODELS["vit_b_lm"]]
    assert {d: [s.name for s in g] for d, g in models_by_domain(some).items()} == {
        "light microscopy": ["vit_b_lm"],
        "test": ["tiny"],
    }


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "?"),
        (2_564_550_879, "2.6 GB"),
        (375_042_383, "375 MB"),
        (3_100_000, "3 MB"),
        (1_499, "1 kB"),
        (12, "1 kB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_summary_and_sizes():
    vit_b = MODELS["vit_b"]
    assert vit_b.size_bytes == 375_042_383
    assert vit_b.summary.startswith("general, 375 MB, medium: ")
    assert MODELS["vit_l"].size_bytes == 1_250_000_000  # approximate: size unknown exactly
    tiny = MODELS["tiny"]
    assert tiny.size_bytes == tiny.bundled_path.stat().st_size
    assert tiny.summary.startswith("test, ")


def test_bad_entries_are_refused():
    with pytest.raises(ValueError, match="unknown domain"):
        ModelSpec("x", "x.pt", None, "", None, None, "x", domain="astronomy")
    with pytest.raises(ValueError, match="unknown speed"):
        ModelSpec("x", "x.pt", None, "", None, None, "x", speed="warp")
