"""Faster drop-in replacements for modules of the official ``segment_anything`` network.

Every class here subclasses the official one and only overrides ``forward`` (or a helper), so
the parameters, their names and the state dict are unchanged: :func:`swap_in` turns the
modules of a loaded network into these classes in place (by assigning ``__class__``) and
:func:`swap_out` turns them back. Importing this module imports torch; import it lazily.

What changes, and why (see ``docs/performance.md`` for the measurements):

* Image encoder attention: the official code materialises the full attention matrix, adds the
  decomposed relative-position bias as a second full-size tensor and applies softmax as a
  third (three 4096 x 4096 matrices per head in each global block). Here the fused kernel
  does it in one pass (:mod:`napari_sam.core._encoder_attention`).
* Image encoder precision: each operation (linear layers, attention, neck) in the format the
  encoder's :class:`PrecisionPlan` names (:mod:`napari_sam.core._precision_ops`).
* Mask decoder attention: ``scaled_dot_product_attention`` instead of matmul / softmax /
  matmul with the copies of the head split.
* Prompt encoder: the dense positional encoding (constant for a given network) is computed once.

Why one module of about 500 lines: each replacement mirrors one official class and must stay
next to the swap-in/swap-out tables that name them all, so that a reader checks the whole
replacement set (and its state-dict compatibility) in one place.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import _precision_ops as ops
from ._encoder_attention import encoder_attention, scratch
from .lazy_segment_anything import prepare
from .precision_plan import PrecisionPlan

prepare()  # segment_anything's network classes, without its torchvision imports
from segment_anything.modeling import common  # noqa: E402
from segment_anything.modeling import image_encoder as ie  # noqa: E402
from segment_anything.modeling import mask_decoder as md  # noqa: E402
from segment_anything.modeling import prompt_encoder as pe  # noqa: E402
from segment_anything.modeling import transformer as tr  # noqa: E402

#: Attribute holding the official class of a swapped module.
_ORIGINAL = "_napari_sam_official_class"
#: Attribute of the image encoder holding its :class:`PrecisionPlan` (see :func:`set_plan`).
_PLAN = "_napari_sam_plan"
_FP32 = PrecisionPlan()


class FastEncoderAttention(ie.Attention):
    """Encoder attention: fused attention with the relative-position bias as its mask.

    Within an encoder run the attention runs in the plan's ``attention`` format and the
    projections in its ``linear`` format (see :mod:`napari_sam.core._precision_ops`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, dim = x.shape
        heads = self.num_heads
        c = dim // heads
        n_tok = h * w
        plan = ops.current_plan()
        # (3, B, heads, tokens, C) as strided views of the projection: no copy.
        qkv = ops.linear(self, "qkv", x).view(b, n_tok, 3, heads, c).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        with contextlib.nullcontext() if plan is None else ops.region(plan.attention, x.device):
            if plan is not None:
                q, k, v = ops.to_format(plan.attention, q, k, v)
            if self.use_rel_pos:
                out = encoder_attention(
                    q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale
                )
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=self.scale).transpose(1, 2)
        out = out.reshape(b, h, w, dim)
        if plan is not None and plan.linear in ("fp32", "int8"):
            out = out.float()  # no autocast around the projection to cast it
        return ops.linear(self, "proj", out)


class FastImageEncoder(ie.ImageEncoderViT):
    """Image encoder running its :class:`PrecisionPlan`, whose blocks share scratch memory.

    The plan is set by :func:`set_plan` (float32 until then): linear layers (and the patch
    embedding) in one autocast region, attention and neck each in their own.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.__dict__.get(_PLAN) or _FP32
        with scratch(), ops.running(plan), ops.region(plan.linear, x.device):
            x = self.patch_embed(x)
            if self.pos_embed is not None:
                x = x + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            with ops.region(plan.neck, x.device):
                (x,) = ops.to_format(plan.neck, x)
                return self.neck(x.permute(0, 3, 1, 2))


class FastMLPBlock(common.MLPBlock):
    """MLP with its activation applied in place: one 4x-wide temporary fewer per block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = type(self.act)
        if act not in (nn.GELU, nn.ReLU) or getattr(self.act, "approximate", "none") != "none":
            return super().forward(x)
        h = ops.linear(self, "lin1", x)
        (torch.ops.aten.gelu_ if act is nn.GELU else torch.ops.aten.relu_)(h)
        return ops.linear(self, "lin2", h)


