"""SAM architectures: the numbers that define a network, and building it from them.

Official checkpoints only hold weights; their architecture is one of the published ones
(Meta's ViT-B/L/H, MobileSAM's TinyViT ``vit_t``), recognised from the tensor shapes.
Checkpoints written by napari-sam (the tiny test model, fine-tuned variants) carry their
architecture with them, so any geometry-compatible SAM can be loaded without code changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of a SAM network (image encoder, prompt encoder, mask decoder).

    The defaults are those of the official ``vit_b`` model except for the encoder size.
    ``image_size`` and ``patch_size`` set the geometry: 1024 / 16 gives the 64x64 embedding
    and the 256x256 low-resolution masks that every official SAM uses.

    ``encoder_type`` is ``"vit"`` (SAM's ViT) or ``"tiny_vit"`` (MobileSAM's TinyViT, see
    :mod:`napari_sam.core.tiny_vit`). A TinyViT is described per stage by the
    ``encoder_stage_*`` fields (empty for a ViT); its ``encoder_embed_dim``,
    ``encoder_depth`` and ``encoder_num_heads`` are then those of the last stage, the total
    number of blocks and the last stage's heads, and ``patch_size`` its overall stride.
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
    encoder_type: str = "vit"
    encoder_stage_dims: tuple[int, ...] = ()
    encoder_stage_depths: tuple[int, ...] = ()
    encoder_stage_heads: tuple[int, ...] = ()
    encoder_stage_windows: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        stages = [getattr(self, k) for k in _STAGE_FIELDS]
        if self.encoder_type == "vit":
            if any(stages):
                raise ValueError("a ViT encoder takes no encoder_stage_* fields")
            return
        if self.encoder_type != "tiny_vit":
            raise ValueError(f"unknown encoder_type {self.encoder_type!r}; use vit or tiny_vit")
        n = len(self.encoder_stage_dims)
        if n < 2 or any(len(s) != n for s in stages):
            raise ValueError(
                "a TinyViT needs 2 or more stages, each with dim, depth, heads and window"
            )
        derived = (
            self.encoder_stage_dims[-1],
            sum(self.encoder_stage_depths),
            self.encoder_stage_heads[-1],
            4 * 2 ** (n - 2),
        )
        if derived != (
            self.encoder_embed_dim,
            self.encoder_depth,
            self.encoder_num_heads,
            self.patch_size,
        ):
            raise ValueError(
                "TinyViT: encoder_embed_dim, encoder_depth, encoder_num_heads and patch_size "
                f"must be {derived} (last width, total blocks, last heads, overall stride)"
            )

    @property
    def embedding_size(self) -> int:
        """Side length of the image embedding grid (64 for official SAM)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary, safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        for key in _TUPLE_FIELDS:
            d[key] = list(d[key])
        if self.encoder_type == "vit":
            # Left out for a ViT, so that files stay readable by napari-sam versions that
            # know no other encoder, and model ids of ViT architectures do not change.
            for key in ("encoder_type", *_STAGE_FIELDS):
                del d[key]
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
        for key in _TUPLE_FIELDS:
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


_STAGE_FIELDS = (
    "encoder_stage_dims",
    "encoder_stage_depths",
    "encoder_stage_heads",
    "encoder_stage_windows",
)
_TUPLE_FIELDS = ("encoder_global_attn_indexes", "pixel_mean", "pixel_std", *_STAGE_FIELDS)

#: Architectures of published checkpoints: Meta's (segment_anything/build_sam.py) and
#: MobileSAM's ``vit_t`` (mobile_sam/build_sam.py: a TinyViT encoder, SAM's decoder).
OFFICIAL_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "vit_t": SamArchitecture(
        320,
        12,
        10,
        (),
        encoder_type="tiny_vit",
        encoder_stage_dims=(64, 128, 160, 320),
        encoder_stage_depths=(2, 2, 6, 2),
        encoder_stage_heads=(2, 4, 5, 10),
        encoder_stage_windows=(7, 7, 14, 7),
    ),
}


def build_sam(arch: SamArchitecture, *, empty: bool = False) -> Sam:
    """Build a SAM network with the given architecture, in eval mode on the CPU.

    Parameters
    ----------
    arch : SamArchitecture
        The hyper-parameters.
    empty : bool
        Skip the random initialisation (seconds for ViT-B, that a checkpoint would overwrite):
        the tensors are allocated but not filled. Give the network its weights with
        :func:`assign_weights`.

    Returns
    -------
    segment_anything.modeling.Sam
        The network, with freshly initialised weights unless ``empty``.
    """
    with _skip_init() if empty else nullcontext():
        sam = _build(arch)
    sam.eval()
    return sam


#: Functions that fill tensors at construction: random or constant initialisation.
_INIT_FUNCTIONS = frozenset(
    {
        "uniform_",
        "normal_",
        "zero_",
        "fill_",
        "constant_",
        "ones_",
        "zeros_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "trunc_normal_",
    }
)
_RANDOM_FACTORIES = frozenset({"randn", "rand"})


