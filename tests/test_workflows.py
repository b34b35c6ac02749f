"""The GitHub Actions workflows, which cannot run here, checked against what can: `.ci/run`.

`.ci/run` is the local truth. Every command it runs must appear in the test workflow, so a
step added there and forgotten here fails this test; the matrix must cover every Python
version the package declares; the release workflow must publish only from a tag, only after
testing the built wheel, and only through PyPI's trusted publishing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CI_RUN = ROOT / ".ci" / "run"
LINUX_PACKAGES = ".ci/linux-packages.txt"

#: Lines of .ci/run that set up a local machine and have their own form in the workflow.
LOCAL_ONLY = {
    "set -euo pipefail": "the workflow's bash runs with -eo pipefail",
    'cd "$(dirname "$0")/.."': "steps run in the checkout",
    "python3 -m venv .venv": "setup-python's interpreter is the environment",
    ". .venv/bin/activate": "setup-python's interpreter is the environment",
    "if command -v xvfb-run >/dev/null 2>&1; then": "NAPARI_SAM_GUI_TESTS=1 in the job's env",
    "export NAPARI_SAM_GUI_TESTS=1": "NAPARI_SAM_GUI_TESTS=1 in the job's env",
    "fi": "closes the block above",
}


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def run_text(job: dict) -> str:
    """Every `run:` of a job, whitespace-normalised, one command per line."""
    lines = []
    for step in job["steps"]:
        lines += logical_lines(step.get("run", ""))
    return "\n".join(lines)


def logical_lines(script: str) -> list[str]:
    """Shell lines with continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    lines = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(" ".join(line.split()))
    return lines


def ci_run_commands() -> list[str]:
    """The commands of .ci/run, without its system-package block (checked on its own)."""
    lines = logical_lines(CI_RUN.read_text(encoding="utf-8"))[1:]  # [0] is the shebang
    start = next(i for i, line in enumerate(lines) if line.startswith("if command -v apt-get"))
    depth, end = 0, start
    for end in range(start, len(lines)):
        depth += lines[end].startswith("if ") - (lines[end] == "fi")
        if depth == 0:
            break
    return lines[:start] + lines[end + 1 :]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared_pythons() -> list[str]:
    prefix = "Programming Language :: Python :: 3."
    return [c.rsplit(" ", 1)[-1] for c in project()["classifiers"] if c.startswith(prefix)]


# --------------------------------------------------------------------------------------------
# Both workflows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test.yml", "release.yml"])
def test_workflow_is_valid_yaml_with_jobs_and_steps(name):
    data = load(name)
    assert data["on"], f"{name}: no trigger"
    assert data["jobs"], f"{name}: no jobs"
    for job_id, job in data["jobs"].items():
        assert job.get("runs-on"), f"{name}: job {job_id} has no runs-on"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}/{job_id}: {step}"


@pytest.mark.parametrize("name", ["test.yml", "release.yml"])
def test_actions_are_pinned_to_a_release(name):
    for job in load(name)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                ref = step["uses"].partition("@")[2]
                assert re.fullmatch(r"(release/)?v\d+(\.\d+)*|[0-9a-f]{40}", ref), (
                    f"{name}: {step['uses']} is not pinned to a release tag or commit"
                )


@pytest.mark.parametrize("name", ["test.yml", "release.yml"])
def test_default_token_is_read_only(name):
    assert load(name)["permissions"] == {"contents": "read"}


def test_linux_packages_are_the_ones_the_probe_names():
    from display_probe import INSTALL_HINT

    listed = (ROOT / LINUX_PACKAGES).read_text(encoding="utf-8").split()
    assert INSTALL_HINT.split()[2:] == listed  # after "apt-get install"
    assert f"$(cat {LINUX_PACKAGES})" in CI_RUN.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# tests: the matrix and the steps of .ci/run
# --------------------------------------------------------------------------------------------


