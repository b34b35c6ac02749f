"""SAM encoder attention with its decomposed relative-position term, as fused kernels run it.

Used by the fast encoder (:mod:`napari_sam.core._fast_modules`) and by the precision
calibration (:mod:`napari_sam.core.calibration`), which times this very code. The official
code materialises the full attention matrix, adds the decomposed relative-position bias as a
second full-size tensor and applies softmax as a third; here the bias is built once per group
of heads and handed to ``scaled_dot_product_attention`` as its additive mask (float32), or
folded into the queries and keys (reduced precision, global attention).

Importing this module imports torch and segment_anything's network classes; import it lazily.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .lazy_segment_anything import prepare

prepare()  # segment_anything's network classes, without its torchvision imports
from segment_anything.modeling import image_encoder as ie  # noqa: E402

__all__ = ["MAX_BIAS_BYTES", "encoder_attention", "rel_pos_bias", "scratch"]

#: Upper bound on the relative-position bias built at once (bytes). The global blocks of
#: ViT-B need 64 MiB per head in float32; building it for two heads at a time keeps the
#: peak memory down at no measurable cost in speed (64 MiB to 768 MiB measured the same).
MAX_BIAS_BYTES = 128 * 2**20


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decomposed relative-position bias of SAM's encoder as an additive attention mask.

    Parameters
    ----------
    q : Tensor
        Queries (B, heads, H * W, C), unscaled (any strides with a unit last stride).
    rel_pos_h, rel_pos_w : Tensor
        The attention module's relative-position tables.
    size : tuple of int
        (H, W): queries and keys share the same grid in SAM's encoder.
    out : Tensor, optional
        Flat buffer of at least B * heads * (H * W)**2 elements (any content) to write into.

    Returns
    -------
    Tensor
        (B, heads, H * W, H * W): ``bias[b, n, (i, j), (k, l)] = q . Rh[i, k] + q . Rw[j, l]``,
        the terms ``add_decomposed_rel_pos`` adds to the attention logits.
    """
    h, w = size
    b, n, _, _ = q.shape
    rel_h, rel_w = _rel_terms(q, rel_pos_h, rel_pos_w, size)
    size_out = b * n * h * w * h * w
    if out is None:
        out = rel_h.new_empty(size_out)
    out = out[:size_out]
    if rel_h.dtype != torch.float32 and h * w <= 1024:
        # Small windows in reduced precision: the broadcast addition is slow (short rows),
        # a matrix product with one-hot columns writes the same sums (exact: x*1 + y*1).
        onehot = _onehot(h, w, rel_h.dtype, rel_h.device)
        lhs = torch.cat([rel_h, rel_w], dim=-1).view(b * n, h * w, h + w)
        torch.matmul(lhs, onehot, out=out.view(b * n, h * w, h * w))
    else:
        torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out.view(b, n, h, w, h, w))
    return out.view(b, n, h * w, h * w)


