"""A SAM network ready for inference, and where it came from (:class:`LoadedModel`).

Made by :mod:`.checkpoints` (``load_model``, ``random_model``), tuned by :mod:`.acceleration`,
used by the embedding and prediction code. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .architecture import SamArchitecture
from .precision_plan import PrecisionPlan

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """A SAM network ready for inference, with where it came from.

    Attributes
    ----------
    sam : segment_anything.modeling.Sam
        The network, in eval mode, on ``device``.
    name : str
        Registry name, ``"custom"`` for an unregistered checkpoint, or ``"random:<arch>"``.
    architecture : SamArchitecture
    checkpoint : Path or None
        The file the weights came from; None for random weights.
    sha256 : str or None
        SHA-256 of ``checkpoint``.
    device : str
        Resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    meta : dict
        Metadata stored in a napari-sam checkpoint (empty for official files); for random
        models ``{"random_seed": seed}``.
    fast : bool
        Whether the network runs napari-sam's faster modules (see
        :mod:`napari_sam.core.acceleration`) rather than the official ones.
    precision : str
        Precision of the image encoder, written as its :class:`PrecisionPlan` (``"fp32"``,
        ``"bf16"``, ``"fp16"`` or e.g. ``"linear=bf16,attention=fp32,neck=fp32"``).
    """

    sam: Sam
    name: str
    architecture: SamArchitecture
    checkpoint: Path | None
    sha256: str | None
    device: str
    meta: dict[str, Any] = field(default_factory=dict)
    fast: bool = False
    precision: str = "fp32"

    @property
    def plan(self) -> PrecisionPlan:
        """The image encoder's precision per operation (``precision`` read)."""
        return PrecisionPlan.parse(self.precision)

    @property
    def model_id(self) -> str:
        """Short stable identity of the weights, safe as a file name (for embedding caches).

        ``<name>-<first 16 hex of the SHA-256>`` for checkpoints; for random weights
        ``<name>-seed<seed>-<8 hex of the architecture>``. A reduced-precision encoder adds its
        plan's tag (``-bf16``, ``-fp16``, or per operation e.g. ``-linbf16-attfp32-neckfp32``):
        its embeddings differ slightly, so caches must not mix them with float32 ones or with
        another plan's (the fast and official float32 encoders agree to 1e-5 and share).
        """
        if self.sha256:
            ident = f"{self.name}-{self.sha256[:16]}"
        else:
            arch_json = json.dumps(self.architecture.to_dict(), sort_keys=True, default=str)
            digest = hashlib.sha256(arch_json.encode()).hexdigest()[:8]
            ident = f"{self.name}-seed{self.meta.get('random_seed', 0)}-{digest}"
        tag = self.plan.tag
        if tag:
            ident = f"{ident}-{tag}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", ident)
