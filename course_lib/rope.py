"""Chapter 7 — rotary position embeddings (RoPE): positions written into queries and keys by rotation.

GPT-2 adds a position vector to each token's embedding (Chapter 2). Llama instead *rotates* each
query and key after its projection: the vector of width ``head_dim`` is cut into ``head_dim / 2``
pairs of features, and the pair ``i`` of the token at position ``m`` is turned by the angle
``m * theta_i`` (Su et al., 2021). The score of a query at position ``m`` with a key at position
``n`` then depends on the positions only through ``m - n``.

- :func:`rope_frequencies` gives the angle each pair turns per position, ``theta_i = base ** (-2i / head_dim)``;
- :func:`apply_rope` rotates a tensor of queries or keys with tables of cosines and sines, in either
  convention in use: adjacent pairs ``(2i, 2i + 1)`` (Meta's reference code) or split halves
  ``(i, i + head_dim / 2)`` (Hugging Face's ``rotate_half``);
- :class:`RotaryEmbedding` precomputes the tables and rotates positions ``offset ... offset + seq - 1``
  (the offset is what a KV cache needs, Chapter 8);
- :func:`permute_for_halves` reorders the rows of a query or key projection so that a checkpoint
  trained with one convention gives the same scores with the other;
- :func:`rope_decay_bound` is Su et al.'s upper bound on how a score can grow with distance.

Shapes: ``(..., seq, head_dim)`` means any number of leading dimensions, usually
``(batch, heads, seq, head_dim)``; the position is always the second-to-last dimension.

Exercises in this module: 7.1 :func:`rope_frequencies`, 7.2 :func:`apply_rope`,
7.3 :meth:`RotaryEmbedding.forward`.
"""

from __future__ import annotations

import torch
from torch import nn

from .exercises import exercise
from .validation import describe as _describe

