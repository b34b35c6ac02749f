"""The built distributions as users get them: the wheel installed into a fresh environment.

The sdist and, from it, the wheel are built the way the release workflow builds them
(``python -m build``, here without build isolation so that nothing is downloaded), or taken
from ``$NAPARI_SAM_DIST`` (the release workflow points it at the files it will publish). The
wheel is installed with ``pip --no-deps --no-index`` into a new virtual environment that sees
this environment's packages through a ``.pth`` file: torch and napari are not installed again,
and an editable install of napari-sam is not seen there (this environment's own ``.pth`` files
do not run). Checked from that environment: npe2 finds the plugin and every command of its
manifest, the samples and the tiny model are inside, ``import napari_sam`` stays light, and
the command line works, also with napari and Qt blocked.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
import tifffile
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_sam"
DIST_ENV = "NAPARI_SAM_DIST"
#: Imports that would make ``import napari_sam`` slow; the CLI may import NumPy up front.
HEAVY = ("torch", "torchvision", "segment_anything", "napari", "qtpy", "numpy", "skimage")
HEAVY_FOR_CLI = ("torch", "torchvision", "segment_anything", "napari", "qtpy")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    version: str


@dataclass(frozen=True)
class Venv:
    python: Path
    scripts: Path
    site: Path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would put the source tree on the path."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dist:
    given = os.environ.get(DIST_ENV)
    if given:
        folder = Path(given).resolve()
    else:
        folder = tmp_path_factory.mktemp("dist")
        done = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(folder), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=600,
            env=clean_env(),
        )
        assert done.returncode == 0, output(done)
    wheels, sdists = sorted(folder.glob("*.whl")), sorted(folder.glob("*.tar.gz"))
    assert len(wheels) == len(sdists) == 1, f"one wheel and one sdist expected in {folder}"
    return Dist(sdists[0], wheels[0], wheels[0].name.split("-")[1])


def parent_site_dirs() -> list[str]:
    """The site-packages folders this interpreter imports from (not the source tree)."""
    dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    scripts = root / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / ("python.exe" if os.name == "nt" else "python")
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([str(python), "-c", code], text=True).strip())
    # Plain folder lines: added to sys.path after the venv's own site-packages, their .pth
    # files (an editable napari-sam among them) not run.
    (site / "zz_parent_environment.pth").write_text("\n".join(parent_site_dirs()) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--ignore-installed", "--disable-pip-version-check", str(dist.wheel)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, output(done)
    return Venv(python, scripts, site)


def run_in(venv: Venv, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv.python), "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(NAPARI_SAM_CACHE=str(cwd / "cache")),
    )


# --------------------------------------------------------------------------------------------
# What the files hold
# --------------------------------------------------------------------------------------------


def package_files() -> set[str]:
    """What the wheel must hold: every module, the manifest and every data file."""
    files = {p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    files |= {p for p in (PACKAGE / "data").rglob("*") if p.is_file()}
    files.add(PACKAGE / "napari.yaml")
    return {p.relative_to(PACKAGE.parent).as_posix() for p in files}


def test_wheel_holds_the_package_with_its_data_and_nothing_else(dist):
    names = set(zipfile.ZipFile(dist.wheel).namelist())
    missing = package_files() - names
    assert not missing, f"not in the wheel (git add them? package-data?): {sorted(missing)}"
    assert "napari_sam/_version.py" in names
    info = f"napari_sam_kit-{dist.version}.dist-info/"
    strays = {n for n in names if not n.startswith(("napari_sam/", info))}
    assert not strays, f"files outside the package: {sorted(strays)}"


def test_wheel_metadata(dist):
    wheel = zipfile.ZipFile(dist.wheel)
    info = f"napari_sam_kit-{dist.version}.dist-info/"
    meta = Parser().parsestr(wheel.read(info + "METADATA").decode())
    assert meta["Name"] == "napari-sam-kit" and meta["Version"] == dist.version
    assert "Framework :: napari" in meta.get_all("Classifier")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    always = {r.name.lower() for r in requires if r.marker is None}
    assert "torch" in always and "napari" not in always and not always & {"pyqt5", "pyqt6"}
    extras = {str(r.marker) for r in requires if r.name == "napari"}
    assert {'extra == "all"', 'extra == "qt"', 'extra == "testing"'} <= extras
    # PyPI's page is the README, whose links tests/test_project_metadata.py checks.
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == (ROOT / "README.md").read_text(encoding="utf-8").strip()
    entry_points = wheel.read(info + "entry_points.txt").decode()
    assert "[napari.manifest]\nnapari-sam-kit = napari_sam:napari.yaml" in entry_points
    assert "[console_scripts]\nnapari-sam = napari_sam.cli:main" in entry_points


def test_sdist_builds_the_same_version_and_holds_sources_tests_and_docs(dist):
    top = f"napari_sam_kit-{dist.version}/"
    assert dist.sdist.name == f"napari_sam_kit-{dist.version}.tar.gz"
    with tarfile.open(dist.sdist) as sdist:
        names = {n.removeprefix(top) for n in sdist.getnames()}
    expected = {f"src/{name}" for name in package_files()}
    expected |= {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"}
    expected |= {"CITATION.cff", "tests/conftest.py", "docs/user-guide.md"}
    assert not expected - names, f"not in the sdist: {sorted(expected - names)}"


# --------------------------------------------------------------------------------------------
# The installed wheel
# --------------------------------------------------------------------------------------------

PROBE = """
import json, sys
heavy, heavy_for_cli = json.loads(sys.argv[1])
import napari_sam
after_package = sorted(m for m in heavy if m in sys.modules)
import napari_sam.cli
after_cli = sorted(m for m in heavy_for_cli if m in sys.modules)

