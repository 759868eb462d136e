"""Chapter 4 — the transformer block: where a token's vector is rewritten, layer after layer.

GPT-2's block is *pre-norm*: each of its two sub-layers reads a normalised copy of the stream
and adds its result back onto the stream (a residual, or shortcut, connection):

    x = x + dropout(attention(ln_1(x)))
    x = x + feed_forward(ln_2(x))

The width ``d_model`` never changes, so blocks stack: GPT-2 small has 12 of them. The pieces come
from :mod:`course_lib.attention` (Chapter 3) and :mod:`course_lib.layers` (this chapter).

Exercise in this module: 4.4 :meth:`TransformerBlock.forward`. A block built with
``kernels="fused"`` (as Chapter 5's GPT builds them) runs the same layers on PyTorch's fused
kernels: :class:`~course_lib.attention.FusedMultiHeadAttention`, :class:`FusedLayerNorm` and
:class:`FusedFeedForward`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FusedMultiHeadAttention, MultiHeadAttention
from .exercises import exercise
from .layers import FeedForward, LayerNorm

#: What a block's layers run on: ``"course"``, the code of Chapters 3 and 4, or ``"fused"``, PyTorch's kernels.
KERNELS = ("course", "fused")


# --------------------------------------------------------------------------------------
# Chapter 4's layers on PyTorch's fused kernels (finished helpers)
# --------------------------------------------------------------------------------------


def _check_vectors(x, d_model: int) -> None:
    """The ``ValueError`` of Chapter 4's layers for an ``x`` that is not a tensor ``(..., d_model)``."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != d_model:
        raise ValueError(
            f"x must be a tensor of shape (..., d_model={d_model}), got {getattr(x, 'shape', type(x).__name__)}"
        )


class FusedLayerNorm(LayerNorm):
    """:class:`~course_lib.layers.LayerNorm` computed by ``torch.nn.functional.layer_norm``.

    Same parameters and the same result as the course's layer (Chapter 4 checks one against the
    other), in one kernel that reads the input once and, for the backward pass, keeps only the
    mean and the inverse standard deviation of each vector instead of every intermediate tensor.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_vectors(x, self.d_model)
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)


class FusedFeedForward(FeedForward):
    """:class:`~course_lib.layers.FeedForward` with ``torch.nn.functional.gelu`` as its activation.

    Same parameters and the same result; the activation is one kernel forward and one backward,
    where the tanh form written out is a chain of element-wise passes over the ``(..., d_ff)``
    hidden tensor, the widest in the block, each with its own step in the backward pass.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_vectors(x, self.d_model)
        h = F.gelu(self.fc_in(x), approximate=self.approximate)  # (..., d_ff)
        return self.dropout(self.fc_out(h))  # (..., d_model)


