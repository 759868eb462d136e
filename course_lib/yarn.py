"""Chapter 15, §7 — YaRN: RoPE stretched to a context longer than the one the model was trained on.

A model trained on ``L`` positions has seen each RoPE pair ``i`` turn through angles up to ``L · θ_i`` only. Read
``s · L`` positions and the slow pairs reach angles it never saw. *Position interpolation* [Chen et al., 2023,
arXiv:2306.15595] divides every frequency by ``s``, which keeps the angles familiar but blurs the fast pairs that
tell neighbours apart. YaRN [Peng et al., 2023, arXiv:2309.00071, §3.2–3.4] divides only where it is needed: a pair
whose wavelength fits many times (``> β_fast`` turns) into the original context keeps its frequency; a pair that
turns less than ``β_slow`` times is divided by ``s``; the pairs between are blended along a linear ramp. It also
sharpens the softmax, by ``0.1 ln s + 1`` per side of the dot product (its "temperature").

DeepSeek-V3 pre-trained on 4,096 positions and was extended 40 times this way to 163,840 [DeepSeek-AI, 2024, §4.3;
its ``config.json``'s ``rope_scaling``]; its attention multiplies the softmax scale by ``mscale(40)² ≈ 1.874``
[``inference/model.py``, ``MLA.__init__``; Hugging Face's ``DeepseekV3Attention``].

- :func:`yarn_frequencies` (Exercise 15.5): the blended frequencies, as Hugging Face's ``_compute_yarn_parameters``
  computes them;
- :func:`yarn_mscale`: YaRN's temperature factor;
- :class:`YaRN`: a model's YaRN settings (a ``DeepSeekConfig``'s ``yarn``), read from and written to a
  ``config.json``'s ``rope_scaling``, with the factors on RoPE's tables and on the softmax they imply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exercises import exercise
from .validation import check_positive_int

__all__ = ["YaRN", "yarn_frequencies", "yarn_mscale"]


@exercise("15.5", "YaRN's frequencies", points=3)
def yarn_frequencies(
    dim: int, base: float, factor: float, original_context: int, beta_fast: float = 32.0, beta_slow: float = 1.0
) -> torch.Tensor:
    """RoPE's frequencies for ``dim`` rotated features, stretched ``factor`` times by YaRN's "by parts" rule.

    Pair ``i`` (``i = 0 … dim/2 - 1``) has RoPE's frequency ``θ_i = base ** (-2i / dim)`` (Chapter 7), so over the
    ``original_context`` positions of training it turns ``r_i = original_context · θ_i / (2π)`` times. Treat the
    pair index as a real number ``x`` and let ``d(r)`` be the index at which a pair turns exactly ``r`` times. The
    ramp runs from ``low = max(floor(d(beta_fast)), 0)`` to ``high = min(ceil(d(beta_slow)), dim - 1)`` (if they are
    equal, ``high = low + 0.001``): pair ``i`` is interpolated by the share
    ``γ_i = clamp((i - low) / (high - low), 0, 1)`` and gets the frequency ``θ_i · (1 - γ_i) + (θ_i / factor) · γ_i``.
    So the fast pairs (``γ = 0``) keep ``θ_i``, the slow pairs (``γ = 1``) get ``θ_i / factor``, and ``factor = 1``
    changes nothing. (The clamp of ``high`` at ``dim - 1`` rather than ``dim/2 - 1`` is Hugging Face's and
    DeepSeek's code; keep it.)

    Args:
        dim: the number of rotated features, a positive even ``int``.
        base: RoPE's base, a finite number ``> 1``.
        factor: how many times longer the new context is, a finite number ``>= 1``.
        original_context: the positions the model was trained on, a positive ``int``.
        beta_fast, beta_slow: the turns (finite numbers, ``beta_fast > beta_slow > 0``) above which a pair keeps its
            frequency and below which it is fully interpolated (YaRN's α and β: 32 and 1).

    Returns:
        A new ``torch.float32`` tensor of shape ``(dim // 2,)``: the frequencies, in radians per position.

    Raises:
        ValueError: for an odd or non-positive ``dim``, a ``base`` not above 1, a ``factor`` below 1, a
            non-positive ``original_context``, or betas not ordered ``beta_fast > beta_slow > 0`` (``bool`` values
            are refused for every argument).

    Example (DeepSeek-V3's RoPE: 64 features, base 10,000, 40 × 4,096 positions):
        >>> f = yarn_frequencies(64, 10000.0, 40.0, 4096)
        >>> f.shape, f.dtype
        (torch.Size([32]), torch.float32)
        >>> bool(f[0] == 1.0), bool(torch.isclose(f[-1], 10000.0 ** (-62 / 64) / 40))
        (True, True)
    """
    raise NotImplementedError


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's temperature factor ``0.1 · mscale · ln(factor) + 1`` (1 for ``factor <= 1``) [Peng et al., 2023, §3.4;
    Hugging Face's ``get_mscale`` and DeepSeek's ``yarn_get_mscale``]. V3: ``yarn_mscale(40) = 1.3689``."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _number(name: str, value, low: float, strict: bool = True) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class YaRN:
    """A model's YaRN settings: Hugging Face's ``rope_scaling`` / ``rope_parameters`` of type ``"yarn"``.

    Attributes:
        factor: the context's stretch (V3: 40).
        original_context: the positions of pre-training (``original_max_position_embeddings``; V3: 4,096).
        beta_fast, beta_slow: the ramp's ends in turns (V3: 32 and 1).
        mscale, mscale_all_dim: the configs' two temperature settings (V3: 1 and 1); 0 means "not set", as in Hugging
            Face's code. See :attr:`table_factor` and :attr:`softmax_factor` for what they do.

    Raises:
        ValueError: for a ``factor`` below 1, a non-positive ``original_context``, betas not ordered
            ``beta_fast > beta_slow > 0``, or a negative ``mscale`` or ``mscale_all_dim``.
    """

    factor: float
    original_context: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0

    def __post_init__(self):
        _number("factor", self.factor, 1.0, strict=False)
        check_positive_int("original_context", self.original_context)
        _number("beta_slow", self.beta_slow, 0.0)
        _number("beta_fast", self.beta_fast, self.beta_slow)
        _number("mscale", self.mscale, 0.0, strict=False)
        _number("mscale_all_dim", self.mscale_all_dim, 0.0, strict=False)

    def frequencies(self, dim: int, base: float) -> torch.Tensor:
        """:func:`yarn_frequencies` with these settings, ``(dim // 2,)`` float32."""
        return yarn_frequencies(dim, base, self.factor, self.original_context, self.beta_fast, self.beta_slow)

    @property
    def table_factor(self) -> float:
        """What RoPE's cos and sin tables are multiplied by (Hugging Face's ``attention_factor``):
        ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` when both are set (V3: 1), else
        ``mscale(factor)``, YaRN's own temperature applied to the rotated features."""
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)

    @property
    def softmax_factor(self) -> float:
        """What DeepSeek's attention multiplies its softmax scale by: ``mscale(factor, mscale_all_dim)²`` when
        ``mscale_all_dim`` is set (V3: 1.874), else 1. Together with :attr:`table_factor`, V3's YaRN sharpens every
        score, the rotated and the unrotated features alike, by ``mscale(40)² = 1.874``."""
        return yarn_mscale(self.factor, self.mscale_all_dim) ** 2 if self.mscale_all_dim else 1.0

    def hf_parameters(self, base: float) -> dict:
        """Hugging Face's ``rope_parameters`` for these settings and RoPE ``base``."""
        return {
            "rope_type": "yarn",
            "rope_theta": float(base),
            "factor": float(self.factor),
            "original_max_position_embeddings": self.original_context,
            "beta_fast": float(self.beta_fast),
            "beta_slow": float(self.beta_slow),
            "mscale": float(self.mscale),
            "mscale_all_dim": float(self.mscale_all_dim),
        }

    # The keys of a YaRN rope_scaling this class reads (``truncate`` only as true, its default).
    KNOWN = frozenset(
        ("type", "rope_type", "rope_theta", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow")
        + ("mscale", "mscale_all_dim", "truncate")
    )

    @classmethod
    def from_hf(cls, rope: dict, context_length: int | None = None) -> YaRN:
        """The settings a ``config.json``'s ``rope_scaling`` (or ``rope_parameters``) of type ``"yarn"`` holds.

        As in Hugging Face's code, a missing ``factor`` is ``context_length / original_max_position_embeddings``,
        a missing or zero beta takes its default, and a missing mscale is 0 ("not set"). Raises ``ValueError`` for a
        key the course does not implement (``attention_factor``; ``truncate: false``) or a missing
        ``original_max_position_embeddings``.
        """
        unknown = sorted(set(rope) - cls.KNOWN)
        if unknown or rope.get("truncate", True) is not True:
            what = ", ".join(unknown) if unknown else "truncate: false"
            raise ValueError(f"YaRN with {what} is not implemented by the course")
        if "original_max_position_embeddings" not in rope:
            raise ValueError("a YaRN rope_scaling needs original_max_position_embeddings")
        original = rope["original_max_position_embeddings"]
        factor = rope.get("factor")
        if factor is None:
            if context_length is None:
                raise ValueError("a YaRN rope_scaling without factor needs the config's max_position_embeddings")
            factor = context_length / original
        return cls(
            factor=float(factor),
            original_context=original,
            beta_fast=float(rope.get("beta_fast") or 32.0),
            beta_slow=float(rope.get("beta_slow") or 1.0),
            mscale=float(rope.get("mscale") or 0.0),
            mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
        )
