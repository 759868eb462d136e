"""Chapter 9 — multi-query and grouped-query attention: many query heads, fewer key/value heads.

Multi-head attention (MHA) gives each of its ``H`` heads a query, a key and a value of its own, so a KV
cache (Chapter 8) stores ``H`` keys and ``H`` values per token and layer. Shazeer (2019) let every query
head share one key/value head (multi-query attention, MQA); Ainslie et al. (2023) put the query heads
in ``G`` groups that each share one (grouped-query attention, GQA-G). One rule covers all three:

    query head h reads key/value head  h // (H / G)        MHA: G = H,   GQA: 1 < G < H,   MQA: G = 1

- :func:`repeat_kv` copies each key/value head for the query heads of its group (Hugging Face's way);
- :class:`GroupedQueryAttention` is one attention module for MHA, GQA and MQA, with Hugging Face's
  ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``;
- :func:`mean_pool_kv_heads` turns an MHA key or value projection into a GQA one by averaging the
  heads of each group, and :func:`convert_to_gqa` does it to every layer of a :class:`~course_lib.llama.Llama`;
- :func:`grouped_attention` attends with grouped heads without copying the keys and values;
- :func:`decode_intensity` counts, after Shazeer, the numbers a decoder moves and the operations it
  does, whose ratio says whether decoding waits on memory or on arithmetic;
- :func:`cache_bytes_by_kv_heads` and :func:`plot_head_groups` serve the chapter's table and figure.

Exercises in this module: 9.1 :func:`repeat_kv`, 9.2 :meth:`GroupedQueryAttention.forward`,
9.3 :func:`mean_pool_kv_heads`, 9.4 :func:`decode_intensity`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .exercises import exercise
from .llama import Llama, LlamaConfig
from .memory import kv_cache_bytes
from .rope import apply_rope  # noqa: F401 - Exercise 9.2 rotates its queries and keys with it
from .validation import check_positive_int as _check_positive_int


def _check_groups(n_heads, n_kv_heads) -> None:
    _check_positive_int("n_heads", n_heads)
    _check_positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(
            f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}): every key/value head serves "
            "the same number of query heads"
        )


# --------------------------------------------------------------------------------------
# Sharing keys and values
# --------------------------------------------------------------------------------------


@exercise("9.1", "Repeat each key/value head for its group", points=2)
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Give every query head its key/value head: repeat each head of ``x`` ``n_rep`` times, in place order.

    ``x`` holds ``G`` key (or value) heads. The result holds ``G * n_rep`` heads, one per query head:
    heads ``0 ... n_rep - 1`` are copies of head 0, heads ``n_rep ... 2 n_rep - 1`` copies of head 1,
    and so on, so that result head ``j`` is ``x``'s head ``j // n_rep``. (Not ``0, 1, ..., G - 1, 0,
    1, ...``: query heads are grouped consecutively.) This is Hugging Face's ``repeat_kv`` in
    ``transformers.models.llama.modeling_llama``, and ``torch.repeat_interleave(x, n_rep, dim=1)``.
    Every other dimension is unchanged.

    Args:
        x: a tensor of shape ``(batch, n_kv_heads, seq, head_dim)``, of any dtype.
        n_rep: how many query heads share each key/value head, a positive ``int``
            (``n_heads // n_kv_heads``).

    Returns:
        A tensor of shape ``(batch, n_kv_heads * n_rep, seq, head_dim)`` with the dtype and device of
        ``x``. With ``n_rep == 1`` it equals ``x`` (it may be ``x`` itself).

    Raises:
        ValueError: if ``x`` is not a tensor with four dimensions, or ``n_rep`` is not a positive ``int``
            (a ``bool`` or a ``float`` is refused).

    Example:
        >>> x = torch.tensor([10.0, 20.0]).reshape(1, 2, 1, 1)  # two kv heads, one position, width 1
        >>> repeat_kv(x, 3).flatten()  # six query heads: three read head 0, three read head 1
        tensor([10., 10., 10., 20., 20., 20.])
    """
    raise NotImplementedError


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``n_heads`` query heads and ``n_kv_heads`` key/value heads.

    ``n_kv_heads == n_heads`` is multi-head attention (Chapter 3), ``n_kv_heads == 1`` multi-query
    attention, anything between that divides ``n_heads`` grouped-query attention. The layers and
    their names are Hugging Face's ``LlamaAttention``'s, so its weights load as they are.

    Args:
        d_model: the width of each token vector, a positive ``int``.
        n_heads: query heads, a positive ``int`` dividing ``d_model``.
        n_kv_heads: key/value heads, a positive ``int`` dividing ``n_heads``; ``None`` (the default)
            means ``n_heads``.
        bias: whether the four projections have biases (Llama's have none).

    Attributes:
        q_proj: ``nn.Linear(d_model, n_heads * head_dim, bias)``.
        k_proj, v_proj: ``nn.Linear(d_model, n_kv_heads * head_dim, bias)`` each: ``n_heads / n_kv_heads``
            times smaller than ``q_proj``.
        o_proj: ``nn.Linear(n_heads * head_dim, d_model, bias)``.
        d_model, n_heads, n_kv_heads: the settings; ``head_dim = d_model // n_heads``;
            ``n_rep = n_heads // n_kv_heads``, the query heads per key/value head.

    Raises:
        ValueError: for a size that is not a positive ``int``, ``n_heads`` not dividing ``d_model``,
            ``n_kv_heads`` not dividing ``n_heads``, or a ``bias`` that is not a ``bool``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_groups(n_heads, n_kv_heads)
        if type(bias) is not bool:
            raise ValueError(f"bias must be True or False, got {bias!r}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim, self.n_rep = d_model // n_heads, n_heads // n_kv_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"

    @exercise("9.2", "One attention for MHA, GQA and MQA", points=4)
    def forward(
        self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, causal: bool = True
    ) -> torch.Tensor:
        """Attend from every position of ``x`` to the positions of ``x``, query heads sharing key/value heads.

        1. Project: ``q = q_proj(x)``, ``k = k_proj(x)``, ``v = v_proj(x)`` (the layers themselves,
           biases included when the module has them), then cut ``q`` into ``n_heads`` heads and ``k``
           and ``v`` into ``n_kv_heads`` heads of ``head_dim`` features each.
        2. Positions: with ``cos`` and ``sin`` given, rotate the queries and the keys (not the values)
           with Chapter 7's ``apply_rope`` (imported above) in its default convention (split halves,
           Hugging Face's): row ``p`` of the tables rotates position ``p`` of ``x``. Without them,
           nothing is rotated.
        3. Attend: query head ``h`` scores its queries against the keys of key/value head
           ``h // n_rep`` with scaled dot products (divided by ``sqrt(head_dim)``), takes the softmax
           over the key positions and averages that head's values with the weights. With
           ``causal=True`` position ``i`` sees positions ``0 ... i`` only; with ``causal=False``, all.
        4. Join the ``n_heads`` outputs (head 0's features first) and apply ``o_proj``.

        The result equals ``F.scaled_dot_product_attention(q, k, v, is_causal=causal,
        enable_gqa=True)`` on those heads followed by ``o_proj``, and Hugging Face's
        ``LlamaAttention`` with the same weights and the same rotation tables.

        Args:
            x: a floating-point tensor of shape ``(batch, seq, d_model)`` with the dtype of the weights.
            cos, sin: both ``None``, or both floating-point tensors of shape ``(seq, head_dim // 2)``
                (rows of ``rope.RotaryEmbedding``'s ``cos`` and ``sin``, or any tables ``apply_rope`` takes).
            causal: a ``bool``.

        Returns:
            A tensor of shape ``(batch, seq, d_model)`` and the dtype of ``x``.

        Raises:
            ValueError: if ``x`` is not a floating-point tensor of shape ``(batch, seq, d_model)``
                (the message names the width expected and the one given); if only one of ``cos`` and
                ``sin`` is given, or their shapes do not fit (``apply_rope``'s error); or if ``causal``
                is not a ``bool``.

        Example:
            >>> attn = GroupedQueryAttention(d_model=40, n_heads=10, n_kv_heads=2)  # 5 query heads per kv head
            >>> attn(torch.randn(3, 7, 40)).shape
            torch.Size([3, 7, 40])
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# From MHA to GQA: mean-pooling a checkpoint
# --------------------------------------------------------------------------------------


@exercise("9.3", "Mean-pool an MHA projection into GQA", points=3)
def mean_pool_kv_heads(weight: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Turn the key (or value) projection of ``n_heads`` heads into one of ``n_kv_heads`` heads.

    Ainslie et al. (2023, §2.1 and §2.2) convert a multi-head checkpoint into a grouped-query one by
    replacing the key and value heads of each group with their mean. The first dimension of
    ``weight`` holds ``n_heads`` blocks of ``head_dim = weight.shape[0] // n_heads`` rows, one block
    per head (the weight of ``k_proj`` or ``v_proj``, ``(n_heads * head_dim, d_model)``, or its bias,
    ``(n_heads * head_dim,)``). Group ``g`` is heads ``g * r ... g * r + r - 1`` with
    ``r = n_heads // n_kv_heads`` (consecutive heads, the grouping :func:`repeat_kv` serves), and
    block ``g`` of the result is the mean of their blocks, element by element.

    So ``n_kv_heads == n_heads`` gives ``weight`` back unchanged, ``n_kv_heads == 1`` averages every
    head (MQA), and a group whose heads were already equal keeps that head.

    Args:
        weight: a floating-point tensor of shape ``(n_heads * head_dim, ...)`` with at least one dimension.
        n_heads: the heads ``weight`` holds, a positive ``int`` dividing ``weight.shape[0]``.
        n_kv_heads: the heads to keep, a positive ``int`` dividing ``n_heads``.

    Returns:
        A tensor of shape ``(n_kv_heads * head_dim, ...)`` (the other dimensions unchanged) and the
        dtype of ``weight``. ``weight`` itself is not modified.

    Raises:
        ValueError: if ``weight`` is not a floating-point tensor with at least one dimension; if
            ``n_heads`` or ``n_kv_heads`` is not a positive ``int`` (a ``bool`` or a ``float`` is
            refused); if ``n_heads`` does not divide ``weight.shape[0]``; or if ``n_kv_heads`` does
            not divide ``n_heads`` (the message names both).

    Example:
        >>> w = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # four heads of width 1, d_model 1
        >>> mean_pool_kv_heads(w, n_heads=4, n_kv_heads=2)  # groups (0, 1) and (2, 3)
        tensor([[1.5000],
                [3.5000]])
    """
    raise NotImplementedError


def convert_to_gqa(model: Llama, n_kv_heads: int, how: str = "mean") -> Llama:
    """A copy of ``model`` with ``n_kv_heads`` key/value heads in every layer.

    Every ``k_proj`` and ``v_proj`` weight becomes :func:`mean_pool_kv_heads` of itself
    (``how="mean"``, Ainslie et al.'s conversion) or keeps the first head of each group
    (``how="first"``, one of their ablations); every other tensor is copied as it is. The queries need
    nothing: RoPE turns each head's keys by the same angles, so rotating the mean of some heads'
    keys gives the mean of their rotated keys.

    Args:
        model: a :class:`~course_lib.llama.Llama` whose ``n_kv_heads`` is a multiple of ``n_kv_heads``.
        n_kv_heads: the key/value heads of the new model, a positive ``int`` dividing the model's.
        how: ``"mean"`` or ``"first"``.

    Returns:
        A new :class:`~course_lib.llama.Llama` in ``model``'s dtype, on its device and in its mode
        (``model`` is not changed).
    """
    if not isinstance(model, Llama):
        raise ValueError(f"model must be a course_lib.llama.Llama, got {type(model).__name__}")
    if how not in ("mean", "first"):
        raise ValueError(f"how must be 'mean' or 'first', got {how!r}")
    config = model.config
    _check_groups(config.n_kv_heads, n_kv_heads)
    weight = model.lm_head.weight
    new = Llama(dataclasses.replace(config, n_kv_heads=n_kv_heads)).to(dtype=weight.dtype, device=weight.device)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            if how == "mean":
                tensor = mean_pool_kv_heads(tensor, config.n_kv_heads, n_kv_heads)
            else:  # the first head of each group: (groups, r, head_dim, d_model)[:, 0]
                groups = tensor.reshape(n_kv_heads, config.n_kv_heads // n_kv_heads, config.head_dim, -1)
                tensor = groups[:, 0].reshape(n_kv_heads * config.head_dim, -1)
        state[name] = tensor.detach().clone()
    new.load_state_dict(state)
    return new.train(model.training)


# --------------------------------------------------------------------------------------
# Attention without copies, and what decoding costs
# --------------------------------------------------------------------------------------


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of ``s`` new queries to ``t`` cached positions, query heads grouped, keys never copied.

    ``q`` is ``(batch, n_heads, s, head_dim)``; ``k`` and ``v`` are ``(batch, n_kv_heads, t, head_dim)``
    with ``t >= s``, and the queries are the last ``s`` of the ``t`` positions (as in Chapter 8's
    ``cached_attention``: query ``i`` sees keys ``0 ... t - s + i``). Instead of repeating each key/value
    head for its ``r = n_heads / n_kv_heads`` query heads, the queries are regrouped: the ``r`` heads
    of a group become ``r * s`` rows that meet their shared keys in one matrix product. The keys and
    values are read once per group, never copied, which is the point of sharing them.

    Returns:
        ``(batch, n_heads, s, head_dim)``, equal to ``cached_attention(q, repeat_kv(k, r), repeat_kv(v, r))``.
    """
    batch, n_heads, s, head_dim = q.shape
    n_kv_heads, t = k.shape[1], k.shape[2]
    if n_heads % n_kv_heads or k.shape != v.shape or t < s:
        raise ValueError(f"cannot attend q {tuple(q.shape)} to k {tuple(k.shape)} and v {tuple(v.shape)}")
    r = n_heads // n_kv_heads
    rows = q.reshape(batch, n_kv_heads, r * s, head_dim)  # a group's r heads, one after another: (b, KV, r*s, hd)
    scores = rows @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (batch, KV, r * s, t)
    if s > 1:  # query i of every head sees keys j <= t - s + i (for s = 1 it sees them all)
        i = torch.arange(s, device=q.device).repeat(r)[:, None]  # each head's rows repeat positions 0 ... s-1
        j = torch.arange(t, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + (t - s), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (batch, KV, r * s, head_dim)
    return out.reshape(batch, n_heads, s, head_dim)


@exercise("9.4", "Shazeer's memory-to-arithmetic ratio of decoding", points=3)
def decode_intensity(batch: int, seq_len: int, d_model: int, n_heads: int, n_kv_heads: int) -> dict:
    """How many numbers one attention layer moves, and how many operations it does, to decode ``seq_len`` tokens.

    Shazeer (2019, §2.4 for multi-head attention, §3.1 for multi-query) follows one attention layer
    of a decoder that writes ``n`` tokens one at a time for ``b`` texts, with a cache of keys and
    values: step ``i`` (``i = 1 ... n``) projects one new token per text and attends to ``i``
    positions, the ``i - 1`` cached ones and its own. Write ``d = d_model``, ``h = n_heads``,
    ``g = n_kv_heads`` and ``k = d / h`` (the width of a head). The four projections hold

        W = 2·d·h·k + 2·d·g·k          (P_q and P_o: d·h·k numbers each; P_k and P_v: d·g·k each)

    **Memory** counts the numbers read from or written to memory. Each step reads the four matrices
    once (the whole batch shares them), ``W``; reads the keys and values of its ``i`` positions for
    every text and key/value head, ``2·b·g·k·i``; and reads each text's input vector and writes its
    output, ``2·b·d``. Summed over the steps (``1 + 2 + ... + n = n(n + 1)/2``):

        memory = n·W + b·g·k·n·(n + 1) + 2·b·n·d

    **Arithmetic** counts operations, two per multiply-add (as Chapter 8's ``forward_flops``). Each
    step multiplies every text's vectors by the four matrices, ``2·b·W``, and every one of the ``h``
    query heads scores ``i`` keys and averages ``i`` values, dot products of width ``k``,
    ``2·2·b·h·k·i``:

        arithmetic = 2·b·n·W + 2·b·h·k·n·(n + 1)

    The **ratio** is ``memory / arithmetic``: numbers moved per operation. Hardware that does many
    operations in the time it moves one number waits on memory whenever the ratio is large.
    Shazeer's assumptions (``n <= d``) give Θ(n/d + 1/b) for ``g = h`` and Θ(1/d + n/(d·h) + 1/b) for
    ``g = 1``; these counts are the terms behind them. (The softmax and other small terms are left out.)

    Args:
        batch, seq_len, d_model, n_heads, n_kv_heads: positive ``int`` s (``b``, ``n``, ``d``, ``h``,
            ``g``); ``n_heads`` divides ``d_model`` and ``n_kv_heads`` divides ``n_heads``.

    Returns:
        ``{"memory": int, "arithmetic": int, "ratio": float}``: the two counts as exact Python
        ``int`` s, and their ratio.

    Raises:
        ValueError: if an argument is not a positive ``int`` (a ``bool`` or a ``float`` is refused), or
            ``n_heads`` does not divide ``d_model``, or ``n_kv_heads`` does not divide ``n_heads``.

    Example:
        >>> decode_intensity(batch=1, seq_len=1, d_model=2, n_heads=2, n_kv_heads=2)  # W = 8 + 8
        {'memory': 24, 'arithmetic': 40, 'ratio': 0.6}
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The chapter's table and figure
# --------------------------------------------------------------------------------------


def cache_bytes_by_kv_heads(
    config: LlamaConfig, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16
) -> dict[int, int]:
    """The KV cache of ``config`` with each possible number of key/value heads: ``{n_kv_heads: bytes}``.

    Every divisor of ``config.n_heads``, largest (multi-head) first, with everything else of
    ``config`` kept; the bytes are Chapter 8's :func:`~course_lib.memory.kv_cache_bytes` for ``batch``
    texts of ``seq_len`` tokens in ``dtype``.
    """
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"config must be a LlamaConfig, got {type(config).__name__}")
    divisors = [g for g in range(config.n_heads, 0, -1) if config.n_heads % g == 0]
    return {g: kv_cache_bytes(dataclasses.replace(config, n_kv_heads=g), seq_len, batch, dtype) for g in divisors}


def plot_head_groups(n_heads: int, n_kv_heads: int, ax=None, title: str | None = None):
    """Draw which key/value head each query head reads: queries on top, key/value heads below, a line
    from each query head to its key/value head, one colour per group.

    Returns:
        The matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    _check_groups(n_heads, n_kv_heads)
    ax = ax if ax is not None else plt.gca()
    r = n_heads // n_kv_heads
    colours = plt.get_cmap("tab10" if n_kv_heads <= 10 else "tab20")
    for h in range(n_heads):
        g = h // r
        centre = g * r + (r - 1) / 2  # each key/value head sits under the middle of its group
        colour = colours(g % colours.N)
        ax.plot([h, centre], [1, 0], color=colour, lw=0.8, alpha=0.7)
        ax.add_patch(plt.Rectangle((h - 0.4, 1), 0.8, 0.35, color=colour))
    for g in range(n_kv_heads):
        centre = g * r + (r - 1) / 2
        ax.add_patch(plt.Rectangle((centre - 0.4, -0.35), 0.8, 0.35, color=colours(g % colours.N), ec="black", lw=0.5))
    ax.set_xlim(-1, n_heads)
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([-0.175, 1.175], ["key/value\nheads", "query\nheads"])
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    ax.grid(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return ax