def check_kernels(kernels) -> str:
    """``kernels`` if it is one of :data:`KERNELS`; a ``ValueError`` naming them otherwise."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    return kernels


# --------------------------------------------------------------------------------------
# The block
# --------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """GPT-2's pre-norm transformer block: causal multi-head attention and a feed-forward network,
    each behind a LayerNorm and inside a residual connection.

    Args:
        d_model: the width of the token vectors, a positive ``int``.
        n_heads: the number of attention heads, a positive ``int`` that divides ``d_model``.
        d_ff: the hidden width of the feed-forward network (``None``: ``4 * d_model``).
        dropout: the dropout probability, for the attention weights, the attention output and
            the feed-forward output: one value for all three, like GPT-1 and Hugging Face's GPT2Config
            (OpenAI's released GPT-2 code has no dropout).
        bias: whether the linear layers and the LayerNorms have biases.
        eps: the LayerNorms' ``eps``.
        kernels: ``"course"`` (the default): the layers as Chapters 3 and 4 wrote them,
            :class:`MultiHeadAttention`, :class:`LayerNorm` and :class:`FeedForward`. ``"fused"``:
            :class:`FusedMultiHeadAttention`, :class:`FusedLayerNorm` and :class:`FusedFeedForward`,
            the same layers with the same parameters (and state-dict keys) on PyTorch's fused
            kernels, which Chapter 5's GPT uses by default. ``forward`` is the same either way.

    Attributes:
        ln_1: ``LayerNorm(d_model, eps, bias)`` before attention.
        attn: ``MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias, causal=True)``.
        dropout: ``nn.Dropout(dropout)`` on the attention output, before it joins the stream.
        ln_2: ``LayerNorm(d_model, eps, bias)`` before the feed-forward network.
        ffn: ``FeedForward(d_model, d_ff, dropout, bias)`` (its own dropout is on its output).
        d_model, n_heads, kernels: the settings above.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        eps: float = 1e-5,
        kernels: str = "course",
    ):
        super().__init__()
        fused = check_kernels(kernels) == "fused"
        attention = FusedMultiHeadAttention if fused else MultiHeadAttention
        norm, ffn = (FusedLayerNorm, FusedFeedForward) if fused else (LayerNorm, FeedForward)
        self.attn = attention(d_model, n_heads, dropout=dropout, bias=bias, causal=True)  # validates the sizes
        self.d_model, self.n_heads, self.kernels = d_model, n_heads, kernels
        self.ln_1 = norm(d_model, eps, bias)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm(d_model, eps, bias)
        self.ffn = ffn(d_model, d_ff, dropout, bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, pre-norm"

    @exercise("4.4", "The pre-norm transformer block", points=4)
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pass ``x`` through the block: two residual sub-layers, each reading a normalised copy.

        The block computes, for every position,

            h   = x + Dropout(Attention(LN_1(x)))
            out = h + Dropout(FFN(LN_2(h)))

        with ``LN_1``, ``LN_2`` the layers ``self.ln_1``, ``self.ln_2``; ``Attention`` the causal
        ``self.attn``, given the extra ``mask`` when there is one; the first ``Dropout`` the block's
        ``self.dropout``; and ``FFN`` followed by its ``Dropout`` what ``self.ffn`` returns (the
        feed-forward module ends with its own dropout). So each branch is dropped out exactly once,
        before it is added to the stream, and only in training mode: in evaluation mode the block
        is deterministic.

        ``x`` itself is left unchanged (not modified in place): the caller may still need it, and
        an input that requires grad is accepted and can be backpropagated through the output.

        Args:
            x: a floating-point tensor of shape ``(batch, seq, d_model)``, the dtype of the weights.
            mask: ``None`` or an extra ``torch.bool`` attention mask (``True``: may attend), as for
                :meth:`MultiHeadAttention.forward`.

        Returns:
            A tensor of shape ``(batch, seq, d_model)`` in the dtype of ``x``: the width is kept.

        Raises:
            ValueError: if ``x`` is not a 3-D tensor with last dimension ``self.d_model``.

        Example:
            >>> block = TransformerBlock(d_model=16, n_heads=4)
            >>> block(torch.randn(2, 5, 16)).shape
            torch.Size([2, 5, 16])
        """
        raise NotImplementedError

    def load_hf_gpt2_block(self, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> TransformerBlock:
        """Copy the weights of a Hugging Face ``GPT2Block`` into this block, in place; returns ``self``.

        Hugging Face's GPT-2 keeps its linear layers as ``Conv1D`` modules whose weight is stored
        transposed, ``(in_features, out_features)``, and fuses the query, key and value projections
        into one ``attn.c_attn`` of shape ``(d_model, 3 * d_model)``, in that order. This splits and
        transposes them into the course's ``nn.Linear`` layers:

        ==========================  ====================================
        Hugging Face (``prefix`` +)  course
        ==========================  ====================================
        ``ln_1``, ``ln_2``           ``ln_1``, ``ln_2``
        ``attn.c_attn``              ``attn.q_proj``, ``k_proj``, ``v_proj``
        ``attn.c_proj``              ``attn.out_proj``
        ``mlp.c_fc``                 ``ffn.fc_in``
        ``mlp.c_proj``               ``ffn.fc_out``
        ==========================  ====================================

        Other entries (such as the ``attn.bias`` mask buffer of older versions) are ignored.

        Args:
            state_dict: the ``state_dict()`` of a ``GPT2Block``, or of a whole GPT-2 model with
                ``prefix`` naming the block, e.g. ``"transformer.h.0."`` or ``"h.0."``.
            prefix: prepended to every key looked up.

        Raises:
            ValueError: if this block has no biases (GPT-2's layers all have them), if a key is
                missing, or if a shape does not fit this block's sizes.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
        if self.ln_1.bias is None:
            raise ValueError("GPT-2's block has biases everywhere: build this block with bias=True to load it")
        d, d_ff = self.d_model, self.ffn.d_ff

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            key = prefix + name
            if key not in state_dict:
                raise ValueError(f"the state_dict has no {key!r}")
            value = state_dict[key]
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{key!r} must have shape {shape} for d_model={d} and d_ff={d_ff}, got {tuple(value.shape)}"
                )
            return value.detach()

        c_attn_w, c_attn_b = get("attn.c_attn.weight", (d, 3 * d)), get("attn.c_attn.bias", (3 * d,))
        with torch.no_grad():
            for ours, hf in ((self.ln_1, "ln_1"), (self.ln_2, "ln_2")):
                ours.weight.copy_(get(f"{hf}.weight", (d,)))
                ours.bias.copy_(get(f"{hf}.bias", (d,)))
            # c_attn's columns hold q | k | v; a Linear's rows are its outputs, hence the transpose.
            for proj, w, b in zip(
                (self.attn.q_proj, self.attn.k_proj, self.attn.v_proj), c_attn_w.split(d, dim=1), c_attn_b.split(d)
            ):
                proj.weight.copy_(w.T)
                proj.bias.copy_(b)
            self.attn.out_proj.weight.copy_(get("attn.c_proj.weight", (d, d)).T)
            self.attn.out_proj.bias.copy_(get("attn.c_proj.bias", (d,)))
            self.ffn.fc_in.weight.copy_(get("mlp.c_fc.weight", (d, d_ff)).T)
            self.ffn.fc_in.bias.copy_(get("mlp.c_fc.bias", (d_ff,)))
            self.ffn.fc_out.weight.copy_(get("mlp.c_proj.weight", (d_ff, d)).T)
            self.ffn.fc_out.bias.copy_(get("mlp.c_proj.bias", (d,)))
        return self


def block_parameters(d_model: int, d_ff: int | None = None, bias: bool = True) -> int:
    """The number of parameters of a :class:`TransformerBlock`: attention ``4 d² (+ 4 d)``,
    feed-forward ``2 d d_ff (+ d_ff + d)``, two LayerNorms ``2 d (+ 2 d)``. For GPT-2
    (``d_ff = 4 d``, biases) that is ``12 d² + 13 d``."""
    from .layers import feed_forward_parameters

    attention = 4 * d_model * d_model + (4 * d_model if bias else 0)
    norms = 2 * d_model * (2 if bias else 1)
    return attention + feed_forward_parameters(d_model, d_ff, bias) + norms
