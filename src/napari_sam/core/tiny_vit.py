"""MobileSAM's image encoder (TinyViT), written for inference, loading MobileSAM's weights as is.

MobileSAM (Zhang et al., 2023) keeps SAM's prompt encoder and mask decoder and replaces the
ViT image encoder by a TinyViT (Wu et al., 2022) distilled from SAM's ViT-H: 1/12 of ViT-B's
arithmetic (78 vs 972 GFLOP for a 1024 x 1024 image) for the same 256 x 64 x 64 embedding.
The network:

* a patch embedding of two stride-2 convolutions (1/4 resolution);
* stage 0: inverted-residual convolution blocks (MBConv);
* stages 1 to 3: transformer blocks with windowed attention plus a learned bias per relative
  offset inside a window, and a depthwise 3x3 convolution between attention and MLP;
* between stages a patch-merging convolution that halves the resolution, except before the
  last stage (MobileSAM keeps the 1/16 grid there: 64 x 64 for a 1024-pixel input);
* a neck (1x1 convolution, channel LayerNorm, 3x3 convolution, channel LayerNorm) to 256
  channels, as in SAM's ViT.

Parameter names are those of MobileSAM's ``mobile_sam.modeling.TinyViT`` so that its state
dicts (and micro-sam's fine-tuned ones) load with ``strict=True``; ``norm_head`` and ``head``
are TinyViT's classifier, unused by SAM, kept only so that the names match. Differences from
the reference code, with the same results to float rounding (see tests/core/test_tiny_vit.py):

* In eval mode every convolution + batch norm pair runs as one convolution whose weights are
  folded once per change of the parameters.
* Attention goes through ``scaled_dot_product_attention`` with the positional bias as its
  additive mask. The bias is gathered from the parameters whenever they change (the reference
  gathers it when ``eval()`` is called, so weights loaded after ``eval()`` need another call).
* The output grid is computed from the input size instead of being fixed at 64 x 64.

Importing this module imports torch; import it lazily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lazy_segment_anything import prepare

prepare()  # segment_anything's network classes, without its torchvision imports
from segment_anything.modeling.common import LayerNorm2d  # noqa: E402

__all__ = ["TinyViT"]


def _versions(*tensors: torch.Tensor) -> tuple:
    """What identifies the current values of ``tensors`` (storage, in-place version, dtype)."""
    return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)


def _version(t: torch.Tensor) -> int:
    # Inference tensors (made under torch.inference_mode) cannot change in place outside it
    # and keep no version counter.
    return -1 if t.is_inference() else t._version


class ConvBN(nn.Module):
    """Convolution without bias followed by batch norm (parameter names ``c``, ``bn``)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single convolution equal to ``bn(c(x))`` in eval mode."""
        c, bn = self.c, self.bn
        key = _versions(c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        cached = self.__dict__.get("_napari_sam_folded")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = c.weight * scale[:, None, None, None]
            bias = bn.bias - bn.running_mean * scale
        self.__dict__["_napari_sam_folded"] = (key, (weight, bias))
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        weight, bias = self.folded()
        c = self.c
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv with ``stride``, 1x1 conv; tokens (B, h * w, C) out."""

    def __init__(self, dim: int, out_dim: int, resolution: tuple[int, int], stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # tokens of a transformer stage -> (B, C, H, W)
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class WindowAttention(nn.Module):
    """Attention inside one window with a learned bias per head and (|dy|, |dx|) offset.

    Input and output: (windows, window * window, dim). The input is normalised here (the
    ``norm`` belongs to the attention, as in TinyViT). Per head the projection holds
    queries, keys and values one after the other (TinyViT's layout).
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Offsets (|dy|, |dx|) numbered |dy| * window + |dx|: TinyViT's numbering, which
        # follows the order in which offsets first occur from the window's first token.
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(heads, N, N) additive attention mask of the current parameters, in ``dtype``."""
        table = self.attention_biases
        key = (*_versions(table), dtype)
        cached = self.__dict__.get("_napari_sam_bias")
        if cached is not None and cached[0] == key:
            return cached[1]
        ws = self.window
        pos = torch.arange(ws, device=table.device)
        dy = (pos[:, None, None, None] - pos[None, None, :, None]).abs()
        dx = (pos[None, :, None, None] - pos[None, None, None, :]).abs()
        index = (dy * ws + dx).reshape(ws * ws, ws * ws)
        with torch.no_grad():
            bias = table[:, index].to(dtype)
        self.__dict__["_napari_sam_bias"] = (key, bias)
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.heads, 3, self.head_dim)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # (b, heads, n, d)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.bias(q.dtype), scale=self.head_dim**-0.5
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise 3x3 convolution, MLP; tokens (B, H * W, C) in and out."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], heads: int, window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        # Zero padding to whole windows, as TinyViT does (padded tokens take part as keys).
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        grid = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        out = self.attn(windows).view(b, nh, nw, ws, ws, c).transpose(2, 3)
        out = out.reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        return out.reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """Blocks at one resolution, then an optional patch merging (``downsample``)."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Two 3x3 stride-2 convolutions with a GELU between them: 1/4 resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: (B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16).

    Parameters
    ----------
    img_size : int
        Input side length S (SAM: 1024).
    dims, depths, heads, windows : sequence of int
        Per stage: width, number of blocks, attention heads and window side. Stage 0 is
        convolutional (its heads and window are not used). MobileSAM: (64, 128, 160, 320),
        (2, 2, 6, 2), (2, 4, 5, 10), (7, 7, 14, 7).
    mlp_ratio : float
        MLP width over block width in the attention stages.
    expand_ratio : float
        Hidden width over block width in the MBConv blocks.
    out_chans : int
        Channels of the embedding (SAM's prompt dimension, 256).
    num_classes : int
        Outputs of the unused classifier ``head`` (1000 in MobileSAM's files).
    """

    def __init__(
        self,
        img_size: int = 1024,
        dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        heads: tuple[int, ...] = (2, 4, 5, 10),
        windows: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        expand_ratio: float = 4.0,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(dims[0])
        side = img_size // 4
        self.layers = nn.ModuleList()
        last = len(dims) - 1
        for i, dim in enumerate(dims):
            res = (side, side)
            merge = None
            if i < last:
                # MobileSAM keeps the resolution when merging into the last stage.
                stride = 1 if i + 1 == last else 2
                merge = PatchMerging(dim, dims[i + 1], res, stride)
            if i == 0:
                blocks = [MBConv(dim, expand_ratio) for _ in range(depths[i])]
            else:
                blocks = [
                    TinyViTBlock(dim, res, heads[i], windows[i], mlp_ratio)
                    for _ in range(depths[i])
                ]
            self.layers.append(Stage(blocks, merge))
            if merge is not None and merge.conv2.c.stride[0] == 2:
                side = (side + 1) // 2
        self.grid = side
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def blocks(self) -> list[nn.Module]:
        """All blocks in running order (for progress reports; not a registered submodule)."""
        return [block for stage in self.layers for block in stage.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        return self.neck(x)
