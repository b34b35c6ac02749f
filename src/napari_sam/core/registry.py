"""The models napari-sam knows by name: Meta's official SAM checkpoints and the bundled tiny model.

Official addresses, SHA-256 and sizes agree across many independent public sources (see
``docs/models.md``). The file names' six hex characters are not a hash prefix, so we verify the
full SHA-256 ourselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .architecture import OFFICIAL_ARCHITECTURES, SamArchitecture

_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    """A model napari-sam can fetch (or finds bundled) by name.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"vit_b"``.
    filename : str
        File name in the checkpoint cache.
    url : str or None
        Download address; None for bundled models.
    sha256 : str
        Expected SHA-256 of the file.
    size : int or None
        Expected size in bytes where known exactly.
    architecture : SamArchitecture or None
        None when the file carries its own architecture.
    description : str
        One line for menus and ``--help``.
    """

    name: str
    filename: str
    url: str | None
    sha256: str
    size: int | None
    architecture: SamArchitecture | None
    description: str

    @property
    def bundled_path(self) -> Path | None:
        """Path of a checkpoint shipped inside the package, else None."""
        if self.url is not None:
            return None
        return Path(str(resources.files("napari_sam") / "data" / self.filename))


MODELS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        _BASE + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
        OFFICIAL_ARCHITECTURES["vit_b"],
        "SAM ViT-B (375 MB): fastest official model",
    ),
    "vit_l": ModelSpec(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        _BASE + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        None,  # about 1.25 GB; the SHA-256 is what we check
        OFFICIAL_ARCHITECTURES["vit_l"],
        "SAM ViT-L (1.25 GB)",
    ),
    "vit_h": ModelSpec(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        _BASE + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
        OFFICIAL_ARCHITECTURES["vit_h"],
        "SAM ViT-H (2.6 GB): most accurate official model",
    ),
    "tiny": ModelSpec(
        "tiny",
        "tiny_sam.pt",
        None,
        "",  # bundled: filled in by scripts/train_tiny_sam.py's record, not verified
        None,
        None,
        "napari-sam's tiny test model (bundled, NOT a real SAM: for tests and offline demos)",
    ),
}

DEFAULT_MODEL = "vit_b"


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry ``name`` or raise a clear ``KeyError``-free error.

    Raises
    ------
    napari_sam.core.errors.CheckpointError
        If ``name`` is not a registered model.
    """
    from .errors import CheckpointError

    try:
        return MODELS[name]
    except KeyError:
        raise CheckpointError(
            f"unknown model {name!r}; choose one of {', '.join(MODELS)} or give a checkpoint file"
        ) from None