class FastBlock(ie.Block):
    """Encoder block: one copy fewer when windows are padded, residuals added in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, (hp, wp) = ie.window_partition(x, self.window_size)
            x = self.attn(x)
            ws = self.window_size
            b = x.shape[0] // ((hp // ws) * (wp // ws))
            x = x.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, hp, wp, -1)[:, :h, :w]  # a view when padded: no second copy
        else:
            x = self.attn(x)
        # The attention output is a new tensor (or a view of one): the residual is added in
        # place, in the residual's dtype (under autocast the output is bfloat16 and the
        # residual float32; a mixed-dtype addition into a new tensor is several times slower).
        x = x.to(shortcut.dtype).contiguous()
        x += shortcut
        x += self.mlp(self.norm2(x))
        return x


class FastDecoderAttention(tr.Attention):
    """Mask decoder attention through ``scaled_dot_product_attention``."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected queries, keys and values (then ``out_proj``)."""
        if k.shape[1] <= 32 and q.shape[1] >= 1024:
            return self.out_proj(_few_keys_attention(q, k, v, self.num_heads))
        q = self._separate_heads(q, self.num_heads)
        k = self._separate_heads(k, self.num_heads)
        v = self._separate_heads(v, self.num_heads)
        # Image tokens shared by all prompts come with batch size 1: broadcast, no copy.
        b = max(q.shape[0], k.shape[0])
        out = F.scaled_dot_product_attention(
            q.expand(b, -1, -1, -1), k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        )
        return self.out_proj(self._recombine_heads(out))


def _few_keys_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention of many queries (image tokens) to a few keys (prompt tokens).

    With 4096 queries and about 7 keys the softmax runs over rows of 7, which vectorises
    badly (3 ms per call in the fused kernel). Here all heads are one matrix product with
    block-diagonal keys, laid out so that the softmax runs along the queries.

    Parameters
    ----------
    q : Tensor
        (Bq, Nq, C) projected queries; Bq is 1 or B.
    k, v : Tensor
        (B, Nk, C) projected keys and values.

    Returns
    -------
    Tensor
        (B, Nq, C) as a transposed view (``out_proj`` multiplies it without a copy).
    """
    b, n_k, c = k.shape
    d = c // heads
    # (heads, 1, C) selector of each head's channels -> block-diagonal (B, heads * Nk, C).
    sel = torch.eye(heads, dtype=k.dtype, device=k.device).repeat_interleave(d, dim=1)
    k_bd = (k[:, None] * sel[None, :, None, :]).reshape(b, heads * n_k, c)
    v_bd = (v[:, None] * sel[None, :, None, :]).reshape(b, heads * n_k, c)
    logits = torch.matmul(k_bd, q.transpose(1, 2)).mul_(d**-0.5)  # (B, heads * Nk, Nq)
    weights = torch.softmax(logits.view(b, heads, n_k, -1), dim=2).view(b, heads * n_k, -1)
    return torch.matmul(v_bd.transpose(1, 2), weights).transpose(1, 2)


class FastTwoWayAttentionBlock(tr.TwoWayAttentionBlock):
    """Decoder block; with ``image_cache`` the projections of image-only tokens are reused."""

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_cache: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        # Projections of the image tokens alone: (t2i keys, t2i values, i2t queries).
        image = None if image_cache is None else image_cache.get("projections")
        if image is None:
            k = keys + key_pe
            image = (t2i.k_proj(k), t2i.v_proj(keys), i2t.q_proj(k))
            if image_cache is not None:
                image_cache["projections"] = image  # one assignment: safe across threads
        q = queries + query_pe
        queries = queries + t2i.attend(t2i.q_proj(q), image[0], image[1])
        queries = self.norm2(queries)
        queries = queries + self.mlp(queries)
        queries = self.norm3(queries)

        q = queries + query_pe
        attn_out = i2t.attend(image[2], i2t.k_proj(q), i2t.v_proj(queries))
        keys = self.norm4(attn_out.add_(keys))  # attn_out is new: add in place
        return queries, keys


class FastLayerNorm2d(common.LayerNorm2d):
    """Channel LayerNorm in one fused pass when channels are innermost in memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        return super().forward(x)