def test_matrix_covers_three_systems_and_every_declared_python():
    (job,) = load("test.yml")["jobs"].values()
    matrix = job["strategy"]["matrix"]
    assert set(matrix["os"]) == {"ubuntu-latest", "macos-latest", "windows-latest"}
    versions = matrix["python-version"]
    assert all(isinstance(v, str) for v in versions), "quote versions: YAML reads 3.10 as 3.1"
    assert versions == declared_pythons() == ["3.11", "3.12", "3.13"]
    assert project()["requires-python"] == f">={versions[0]}"
    assert job["strategy"]["fail-fast"] is False


def test_every_command_of_ci_run_is_in_the_workflow():
    (job,) = load("test.yml")["jobs"].values()
    steps = run_text(job)
    commands = ci_run_commands()
    assert "ruff check ." in commands and "bash scripts/test.sh" in commands  # parsed right
    missing = [c for c in commands if c not in LOCAL_ONLY and c not in steps.splitlines()]
    assert not missing, f"commands of .ci/run missing from test.yml: {missing}"
    # ... in the same order
    order = [steps.splitlines().index(c) for c in commands if c not in LOCAL_ONLY]
    assert order == sorted(order)


def test_test_workflow_sets_up_what_ci_run_sets_up():
    (job,) = load("test.yml")["jobs"].values()
    assert job["env"]["NAPARI_SAM_GUI_TESTS"] == "1"  # GUI tests required, as in .ci/run
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # setuptools-scm needs the tags
    linux = [s for s in job["steps"] if s.get("if") == "runner.os == 'Linux'" and "run" in s]
    assert any(f"$(cat {LINUX_PACKAGES})" in s["run"] for s in linux)
    windows = [s for s in job["steps"] if s.get("if") == "runner.os == 'Windows'"]
    assert any("setup-headless-display-action" in s.get("uses", "") for s in windows)


# --------------------------------------------------------------------------------------------
# release: tag -> build -> test the wheel -> trusted publishing
# --------------------------------------------------------------------------------------------


def test_release_runs_on_version_tags():
    assert load("release.yml")["on"]["push"] == {"tags": ["v*"]}


def test_release_builds_checks_and_takes_notes_from_the_changelog():
    build = load("release.yml")["jobs"]["build"]
    steps = run_text(build)
    assert "python -m build" in steps.splitlines()
    assert "twine check --strict dist/*" in steps.splitlines()
    assert 'python scripts/release_notes.py "${GITHUB_REF_NAME#v}" > release-notes.md' in steps
    assert 'test -f "dist/napari_sam_kit-${GITHUB_REF_NAME#v}-py3-none-any.whl"' in steps
    checkout = build["steps"][0]
    assert checkout["uses"].startswith("actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0


def test_release_tests_the_built_wheel_not_the_source():
    jobs = load("release.yml")["jobs"]
    test = jobs["test"]
    assert test["needs"] == "build"
    assert set(test["strategy"]["matrix"]["os"]) == {
        "ubuntu-latest",
        "macos-latest",
        "windows-latest",
    }
    assert test["env"]["NAPARI_SAM_DIST"] == "dist"  # tests/test_wheel.py checks these files
    steps = run_text(test)
    assert 'python -m pip install -q "${wheel}[testing]"' in steps
    assert " -e " not in steps and "--editable" not in steps
    for command in ci_run_commands():
        if command.startswith(("NAPARI_SAM_BLOCK_QT=1", "bash scripts/test.sh")):
            assert command in steps.splitlines()


def test_only_the_publish_job_gets_an_id_token_and_only_from_a_pushed_tag():
    jobs = load("release.yml")["jobs"]
    with_token = [j for j, job in jobs.items() if job.get("permissions", {}).get("id-token")]
    assert with_token == ["publish"]
    publish = jobs["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert set(publish["needs"]) == {"build", "test"}
    assert publish["if"] == "github.event_name == 'push' && startsWith(github.ref, 'refs/tags/v')"
    assert publish["environment"]["name"] == "pypi"
    (upload,) = [s for s in publish["steps"] if "pypi-publish" in s.get("uses", "")]
    assert upload["uses"] == "pypa/gh-action-pypi-publish@release/v1"
    assert "with" not in upload  # no password: trusted publishing
    assert jobs["github-release"]["needs"] == "publish"