@functools.lru_cache(maxsize=8)
def _onehot(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(h + w, h * w): column (k, l) has a one in row k and in row h + l."""
    rows = torch.eye(h, dtype=dtype, device=device).repeat_interleave(w, 0)
    cols = torch.eye(w, dtype=dtype, device=device).repeat(h, 1)
    return torch.cat([rows, cols], dim=1).t().contiguous()


#: Per-thread scratch memory of the encoder run in progress (see :func:`_workspace`).
_LOCAL = threading.local()


@contextlib.contextmanager
def scratch() -> Iterator[None]:
    """Scratch memory shared by the attention calls within (one encoder run), per thread."""
    outer = getattr(_LOCAL, "workspace", None)
    _LOCAL.workspace = {}
    try:
        yield
    finally:
        _LOCAL.workspace = outer


def _workspace(numel: int, like: torch.Tensor) -> torch.Tensor | None:
    """A flat scratch buffer shared by the blocks of one encoder run (None outside one).

    Fresh multi-megabyte allocations are page-faulted in by the kernel on every use; the
    bias of every block reuses one buffer instead. Per thread, so that two threads running
    the same encoder never share it.
    """
    ws = getattr(_LOCAL, "workspace", None)
    if ws is None:
        return None
    key = (like.dtype, like.device)
    buf = ws.get(key)
    if buf is None or buf.numel() < numel:
        ws.pop(key, None)
        buf = like.new_empty(numel)
        ws[key] = buf
    return buf


#: Global attention (more tokens than this) in reduced precision folds the bias into the
#: queries and keys instead of building it (see :func:`_augmented_attention`).
_AUGMENT_MIN_TOKENS = 1024


def _augmented_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """Attention with the decomposed relative-position bias folded into queries and keys.

    ``bias[i, (k, l)] = rel_h[i, k] + rel_w[i, l]`` is the dot product of
    ``[rel_h[i], rel_w[i]]`` with the one-hot vector of key (k, l)'s row and column, so
    ``[q * scale, rel_h, rel_w] . [k, onehot_row, onehot_col]`` gives the biased logits without
    the (heads, tokens, tokens) bias. The values are zero-padded to the same width (the fused
    kernel wants equal widths). Three times the product's arithmetic, but with bfloat16
    matrix units that is cheaper than writing and reading the bias (and it needs no memory
    for it).

    Returns
    -------
    Tensor
        (B, tokens, heads, C), contiguous.
    """
    h, w = size
    b, n, n_tok, c = q.shape
    rel_h, rel_w = _rel_terms(q, rel_pos_h, rel_pos_w, size)
    width = c + h + w
    qa = q.new_empty(b, n, n_tok, width)
    torch.mul(q, scale, out=qa[..., :c])
    grid = qa.view(b, n, h, w, width)
    grid[..., c : c + h] = rel_h
    grid[..., c + h :] = rel_w
    onehot = _onehot(h, w, q.dtype, q.device).t()  # (tokens, h + w)
    ka = k.new_empty(b, n, n_tok, width)
    ka[..., :c] = k
    ka[..., c:] = onehot
    va = v.new_zeros(b, n, n_tok, width)
    va[..., :c] = v
    out = F.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., :c]
    return out.transpose(1, 2).contiguous()


def _rel_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rel_h`` (B, heads, H, W, H) and ``rel_w`` (B, heads, H, W, W) of the official code."""
    h, w = size
    b, n, _, c = q.shape
    r_q = q.reshape(b, n, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, ie.get_rel_pos(h, h, rel_pos_h))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, ie.get_rel_pos(w, w, rel_pos_w))
    return rel_h, rel_w


def encoder_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """The encoder's attention with its relative-position term, in the dtype of ``q``.

    Parameters
    ----------
    q, k, v : Tensor
        (B, heads, tokens, C) with tokens = H * W (any strides with a unit last stride).
    rel_pos_h, rel_pos_w : Tensor
        The attention module's relative-position tables.
    size : tuple of int
        (H, W).
    scale : float
        The logits' scale.

    Returns
    -------
    Tensor
        (B, tokens, heads, C), contiguous.
    """
    h, w = size
    b, heads, n_tok, c = q.shape
    if q.dtype != torch.float32 and n_tok > _AUGMENT_MIN_TOKENS:
        return _augmented_attention(q, k, v, rel_pos_h, rel_pos_w, size, scale)
    out = q.new_empty(b, n_tok, heads, c)
    per_head = b * n_tok * n_tok
    group = max(1, min(heads, MAX_BIAS_BYTES // (per_head * q.element_size())))
    buf = _workspace(per_head * group, q)
    for h0 in range(0, heads, group):
        h1 = min(heads, h0 + group)
        qg = q[:, h0:h1]
        bias = rel_pos_bias(qg, rel_pos_h, rel_pos_w, (h, w), out=buf)
        o = F.scaled_dot_product_attention(
            qg, k[:, h0:h1], v[:, h0:h1], attn_mask=bias, scale=scale
        )
        out[:, :, h0:h1] = o.transpose(1, 2)
    return out
