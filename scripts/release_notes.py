"""Print the CHANGELOG.md section of one version: the GitHub release notes of its tag.

The release workflow (.github/workflows/release.yml) runs ``python scripts/release_notes.py
0.2.0`` for the tag ``v0.2.0``; a version without a section (or with an empty one) stops the
release before anything is built, so every release on PyPI has its changelog entry.

Usage::

    python scripts/release_notes.py VERSION [--changelog PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def section(text: str, version: str) -> str:
    """The body of ``## [VERSION]`` (a date may follow the heading), without the heading.

    Raises
    ------
    LookupError
        When there is no such heading, or nothing under it.
    """
    heading = re.compile(rf"^## \[{re.escape(version)}\](\s.*)?$")
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if heading.match(line)]
    if not starts:
        raise LookupError(f"CHANGELOG.md has no section '## [{version}]'")
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("## "):
            break
        body.append(line)
    notes = "\n".join(body).strip()
    if not notes:
        raise LookupError(f"CHANGELOG.md section '## [{version}]' is empty")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", help="the release's version, without the tag's 'v'")
    parser.add_argument("--changelog", type=Path, default=CHANGELOG)
    args = parser.parse_args(argv)
    try:
        text = args.changelog.read_text(encoding="utf-8")
    except OSError as e:
        print(f"release_notes: error: cannot read {args.changelog}: {e}", file=sys.stderr)
        return 1
    try:
        print(section(text, args.version))
    except LookupError as e:
        print(f"release_notes: error: {e}; add it before tagging", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
