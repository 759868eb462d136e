"""Chapter 3 — attention: how a token gathers information from the tokens around it.

Every token arrives with a vector of width ``d_model``. Attention lets each position build a new
vector as a weighted average of *value* vectors, one per position it may look at, with weights
that say how relevant each of those positions is to it. Relevance is a scaled dot product
between a *query* (what this position looks for) and a *key* (what each position offers).
A *mask* says which positions may be looked at: a language model's causal mask forbids looking
ahead, and sparse masks keep only a few positions per query so that long sequences stay cheap.

Shapes follow PyTorch's conventions: ``(batch, seq, d_model)`` for a layer's input and output,
``(batch, heads, seq, d_head)`` inside multi-head attention, and a bool mask where ``True``
means "may attend".

Exercises in this module: 3.1 :func:`scaled_dot_product_attention`, 3.2 :func:`causal_mask`,
3.3 :meth:`MultiHeadAttention.forward`. :class:`FusedMultiHeadAttention` is the same layer on
PyTorch's fused kernel, which Chapter 5's GPT uses by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .exercises import exercise

# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------


@exercise("3.1", "Scaled dot-product attention", points=4)
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend from every query to the keys it may see, and mix their values.

    1. Scores: ``q @ k.transpose(-2, -1) / sqrt(d_k)``, shape ``(..., seq_q, seq_k)``.
    2. Mask: where ``mask`` is ``False``, set the score to ``-inf`` so that its weight becomes 0.
    3. Weights: softmax of the scores over the last dimension (keys), in the input dtype.
       A row whose keys are all masked has nothing to attend to: its weights are all **zero**
       (not NaN, and not uniform), so its output is zero too. This is what
       ``torch.nn.functional.scaled_dot_product_attention`` does.
    4. Dropout: only if ``training`` is true and ``dropout_p > 0``, zero each weight with
       probability ``dropout_p`` and divide the others by ``1 - dropout_p``
       (``torch.nn.functional.dropout`` does exactly this).
    5. Output: ``weights @ v``.

    The leading dimensions ``...`` (batch, heads) are the same for ``q``, ``k`` and ``v``, or
    broadcast as in ``torch.matmul``.

    Args:
        q: queries, a floating-point tensor of shape ``(..., seq_q, d_k)``.
        k: keys, shape ``(..., seq_k, d_k)``, same dtype as ``q``.
        v: values, shape ``(..., seq_k, d_v)``, same dtype as ``q``.
        mask: ``None`` (attend everywhere) or a ``torch.bool`` tensor that broadcasts to
            ``(..., seq_q, seq_k)``; ``True`` means "may attend" (PyTorch's convention), so a
            ``(seq_q, seq_k)`` mask applies to every batch element and head.
        dropout_p: probability of dropping an attention weight, between 0 and 1.
        training: apply dropout only when this is true.

    Returns:
        A tuple ``(output, weights)``: ``output`` of shape ``(..., seq_q, d_v)`` and
        ``weights`` of shape ``(..., seq_q, seq_k)`` (the weights that multiplied ``v``, after
        dropout when it applies), both in the dtype of ``q``. Without dropout, every row of
        ``weights`` that is not fully masked sums to 1.

    Raises:
        ValueError: if ``q`` and ``k`` differ in ``d_k``, if ``k`` and ``v`` differ in
            ``seq_k``, or if ``mask`` is not a bool tensor; the message says what was expected
            and what came.

    Example:
        >>> q = k = v = torch.eye(2).unsqueeze(0)            # (1, 2, 2)
        >>> out, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(2))
        >>> w
        tensor([[[1.0000, 0.0000],
                 [0.3302, 0.6698]]])
    """
    raise NotImplementedError


