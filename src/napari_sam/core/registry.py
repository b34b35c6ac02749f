"""The models napari-sam knows by name: Meta's SAMs, MobileSAM, micro-sam's fine-tuned SAMs, and
the bundled tiny test model.

Meta's addresses, SHA-256 and sizes agree across many independent public sources. MobileSAM
(``vit_t``) and the fine-tuned models are checked with the xxh128 hashes micro-sam publishes
for them (micro-sam's ``models()`` registry, commit 3acdcd7); for ``vit_t`` a single public
source also gives a SHA-256 of MobileSAM's file, which we do not rely on. See
``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .architecture import OFFICIAL_ARCHITECTURES, SamArchitecture

__all__ = [
    "DEFAULT_MODEL",
    "DOMAINS",
    "MODELS",
    "SPEEDS",
    "ModelSpec",
    "format_size",
    "get_spec",
    "models_by_domain",
]

#: What a model was trained for, in the order menus and tables show them.
DOMAINS = (
    "general",
    "light microscopy",
    "electron microscopy",
    "histology",
    "medical",
    "test",
)

#: Speed classes: the image encoder's arithmetic for a 1024 x 1024 image (counted with
#: torch.utils.flop_counter; the prompt decoder is the same small network for all).
SPEEDS = {
    "instant": "test model: milliseconds",
    "fast": "TinyViT encoder (MobileSAM): 78 GFLOP, 1/12 of ViT-B",
    "medium": "ViT-B encoder: 972 GFLOP",
    "slow": "ViT-L encoder: 2986 GFLOP, 3x ViT-B",
    "slowest": "ViT-H encoder: 5961 GFLOP, 6x ViT-B",
}

_META = "https://dl.fbaipublicfiles.com/segment_anything/"
_BIOIMAGE = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s/"


@dataclass(frozen=True)
class ModelSpec:
    """A model napari-sam can fetch (or finds bundled) by name.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"vit_b"``.
    filename : str
        File name in the checkpoint cache (and on a mirror, see ``NAPARI_SAM_BASE_URL``).
    url : str or None
        Download address; None for bundled models.
    sha256 : str
        Expected SHA-256 of the file; empty when it is checked by ``xxh128`` instead.
    size : int or None
        Expected size in bytes where known exactly (checked after downloading).
    architecture : SamArchitecture or None
        None when the file carries its own architecture.
    description : str
        One line for menus, tooltips and ``napari-sam models``.
    xxh128 : str
        Expected xxh128 of the file (micro-sam's published hashes); empty if not used.
    domain : str
        One of :data:`DOMAINS`.
    approx_size : int or None
        Size in bytes to show when ``size`` is not known exactly.
    speed : str
        One of :data:`SPEEDS`.
    mask_prompts : bool
        Whether the model gets mask prompts by default (:mod:`napari_sam.core.refinement`:
        the previous mask on follow-up clicks, a drawn shape, a label to edit): True for
        models trained with them, as SAM was; False where they are measured to hurt
        (``docs/evaluation.md``).
    """

    name: str
    filename: str
    url: str | None
    sha256: str
    size: int | None
    architecture: SamArchitecture | None
    description: str
    xxh128: str = ""
    domain: str = "general"
    approx_size: int | None = None
    speed: str = "medium"
    mask_prompts: bool = True

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"model {self.name!r}: unknown domain {self.domain!r}")
        if self.speed not in SPEEDS:
            raise ValueError(f"model {self.name!r}: unknown speed class {self.speed!r}")

    @property
    def bundled_path(self) -> Path | None:
        """Path of a checkpoint shipped inside the package, else None."""
        if self.url is not None:
            return None
        return Path(str(resources.files("napari_sam") / "data" / self.filename))

    @property
    def size_bytes(self) -> int | None:
        """The file's size in bytes, exact where known, else approximate (None if unknown)."""
        if self.size is not None:
            return self.size
        if self.approx_size is not None:
            return self.approx_size
        path = self.bundled_path
        return path.stat().st_size if path is not None and path.is_file() else None

    @property
    def hashes(self) -> dict[str, str]:
        """Expected digests by algorithm (``{"sha256": ...}`` and/or ``{"xxh128": ...}``)."""
        return {
            alg: value.lower()
            for alg, value in (("sha256", self.sha256), ("xxh128", self.xxh128))
            if value
        }

    @property
    def summary(self) -> str:
        """``"<domain>, <size>, <speed>: <description>"``: one line for a menu's tooltip."""
        return f"{self.domain}, {format_size(self.size_bytes)}, {self.speed}: {self.description}"


def format_size(n: int | None) -> str:
    """Bytes for people: ``"375 MB"``, ``"2.6 GB"``, ``"3 MB"`` (``"?"`` when unknown)."""
    if n is None:
        return "?"
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    return f"{max(1, round(n / 10**3))} kB"


_VIT_B, _VIT_L, _VIT_H, _VIT_T = (
    OFFICIAL_ARCHITECTURES[k] for k in ("vit_b", "vit_l", "vit_h", "vit_t")
)
# Approximate sizes of fine-tuned files (micro-sam publishes none): those of the architecture's
# original weights. And the speed class of each architecture.
_B, _L, _T = 375_000_000, 1_250_000_000, 40_700_000
_SIZE_SPEED = {_VIT_B: (_B, "medium"), _VIT_L: (_L, "slow"), _VIT_T: (_T, "fast")}


def _finetuned(
    name: str, path: str, xxh128: str, arch: SamArchitecture, domain: str, description: str
) -> ModelSpec:
    size, speed = _SIZE_SPEED[arch]
    url = path if path.startswith("https://") else _BIOIMAGE + path
    return ModelSpec(
        name,
        f"{name}.pt",
        url,
        "",
        None,
        arch,
        description,
        xxh128=xxh128,
        domain=domain,
        approx_size=size,
        speed=speed,
    )


MODELS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        _META + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
        _VIT_B,
        "Meta's SAM ViT-B: the default, good on most images",
    ),
    "vit_l": ModelSpec(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        _META + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        None,  # about 1.25 GB; the SHA-256 is what we check
        _VIT_L,
        "Meta's SAM ViT-L",
        approx_size=_L,
        speed="slow",
    ),
    "vit_h": ModelSpec(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        _META + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
        _VIT_H,
        "Meta's SAM ViT-H: the most accurate official model",
        speed="slowest",
    ),
    # MobileSAM as micro-sam hosts it, with micro-sam's xxh128 (MobileSAM's own repository
    # publishes no hash; the file is also at
    # https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt).
    "vit_t": ModelSpec(
        "vit_t",
        "mobile_sam.pt",
        _OWNCLOUD + "TuDzuwVDHd1ZDnQ/download",
        "",
        None,
        _VIT_T,
        "MobileSAM: SAM's decoder on a small TinyViT encoder, for laptops",
        xxh128="8eadbc88aeb9d8c7e0b4b60c3db48bd0",
        approx_size=_T,
        speed="fast",
    ),
    "vit_b_lm": _finetuned(
        "vit_b_lm",
        "diplomatic-bug/1.2/files/vit_b.pt",
        "fe9252a29f3f4ea53c15a06de471e186",
        _VIT_B,
        "light microscopy",
        "micro-sam's light-microscopy SAM (cells and nuclei), ViT-B",
    ),
    "vit_l_lm": _finetuned(
        "vit_l_lm",
        "idealistic-rat/1.2/files/vit_l.pt",
        "017f20677997d628426dec80a8018f9d",
        _VIT_L,
        "light microscopy",
        "micro-sam's light-microscopy SAM (cells and nuclei), ViT-L",
    ),
    "vit_t_lm": _finetuned(
        "vit_t_lm",
        "faithful-chicken/1.1/files/vit_t.pt",
        "72ec5074774761a6e5c05a08942f981e",
        _VIT_T,
        "light microscopy",
        "micro-sam's light-microscopy SAM (cells and nuclei), MobileSAM",
    ),
    "vit_b_em_organelles": _finetuned(
        "vit_b_em_organelles",
        "noisy-ox/1.2/files/vit_b.pt",
        "f3bf2ed83d691456bae2c3f9a05fb438",
        _VIT_B,
        "electron microscopy",
        "micro-sam's electron-microscopy SAM (organelles), ViT-B",
    ),
    "vit_l_em_organelles": _finetuned(
        "vit_l_em_organelles",
        "humorous-crab/1.2/files/vit_l.pt",
        "810b084b6e51acdbf760a993d8619f2d",
        _VIT_L,
        "electron microscopy",
        "micro-sam's electron-microscopy SAM (organelles), ViT-L",
    ),
    "vit_t_em_organelles": _finetuned(
        "vit_t_em_organelles",
        "greedy-whale/1/files/vit_t.pt",
        "253474720c497cce605e57c9b1d18fd9",
        _VIT_T,
        "electron microscopy",
        "micro-sam's electron-microscopy SAM (organelles), MobileSAM",
    ),
    "vit_b_histopathology": _finetuned(
        "vit_b_histopathology",
        _OWNCLOUD + "sBB4H8CTmIoBZsQ/download",
        "ffd1a2cd84570458b257bd95fdd8f974",
        _VIT_B,
        "histology",
        "micro-sam's histopathology SAM (nuclei in H&E), ViT-B",
    ),
    "vit_b_medical_imaging": _finetuned(
        "vit_b_medical_imaging",
        _OWNCLOUD + "f5Ol4FrjPQWfjUF/download",
        "40169f1e3c03a4b67bff58249c176d92",
        _VIT_B,
        "medical",
        "MedicoSAM (micro-sam): CT, MRI, ultrasound and more, ViT-B",
    ),
    "tiny": ModelSpec(
        "tiny",
        "tiny_sam.pt",
        None,
        "",  # bundled: filled in by scripts/train_tiny_sam.py's record, not verified
        None,
        None,
        "napari-sam's tiny test model (bundled, NOT a real SAM: for tests and offline demos)",
        domain="test",
        speed="instant",
        # Trained without mask prompts: they halve its IoU (docs/evaluation.md).
        mask_prompts=False,
    ),
}

DEFAULT_MODEL = "vit_b"


def models_by_domain(specs: Iterable[ModelSpec] | None = None) -> dict[str, list[ModelSpec]]:
    """Registry entries grouped by domain, in :data:`DOMAINS` order (empty domains left out).

    Parameters
    ----------
    specs : iterable of ModelSpec, optional
        Entries to group; default: all of :data:`MODELS`, in registry order within a domain.
    """
    groups: dict[str, list[ModelSpec]] = {d: [] for d in DOMAINS}
    for spec in MODELS.values() if specs is None else specs:
        groups.setdefault(spec.domain, []).append(spec)
    return {d: g for d, g in groups.items() if g}


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
