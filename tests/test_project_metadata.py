"""What PyPI, the napari hub and GitHub show: links, dependencies, hub config, citation, version.

PyPI and the napari hub render README.md (and the hub .napari-hub/DESCRIPTION.md) away from
the repository, so every link there must be absolute and every picture a raw URL; links into
this repository must name files that exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
REPO = PROJECT["urls"]["Source Code"]
BLOB = f"{REPO}/blob/main/"
RAW = REPO.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
RENDERED_ELSEWHERE = ["README.md", ".napari-hub/DESCRIPTION.md"]
GUI_PACKAGES = {"napari", "pyqt5", "pyqt6", "pyside2", "pyside6"}

_INLINE = re.compile(r"(!?)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_HTML = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def links(markdown: str) -> list[tuple[bool, str]]:
    """``(is_image, target)`` of every link and image outside code blocks."""
    text = _FENCE.sub("", markdown)
    found = [(bang == "!", target) for bang, target in _INLINE.findall(text)]
    found += [(False, target) for target in _REFERENCE.findall(text)]
    found += [(False, target) for target in _HTML.findall(text)]
    return found


def github_anchor(heading: str) -> str:
    """The id GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(h) for h in re.findall(r"^#+\s+(.+?)\s*#*$", text, re.MULTILINE)}


@pytest.mark.parametrize("name", RENDERED_ELSEWHERE)
def test_links_are_absolute_and_pictures_raw(name):
    found = links((ROOT / name).read_text(encoding="utf-8"))
    assert found, f"no links found in {name}: is the parser broken?"
    for is_image, target in found:
        assert target.startswith(("https://", "mailto:")), f"{name}: relative link {target}"
        if is_image:
            assert target.startswith(RAW), f"{name}: picture {target} must be a {RAW} URL"


@pytest.mark.parametrize("name", RENDERED_ELSEWHERE)
def test_links_into_the_repository_name_existing_files_and_headings(name):
    checked = 0
    for _, target in links((ROOT / name).read_text(encoding="utf-8")):
        for prefix in (BLOB, RAW):
            if target.startswith(prefix):
                path, _, anchor = target.removeprefix(prefix).partition("#")
                assert (ROOT / path).is_file(), f"{name}: {target} names no file of the repo"
                if anchor:
                    assert anchor in anchors(ROOT / path), f"{name}: no heading #{anchor}"
                checked += 1
    assert checked >= 3, f"{name}: expected links into the repository"


def test_link_parser_sees_relative_links():
    found = links('[a](docs/x.md) ![b](img/y.png) <img src="z.png">\n[c]: ../w.md\n')
    assert found == [
        (False, "docs/x.md"),
        (True, "img/y.png"),
        (False, "../w.md"),
        (False, "z.png"),
    ]


def test_github_anchor():
    assert github_anchor("Changes, issues, contributing") == "changes-issues-contributing"
    assert github_anchor("Model options (all commands)") == "model-options-all-commands"


# --------------------------------------------------------------------------------------------
# Dependencies: the plugin manager installs into the user's napari and must not replace it
# --------------------------------------------------------------------------------------------


def test_napari_and_qt_are_not_runtime_dependencies():
    names = {Requirement(r).name.lower() for r in PROJECT["dependencies"]}
    assert not names & GUI_PACKAGES, f"GUI packages in dependencies: {names & GUI_PACKAGES}"


@pytest.mark.parametrize("extra", ["all", "qt", "testing"])
def test_extras_bring_napari_with_a_qt_binding(extra):
    reqs = [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    napari = [r for r in reqs if r.name == "napari"]
    assert napari and napari[0].extras & {"all", "qt"}, f"[{extra}] must install napari with Qt"


def test_testing_extra_can_build_without_isolation():
    """tests/test_wheel.py builds with ``--no-isolation``: the build needs must be installed."""
    testing = {
        Requirement(r).name: Requirement(r) for r in PROJECT["optional-dependencies"]["testing"]
    }
    for need in map(Requirement, PYPROJECT["build-system"]["requires"]):
        assert need.name in testing, f"add {need} to the testing extra"
        assert testing[need.name].specifier == need.specifier, f"{need} in both places"


def test_dev_extra_includes_testing():
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    assert any(r.name == PROJECT["name"] and "testing" in r.extras for r in dev)


# --------------------------------------------------------------------------------------------
# napari hub, citation, changelog
# --------------------------------------------------------------------------------------------


def test_hub_config_matches_the_package_metadata():
    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text(encoding="utf-8"))
    assert config["visibility"] in ("public", "hidden", "disabled")
    assert config["summary"] == PROJECT["description"]
    assert config["project_urls"] == PROJECT["urls"]
    assert config["labels"]["ontology"].startswith("EDAM-BIOIMAGING:")
    assert config["labels"]["terms"]
    assert all(author["name"] for author in config["authors"])


def test_citation_file():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors"):
        assert cff[key], key
    assert cff["repository-code"] == REPO
    assert cff["license"] == PROJECT["license"]
    dois = {ref.get("doi") for ref in cff["references"]}
    assert "10.1109/ICCV51070.2023.00371" in dois  # Segment Anything itself


def run_release_notes(*args: str) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "release_notes.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=False
    )


def test_release_notes_are_the_versions_changelog_section(tmp_path):
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(
        "# Changelog\n\n## [Unreleased]\n\n- next\n\n## [0.2.0] - 2026-02-01\n\n### Fixed\n\n"
        "- a bug\n\n## [0.1.0]\n\n- first\n",
        encoding="utf-8",
    )
    done = run_release_notes("0.2.0", "--changelog", str(changelog))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "### Fixed\n\n- a bug\n"
    assert run_release_notes("0.1.0", "--changelog", str(changelog)).stdout == "- first\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("## [0.2.0]\n\n- x\n", "no section '## [0.1.0]'"),
        ("## [0.1.0]\n\n## [0.0.9]\n- x\n", "section '## [0.1.0]' is empty"),
        ("## [0.1.0.1]\n- x\n", "no section"),  # the version is matched exactly
    ],
)
def test_release_notes_refuse_a_version_without_its_section(tmp_path, text, message):
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(text, encoding="utf-8")
    done = run_release_notes("0.1.0", "--changelog", str(changelog))
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "\n## [Unreleased]\n" in text


def test_pre_commit_runs_ruff_lint_and_format():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "check-github-workflows"} <= hooks


# --------------------------------------------------------------------------------------------
# Version: from git tags at build time, a fallback without git metadata
# --------------------------------------------------------------------------------------------

FALLBACK = PYPROJECT["tool"]["setuptools_scm"]["fallback_version"]
#: No git settings and no version override from the caller's environment.
ENV_WITHOUT_GIT = {
    k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SETUPTOOLS_SCM"))
}


def test_version_without_a_built_version_file_is_the_fallback(tmp_path):
    package = tmp_path / "napari_sam"
    package.mkdir()
    shutil.copy(ROOT / "src" / "napari_sam" / "__init__.py", package)
    code = "import napari_sam; print(napari_sam.__version__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == FALLBACK


def test_build_without_git_metadata_gets_the_fallback_version(tmp_path):
    # A copy of the tree without .git (as from a plain download): only pyproject.toml matters.
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / ".git_archival.txt", tmp_path)  # unfilled, as in a checkout
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "setuptools_scm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**ENV_WITHOUT_GIT, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == FALLBACK
