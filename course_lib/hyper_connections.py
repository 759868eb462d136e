"""Chapter 15, §6 — manifold-constrained hyper-connections (mHC): several residual streams, mixed by a
doubly-stochastic matrix.

A transformer's residual stream is one vector per token, ``h + block(h)``. Hyper-connections [Zhu et al.,
2024, arXiv:2409.19606] keep ``n`` streams per token: a block reads a weighted sum of the streams, its output
is written back to each stream with its own weight, and the streams are mixed among themselves by an
``n × n`` matrix. Unconstrained, that mixing matrix is multiplied layer after layer and the signal can grow
without bound. mHC (Xie et al., DeepSeek-AI, 2025, arXiv:2512.24880, used by DeepSeek-V4)
projects it onto the *doubly-stochastic* matrices — non-negative, every row and every column summing to 1 —
with Sinkhorn and Knopp's alternating normalisation [Sinkhorn & Knopp, 1967]. A product of doubly-stochastic
matrices is doubly-stochastic, so the mixing can never amplify, however deep the model.

- :func:`sinkhorn_knopp` (Exercise 15.4): the projection, as Hugging Face's ``DeepseekV4HyperConnection``
  computes it;
- :class:`HyperConnection`: V4's mHC weights for one block (its names: ``fn``, ``base``, ``scale``), and
  :func:`mhc_update`, the residual update of V4's decoder layer;
- :func:`mixing_gain`: how far a product of mixing matrices can amplify, for the chapter's figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .exercises import exercise


@exercise("15.4", "Sinkhorn–Knopp normalisation", points=3)
def sinkhorn_knopp(logits: torch.Tensor, n_iters: int, eps: float = 1e-6) -> torch.Tensor:
    """Turn square matrices of logits into (nearly) doubly-stochastic matrices, as DeepSeek-V4's mHC does.

    For each ``n × n`` matrix of ``logits`` (the last two dimensions; any leading dimensions are a batch),
    in float32:

    1. ``M = softmax(logits, over each row) + eps``: positive entries, each row summing to ``1 + n * eps``
       (the first row normalisation, with the exponential made safe by the softmax);
    2. divide each **column** by its sum plus ``eps``: ``M = M / (M.sum(over rows) + eps)``;
    3. then ``n_iters - 1`` more rounds, each dividing every **row** by its sum plus ``eps``, then every
       column by its sum plus ``eps``.

    So ``n_iters`` counts the column normalisations (Hugging Face's ``hc_sinkhorn_iters``, 20 in V4), the
    result's columns sum to 1 up to ``eps``, and its rows converge to 1 as ``n_iters`` grows.

    Args:
        logits: a floating-point tensor ``(..., n, n)`` with ``n >= 1``.
        n_iters: a positive ``int`` (a ``bool`` is refused).
        eps: a finite ``float`` (or ``int``) ``>= 0``.

    Returns:
        A new ``torch.float32`` tensor of the shape of ``logits``; ``logits`` is not modified. Differentiable.

    Raises:
        ValueError: if ``logits`` is not a floating-point tensor whose last two dimensions are equal and
            positive, if ``n_iters`` is not a positive ``int``, or if ``eps`` is not a finite number ``>= 0``.

    Example:
        >>> m = sinkhorn_knopp(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), n_iters=20, eps=0.0)
        >>> m
        tensor([[0.1824, 0.8176],
                [0.8176, 0.1824]])
        >>> m.sum(dim=-1), m.sum(dim=-2)  # rows and columns
        (tensor([1., 1.]), tensor([1., 1.]))
    """
    raise NotImplementedError


class HyperConnection(nn.Module):
    """DeepSeek-V4's mHC weights for one block (attention or MLP), Hugging Face's ``DeepseekV4HyperConnection``.

    From the ``n`` streams of a token, flattened and RMS-normalised (no learned scale), one linear map ``fn``
    gives ``2n + n²`` numbers; with the bias ``base`` and the three scales ``scale`` (pre, post, comb):

    - ``pre  = sigmoid(·) + eps``: how much of each stream the block reads (the collapse);
    - ``post = 2 · sigmoid(·)``: how much of the block's output each stream receives;
    - ``comb = sinkhorn_knopp(·, n_iters, eps)``: the ``n × n`` mixing of the streams.

    Args:
        d_model: the width of one stream; n_streams: ``n`` (V4: ``hc_mult = 4``); n_iters: Sinkhorn iterations
        (V4: 20); eps: V4's ``hc_eps`` (1e-6); norm_eps: the RMS norm's epsilon (``rms_norm_eps``).
    """

    def __init__(self, d_model: int, n_streams: int, n_iters: int = 20, eps: float = 1e-6, norm_eps: float = 1e-6):
        super().__init__()
        self.n_streams, self.n_iters, self.eps, self.norm_eps = n_streams, n_iters, eps, norm_eps
        n = n_streams
        self.fn = nn.Parameter(torch.zeros((2 + n) * n, n * d_model))
        self.base = nn.Parameter(torch.zeros((2 + n) * n))
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``streams`` ``(batch, seq, n, d_model)`` -> ``(post, comb, collapsed)``: ``(batch, seq, n)``,
        ``(batch, seq, n, n)`` (float32) and the block's input ``(batch, seq, d_model)`` in the streams' dtype."""
        n = self.n_streams
        flat = streams.flatten(2).float()  # (batch, seq, n * d_model)
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        pre, post, comb = F.linear(flat, self.fn.float()).split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.split([n, n, n * n])
        pre = torch.sigmoid(pre * self.scale[0] + pre_b) + self.eps
        post = 2 * torch.sigmoid(post * self.scale[1] + post_b)
        comb = sinkhorn_knopp((comb * self.scale[2] + comb_b).unflatten(-1, (n, n)), self.n_iters, self.eps)
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)  # (batch, seq, d_model)
        return post, comb, collapsed


def mhc_update(streams: torch.Tensor, block_out: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """V4's residual update around one block: stream ``k`` becomes ``post_k · block_out + sum_j comb[j, k] ·
    stream_j`` (``comb`` read by columns, as Hugging Face's decoder layer does: ``combᵀ @ streams``).
    Shapes: streams ``(batch, seq, n, d)``, block_out ``(batch, seq, d)``, post ``(batch, seq, n)``, comb
    ``(batch, seq, n, n)``; returns ``(batch, seq, n, d)``."""
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + comb.to(dtype).transpose(-1, -2) @ streams


def mixing_gain(matrices: torch.Tensor) -> torch.Tensor:
    """The largest factor by which the products of the first 1, 2, ... matrices of ``matrices`` ``(L, n, n)``
    can amplify a signal: the maximum absolute row sum (the ∞-norm) of each running product, ``(L,)``."""
    product = torch.eye(matrices.shape[-1], dtype=matrices.dtype)
    gains = []
    for m in matrices:
        product = product @ m
        gains.append(product.abs().sum(-1).max())
    return torch.stack(gains)
