"""SAM architectures: the numbers that define a network, and building it from them.

Official checkpoints only hold weights; their architecture is one of the three registry
entries. Checkpoints written by napari-sam (the tiny test model, fine-tuned variants) carry their
architecture with them, so any geometry-compatible SAM can be loaded without code changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of a SAM network (image encoder, prompt encoder, mask decoder).

    The defaults are those of the official ``vit_b`` model except for the encoder size.
    ``image_size`` and ``patch_size`` set the geometry: 1024 / 16 gives the 64x64 embedding
    and the 256x256 low-resolution masks that every official SAM uses.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def embedding_size(self) -> int:
        """Side length of the image embedding grid (64 for official SAM)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary, safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        d["pixel_mean"] = list(self.pixel_mean)
        d["pixel_std"] = list(self.pixel_std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamArchitecture:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(
                f"checkpoint architecture has unknown fields {sorted(unknown)}; "
                "it was written by a newer napari-sam"
            )
        kw = dict(d)
        for key in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


#: Architectures of Meta's official checkpoints (segment_anything/build_sam.py).
OFFICIAL_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam(arch: SamArchitecture) -> Sam:
    """Build an (untrained) SAM network with the given architecture, in eval mode on the CPU.

    Parameters
    ----------
    arch : SamArchitecture
        The hyper-parameters.

    Returns
    -------
    segment_anything.modeling.Sam
        The network with freshly initialised weights.
    """
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = arch.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.encoder_window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )
    sam.eval()
    return sam


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str, SamArchitecture]:
    """Recognise an official SAM architecture from a state dict's tensor shapes.

    Parameters
    ----------
    state_dict : mapping
        Weights as saved by Meta (keys ``image_encoder.*``, ``prompt_encoder.*``,
        ``mask_decoder.*``).

    Returns
    -------
    name : str
        ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
    arch : SamArchitecture

    Raises
    ------
    CheckpointError
        If the weights are not those of a SAM whose architecture is known.
    """
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise CheckpointError(
            "file does not hold SAM weights (no image_encoder.patch_embed in it); "
            "is it a SAM checkpoint? MobileSAM/SAM2/HQ-SAM checkpoints are not supported"
        )
    width = int(state_dict[key].shape[0])
    depth = 1 + max(
        int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")
    )
    for name, arch in OFFICIAL_ARCHITECTURES.items():
        if arch.encoder_embed_dim == width and arch.encoder_depth == depth:
            return name, arch
    raise CheckpointError(
        f"unknown SAM encoder (width {width}, depth {depth}): not vit_b, vit_l or vit_h, "
        "and the file carries no architecture of its own"
    )
