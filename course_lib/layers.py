"""Chapter 4 — the layers of a transformer block: normalisation, activation and feed-forward.

A transformer block rewrites every token's vector without changing its width ``d_model``. Besides
attention (Chapter 3) it needs three smaller pieces, all here:

- :class:`LayerNorm` rescales each token's vector to mean 0 and variance 1 over its features,
  then applies a learned scale and shift (Ba, Kiros & Hinton, 2016);
- :func:`gelu` is the smooth activation of BERT and GPT-2 (Hendrycks & Gimpel, 2016);
- :class:`FeedForward` widens each vector (4x by default), applies GELU and narrows it back, for
  every position separately.

Chapter 6 adds Llama's RMSNorm and SwiGLU next to them. Shapes follow PyTorch's conventions:
``(..., d_model)`` means any number of leading dimensions, usually ``(batch, seq, d_model)``.

Exercises in this module: 4.1 :meth:`LayerNorm.forward`, 4.2 :func:`gelu`,
4.3 :meth:`FeedForward.forward`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .exercises import exercise

#: The values :func:`gelu` accepts for ``approximate`` (those of ``torch.nn.functional.gelu``).
GELU_APPROXIMATIONS = ("none", "tanh")


def _check_positive_int(name: str, value) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_probability(name: str, value) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


# --------------------------------------------------------------------------------------
# Layer normalisation
# --------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension, as ``torch.nn.LayerNorm(d_model)``.

    Args:
        d_model: the width of the vectors it normalises, a positive ``int``.
        eps: a small positive number added to the variance before the square root, so that a
            constant vector (variance 0) does not divide by zero. GPT-2 uses ``1e-5``.
        bias: whether to learn a shift ``bias`` (GPT-2: yes; some later models: no).

    Attributes:
        weight: the learned scale, an ``nn.Parameter`` of shape ``(d_model,)``, initialised to ones.
        bias: the learned shift, an ``nn.Parameter`` of shape ``(d_model,)`` initialised to zeros,
            or ``None`` when ``bias=False``.
        d_model, eps: the settings above.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        _check_positive_int("d_model", d_model)
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}, bias={self.bias is not None}"

    @exercise("4.1", "Layer normalisation", points=3)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every vector of ``x`` over its ``d_model`` features, then scale and shift it.

        For each vector ``v`` along the last dimension (one token's ``d_model`` features), with
        ``mean`` its mean and ``var`` its **biased** variance (the mean of ``(v_i - mean) ** 2``,
        a division by ``d_model``, not ``d_model - 1``), the result is

            out_i = weight_i * (v_i - mean) / sqrt(var + eps) + bias_i

        with ``weight`` the scale ``self.weight``, ``bias`` the shift ``self.bias`` (no shift when it
        is ``None``) and ``eps`` the layer's ``self.eps``, added inside the square root. So a
        constant vector (variance 0) comes out as the shift itself, zeros when there is none.

        Every position and batch element is normalised on its own: a token's output depends on its
        own features only, nothing is shared across the leading dimensions, and any number of them
        (none included: a 1-D ``x`` is one vector) is accepted.

        Args:
            x: a floating-point tensor of shape ``(..., d_model)``, in the dtype of the weights.

        Returns:
            A tensor of the same shape and dtype as ``x``.

        Raises:
            ValueError: if ``x`` is not a tensor with at least one dimension whose last dimension is
                ``self.d_model``; the message names both sizes.

        Example:
            >>> ln = LayerNorm(4)
            >>> ln(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
            tensor([[-1.3416, -0.4472,  0.4472,  1.3416]], grad_fn=<AddBackward0>)
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# GELU
# --------------------------------------------------------------------------------------


@exercise("4.2", "GELU, exact and tanh", points=2)
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """The Gaussian Error Linear Unit, applied element by element.

    - ``approximate="none"``: the exact form ``x * Phi(x)``, where ``Phi`` is the standard normal
      cumulative distribution function, ``Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))``.
    - ``approximate="tanh"``: GPT-2's approximation
      ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``: close to the exact form
      but a different function, so each value of ``approximate`` gives its own.

    Both agree with ``torch.nn.functional.gelu`` in the same form to rounding error, from large
    negative inputs to large positive ones, but are built from the formulas: do **not** call
    ``torch.nn.functional.gelu`` or ``torch.nn.GELU`` (the checks compare you with them).

    Args:
        x: a floating-point tensor of any shape.
        approximate: ``"none"`` or ``"tanh"``, as in ``torch.nn.functional.gelu``.

    Returns:
        A tensor of the same shape and dtype as ``x``, differentiable with respect to ``x``.

    Raises:
        ValueError: if ``approximate`` is neither ``"none"`` nor ``"tanh"`` (any other string, any
            other case, or not a string at all; the message says which values are allowed), or if
            ``x`` is not a floating-point tensor (an integer or ``bool`` tensor, a list).

    Example:
        >>> gelu(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([-0.1587,  0.0000,  0.8413])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The feed-forward network
# --------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """The position-wise feed-forward network of GPT-2: expand, GELU, contract (then dropout, as Hugging Face's has).

    Args:
        d_model: the width of the vectors in and out, a positive ``int``.
        d_ff: the hidden width, a positive ``int``; ``None`` means ``4 * d_model`` (GPT-2's choice,
            from Vaswani et al., 2017).
        dropout: probability of dropping an output number in training mode.
        bias: whether the two linear layers have a bias.
        approximate: the :func:`gelu` form, ``"tanh"`` (GPT-2) or ``"none"``.

    Attributes:
        fc_in: ``nn.Linear(d_model, d_ff, bias=bias)``, the expansion.
        fc_out: ``nn.Linear(d_ff, d_model, bias=bias)``, the contraction.
        dropout: ``nn.Dropout(dropout)``, applied to the output.
        d_model, d_ff, approximate: the settings above.
    """

    def __init__(
        self, d_model: int, d_ff: int | None = None, dropout: float = 0.0, bias: bool = True, approximate: str = "tanh"
    ):
        super().__init__()
        _check_positive_int("d_model", d_model)
        d_ff = 4 * d_model if d_ff is None else d_ff
        _check_positive_int("d_ff", d_ff)
        _check_probability("dropout", dropout)
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
        self.d_model, self.d_ff, self.approximate = d_model, d_ff, approximate
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, approximate={self.approximate!r}"

    @exercise("4.3", "The feed-forward network", points=2)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform every position of ``x`` on its own: expand, GELU, contract, then dropout.

        The layer computes, for each vector ``v`` along the last dimension,

            out = Dropout(GELU(v W_in + b_in) W_out + b_out)

        where ``v W_in + b_in`` is what the expansion ``self.fc_in`` computes (width ``d_model`` to
        ``d_ff``) and ``h W_out + b_out`` what the contraction ``self.fc_out`` computes (back to
        ``d_model``); ``GELU`` is **your** :func:`gelu` from this module, in the form
        ``self.approximate`` (the layer's own setting, whatever :func:`gelu`'s default); and
        ``Dropout`` is the layer's ``self.dropout``. Dropout acts on the output only, once, and only
        in training mode: there it zeroes each number with probability ``p`` and scales the others
        by ``1 / (1 - p)``; in evaluation mode the layer is deterministic. Any number of leading
        dimensions is accepted, none included.

        Args:
            x: a floating-point tensor of shape ``(..., d_model)``, in the dtype of the weights.

        Returns:
            A tensor of the same shape and dtype as ``x``.

        Raises:
            ValueError: if ``x`` is not a tensor whose last dimension is ``self.d_model``; the
                message names both sizes.

        Example:
            >>> ffn = FeedForward(8)                 # d_ff = 32
            >>> ffn(torch.randn(2, 5, 8)).shape
            torch.Size([2, 5, 8])
        """
        raise NotImplementedError


def feed_forward_parameters(d_model: int, d_ff: int | None = None, bias: bool = True) -> int:
    """The number of parameters of :class:`FeedForward`: ``2 * d_model * d_ff`` weights, plus
    ``d_ff + d_model`` biases when ``bias``. With ``d_ff = 4 * d_model`` that is ``8 d² + 5 d``."""
    _check_positive_int("d_model", d_model)
    d_ff = 4 * d_model if d_ff is None else d_ff
    _check_positive_int("d_ff", d_ff)
    return 2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """``Phi(x)``, the probability that a standard normal variable is below ``x`` (for plots)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
