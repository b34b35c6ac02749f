"""The precision of each operation of SAM's image encoder (:class:`PrecisionPlan`).

A plan names the number format of three parts of the ViT encoder separately: its linear layers
(the patch embedding, the attention projections ``qkv`` / ``proj`` and the MLPs), its attention
(``scaled_dot_product_attention`` with the decomposed relative-position term) and its neck (the
convolutions after the blocks). One reduced-precision kernel that is slow on a CPU (e.g.
bfloat16 attention on a CPU with bfloat16 dot products but no matrix tiles) then no longer eats
the gain of another.

Written forms (``--precision``, ``NAPARI_SAM_PRECISION``, session files):

``fp32`` / ``bf16`` / ``fp16``
    The same format for every operation.
``linear=bf16,attention=fp32`` (any subset, in any order; unnamed operations are ``fp32``)
    One format per operation; ``int8`` is accepted for ``linear`` only (dynamic int8
    quantisation of the linear layers' weights and activations).

Cheap to import: no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import NapariSamError

__all__ = ["FORMATS", "OPERATIONS", "PrecisionPlan"]

#: The operations a plan sets, in their written order.
OPERATIONS = ("linear", "attention", "neck")
#: Formats each operation accepts.
FORMATS: dict[str, tuple[str, ...]] = {
    "linear": ("fp32", "bf16", "fp16", "int8"),
    "attention": ("fp32", "bf16", "fp16"),
    "neck": ("fp32", "bf16", "fp16"),
}
_UNIFORM = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionPlan:
    """Number format of each operation of the image encoder.

    Attributes
    ----------
    linear : str
        Linear layers: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
    attention : str
        Attention incl. the relative-position term: ``fp32``, ``bf16`` or ``fp16``.
    neck : str
        The neck's convolutions: ``fp32``, ``bf16`` or ``fp16``.
    """

    linear: str = "fp32"
    attention: str = "fp32"
    neck: str = "fp32"

    def __post_init__(self) -> None:
        for op in OPERATIONS:
            value = getattr(self, op)
            if value not in FORMATS[op]:
                raise NapariSamError(
                    f"precision {op}={value!r} is not supported; use one of "
                    f"{', '.join(FORMATS[op])} for {op}"
                )

    @classmethod
    def uniform(cls, fmt: str) -> PrecisionPlan:
        """The plan running every operation in ``fmt`` (``fp32``, ``bf16`` or ``fp16``)."""
        return cls(fmt, fmt, fmt)

    @classmethod
    def parse(cls, text: str) -> PrecisionPlan:
        """Read a written plan (see the module docstring).

        Raises
        ------
        NapariSamError
            For an unknown operation, format or syntax.
        """
        return _parse(str(text).strip().lower().replace(" ", ""))

    @property
    def single(self) -> str | None:
        """The one format of every operation, or None when they differ."""
        return self.linear if self.linear == self.attention == self.neck else None

    @property
    def name(self) -> str:
        """The written form: ``fp32`` etc. when uniform, else ``linear=..,attention=..,neck=..``.

        :meth:`parse` reads it back; it is what ``LoadedModel.precision`` holds.
        """
        if self.single is not None:
            return self.single
        return ",".join(f"{op}={getattr(self, op)}" for op in OPERATIONS)

    @property
    def tag(self) -> str:
        """Short file-name-safe identity for model ids: ``""`` for fp32, ``bf16``, ``fp16``,
        else e.g. ``linbf16-attfp32-neckfp32``."""
        if self.single == "fp32":
            return ""
        if self.single is not None:
            return self.single
        return f"lin{self.linear}-att{self.attention}-neck{self.neck}"

    @property
    def reduced(self) -> bool:
        """True when some operation runs in less than float32."""
        return self.single != "fp32"

    def uses(self, fmt: str) -> bool:
        """True when some operation runs in ``fmt``."""
        return fmt in (self.linear, self.attention, self.neck)


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> PrecisionPlan:
    if text in _UNIFORM:
        return PrecisionPlan.uniform(text)
    if "=" not in text:
        raise NapariSamError(
            f"unknown precision {text!r}; use auto, fp32, bf16, fp16 or per operation, "
            "e.g. linear=bf16,attention=fp32"
        )
    values: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        op, sep, fmt = part.partition("=")
        if not sep or op not in OPERATIONS:
            raise NapariSamError(
                f"precision {text!r}: {part!r} is not OPERATION=FORMAT with OPERATION one of "
                f"{', '.join(OPERATIONS)}"
            )
        if op in values:
            raise NapariSamError(f"precision {text!r} names {op} twice")
        values[op] = fmt
    return PrecisionPlan(**values)