class FastTwoWayTransformer(tr.TwoWayTransformer):
    """The decoder transformer on token-major (B, h * w, C) image tokens."""

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return self.forward_tokens(keys, key_pe, point_embedding)

    def forward_tokens(
        self,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        image_cache: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``forward`` with image tokens already token-major and contiguous.

        ``keys`` and ``key_pe`` may have batch size 1 while the prompts have B: what depends
        on the image alone (the first layer's image projections) is then computed once,
        not once per prompt. ``image_cache`` (a dict, empty at first) keeps those projections
        for later calls with the same ``keys`` (the next click on the same image).
        """
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries=queries,
                keys=keys,
                query_pe=point_embedding,
                key_pe=key_pe,
                image_cache=image_cache if i == 0 else None,
            )
        q = queries + point_embedding
        k = keys + key_pe
        attn_out = self.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = queries + attn_out
        queries = self.norm_final_attn(queries)
        return queries, keys


class FastMaskDecoder(md.MaskDecoder):
    """Mask decoder keeping image tokens contiguous and token-major from end to end.

    The official decoder copies the image embedding once per prompt and works on transposed
    views (every addition and projection then strides through memory). Here the embedding is
    transposed once per image (cached), prompts share it by broadcasting, and the upscaling
    convolutions run channels-last.
    """

    def _tokens(self, image: torch.Tensor, slot: str) -> torch.Tensor:
        """(1, C, h, w) -> contiguous (1, h * w, C), remembered for the last tensor per slot.

        The embedding of an image is reused for every click on it: transpose it once. (The
        cache holds on to the tensor by identity: do not modify embeddings in place.)
        """
        cached = self.__dict__.get(slot)
        if cached is not None and cached[0]() is image:
            return cached[1]
        tokens = image.flatten(2).transpose(1, 2).contiguous()
        self.__dict__[slot] = (weakref.ref(image), tokens)
        return tokens

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image_embeddings.shape[0] != 1 or image_pe.shape[0] != 1:
            return super().forward(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                multimask_output,
            )
        wanted = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred = self._predict(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, wanted
        )
        return masks, iou_pred[:, wanted]

    def _image_src(
        self, image_embeddings: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Image tokens plus the dense prompt embedding, and the image-only cache if any."""
        keys = self._tokens(image_embeddings, "_napari_sam_tokens")
        per_pixel = dense.stride(2) != 0 or dense.stride(3) != 0
        if per_pixel or (dense.shape[0] > 1 and dense.stride(0) != 0):
            # A mask prompt: a different embedding per prompt and pixel.
            b, c, h, w = dense.shape
            src = torch.empty(b, h * w, c, dtype=keys.dtype, device=keys.device)
            torch.add(keys, dense.flatten(2).transpose(1, 2), out=src)
            return src, None
        # No mask prompt: one embedding for every pixel and prompt (batch of 1), so the
        # first layer's image projections can be kept for the next prompts on this image.
        vec = dense[:1, :, 0, 0]
        ident = (vec.data_ptr(), vec._version if not vec.is_inference() else -1)
        cached = self.__dict__.get("_napari_sam_src")
        if cached is not None and cached[0]() is image_embeddings and cached[1] == ident:
            return cached[2], cached[3]
        src = keys + vec[:, None, :]
        cache: dict[str, torch.Tensor] = {}
        self.__dict__["_napari_sam_src"] = (weakref.ref(image_embeddings), ident, src, cache)
        return src, cache

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        ups = self.output_upscaling
        acts = [m for m in ups if not isinstance(m, nn.ConvTranspose2d | common.LayerNorm2d)]
        if len(ups) != 5 or not all(
            type(a) is nn.GELU and a.approximate == "none" for a in acts
        ):  # pragma: no cover - not SAM's decoder
            return ups(x)
        x = ups[1](ups[0](x))
        torch.ops.aten.gelu_(x)
        x = ups[3](x)
        torch.ops.aten.gelu_(x)
        return x

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First half of ``predict_masks`` (one image): output tokens and image tokens."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        src, cache = self._image_src(image_embeddings, dense_prompt_embeddings)
        key_pe = self._tokens(image_pe, "_napari_sam_pe_tokens")
        return self.transformer.forward_tokens(src, key_pe, tokens, image_cache=cache)

    def predict_iou(self, hs: torch.Tensor) -> torch.Tensor:
        """Predicted IoU of every mask token, (B, num_mask_tokens), from the output tokens."""
        return self.iou_prediction_head(hs[:, 0, :])

    def predict_low_res(
        self, hs: torch.Tensor, src: torch.Tensor, size: tuple[int, int], wanted: slice
    ) -> torch.Tensor:
        """Low-resolution logits (B, K, 4h, 4w) of the mask tokens in ``wanted``.

        The expensive half of the decoder for many prompts (upscaling per prompt): callers
        that filter on :meth:`predict_iou` first only pay it for the prompts they keep.
        """
        h, w = size
        c = src.shape[-1]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        # (B, h * w, C) token-major is (B, C, h, w) channels-last: no copy.
        upscaled = self._upscale(src.view(-1, h, w, c).permute(0, 3, 1, 2))
        mlps = list(enumerate(self.output_hypernetworks_mlps))[wanted]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in mlps], dim=1)
        b2, c2, h2, w2 = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b2, h2 * w2, c2)
        return torch.matmul(hyper_in, pixels.transpose(1, 2)).view(b2, -1, h2, w2)

    def _predict(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        wanted: slice,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks`` for one image, masks only for the mask tokens in ``wanted``."""
        hs, src = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks = self.predict_low_res(hs, src, image_embeddings.shape[-2:], wanted)
        return masks, self.predict_iou(hs)


class FastPromptEncoder(pe.PromptEncoder):
    """Prompt encoder whose dense positional encoding is computed once, not per prompt."""

    def get_dense_pe(self) -> torch.Tensor:
        gauss = self.pe_layer.positional_encoding_gaussian_matrix
        key = (gauss.device, gauss.data_ptr(), gauss._version, tuple(self.image_embedding_size))
        cached = self.__dict__.get("_napari_sam_dense_pe")
        if cached is None or cached[0] != key:
            cached = (key, super().get_dense_pe())
            self.__dict__["_napari_sam_dense_pe"] = cached
        return cached[1]


#: Official class -> faster subclass.
REPLACEMENTS: dict[type, type] = {
    ie.ImageEncoderViT: FastImageEncoder,
    common.MLPBlock: FastMLPBlock,
    ie.Attention: FastEncoderAttention,
    ie.Block: FastBlock,
    tr.Attention: FastDecoderAttention,
    tr.TwoWayTransformer: FastTwoWayTransformer,
    tr.TwoWayAttentionBlock: FastTwoWayAttentionBlock,
    md.MaskDecoder: FastMaskDecoder,
    common.LayerNorm2d: FastLayerNorm2d,
    pe.PromptEncoder: FastPromptEncoder,
}

#: Per-instance caches, dropped when a module is swapped back.
_CACHES = (
    "_napari_sam_dense_pe",
    "_napari_sam_tokens",
    "_napari_sam_pe_tokens",
    "_napari_sam_src",
    _PLAN,
    ops.INT8_CACHE,
)


def swap_in(model: torch.nn.Module) -> int:
    """Give every official module in ``model`` its faster subclass, in place.

    Returns
    -------
    int
        The number of modules swapped (0 when all were already fast).
    """
    n = 0
    for module in model.modules():
        fast = REPLACEMENTS.get(type(module))
        if fast is not None:
            module.__dict__[_ORIGINAL] = type(module)
            module.__class__ = fast
            n += 1
    return n


def swap_out(model: torch.nn.Module) -> int:
    """Undo :func:`swap_in`: the official classes again, caches dropped. Returns the count."""
    n = 0
    for module in model.modules():
        original = module.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            module.__class__ = original
            for name in _CACHES:
                module.__dict__.pop(name, None)
            n += 1
    return n


def is_swapped(model: torch.nn.Module) -> bool:
    """True when some module of ``model`` runs a faster subclass."""
    return any(_ORIGINAL in m.__dict__ for m in model.modules())


def set_plan(model: torch.nn.Module, plan: PrecisionPlan) -> None:
    """Give the fast image encoder of ``model`` its precision plan.

    Packed int8 weights are dropped when the plan no longer runs int8 linear layers.
    """
    for module in model.modules():
        if isinstance(module, FastImageEncoder):
            module.__dict__[_PLAN] = plan
        if plan.linear != "int8":
            module.__dict__.pop(ops.INT8_CACHE, None)