def _skip_init():
    """A torch function mode (this thread only) in which initialisers leave tensors unfilled.

    (torch's meta device would skip the allocation too, but its random-number kernels import
    ``torch._dynamo``: seconds of start-up, more than the allocation costs.)
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in _INIT_FUNCTIONS:
                # torch.nn.init passes its tensor by keyword, Tensor methods as self
                target = args[0] if args else kwargs.get("tensor")
                if isinstance(target, torch.Tensor):
                    return target
            if name in _RANDOM_FACTORIES and func in (torch.randn, torch.rand):
                kwargs.pop("generator", None)
                return torch.empty(*args, **kwargs)
            return func(*args, **kwargs)

    return SkipInit()


def _build(arch: SamArchitecture) -> Sam:
    from .lazy_segment_anything import prepare

    prepare()  # segment_anything's network classes, without its torchvision imports
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.embedding_size
    return Sam(
        image_encoder=_image_encoder(arch),
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


def _image_encoder(arch: SamArchitecture) -> torch.nn.Module:
    if arch.encoder_type == "tiny_vit":
        from .tiny_vit import TinyViT

        return TinyViT(
            img_size=arch.image_size,
            dims=arch.encoder_stage_dims,
            depths=arch.encoder_stage_depths,
            heads=arch.encoder_stage_heads,
            windows=arch.encoder_stage_windows,
            mlp_ratio=arch.encoder_mlp_ratio,
            out_chans=arch.prompt_embed_dim,
        )
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
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
    )


def assign_weights(sam: Sam, arch: SamArchitecture, state_dict: Mapping[str, Any]) -> None:
    """Give a network built by :func:`build_sam` (``empty`` or not) exactly these weights.

    The tensors of ``state_dict`` become the network's parameters (no copy; floating-point
    tensors of another precision, e.g. a half-precision file, are cast to the network's).
    SAM's pixel statistics, which no checkpoint holds, are set from ``arch``.

    Raises
    ------
    RuntimeError
        From ``load_state_dict(strict=True)`` when the names or shapes do not fit.
    CheckpointError
        If the network has a tensor that neither the weights nor ``arch`` give a value.
    """
    import torch

    expected = sam.state_dict()
    weights = {}
    for k, v in state_dict.items():
        want = expected.get(k)
        if (
            isinstance(v, torch.Tensor)
            and want is not None
            and v.dtype != want.dtype
            and v.is_floating_point()
            and want.is_floating_point()
        ):
            v = v.to(want.dtype)
        weights[k] = v
    sam.load_state_dict(weights, strict=True, assign=True)
    # Buffers outside the state dict (persistent=False): SAM's input normalisation.
    sam.pixel_mean = torch.tensor(arch.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
    sam.pixel_std = torch.tensor(arch.pixel_std, dtype=torch.float32).view(-1, 1, 1)
    # Any other buffer outside the state dict would keep what construction left in it.
    left = {n for n, _ in sam.named_buffers()} - set(weights) - {"pixel_mean", "pixel_std"}
    if left:
        raise CheckpointError(
            f"{len(left)} tensors of the network get no value from the weights (e.g. {min(left)})"
        )


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str, SamArchitecture]:
    """Recognise a published SAM architecture from a state dict's tensor shapes.

    Parameters
    ----------
    state_dict : mapping
        Weights as saved by Meta or MobileSAM (keys ``image_encoder.*``, ``prompt_encoder.*``,
        ``mask_decoder.*``).

    Returns
    -------
    name : str
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"vit_t"``.
    arch : SamArchitecture

    Raises
    ------
    CheckpointError
        If the weights are not those of a SAM whose architecture is known.
    """
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        return _infer_tiny_vit(state_dict)
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise CheckpointError(
            "file does not hold SAM weights (no image_encoder.patch_embed in it); "
            "is it a SAM checkpoint? SAM 2 and HQ-SAM checkpoints are not supported"
        )
    width = int(state_dict[key].shape[0])
    depth = 1 + max(
        int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")
    )
    for name, arch in OFFICIAL_ARCHITECTURES.items():
        if arch.encoder_type == "vit" and (arch.encoder_embed_dim, arch.encoder_depth) == (
            width,
            depth,
        ):
            return name, arch
    raise CheckpointError(
        f"unknown SAM encoder (width {width}, depth {depth}): not vit_b, vit_l or vit_h, "
        "and the file carries no architecture of its own"
    )


def _infer_tiny_vit(state_dict: Mapping[str, Any]) -> tuple[str, SamArchitecture]:
    """Recognise MobileSAM's TinyViT from its stage widths, depths, heads and windows."""
    prefix = "image_encoder.layers."
    depths: dict[int, int] = {}
    for k in state_dict:
        if k.startswith(prefix) and ".blocks." in k:
            stage, _, block = k[len(prefix) :].split(".")[:3]
            depths[int(stage)] = max(depths.get(int(stage), 0), int(block) + 1)
    n = len(depths)
    dims = [int(state_dict[f"{prefix}0.blocks.0.conv1.c.weight"].shape[1])]
    heads, windows = [], []
    for i in range(1, n):
        dims.append(int(state_dict[f"{prefix}{i}.blocks.0.attn.norm.weight"].shape[0]))
        table = state_dict[f"{prefix}{i}.blocks.0.attn.attention_biases"]
        heads.append(int(table.shape[0]))
        windows.append(round(int(table.shape[1]) ** 0.5))
    found = (tuple(dims), tuple(depths[i] for i in range(n)), tuple(heads), tuple(windows))
    for name, arch in OFFICIAL_ARCHITECTURES.items():
        if (
            arch.encoder_type == "tiny_vit"
            and found
            == (
                arch.encoder_stage_dims,
                arch.encoder_stage_depths,
                arch.encoder_stage_heads[1:],  # stage 0 is convolutional: no heads, no windows
                arch.encoder_stage_windows[1:],
            )
        ):
            return name, arch
    raise CheckpointError(
        f"unknown TinyViT encoder (stage widths {dims}, depths {list(found[1])}): not "
        "MobileSAM's vit_t, and the file carries no architecture of its own"
    )
