"""The layer contracts in pyproject.toml name every module, so none escapes them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_sam"


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def _layer_names(contract: dict) -> set[str]:
    names = set()
    for layer in contract["layers"]:
        names.update(n.strip() for n in layer.replace("|", ":").split(":"))
    return names


def test_every_core_module_is_in_the_core_layers():
    (core,) = [c for c in _contracts() if c.get("containers") == ["napari_sam.core"]]
    modules = {p.stem for p in (SRC / "core").glob("*.py") if p.stem != "__init__"}
    missing = modules - _layer_names(core)
    assert not missing, f"add {sorted(missing)} to the core layers in pyproject.toml"


def test_every_top_level_module_is_in_the_package_layers():
    (top,) = [c for c in _contracts() if c["name"].startswith("The napari side")]
    names = {n.removeprefix("napari_sam.") for n in _layer_names(top)}
    # _version.py is written by setuptools-scm at build time and imports nothing.
    modules = {p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "_version")}
    modules |= {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    missing = modules - names
    assert not missing, f"add {sorted(missing)} to the package layers in pyproject.toml"
