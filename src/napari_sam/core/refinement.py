"""Refinement: a follow-up click on the same object starts from the previous mask.

SAM was trained interactively: after the first prompt, each new click is given together with
the previous prediction's low-resolution logits as a mask prompt (Kirillov et al. 2023,
section 3 and appendix A), so that a click corrects the mask instead of starting over. This
module decides when a prediction is a follow-up of an earlier one and passes the earlier
logits on:

- :func:`remember` keeps what a prediction needs to be refined later (the chosen candidate's
  logits per object, the prompts, the image and model it belongs to);
- :func:`follow_up_logits` gives those logits back for new prompts that extend the old ones
  (same boxes, every old point kept in order, at least one new point), else None;
- :func:`predict` is ``SamEngine.predict`` with that rule applied (and, for a first
  prediction, an optional starting mask: a drawn shape's or an existing label's).

Whether it helps is measured with the click simulator (:mod:`.clicks`); the numbers are in
``docs/evaluation.md``. It is on by default for SAM and the models fine-tuned from it, which
were trained this way, and off for the bundled tiny model, which was not and gets worse with
it (:func:`uses_mask_prompts`, from the registry's ``ModelSpec.mask_prompts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .registry import MODELS

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import ImageEmbedding
    from .engine import Prediction, SamEngine
    from .loaded_model import LoadedModel
    from .prompts import Prompts

__all__ = [
    "PreviousMask",
    "follow_up_logits",
    "predict",
    "remember",
    "uses_mask_prompts",
]


def uses_mask_prompts(model: LoadedModel | None) -> bool:
    """Whether :func:`predict` gives ``model`` mask prompts unless told otherwise.

    The registry says so per model (``ModelSpec.mask_prompts``); checkpoints it does not know
    (fine-tuned SAMs) refine, as SAM was trained to.
    """
    spec = MODELS.get(getattr(model, "name", ""))
    return True if spec is None else spec.mask_prompts


@dataclass(frozen=True)
class PreviousMask:
    """A prediction kept so that the next click on the same object(s) can refine it.

    Attributes
    ----------
    prompts : Prompts
        The prompts it was predicted from.
    logits : ndarray
        float32 (B, 256, 256): the chosen candidate's low-resolution logits of each object.
    model_id, image_key : str
        The model and image (``ImageEmbedding.model_id`` and ``.key``) it belongs to.
    """

    prompts: Prompts
    logits: np.ndarray
    model_id: str
    image_key: str


def remember(
    prediction: Prediction,
    prompts: Prompts,
    candidates: Sequence[int | None] | None = None,
) -> PreviousMask:
    """Keep a prediction for refinement.

    Parameters
    ----------
    prediction : Prediction
        What ``SamEngine.predict`` (or :func:`predict`) returned for ``prompts``.
    prompts : Prompts
        The prompts of that call.
    candidates : sequence of int or None, optional
        The candidate shown for each object (None: the best one, by predicted IoU). A user
        who cycled to another candidate refines that one.

    Returns
    -------
    PreviousMask
    """
    n = prediction.n_objects
    chosen = [None] * n if candidates is None else list(candidates)
    if len(chosen) != n:
        raise ValueError(f"{len(chosen)} candidates given for {n} objects")
    logits = np.stack([prediction.logits(b, chosen[b]) for b in range(n)]).astype(np.float32)
    emb = prediction.embedding
    return PreviousMask(prompts=prompts, logits=logits, model_id=emb.model_id, image_key=emb.key)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def follow_up_logits(
    previous: PreviousMask | None, prompts: Prompts, embedding: ImageEmbedding
) -> np.ndarray | None:
    """The previous logits if ``prompts`` are a follow-up of ``previous``, else None.

    A follow-up has the same boxes, keeps every earlier point (same place, same label, same
    order) and adds at least one point, on the same image with the same model. Anything else
    (a point moved or deleted, a box changed, another plane) starts afresh: the earlier mask
    was shaped by prompts that no longer hold.

    Returns
    -------
    ndarray or None
        float32 (B, 256, 256), one mask prompt per object, for ``mask_input``.
    """
    if previous is None:
        return None
    if (previous.model_id, previous.image_key) != (embedding.model_id, embedding.key):
        return None
    old = previous.prompts
    n = len(old.points)
    if not _same(old.boxes, prompts.boxes) or len(prompts.points) <= n:
        return None
    if not (
        _same(prompts.points[:n], old.points) and _same(prompts.point_labels[:n], old.point_labels)
    ):
        return None
    if len(previous.logits) != prompts.n_objects:  # pragma: no cover - same boxes, same B
        return None
    return previous.logits


def predict(
    engine: SamEngine,
    embedding: ImageEmbedding,
    prompts: Prompts,
    previous: PreviousMask | None = None,
    *,
    refine: bool | None = None,
    initial: np.ndarray | None = None,
) -> Prediction:
    """Predict, refining ``previous`` when ``prompts`` are a follow-up of it.

    Parameters
    ----------
    engine : SamEngine
    embedding : ImageEmbedding
        From ``engine.embed``.
    prompts : Prompts
        All prompts of the object(s) so far (the earlier points and the new ones).
    previous : PreviousMask, optional
        From :func:`remember` after the previous prediction.
    refine : bool, optional
        Use mask prompts: the previous logits for a follow-up, else ``initial`` (default:
        :func:`uses_mask_prompts` of ``engine.model``, False for a model that was not
        trained with mask prompts). False predicts from the prompts alone.
    initial : ndarray, optional
        (256, 256) or (B, 256, 256) logits to start from when ``prompts`` are not a
        follow-up: a drawn shape's (:func:`napari_sam.core.mask_prompts.shape_prompt`) or an
        existing label's (:func:`napari_sam.core.mask_prompts.mask_to_logits`).

    Returns
    -------
    Prediction
        One candidate per object whenever a mask prompt is given (SAM's interactive setting:
        the mask resolves the ambiguity of a single click); otherwise as ``engine.predict``.
    """
    use = uses_mask_prompts(getattr(engine, "model", None)) if refine is None else refine
    mask_input = None
    if use:
        mask_input = follow_up_logits(previous, prompts, embedding)
        if mask_input is None:
            mask_input = initial
    if mask_input is None:
        return engine.predict(embedding, prompts)
    return engine.predict(embedding, prompts, mask_input=mask_input, multimask=False)