#: The RoPE settings of the models this chapter compares, from their published configurations
#: (Hugging Face ``config.json``: ``hidden_size / num_attention_heads``, ``rope_theta``,
#: ``max_position_embeddings``): meta-llama/Llama-2-7b-hf (Touvron et al., 2023, arXiv:2307.09288)
#: and meta-llama/Meta-Llama-3-8B (Dubey et al., 2024, arXiv:2407.21783, which raised the base to
#: 500,000 for longer contexts, after Xiong et al., 2023, arXiv:2309.16039).
ROPE_SETTINGS = {
    "Llama 2": {"head_dim": 4096 // 32, "base": 10000.0, "context_length": 4096},
    "Llama 3": {"head_dim": 4096 // 32, "base": 500000.0, "context_length": 8192},
}


def _check_head_dim(head_dim) -> None:
    if type(head_dim) is not int or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int (features are rotated in pairs), got {head_dim!r}")


# --------------------------------------------------------------------------------------
# The frequencies
# --------------------------------------------------------------------------------------


@exercise("7.1", "The rotation frequencies", points=2)
def rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The angle, in radians, that each pair of a head's features turns per position.

    A head of width ``head_dim`` has ``head_dim / 2`` pairs. Pair ``i`` turns by

        theta_i = base ** (-2i / head_dim),    i = 0, 1, ..., head_dim / 2 - 1

    per position: ``theta_0 = 1`` (one radian per token, a full turn every 2π ≈ 6.3 tokens), and
    every later pair more slowly, down to ``base ** (-(head_dim - 2) / head_dim)``, a little more
    than ``1 / base``. These are the frequencies of Chapter 2's sinusoidal table, and the
    ``inv_freq`` of Hugging Face's ``LlamaRotaryEmbedding``.

    Compute it in ``torch.float32`` as ``1 / base ** (2i / head_dim)``, the exponents ``2i / head_dim``
    a float32 tensor: that is how Hugging Face computes ``inv_freq``, so your tables agree with
    theirs to the last bit. (The checks allow a relative difference of 1e-6, a few float32 roundings.)

    Args:
        head_dim: the width of one attention head, a positive even ``int``.
        base: a finite ``int`` or ``float`` greater than 1: 10,000 in Su et al. and Llama 1 and 2,
            500,000 in Llama 3.

    Returns:
        A ``torch.float32`` tensor of shape ``(head_dim // 2,)``, decreasing from 1.

    Raises:
        ValueError: if ``head_dim`` is not a positive even ``int`` (a ``bool`` or a ``float`` is
            refused), or ``base`` is not a finite real number greater than 1 (a ``bool``, a string, a
            tensor, ``nan``, ``inf``, 1 and below are refused); the message names the argument and the
            value given.

    Example:
        >>> rope_frequencies(4)  # 1 / 10000 ** (0 / 4), 1 / 10000 ** (2 / 4)
        tensor([1.0000, 0.0100])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# Rotating queries and keys
# --------------------------------------------------------------------------------------


@exercise("7.2", "Rotate queries and keys, both conventions", points=4)
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate every pair of features of ``x`` by the angle of its position.

    ``x`` holds one vector of width ``head_dim`` per position along its second-to-last dimension.
    Row ``p`` of ``cos`` and ``sin`` holds the cosines and sines of position ``p``'s angles, one per
    pair (``angle[p, i] = position_p * theta_i``). A pair ``(a, b)`` of row ``p``, pair ``i``, becomes

        (a * cos[p, i] - b * sin[p, i],   a * sin[p, i] + b * cos[p, i])

    the 2-D rotation of ``(a, b)`` by ``angle[p, i]``. Which features form pair ``i`` is the convention:

    - ``interleaved=False`` (the default; split halves, Hugging Face's ``rotate_half``): features
      ``i`` and ``i + head_dim / 2``;
    - ``interleaved=True`` (adjacent pairs, Meta's reference code and DeepSeek's): features ``2i`` and
      ``2i + 1``. This is the product of the complex number ``a + ib`` with ``cos + i sin``.

    Every other feature keeps its place. ``cos`` and ``sin`` have one row per position of ``x`` and
    no other dimension: the same rows apply to every batch element and head (they broadcast over
    the leading dimensions). They are converted to ``x``'s dtype before use, as Hugging Face does,
    so the result has ``x``'s dtype whatever theirs.

    Args:
        x: queries or keys, a floating-point tensor of shape ``(..., seq, head_dim)`` with at least
            two dimensions, usually ``(batch, heads, seq, head_dim)``; ``head_dim`` even.
        cos, sin: floating-point tensors of shape ``(seq, head_dim // 2)``.
        interleaved: a ``bool``, the convention above.

    Returns:
        A new tensor of the shape and dtype of ``x`` (``x`` itself is not modified), differentiable
        with respect to ``x``.

    Raises:
        ValueError: if ``x`` is not a floating-point tensor with at least two dimensions and an even
            last one; if ``cos`` or ``sin`` is not a floating-point tensor of shape
            ``(seq, head_dim // 2)`` (the message says the shape expected and the one given); or if
            ``interleaved`` is not a ``bool``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # one position, head_dim 4
        >>> cos, sin = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])  # pair 0 by 90°, pair 1 by 0
        >>> apply_rope(x, cos, sin)  # pairs (x0, x2) = (1, 0) -> (0, 1) and (x1, x3) = (0, 1) unchanged
        tensor([[0., 0., 1., 1.]])
        >>> apply_rope(x, cos, sin, interleaved=True)  # pairs (x0, x1) = (1, 0) -> (0, 1) and (x2, x3)
        tensor([[0., 1., 0., 1.]])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings for one attention layer: the tables, computed once, and the rotation.

    Args:
        head_dim: the width of one head, a positive even ``int``.
        max_seq_len: the number of positions the tables cover (the model's context), a positive ``int``.
        base: the base of :func:`rope_frequencies` (10,000; Llama 3: 500,000).
        interleaved: the pairing convention of :func:`apply_rope`; ``False`` is Hugging Face's.

    Attributes:
        cos, sin: ``torch.float32`` buffers of shape ``(max_seq_len, head_dim // 2)``: row ``p`` holds
            ``cos(p * theta_i)`` and ``sin(p * theta_i)`` with ``theta`` from **your**
            :func:`rope_frequencies` (the products ``p * theta_i`` in float32, as Hugging Face's
            ``LlamaRotaryEmbedding`` computes them). They are not persistent: they follow the module
            in ``.to(device)`` but never enter its ``state_dict``, since they are computed, not learned.
        head_dim, max_seq_len, base, interleaved: the settings above (``base`` is ``None`` for a module
            made by :meth:`from_frequencies`).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0, interleaved: bool = False):
        super().__init__()
        _check_head_dim(head_dim)
        self._fill(rope_frequencies(head_dim, base), max_seq_len, interleaved)
        self.base = base

    @classmethod
    def from_frequencies(cls, theta: torch.Tensor, max_seq_len: int, interleaved: bool = False) -> RotaryEmbedding:
        """The same module with the frequencies ``theta`` given rather than computed from a base.

        ``theta`` is a 1-D floating-point tensor, one frequency per pair (``head_dim = 2 * len(theta)``).
        Variants of RoPE that rescale the frequencies for longer contexts (Llama 3.1's, in Meta's and
        Hugging Face's code) change nothing else. The checks of Exercise 7.3 build their modules this
        way, so that 7.3 is graded on its own, whatever :func:`rope_frequencies` does.
        """
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._fill(theta, max_seq_len, interleaved)
        module.base = None
        return module

    def _fill(self, theta: torch.Tensor, max_seq_len: int, interleaved: bool) -> None:
        """Check the settings and compute the tables (shared by both constructors)."""
        if not isinstance(theta, torch.Tensor) or theta.ndim != 1 or not theta.is_floating_point() or not len(theta):
            raise ValueError(f"the frequencies must be a non-empty 1-D floating-point tensor, got {_describe(theta)}")
        if type(max_seq_len) is not int or max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
        if type(interleaved) is not bool:
            raise ValueError(f"interleaved must be a bool, got {interleaved!r}")
        self.head_dim, self.max_seq_len, self.interleaved = 2 * len(theta), max_seq_len, interleaved
        positions = torch.arange(max_seq_len, dtype=torch.float32)  # (max_seq_len,)
        angles = positions[:, None] * theta.detach().to(torch.float32)[None, :]  # (max_seq_len, head_dim / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, base={self.base}, "
            f"interleaved={self.interleaved}"
        )

    @exercise("7.3", "The rotary embedding module, with a position offset", points=3)
    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` as the positions ``offset, offset + 1, ..., offset + seq - 1``.

        Row ``j`` of ``x`` (along its second-to-last dimension) stands at position ``offset + j``: it
        is rotated with row ``offset + j`` of ``self.cos`` and ``self.sin``, in the module's
        convention ``self.interleaved``, exactly as :func:`apply_rope` rotates (use yours). So
        ``forward(x)`` rotates positions ``0 ... seq - 1``, and a model decoding with a KV cache
        (Chapter 8) rotates the one new token at position 17 with ``forward(x_new, offset=17)``.
        Rotating a sequence in pieces, each with its own offset, gives the same rows as rotating it
        whole. The tables are converted to ``x``'s dtype before use.

        Args:
            x: queries or keys, a floating-point tensor of shape ``(..., seq, head_dim)`` with at least
                two dimensions, usually ``(batch, heads, seq, head_dim)``; its last dimension must be
                ``self.head_dim``.
            offset: the position of the first row of ``x``, an ``int`` of at least 0.

        Returns:
            A new tensor of the shape and dtype of ``x`` (``x`` itself is not modified).

        Raises:
            ValueError: if ``offset`` is not an ``int`` (a ``bool``, a ``float`` or a tensor is refused)
                or is negative; if ``offset + seq`` exceeds ``self.max_seq_len`` (the message names
                the offset, the length and ``max_seq_len``); or if ``x`` is not a floating-point
                tensor with at least two dimensions whose last one is ``self.head_dim`` (the message
                names both widths).

        Example:
            >>> rope = RotaryEmbedding(head_dim=8, max_seq_len=32)
            >>> q = torch.randn(2, 4, 5, 8)  # (batch, heads, seq, head_dim)
            >>> whole = rope(q)  # positions 0 ... 4
            >>> torch.equal(rope(q[:, :, 3:], offset=3), whole[:, :, 3:])  # positions 3 and 4 alone
            True
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Finished helpers: the two conventions, the long-term decay
# --------------------------------------------------------------------------------------


def permute_for_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a query or key projection trained with adjacent pairs, for split halves.

    ``weight`` has ``n_heads * head_dim`` rows, one block of ``head_dim`` rows per head (the weight of
    an ``nn.Linear(d_model, n_heads * head_dim)``, or its bias). Within each head, row ``2i + j``
    (``j`` = 0 or 1: pair ``i`` in Meta's adjacent convention) moves to row ``j * head_dim / 2 + i``
    (pair ``i`` in the split-halves convention): the even rows first, then the odd ones. Queries and
    keys made with the result, rotated with ``interleaved=False``, are those made with ``weight``
    and rotated with ``interleaved=True``, with their features reordered the same way in every
    vector, so every attention score is unchanged. This is the permutation Hugging Face's
    ``convert_llama_weights_to_hf.py`` applies to Meta's ``wq`` and ``wk``.

    Args:
        weight: a tensor of shape ``(n_heads * head_dim, ...)`` with ``head_dim`` even.
        n_heads: the number of heads ``weight`` holds (the key/value heads for ``wk``), a positive ``int``.

    Returns:
        A new tensor of the shape and dtype of ``weight``.
    """
    head_dim = _rows_per_head(weight, n_heads)
    rest = weight.shape[1:]
    pairs = weight.reshape(n_heads, head_dim // 2, 2, *rest)  # (heads, pair i, j, ...)
    return pairs.transpose(1, 2).reshape(weight.shape).clone()  # (heads, j, pair i, ...) flattened


def permute_for_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`permute_for_halves`: rows of a split-halves projection, for adjacent pairs."""
    head_dim = _rows_per_head(weight, n_heads)
    rest = weight.shape[1:]
    halves = weight.reshape(n_heads, 2, head_dim // 2, *rest)  # (heads, j, pair i, ...)
    return halves.transpose(1, 2).reshape(weight.shape).clone()  # (heads, pair i, j, ...) flattened


def _rows_per_head(weight, n_heads) -> int:
    if not isinstance(weight, torch.Tensor) or weight.ndim < 1:
        raise ValueError(f"weight must be a tensor of shape (n_heads * head_dim, ...), got {_describe(weight)}")
    if type(n_heads) is not int or n_heads <= 0 or weight.shape[0] % n_heads:
        raise ValueError(
            f"n_heads must be a positive int dividing the {weight.shape[0]} rows of weight, got {n_heads!r}"
        )
    head_dim = weight.shape[0] // n_heads
    _check_head_dim(head_dim)
    return head_dim


def rope_decay_bound(head_dim: int, distances: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Su et al.'s relative upper bound on a RoPE score at each distance: ``(2 / head_dim) * sum_j |S_j|``.

    With ``S_j = sum_{i < j} exp(1j * distance * theta_i)`` (``theta`` from :func:`rope_frequencies`),
    the score of any query and key at that distance is at most ``max_i |h_{i+1} - h_i| * sum_j |S_j|``,
    where ``h_i`` is the complex product of the query's and the key's pair ``i`` (Su et al., 2021,
    Section 3.4.3). This returns the distance's factor divided by the number of pairs, ``head_dim / 2``;
    at distance 0 every ``|S_j| = j``, so the value is ``(head_dim / 2 + 1) / 2``.

    Args:
        head_dim: a positive even ``int``.
        distances: a tensor of relative distances ``m - n`` (any shape, any real dtype).
        base: the base of the frequencies.

    Returns:
        A ``torch.float64`` tensor of the shape of ``distances``.
    """
    _check_head_dim(head_dim)
    if not isinstance(distances, torch.Tensor) or distances.is_complex() or distances.dtype == torch.bool:
        raise ValueError(f"distances must be a real tensor, got {_describe(distances)}")
    theta = rope_frequencies(head_dim, base).double()  # (head_dim / 2,)
    phases = distances.double()[..., None] * theta  # (..., head_dim / 2)
    partial = torch.polar(torch.ones_like(phases), phases).cumsum(dim=-1)  # S_1 ... S_{d/2}: (..., head_dim / 2)
    return partial.abs().mean(dim=-1)
