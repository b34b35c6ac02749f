"""Train napari-sam's tiny SAM: a test model with real SAM geometry, trained on CPU.

The network is built from ``segment_anything.modeling`` classes with the geometry of the official
models (1024 px input, 16 px patches -> 64x64 embedding, 256x256 low-resolution masks), but it is
narrow and shallow so that it trains on 2 CPU cores (about 2 hours for the committed
checkpoint, in four runs: see docs/tiny-model.md). It learns box and point
prompts on procedurally generated cell-like images (``napari_sam.core.synthetic``) and on
crops of permissively licensed real images in ``tests/data/real`` (see ATTRIBUTION.md there).
The held-out real images (cb4df20a83, 4d14a3629b) are never used here.

It is NOT a real SAM: it knows blobs and nuclei, nothing else.

Usage::

    python scripts/train_tiny_sam.py --out src/napari_sam/data/tiny_sam.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from napari_sam.core.architecture import SamArchitecture, build_sam
from napari_sam.core.synthetic import make_cells

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"
#: Real images used for training; the others in tests/data/real are held out for evaluation.
TRAIN_REAL = [
    ("0287e7ee5b_image.png", "0287e7ee5b_labels.tif"),
    ("00ae65c1c6_image.png", "00ae65c1c6_labels.tif"),
    ("08275a5b1c_image.png", "08275a5b1c_labels.tif"),
    ("set1_image_raw.tif", "set1_labels.tif"),
]

TINY_ARCH = SamArchitecture(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=2,
    # Windowed attention only: a global block over 4096 tokens costs a third of a training
    # step; the decoder's two-way transformer still sees the whole image.
    encoder_global_attn_indexes=(),
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)
IMG = 1024
LOW = 256


def to_uint8(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Percentile-normalise (as the engine does by default) to uint8 RGB."""
    if img.dtype == np.uint8:
        out = img
    else:
        img = img.astype(np.float32)
        lo, hi = np.percentile(img, [1.0, 99.8])
        out = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, -1)
    return np.ascontiguousarray(out[..., :3])


def load_real() -> list[tuple[np.ndarray, np.ndarray]]:
    import imageio.v3 as iio
    import tifffile

    data = []
    for im_name, lab_name in TRAIN_REAL:
        p = REAL / im_name
        img = tifffile.imread(p) if p.suffix == ".tif" else iio.imread(p)
        if img.ndim == 3:
            img = img[..., :3]
        lab = tifffile.imread(REAL / lab_name).astype(np.int32)
        data.append((img, lab))
    return data


def sample_real(rng, real):
    img, lab = real[rng.integers(len(real))]
    h, w = lab.shape
    # Up to the whole image: at inference a large image is seen zoomed out (scale ~1).
    size = int(rng.integers(192, min(h, w) + 1))
    ch = min(h, size)
    cw = min(w, int(size * rng.uniform(0.75, 1.33)))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    img = img[y0 : y0 + ch, x0 : x0 + cw]
    lab = lab[y0 : y0 + ch, x0 : x0 + cw]
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k).copy(), np.rot90(lab, k).copy()
    if rng.random() < 0.5:
        img, lab = img[:, ::-1].copy(), lab[:, ::-1].copy()
    return img, lab


def sample_synthetic(rng, easy: bool = False):
    h = int(rng.choice([192, 256, 256, 320]))
    w = int(rng.choice([192, 256, 256, 320]))
    if easy:
        # Curriculum: a few large objects first, so that the decoder learns to produce masks
        # at all before it has to pick one object out of many.
        s = make_cells((h, w), seed=rng, radius_range=(10, 60), n_objects=int(rng.integers(1, 4)))
    else:
        s = make_cells((h, w), seed=rng, radius_range=(4, 60))
    return s.image, s.labels