import importlib.metadata as md
import importlib.util
import npe2
from napari_sam.core.registry import MODELS
from napari_sam._sample_data import mri_brain

pm = npe2.PluginManager()
pm.discover()
manifest = pm.get_manifest("napari-sam-kit")
image, labels = mri_brain()[:2]
print(json.dumps({
    "file": napari_sam.__file__,
    "version": napari_sam.__version__,
    "metadata_version": md.version("napari-sam-kit"),
    "after_package": after_package,
    "after_cli": after_cli,
    "plugin_version": manifest.package_version,
    "commands": {c.id: c.python_name for c in manifest.contributions.commands},
    "origins": {c.python_name: importlib.util.find_spec(c.python_name.split(":")[0]).origin
                for c in manifest.contributions.commands},
    "samples": sorted(s.key for s in manifest.contributions.sample_data),
    "widgets": [w.display_name for w in manifest.contributions.widgets],
    "readers": len(manifest.contributions.readers),
    "tiny": str(MODELS["tiny"].bundled_path),
    "mri": [list(image[0].shape), labels[2], int(labels[0].max())],
}))
"""


@pytest.fixture(scope="module")
def probe(venv, tmp_path_factory) -> dict:
    heavy = json.dumps([HEAVY, HEAVY_FOR_CLI])
    done = run_in(venv, PROBE, heavy, cwd=tmp_path_factory.mktemp("probe"))
    assert done.returncode == 0, output(done)
    return json.loads(done.stdout.strip().splitlines()[-1])


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (read, not imported: no Qt needed)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_installed_package_is_the_wheels(probe, venv, dist):
    assert Path(probe["file"]).is_relative_to(venv.site), probe["file"]
    assert probe["version"] == probe["metadata_version"] == dist.version


def test_importing_the_package_and_the_cli_stays_light(probe):
    assert probe["after_package"] == []
    assert probe["after_cli"] == []


def test_npe2_finds_the_plugin_and_every_command_is_in_the_wheel(probe, venv, dist):
    assert probe["plugin_version"] == dist.version
    assert probe["widgets"] == ["Segment Anything"]
    assert probe["readers"] == 1
    assert "mri_brain" in probe["samples"] and "synthetic_cells" in probe["samples"]
    assert len(probe["commands"]) >= 9
    for python_name, origin in probe["origins"].items():
        assert Path(origin).is_relative_to(venv.site), f"{python_name} from {origin}"
        attribute = python_name.split(":")[1]
        assert attribute in top_level_names(Path(origin)), f"{python_name} is not defined"


def test_samples_and_tiny_model_are_inside(probe, venv):
    tiny = Path(probe["tiny"])
    assert tiny.is_relative_to(venv.site) and tiny.stat().st_size > 1_000_000
    shape, kind, tumour = probe["mri"]
    assert len(shape) == 3 and kind == "labels" and tumour >= 1


def test_console_script_version_and_help(venv, dist):
    script = shutil.which("napari-sam", path=str(venv.scripts))
    assert script, f"no napari-sam script in {venv.scripts}"
    done = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=120, env=clean_env()
    )
    assert done.returncode == 0, output(done)
    assert done.stdout.strip() == f"napari-sam-kit {dist.version}"
    done = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=120, env=clean_env()
    )
    assert done.returncode == 0, output(done)
    for command in ("auto", "segment", "embed", "replay", "models"):
        assert command in done.stdout


CLI_WITHOUT_GUI = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from gui_blocker import block_gui_imports
block_gui_imports()
from napari_sam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_works_from_the_wheel_without_napari(venv, tmp_path):
    image = np.full((64, 96), 20, np.uint8)
    image[16:48, 24:72] = 220
    tifffile.imwrite(tmp_path / "cells.tif", image)
    for argv in (["--version"], ["models"]):
        done = run_in(venv, CLI_WITHOUT_GUI, *argv, cwd=tmp_path)
        assert done.returncode == 0, output(done)
    out = tmp_path / "labels.tif"
    argv = ["segment", "cells.tif", "--model", "tiny", "--device", "cpu", "--box", "12,20,52,76"]
    argv += ["-o", str(out), "--no-embedding-cache"]
    done = run_in(venv, CLI_WITHOUT_GUI, *argv, cwd=tmp_path)
    assert done.returncode == 0, output(done)
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and set(np.unique(labels)) == {0, 1}
    assert "Traceback" not in done.stderr
