"""Chapter 4 — the layers of a transformer block: normalisation, activation and feed-forward.

A transformer block rewrites every token's vector without changing its width ``d_model``. Besides
attention (Chapter 3) it needs three smaller pieces, all here:

- :class:`LayerNorm` rescales each token's vector to mean 0 and variance 1 over its features,
  then applies a learned scale and shift (Ba, Kiros & Hinton, 2016);
- :func:`gelu` is the smooth activation of BERT and GPT-2 (Hendrycks & Gimpel, 2016);
- :class:`FeedForward` widens each vector (4x by default), applies GELU and narrows it back, for
  every position separately.

Chapter 6 adds Llama's pieces next to them: :func:`silu`, :class:`RMSNorm` (Zhang & Sennrich, 2019),
the gated feed-forward :class:`SwiGLU` (Shazeer, 2020) and :func:`llama_ffn_dim`, its width. Shapes
follow PyTorch's conventions: ``(..., d_model)`` means any number of leading dimensions, usually
``(batch, seq, d_model)``.

Exercises in this module: 4.1 :meth:`LayerNorm.forward`, 4.2 :func:`gelu`,
4.3 :meth:`FeedForward.forward`; 6.1 :func:`silu`, 6.2 :meth:`RMSNorm.forward`,
6.3 :meth:`SwiGLU.forward`, 6.4 :func:`llama_ffn_dim`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .exercises import exercise
from .validation import check_positive_int as _check_positive_int

#: The values :func:`gelu` accepts for ``approximate`` (those of ``torch.nn.functional.gelu``).
GELU_APPROXIMATIONS = ("none", "tanh")


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


# --------------------------------------------------------------------------------------
# Chapter 6 — Llama's layers: SiLU, RMSNorm, the SwiGLU feed-forward and its width
# --------------------------------------------------------------------------------------


@exercise("6.1", "SiLU", points=2)
def silu(x: torch.Tensor) -> torch.Tensor:
    """The Sigmoid Linear Unit (SiLU, also called Swish with β = 1), applied element by element:

        silu(x) = x * sigmoid(x),    sigmoid(x) = 1 / (1 + exp(-x)).

    It agrees with ``torch.nn.functional.silu`` to rounding error for every finite input, in every
    floating-point dtype. That includes inputs far from zero: up to ``|x| = 1e4`` and beyond, the
    result is finite (close to ``x`` for large positive ``x``, to ``-0`` for large negative ``x``),
    never ``nan`` or ``inf``. Build it from the formula; do **not** call
    ``torch.nn.functional.silu`` or ``torch.nn.SiLU`` (the checks compare you with them).

    ``x`` itself is left unchanged, and autograd can differentiate the result with respect to it.

    Args:
        x: a floating-point tensor of any shape (0-d included) and any floating dtype.

    Returns:
        A tensor of the same shape and dtype as ``x``.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor (an integer or ``bool`` tensor, a list,
            a Python number); the message says what was given.

    Example:
        >>> silu(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([-0.2689,  0.0000,  0.7311])
    """
    raise NotImplementedError


class RMSNorm(nn.Module):
    """Root-mean-square layer normalisation (Zhang & Sennrich, 2019), Llama's normalisation.

    The same layer as Hugging Face's ``LlamaRMSNorm``: a state dict copies across in both
    directions, and the outputs agree bit for bit in float16 and bfloat16 too.

    Args:
        d_model: the width of the vectors it normalises, a positive ``int``.
        eps: a small positive number added to the mean square before the square root, so that a
            zero vector does not divide by zero. Hugging Face's default is ``1e-6``; Llama 2 and
            Llama 3 checkpoints use ``1e-5`` (their ``rms_norm_eps``).

    Attributes:
        weight: the learned scale, an ``nn.Parameter`` of shape ``(d_model,)``, initialised to ones.
            There is no shift (no bias).
        d_model, eps: the settings above.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        _check_positive_int("d_model", d_model)
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}"

    @exercise("6.2", "RMSNorm", points=3)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Divide every vector of ``x`` by its root mean square, then scale it.

        For each vector ``v`` along the last dimension (one token's ``d_model`` features), with
        ``ms`` the mean of its squares, ``ms = (v_1**2 + ... + v_d**2) / d_model``, the result is

            out_i = weight_i * (v_i / sqrt(ms + eps))

        with ``weight`` the layer's ``self.weight`` and ``eps`` its ``self.eps``, added inside the
        square root. No mean is subtracted and nothing is added: a zero vector comes out as zeros,
        and a constant vector ``(c, ..., c)`` with ``c > 0`` comes out (almost exactly) as
        ``weight``. Every position and batch element is normalised on its own, and any number of
        leading dimensions (none included: a 1-D ``x`` is one vector) is accepted. ``x`` itself is
        left unchanged, and autograd can differentiate the result with respect to it.

        **Precision, as Hugging Face's LlamaRMSNorm.** A half-precision ``x`` (float16 or bfloat16)
        is normalised in float32: the squares, their mean, ``eps``, the square root and the
        division are all computed on ``x`` converted to float32 (where the square of a large
        float16 value does not overflow), and the normalised vector ``v / sqrt(ms + eps)`` is
        converted back to ``x``'s dtype *before* it is multiplied by ``weight``. So a float16 or
        bfloat16 layer gives exactly the numbers ``LlamaRMSNorm`` gives. A float32 or float64 ``x``
        is normalised in its own dtype (float64 is not rounded to float32). Build the layer from
        the formula; do not call ``torch.nn.functional.rms_norm`` or ``torch.nn.RMSNorm`` (the
        checks compare you with them).

        Args:
            x: a floating-point tensor of shape ``(..., d_model)``, in the dtype of the weights.

        Returns:
            A tensor of the same shape and dtype as ``x``.

        Raises:
            ValueError: if ``x`` is not a floating-point tensor with at least one dimension whose
                last dimension is ``self.d_model``; for a wrong width, the message names both sizes.

        Example:
            >>> norm = RMSNorm(2)
            >>> norm(torch.tensor([[3.0, 4.0]]))  # ms = (9 + 16) / 2 = 12.5
            tensor([[0.8485, 1.1314]], grad_fn=<MulBackward0>)
        """
        raise NotImplementedError


class SwiGLU(nn.Module):
    """Llama's feed-forward network: a gated linear unit with a SiLU gate (Shazeer, 2020).

    Three linear maps instead of GPT-2's two: ``gate_proj`` and ``up_proj`` both widen the vector
    to ``d_ff``, the SiLU of the first multiplies the second number by number, and ``down_proj``
    narrows the product back to ``d_model``. The names are those of Hugging Face's ``LlamaMLP``
    (Meta's reference code calls them ``w1``, ``w3`` and ``w2``), so a state dict copies across.

    Args:
        d_model: the width of the vectors in and out, a positive ``int``.
        d_ff: the hidden width, a positive ``int`` (Llama's comes from :func:`llama_ffn_dim`).
        bias: whether the three linear layers have a bias (Llama: no).

    Attributes:
        gate_proj: ``nn.Linear(d_model, d_ff, bias=bias)``, whose SiLU is the gate.
        up_proj: ``nn.Linear(d_model, d_ff, bias=bias)``, the values the gate lets through.
        down_proj: ``nn.Linear(d_ff, d_model, bias=bias)``, back to the model's width.
        d_model, d_ff: the settings above.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_ff", d_ff)
        self.d_model, self.d_ff = d_model, d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}"

    @exercise("6.3", "The SwiGLU feed-forward network", points=3)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform every position of ``x`` on its own: gate, multiply, contract.

        For each vector ``v`` along the last dimension,

            out = down_proj( SiLU(gate_proj(v)) * up_proj(v) )

        where ``*`` multiplies the two ``d_ff``-wide vectors number by number and ``SiLU`` is
        ``x * sigmoid(x)``, applied to the gate's output only. Any SiLU that agrees with
        ``torch.nn.functional.silu`` will do: your :func:`silu` from Exercise 6.1, or PyTorch's own.
        There is no dropout and no other activation. Any number of leading dimensions is accepted,
        none included; ``x`` itself is left unchanged, and autograd can differentiate the result.

        Args:
            x: a floating-point tensor of shape ``(..., d_model)``, in the dtype of the weights.

        Returns:
            A tensor of the same shape and dtype as ``x``.

        Raises:
            ValueError: if ``x`` is not a tensor with at least one dimension whose last dimension is
                ``self.d_model``; the message names both sizes.

        Example:
            >>> ffn = SwiGLU(8, 24)
            >>> ffn(torch.randn(2, 5, 8)).shape
            torch.Size([2, 5, 8])
        """
        raise NotImplementedError


@exercise("6.4", "Llama's feed-forward width", points=2)
def llama_ffn_dim(d_model: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The hidden width ``d_ff`` of Llama's SwiGLU for a model of width ``d_model``, by Meta's rule.

    Three steps, each on whole numbers as Meta's reference code does them:

    1. Two thirds of GPT's ``4 * d_model``, rounded down: ``hidden = floor(2 * 4 * d_model / 3)``.
    2. If ``ffn_dim_multiplier`` is given (not ``None``), scale by it and round down again:
       ``hidden = floor(ffn_dim_multiplier * hidden)``, the product computed in Python floats.
    3. Round ``hidden`` **up** to the nearest multiple of ``multiple_of`` (a multiple already is
       one and stays as it is).

    Args:
        d_model: the model's width, a positive ``int``.
        multiple_of: the hidden width is a multiple of it, a positive ``int`` (Llama 2 7B and 13B:
            256; Llama 2 70B: 4096; Llama 3 8B: 1024).
        ffn_dim_multiplier: ``None`` (Llama 2 7B and 13B) or a positive ``int`` or ``float``
            (Llama 2 70B and Llama 3: 1.3).

    Returns:
        The hidden width, a Python ``int``.

    Raises:
        ValueError: if ``d_model`` or ``multiple_of`` is not a positive ``int`` (a ``bool`` or a
            ``float`` such as ``4096.0`` is refused), if ``ffn_dim_multiplier`` is neither ``None``
            nor a positive finite number (a ``bool`` or a string is refused), or if step 2 leaves no
            hidden unit at all (``hidden == 0``); the message names the argument.

    Example:
        >>> llama_ffn_dim(4096)  # Llama 2 7B: floor(32768 / 3) = 10922, rounded up to 43 * 256
        11008
    """
    raise NotImplementedError


def swiglu_parameters(d_model: int, d_ff: int, bias: bool = False) -> int:
    """The number of parameters of :class:`SwiGLU`: ``3 * d_model * d_ff`` weights, plus
    ``2 * d_ff + d_model`` biases when ``bias``. With ``d_ff = 8 d / 3`` that is ``8 d²``, the weights of
    GPT's two-matrix feed-forward network of width ``4 d`` (:func:`feed_forward_parameters`)."""
    _check_positive_int("d_model", d_model)
    _check_positive_int("d_ff", d_ff)
    return 3 * d_model * d_ff + ((2 * d_ff + d_model) if bias else 0)


def silu_minimum() -> tuple[float, float]:
    """Where SiLU is smallest, and its value there: ``(x_min, silu(x_min))``, in float64.

    SiLU's slope ``sigmoid(x) * (1 + x * (1 - sigmoid(x)))`` is zero where ``1 + x * (1 - sigmoid(x)) = 0``;
    Newton's method solves that from ``x = -1``. At the minimum ``x * sigmoid(x) = 1 + x``, so the
    value is ``x_min + 1``. In closed form ``x_min = -1 - W(1/e)`` and the value is ``-W(1/e)``, with
    ``W`` Lambert's function.
    """
    x = -1.0
    for _ in range(50):
        s = 1.0 / (1.0 + math.exp(-x))
        g = 1.0 + x * (1.0 - s)  # zero at the minimum
        slope = (1.0 - s) - x * s * (1.0 - s)  # dg/dx
        step = g / slope
        x -= step
        if abs(step) < 1e-15:
            break
    return x, x / (1.0 + math.exp(-x))


#: Llama models' feed-forward settings, as Meta published them (each checkpoint's ``params.json``:
#: ``dim``, ``multiple_of``, ``ffn_dim_multiplier``), and the hidden width Hugging Face's conversion
#: records (``intermediate_size`` in the model's ``config.json`` on the Hugging Face Hub, e.g.
#: https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json). :func:`llama_ffn_dim`
#: must reproduce the last number from the first three.
LLAMA_FFN_CONFIGS = {
    "Llama-2-7B": {"d_model": 4096, "multiple_of": 256, "ffn_dim_multiplier": None, "intermediate_size": 11008},
    "Llama-2-13B": {"d_model": 5120, "multiple_of": 256, "ffn_dim_multiplier": None, "intermediate_size": 13824},
    "Llama-2-70B": {"d_model": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "intermediate_size": 28672},
    "Llama-3-8B": {"d_model": 4096, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "intermediate_size": 14336},
}