def preprocess(rgb: np.ndarray) -> tuple[torch.Tensor, float]:
    """uint8 (H, W, 3) -> float (3, 1024, 1024) resized longest side to 1024, zero padded."""
    h, w = rgb.shape[:2]
    scale = IMG / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, (nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(TINY_ARCH.pixel_mean).view(3, 1, 1)
    std = torch.tensor(TINY_ARCH.pixel_std).view(3, 1, 1)
    t = (t - mean) / std
    return F.pad(t, (0, IMG - nw, 0, IMG - nh)), scale


def lowres_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    """Instance labels resampled (nearest) into the (256, 256) low-resolution padded frame.

    One resampling per image, then one comparison per object: resampling each object's mask
    separately cost more than the network's forward pass.
    """
    h, w = labels.shape
    nh, nw = round(h * scale / 4), round(w * scale / 4)
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
    out = np.zeros((LOW, LOW), labels.dtype)
    out[:nh, :nw] = labels[rows[:, None], cols[None, :]]
    return out


def make_prompts(rng, lab: np.ndarray, scale: float, max_objects: int):
    """Pick objects; make box, one-click and multi-point prompts (coords in the 1024 frame)."""
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return []
    ids = rng.permutation(ids)[:max_objects]
    slices = ndi.find_objects(lab)
    low = lowres_labels(lab, scale)
    out = []
    for i in ids:
        sl = slices[i - 1]
        if sl is None:
            continue
        target = low == i
        if target.sum() < 3:  # too small to see at the decoder's resolution
            continue
        m = lab == i
        ys, xs = np.nonzero(m[sl])
        ys = ys + sl[0].start
        xs = xs + sl[1].start
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        kind = rng.choice(["box", "click", "points"], p=[0.45, 0.4, 0.15])
        pts, pl, box = None, None, None
        if kind == "box":
            bh, bw = y1 - y0, x1 - x0
            jit = rng.normal(0, 0.08, 4) * np.array([bw, bh, bw, bh])
            jit = np.clip(jit, -15, 15)
            box = np.array([x0, y0, x1, y1], np.float32) + jit
            if rng.random() < 0.2:  # box plus a click, as users do
                j = rng.integers(len(ys))
                pts, pl = np.array([[xs[j] + 0.5, ys[j] + 0.5]]), np.array([1])
                kind = "box+click"
        elif kind == "click":
            # Interior-biased: pick among pixels weighted by distance to the border.
            d = ndi.distance_transform_edt(m[sl])[m[sl]]
            p = d / d.sum()
            j = rng.choice(len(ys), p=p) if rng.random() < 0.7 else rng.integers(len(ys))
            pts, pl = np.array([[xs[j] + 0.5, ys[j] + 0.5]]), np.array([1])
        else:
            npos = int(rng.integers(1, 4))
            jp = rng.integers(len(ys), size=npos)
            pts = [[xs[j] + 0.5, ys[j] + 0.5] for j in jp]
            pl = [1] * npos
            # A negative click on a neighbouring object or the background near the box.
            ring = ndi.binary_dilation(m, iterations=8) & ~m
            ry, rx = np.nonzero(ring)
            if len(ry) and rng.random() < 0.8:
                j = rng.integers(len(ry))
                pts.append([rx[j] + 0.5, ry[j] + 0.5])
                pl.append(0)
            pts, pl = np.array(pts), np.array(pl)
        # Where the loss looks hardest: the object and a margin as large as the object, in the
        # 256x256 low-resolution frame. Without it, small objects drown in background pixels
        # and the decoder learns to predict nothing.
        f = scale / 4
        my, mx = max(4.0, (y1 - y0) * f), max(4.0, (x1 - x0) * f)
        window = (
            max(0, int(y0 * f - my)),
            min(LOW, int(np.ceil(y1 * f + my))),
            max(0, int(x0 * f - mx)),
            min(LOW, int(np.ceil(x1 * f + mx))),
        )
        out.append(
            {
                "window": window,
                "kind": str(kind),
                "box": None if box is None else box * scale,
                "points": None if pts is None else pts * scale,
                "labels": pl,
                "target": torch.from_numpy(target.astype(np.float32)),
            }
        )
    return out


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def prompt_key(prompt: dict) -> tuple[int, bool, str]:
    """Prompts with the same key have the same token layout and are decoded as one batch."""
    n = 0 if prompt["points"] is None else len(prompt["points"])
    return n, prompt["box"] is not None, prompt["kind"]


def decode_batch(sam, emb: torch.Tensor, prompts: list[dict]):
    """Prompt encoder + decoder for prompts of one key; returns (N, 4, 256, 256), (N, 4)."""
    dev = emb.device
    pts = None
    if prompts[0]["points"] is not None:
        pts = (
            torch.as_tensor(np.stack([p["points"] for p in prompts]), dtype=torch.float32).to(dev),
            torch.as_tensor(np.stack([p["labels"] for p in prompts]), dtype=torch.int64).to(dev),
        )
    box = None
    if prompts[0]["box"] is not None:
        box = torch.as_tensor(np.stack([p["box"] for p in prompts]), dtype=torch.float32).to(dev)
    sparse, dense = sam.prompt_encoder(points=pts, boxes=box, masks=None)
    return sam.mask_decoder.predict_masks(
        image_embeddings=emb,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def batch_loss(masks: torch.Tensor, iou: torch.Tensor, prompts: list[dict]):
    """Loss of one decoded batch; returns (summed loss, list of achieved IoUs)."""
    masks = masks.float()
    iou = iou.float()
    target = torch.stack([p["target"] for p in prompts]).to(masks.device)  # (N, 256, 256)
    # Pixel loss where it matters: plain BCE averaged over a window around the object (the
    # object plus a margin as large as itself, so objects and background are of similar size),
    # plus half the mean BCE over the rest of the frame, plus dice over the whole frame.
    # Plain BCE over the whole frame drowns small objects in background (the decoder learns to
    # predict nothing); class-balanced BCE over-weights object pixels and teaches masks 2-5x
    # too large.
    inside = torch.zeros_like(target)
    for k, p in enumerate(prompts):
        y0, y1, x0, x1 = p["window"]
        inside[k, y0:y1, x0:x1] = 1.0
    outside = 1.0 - inside
    t4 = target[:, None].expand_as(masks)
    bce = F.binary_cross_entropy_with_logits(masks, t4, reduction="none")
    bce_in = (bce * inside[:, None]).sum((-2, -1)) / inside.sum((-2, -1))[:, None]
    bce_out = (bce * outside[:, None]).sum((-2, -1)) / outside.sum((-2, -1)).clamp(min=1)[:, None]
    per = bce_in + 0.5 * bce_out + dice_loss(masks, t4)  # (N, 4)
    with torch.no_grad():
        pred = masks > 0
        tb = t4 > 0
        inter = (pred & tb).sum((-2, -1)).float()
        union = (pred | tb).sum((-2, -1)).float()
        actual_iou = inter / union.clamp(min=1)
    if prompts[0]["kind"] == "click":
        # Ambiguous single click: train the 3 multimask outputs, only the best one takes the
        # mask loss; the IoU head learns all three (it ranks them at inference).
        best = per[:, 1:].argmin(1) + 1
        rows = torch.arange(len(prompts))
        mask_term = per[rows, best]
        iou_term = ((iou[:, 1:] - actual_iou[:, 1:]) ** 2).mean(1)
        achieved = actual_iou[rows, best]
    else:
        mask_term = per[:, 0]
        iou_term = (iou[:, 0] - actual_iou[:, 0]) ** 2
        achieved = actual_iou[:, 0]
    return (mask_term + iou_term).sum(), achieved.tolist()


def init_for_localisation(
    sam, max_frequency: float, tie_qk: bool = True, qk_gain: float = 3.0
) -> None:
    """Initialise the prompt path so that prompts are localised from the first step.

    Two choices SAM could afford to learn from a billion masks, but a model trained for minutes
    cannot:

    - **Position-encoding frequencies.** SAM draws its random Fourier frequencies from
      N(0, 1): about two cycles across the 1024 px frame, far too coarse to tell apart two
      nuclei 40 px apart. Here the magnitudes are log-uniform from 0.25 to ``max_frequency``
      cycles per unit (the frame is 2 units), in random directions: every scale from the whole
      frame down to a few pixels is present, and attention can weigh them. The matrix is a
      saved buffer: the official code loads it with the checkpoint.
    - **Tied query/key projections** in the mask decoder's attention layers (at
      initialisation only). With independent random projections the attention between an
      image position and a prompt token is unrelated to their distance; with ``W_q = W_k``
      the position-encoding part of the score is a positive kernel of the distance, so
      image positions near a prompt attend to it before any training. ``qk_gain`` scales
      them so that this kernel is sharp (default init gives attention logits below 1).
    """
    g = torch.Generator().manual_seed(1234)
    m = sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix  # (2, n)
    n = m.shape[1]
    magnitude = torch.exp(
        torch.empty(n).uniform_(np.log(0.25), np.log(max_frequency), generator=g)
    )
    angle = torch.empty(n).uniform_(0, 2 * np.pi, generator=g)
    m.copy_(torch.stack([magnitude * torch.cos(angle), magnitude * torch.sin(angle)]))
    if tie_qk:
        from segment_anything.modeling.transformer import Attention

        with torch.no_grad():
            for mod in sam.mask_decoder.modules():
                if isinstance(mod, Attention):
                    mod.k_proj.weight.mul_(qk_gain)
                    mod.q_proj.weight.copy_(mod.k_proj.weight)
                    mod.q_proj.bias.zero_()
                    mod.k_proj.bias.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=2, help="images per step")
    ap.add_argument("--objects", type=int, default=8, help="prompts per image")
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--real-fraction", type=float, default=0.3)
    ap.add_argument("--easy-steps", type=int, default=250, help="curriculum: few large objects")
    ap.add_argument(
        "--easy-fraction", type=float, default=0.0, help="easy images' share after the curriculum"
    )
    ap.add_argument(
        "--pe-max-frequency",
        type=float,
        default=10.0,
        help="highest position-encoding frequency, cycles per unit; see init_for_localisation",
    )
    ap.add_argument("--tie-qk", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--qk-gain", type=float, default=3.0)
    ap.add_argument("--init", type=Path, help="continue from this napari-sam checkpoint")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] to train on a GPU")
    ap.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast (about 1.5x faster on CPUs with AVX512-BF16/AMX)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "src/napari_sam/data/tiny_sam.pt")
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    real = load_real()
    sam = build_sam(TINY_ARCH)
    init_for_localisation(sam, args.pe_max_frequency, args.tie_qk, args.qk_gain)
    previous = {}
    if args.init is not None:
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        sam.load_state_dict(init["state_dict"])
        previous = init.get("meta", {})
    dev = torch.device(args.device)
    sam.to(dev)
    sam.train()
    n_params = sum(p.numel() for p in sam.parameters())
    print(f"tiny SAM: {n_params / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(sam.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = min(200, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * t)))

    history = []
    t0 = time.time()
    run_loss, run_iou, run_n = 0.0, 0.0, 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        images, prompt_sets = [], []
        while len(images) < args.batch:
            easy = step < args.easy_steps or rng.random() < args.easy_fraction
            if not easy and rng.random() < args.real_fraction:
                img, lab = sample_real(rng, real)
            else:
                img, lab = sample_synthetic(rng, easy=easy)
            rgb = to_uint8(img, rng)
            x, scale = preprocess(rgb)
            prompts = make_prompts(rng, lab, scale, args.objects)
            if prompts:
                images.append(x)
                prompt_sets.append(prompts)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            emb = sam.image_encoder(torch.stack(images).to(dev))
            loss = torch.zeros((), device=dev)
            n = 0
            for b, prompts in enumerate(prompt_sets):
                groups: dict[tuple, list[dict]] = {}
                for p in prompts:
                    groups.setdefault(prompt_key(p), []).append(p)
                for group in groups.values():
                    masks, iou = decode_batch(sam, emb[b : b + 1], group)
                    gl, achieved = batch_loss(masks, iou, group)
                    loss = loss + gl
                    run_iou += sum(achieved)
                    n += len(group)
        loss = loss / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        run_loss += float(loss.detach()) * n
        run_n += n
        if (step + 1) % args.log_every == 0:
            rec = {
                "step": step + 1,
                "loss": round(run_loss / run_n, 4),
                "train_iou": round(run_iou / run_n, 4),
                "lr": float(lr_at(step)),
                "elapsed_s": round(time.time() - t0, 1),
            }
            history.append(rec)
            print(json.dumps(rec), flush=True)
            run_loss, run_iou, run_n = 0.0, 0.0, 0
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            from napari_sam.core.checkpoints import save_checkpoint

            sam.eval()
            meta = {
                "name": "napari-sam tiny test model",
                "warning": "NOT a real SAM: trained for minutes on synthetic blobs and a few "
                "nuclei images; for tests and offline demos only",
                "steps": step + 1,
                "continued_from": previous,
                "args": {k: str(v) for k, v in vars(args).items()},
                "train_real_images": [a for a, _ in TRAIN_REAL],
                "train_seconds": round(time.time() - t0, 1),
                "torch": str(torch.__version__),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "history_tail": history[-5:],
            }
            # Weights are stored in half precision: the file stays small, accuracy is unchanged
            # for a model this coarse; loading casts back to float32.
            half = {
                k: (v.half() if v.is_floating_point() else v).cpu()
                for k, v in sam.state_dict().items()
            }
            try:
                save_checkpoint(sam, TINY_ARCH, args.out, meta=meta, state_dict=half)
            except Exception as exc:  # keep the run's result whatever happens to the writer
                print(f"save_checkpoint failed ({exc}); writing the raw format", flush=True)
                torch.save(
                    {
                        "napari_sam_format": 1,
                        "architecture": TINY_ARCH.to_dict(),
                        "meta": meta,
                        "state_dict": half,
                    },
                    args.out,
                )
            sam.train()
            print(f"saved {args.out} at step {step + 1}", flush=True)


if __name__ == "__main__":
    main()
