"""Helpers shared by the command-line tests (``tests/test_cli*.py``)."""

from __future__ import annotations

from napari_sam.cli import main


def run(capsys, *argv):
    """Run ``napari-sam ARGV`` in-process; ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_args(files):
    """The CLI options choosing the checkpoint ``files[0]`` on the CPU."""
    return ["--checkpoint", files[0], "--device", "cpu"]