@exercise("3.2", "The causal mask", points=2)
def causal_mask(seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The mask that lets position ``i`` attend to positions ``0, ..., i`` and no later one.

    Entry ``[i, j]`` is ``True`` (may attend) when ``j <= i``: on and below the diagonal.

    Args:
        seq_len: the number of positions, an ``int`` of at least 1.
        device: where to create the mask (``None``: PyTorch's default device).

    Returns:
        A ``torch.bool`` tensor of shape ``(seq_len, seq_len)``.

    Raises:
        ValueError: if ``seq_len`` is not an ``int`` of at least 1.

    Example:
        >>> causal_mask(3)
        tensor([[ True, False, False],
                [ True,  True, False],
                [ True,  True,  True]])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, as in GPT-2: ``n_heads`` heads of width ``d_model // n_heads``.

    Args:
        d_model: the width of the token vectors, a positive ``int``.
        n_heads: the number of heads, a positive ``int`` that divides ``d_model``.
        dropout: probability of dropping an attention weight in training mode.
        bias: whether the four projections have a bias.
        causal: whether a position may only attend to itself and earlier positions.

    Attributes:
        q_proj, k_proj, v_proj, out_proj: ``nn.Linear(d_model, d_model, bias=bias)`` each.
        d_model, n_heads, d_head, dropout_p, causal: the settings above (``d_head = d_model // n_heads``).
        last_weights: the attention weights of the last forward call, ``(batch, n_heads, seq, seq)``,
            detached from the graph (for plots); ``None`` before the first call.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, causal: bool = True):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout must be a probability between 0 and 1, got {dropout!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout_p = float(dropout)
        self.bias = bool(bias)
        self.causal = bool(causal)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.last_weights: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"dropout={self.dropout_p}, causal={self.causal}"
        )

    @exercise("3.3", "Multi-head attention", points=4)
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Let every position of ``x`` attend to the others, in ``self.n_heads`` heads at once.

        The queries, keys and values are ``self.q_proj(x)``, ``self.k_proj(x)`` and ``self.v_proj(x)``,
        each of width ``d_model`` and cut into ``n_heads`` heads: head ``h`` owns features
        ``h * d_head`` to ``(h + 1) * d_head - 1`` of every position. Each head attends on its own,
        as your :func:`scaled_dot_product_attention` does (scale ``1 / sqrt(d_head)``, zero weights
        for a query that may see no key). The heads' outputs, put back side by side in the same
        order, go through ``self.out_proj``; that is the return value.

        Which keys a query may see: if ``self.causal``, only keys at its own position or earlier
        (Exercise 3.2's causal mask, on ``x``'s device); if ``mask`` is given, only keys that it
        allows too (both conditions when both apply); with neither, every key.

        Dropout acts on the attention weights only, with probability ``self.dropout_p``, and only in
        training mode (``self.training``): in evaluation mode the layer is deterministic, and
        nothing else in the layer is ever dropped.

        Side effect: after every call, ``self.last_weights`` holds that call's attention weights,
        shape ``(batch, n_heads, seq, seq)``, exactly those that multiplied the values (so after
        dropout when it acts), detached from the autograd graph.

        Args:
            x: a floating-point tensor of shape ``(batch, seq, d_model)``, the dtype of the weights.
            mask: ``None`` or an extra ``torch.bool`` mask (``True``: may attend) that broadcasts to
                ``(batch, n_heads, seq, seq)``: ``(seq, seq)`` for every sequence, or
                ``(batch, 1, 1, seq)`` to hide padding keys, say.

        Returns:
            A tensor of shape ``(batch, seq, d_model)``, in the dtype of ``x``.

        Raises:
            ValueError: if ``x`` is not 3-D with last dimension ``self.d_model``, or if ``mask``
                is given and is not a bool tensor.

        Example:
            >>> mha = MultiHeadAttention(d_model=16, n_heads=4)
            >>> mha(torch.randn(2, 5, 16)).shape, mha.last_weights.shape
            (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
        """
        raise NotImplementedError

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, causal: bool = True) -> MultiHeadAttention:
        """A course ``MultiHeadAttention`` holding the weights of a ``torch.nn.MultiheadAttention``.

        PyTorch keeps the query, key and value projections in one ``in_proj_weight`` of shape
        ``(3 * d_model, d_model)``, stacked in that order; this splits it into the three
        ``nn.Linear`` layers. ``module`` must have been built with ``batch_first=True`` and
        without ``kdim``/``vdim``, ``add_bias_kv`` or ``add_zero_attn``. PyTorch's module does not
        know about causality (it takes a mask on each call), so say it here with ``causal``.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise ValueError(f"expected a torch.nn.MultiheadAttention, got {type(module).__name__}")
        if not module.batch_first:
            raise ValueError(
                "the module must be built with batch_first=True, as the course's (batch, seq, d_model) layout"
            )
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ValueError(
                "only a plain nn.MultiheadAttention can be converted (no kdim/vdim, add_bias_kv or add_zero_attn)"
            )
        weight = module.in_proj_weight
        bias = module.in_proj_bias is not None
        new = cls(module.embed_dim, module.num_heads, dropout=module.dropout, bias=bias, causal=causal)
        new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for proj, w in zip((new.q_proj, new.k_proj, new.v_proj), weight.chunk(3)):
                proj.weight.copy_(w)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                for proj, b in zip((new.q_proj, new.k_proj, new.v_proj), module.in_proj_bias.chunk(3)):
                    proj.bias.copy_(b)
                new.out_proj.bias.copy_(module.out_proj.bias)
        return new.train(module.training)


class FusedMultiHeadAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` on PyTorch's fused kernel: the same layer, computed faster.

    The parameters are those of :class:`MultiHeadAttention` (``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``), so a state dict moves between the two unchanged, and ``forward`` keeps the
    contract of :meth:`MultiHeadAttention.forward` (causal and extra masks combined, a query that
    may see no key gets zeros, dropout on the weights in training mode only, the same errors) with
    one exception: ``last_weights`` stays ``None``, because the weights are never formed.

    Two things make it fast. The three input projections run as one matrix product, on their
    weights stacked as ``[W_q; W_k; W_v]`` (the layout of Hugging Face's ``c_attn``, stacked anew at
    each call, so the parameters stay where they are): one pass over ``x`` instead of three. And the
    attention itself is ``torch.nn.functional.scaled_dot_product_attention``, which, without
    dropout, works through the keys block by block with a running softmax (FlashAttention, Dao et
    al., 2022, arXiv:2205.14135; the running softmax: Milakov & Gimelshein, 2018, arXiv:1805.02867):
    the ``(seq, seq)`` scores are never written to memory, and under the causal mask each block of
    queries stops at the key of its last query, so most scores above the diagonal are never
    computed. (With dropout, PyTorch's CPU build falls back to the plain computation.) Chapter 3
    shows that this function computes what :func:`scaled_dot_product_attention` does.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor of shape (batch, seq, d_model={self.d_model}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
            raise ValueError(
                "mask must be None or a torch.bool tensor (True: may attend), "
                f"got {getattr(mask, 'dtype', type(mask).__name__)}"
            )
        batch, seq, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])  # (3 * d_model, d_model)
        bias = torch.cat([p.bias for p in projections]) if self.bias else None
        qkv = F.linear(x, weight, bias).view(batch, seq, 3, self.n_heads, self.d_head)
        # Views, no copy. Unbinding dim 2 (not the first dim of a permuted view) also makes the backward
        # pass cheap: it stacks the three gradients straight into qkv's layout, in one copy instead of two.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # each (batch, heads, seq, d_head)
        dropout_p = self.dropout_p if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal)
        else:
            scores_shape = (batch, self.n_heads, seq, seq)
            try:
                fits = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {scores_shape}")
            if self.causal:  # built here, not with causal_mask(): this path needs nothing from Exercise 3.2
                mask = mask & torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        self.last_weights = None
        # The fused kernel lays its output out as (batch, seq, heads, d_head), so the merge below is a view.
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, self.d_model))  # (batch, seq, d_model)


# --------------------------------------------------------------------------------------
# Sparse attention patterns (finished helpers)
# --------------------------------------------------------------------------------------


def _check_size(name: str, value) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an int of at least 1, got {value!r}")


def _offsets(seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key positions, as a column ``(seq_len, 1)`` and a row ``(1, seq_len)``."""
    pos = torch.arange(seq_len, device=device)
    return pos[:, None], pos[None, :]


def sliding_window_mask(seq_len: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal local attention: position ``i`` sees the ``window`` positions ``i - window + 1, ..., i``.

    The pattern of Longformer's sliding window (Beltagy et al., 2020; there centred, here causal) and
    of Mistral 7B (Jiang et al., 2023). Conventions differ by one: here ``window`` counts the
    position itself, so ``window=1`` sees only itself and ``window >= seq_len`` is the causal mask.

    Returns:
        A ``torch.bool`` tensor of shape ``(seq_len, seq_len)``, ``True`` where ``0 <= i - j < window``.
    """
    _check_size("seq_len", seq_len)
    _check_size("window", window)
    i, j = _offsets(seq_len, device)
    return (j <= i) & (i - j < window)


def strided_mask(seq_len: int, stride: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The *strided* pattern of the Sparse Transformer (Child et al., 2019), both halves together.

    Position ``i`` sees the previous ``stride`` positions (``i - j < stride``, the local half) and
    every ``stride``-th position before it (``(i - j) % stride == 0``, the strided half). With
    ``stride`` near ``sqrt(seq_len)`` each query sees at most about ``2 * sqrt(seq_len)`` keys. The paper
    alternates the two halves across layers, gives them to different heads, or lets one head attend
    to their union, which is what this returns.

    Returns:
        A causal ``torch.bool`` tensor of shape ``(seq_len, seq_len)``.
    """
    _check_size("seq_len", seq_len)
    _check_size("stride", stride)
    i, j = _offsets(seq_len, device)
    return (j <= i) & ((i - j < stride) | ((i - j) % stride == 0))


def fixed_mask(seq_len: int, block: int, summary: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """The *fixed* pattern of the Sparse Transformer (Child et al., 2019), both halves together.

    The positions are cut into blocks of ``block``. Position ``i`` sees the earlier positions of its
    own block (``j // block == i // block``) and, in every earlier block, its last ``summary``
    positions (``j % block >= block - summary``): cells that summarise their block for everyone
    after it. Like :func:`strided_mask`, this returns the union of the two halves.

    Returns:
        A causal ``torch.bool`` tensor of shape ``(seq_len, seq_len)``.
    """
    _check_size("seq_len", seq_len)
    _check_size("block", block)
    _check_size("summary", summary)
    if summary > block:
        raise ValueError(f"summary must be at most block, got summary={summary} and block={block}")
    i, j = _offsets(seq_len, device)
    return (j <= i) & ((j // block == i // block) | (j % block >= block - summary))


# --------------------------------------------------------------------------------------
# Figures (finished helpers)
# --------------------------------------------------------------------------------------


def plot_attention(weights: torch.Tensor, tokens: list[str], ax=None, title: str | None = None, annotate: bool = True):
    """Draw a ``(seq, seq)`` matrix of attention weights as a heat map: queries down, keys across.

    Args:
        weights: a tensor of shape ``(seq, seq)`` with values in ``[0, 1]``.
        tokens: ``seq`` labels, one per position.
        ax: a matplotlib ``Axes`` (default: the current one).
        title: the panel's title.
        annotate: write each weight in its cell (two decimals).

    Returns:
        The ``Axes``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(weights, torch.Tensor) or weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(
            f"weights must be a square 2-D tensor (seq, seq), got {getattr(weights, 'shape', type(weights).__name__)}"
        )
    if len(tokens) != weights.shape[0]:
        raise ValueError(f"expected {weights.shape[0]} token labels, got {len(tokens)}")
    w = weights.detach().to("cpu", torch.float64)
    ax = ax if ax is not None else plt.gca()
    ax.imshow(w.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(tokens)
    ax.set_xticks(range(n), tokens, rotation=45, ha="right")
    ax.set_yticks(range(n), tokens)
    ax.set_xlabel("key (looked at)")
    ax.set_ylabel("query (looking)")
    ax.grid(False)
    if annotate:
        for r in range(n):
            for c in range(n):
                value = w[r, c].item()
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white" if value > 0.6 else "#333333",
                )
    if title:
        ax.set_title(title)
    return ax


def plot_mask(mask: torch.Tensor, ax=None, title: str | None = None, highlight: torch.Tensor | None = None):
    """Draw a ``(seq_q, seq_k)`` bool mask: allowed cells coloured, forbidden cells white.

    Args:
        mask: a ``torch.bool`` tensor of shape ``(seq_q, seq_k)``.
        ax: a matplotlib ``Axes`` (default: the current one).
        title: the panel's title.
        highlight: an optional bool mask of the same shape; allowed cells that it marks are drawn
            in a second colour (to tell apart the two halves of a sparse pattern).

    Returns:
        The ``Axes``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(
            f"mask must be a 2-D bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)} "
            f"of shape {tuple(getattr(mask, 'shape', ()))}"
        )
    if highlight is not None and (
        not isinstance(highlight, torch.Tensor) or highlight.dtype != torch.bool or highlight.shape != mask.shape
    ):
        raise ValueError(f"highlight must be a bool tensor of the mask's shape {tuple(mask.shape)}")
    m = mask.detach().cpu()
    image = torch.ones(*m.shape, 3)  # white
    image[m] = torch.tensor([0x4C, 0x72, 0xB0]) / 255.0  # blue: allowed
    if highlight is not None:
        image[m & highlight.detach().cpu()] = torch.tensor([0xDD, 0x84, 0x52]) / 255.0  # orange: the highlighted part
    ax = ax if ax is not None else plt.gca()
    ax.imshow(image.numpy(), interpolation="nearest")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax
