"""Chapter 2 — from token ids to vectors: token embeddings, positions, and the input embedding.

A token id is only a row number. :class:`TokenEmbedding` holds one learned vector per row of the
vocabulary and looks the rows up; :func:`sinusoidal_positions` builds the fixed position table of
the original Transformer; :class:`InputEmbedding` adds a learned vector per position to each
token's vector, as GPT-2 does, and applies dropout (as GPT-1 and Hugging Face's GPT-2 do). Its output, of shape
``(batch, seq, d_model)``, is what the transformer blocks of the next chapters read.

Exercises in this module: 2.1 :meth:`TokenEmbedding.forward`, 2.2 :func:`sinusoidal_positions`,
2.3 :meth:`InputEmbedding.forward`.
"""

from __future__ import annotations

import torch
from torch import nn

from .exercises import exercise
from .validation import describe as _describe

#: The standard deviation GPT-2 initialises its embedding tables with (Radford et al., 2019).
INIT_STD = 0.02


def _positive_int(name: str, value) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------
# Token embeddings
# --------------------------------------------------------------------------------------


class TokenEmbedding(nn.Module):
    """A learned table of ``vocab_size`` vectors of width ``d_model``, one per token id.

    ``self.weight`` is an ``nn.Parameter`` of shape ``(vocab_size, d_model)``, initialised from
    a normal distribution with mean 0 and standard deviation 0.02, like GPT-2's. Chapter 5 reuses
    it, transposed, as the output projection (weight tying), so keep its name and shape.

    Args:
        vocab_size: number of token ids, a positive ``int``.
        d_model: width of each vector, a positive ``int``.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.d_model = _positive_int("d_model", d_model)
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight, mean=0.0, std=INIT_STD)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}"

    @exercise("2.1", "Look up token embeddings", points=2)
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the vector of every token id in ``ids``: row ``ids[...]`` of ``self.weight``.

        ``out[..., j] == self.weight[ids[...], j]``. Select the rows by indexing ``self.weight``
        with the ids (or with ``torch.index_select``), not with ``nn.Embedding`` or
        ``torch.nn.functional.embedding``: the point is to see that an embedding layer is nothing
        but a lookup. Keep the result connected to ``self.weight`` for autograd (no
        ``.detach()``, no ``.data``), so that training updates the rows that were looked up.

        Check the input first and raise ``ValueError``:

        - if ``ids`` is not a tensor of an integer dtype (``torch.int64``, ``torch.int32``,
          ...; floating-point and ``torch.bool`` tensors are refused);
        - if an id lies outside ``[0, vocab_size)``. Name an offending id in the message.
          Negative ids must be refused too, although indexing would quietly wrap them around
          to the end of the table.

        Convert ids of another integer dtype to ``torch.int64`` before indexing (a ``uint8``
        index would be read as a mask).

        Args:
            ids: an integer tensor of any shape ``(...)``, usually ``(batch, seq)``; it may be
                empty.

        Returns:
            A tensor of shape ``(..., d_model)`` with ``self.weight``'s dtype and device, equal
            to ``torch.nn.functional.embedding(ids, self.weight)``.

        Raises:
            ValueError: for a non-integer ``ids`` or an id outside ``[0, vocab_size)``.

        Example:
            >>> emb = TokenEmbedding(vocab_size=4, d_model=2)
            >>> with torch.no_grad():
            ...     emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))
            >>> emb(torch.tensor([[3, 1], [1, 1]]))  # (batch=2, seq=2) -> (2, 2, d_model=2)
            tensor([[[ 3., 30.],
                     [ 1., 10.]],
            <BLANKLINE>
                    [[ 1., 10.],
                     [ 1., 10.]]], grad_fn=<IndexBackward0>)
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------


@exercise("2.2", "Build the sinusoidal position table", points=3)
def sinusoidal_positions(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed position encodings of the original Transformer (Vaswani et al., 2017).

    Row ``pos`` encodes position ``pos``. Its columns come in ``d_model / 2`` pairs; pair ``i``
    (columns ``2i`` and ``2i + 1``) turns at the angular frequency
    ``omega_i = 1 / base ** (2i / d_model)``:

    - ``PE[pos, 2i]     = sin(pos * omega_i)``
    - ``PE[pos, 2i + 1] = cos(pos * omega_i)``

    so sines sit in the even columns and cosines in the odd ones, interleaved (not the sines in
    the first half and the cosines in the second). The first pair turns once per 2π positions, the
    last almost ``base`` times more slowly.

    Positions larger than a few hundred make float32 angles lose digits: compute the angles in
    ``torch.float64`` and convert the table to ``torch.float32`` at the end.

    Args:
        seq_len: number of positions, an ``int`` of at least 0.
        d_model: width of each encoding, a positive even ``int``.
        base: the ``float`` that sets the slowest frequency (10000 in the paper).

    Returns:
        A ``torch.float32`` tensor of shape ``(seq_len, d_model)``.

    Raises:
        ValueError: if ``d_model`` is not a positive even ``int``, or ``seq_len`` is negative.

    Example:
        >>> sinusoidal_positions(2, 4)  # omega = 1 and 1 / 10000 ** (2 / 4) = 0.01
        tensor([[0.0000, 1.0000, 0.0000, 1.0000],
                [0.8415, 0.5403, 0.0100, 0.9999]])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The input embedding
# --------------------------------------------------------------------------------------


class InputEmbedding(nn.Module):
    """Token embedding plus learned absolute position embedding, then dropout (GPT-2's input layer, as Hugging Face
    builds it: OpenAI's released code has no dropout).

    Attributes:
        token: a :class:`TokenEmbedding` of shape ``(vocab_size, d_model)``.
        position: an ``nn.Embedding(context_length, d_model)``, one learned vector per position,
            initialised like the token table (normal, standard deviation 0.02).
        dropout: an ``nn.Dropout(dropout)``, active in training mode only.

    Args:
        vocab_size: number of token ids, a positive ``int``.
        d_model: width of the vectors, a positive ``int``.
        context_length: the most positions a sequence may have, a positive ``int``.
        dropout: probability of zeroing each output number in training, in ``[0, 1)``.
    """

    def __init__(self, vocab_size: int, d_model: int, context_length: int, dropout: float = 0.0):
        super().__init__()
        _positive_int("d_model", d_model)
        self.context_length = _positive_int("context_length", context_length)
        if type(dropout) not in (int, float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.token = TokenEmbedding(vocab_size, d_model)
        self.position = nn.Embedding(context_length, d_model)
        nn.init.normal_(self.position.weight, mean=0.0, std=INIT_STD)  # nn.Embedding's default is N(0, 1)
        self.dropout = nn.Dropout(float(dropout))

    @property
    def d_model(self) -> int:
        return self.token.d_model

    def extra_repr(self) -> str:
        return f"context_length={self.context_length}"

    @exercise("2.3", "Add token and position embeddings", points=3)
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed a batch of token sequences: ``dropout(token(ids) + position(0, 1, ..., seq - 1))``.

        1. Check that ``ids`` is 2-D, ``(batch, seq)``, and that ``seq`` is at most
           ``self.context_length``; otherwise raise ``ValueError`` (for a sequence that is too
           long, say both its length and the context length).
        2. Look the tokens up with ``self.token``: ``(batch, seq, d_model)``.
        3. Look the positions ``0, 1, ..., seq - 1`` up with ``self.position``:
           ``(seq, d_model)``. Make them with ``torch.arange`` on the device of ``ids``.
        4. Add the two (broadcasting adds the same position vectors to every sequence of the
           batch) and apply ``self.dropout``.

        Args:
            ids: an integer tensor of shape ``(batch, seq)`` with ``1 <= seq <= context_length``
                (``self.token`` checks the ids themselves).

        Returns:
            A tensor of shape ``(batch, seq, d_model)``, in the embedding tables' dtype.

        Raises:
            ValueError: if ``ids`` is not 2-D or its sequence is longer than ``context_length``.

        Example:
            >>> emb = InputEmbedding(vocab_size=100, d_model=8, context_length=16)
            >>> emb(torch.tensor([[5, 7, 5]])).shape
            torch.Size([1, 3, 8])
            >>> x = emb(torch.tensor([[5, 7, 5]]))
            >>> torch.equal(x[0, 0], x[0, 2])  # same token, different positions
            False
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Tools for looking at embeddings
# --------------------------------------------------------------------------------------


def cosine_similarities(vectors: torch.Tensor) -> torch.Tensor:
    """The cosine similarity of every pair of rows of ``vectors``, ``(n, d)`` -> ``(n, n)``.

    Entry ``[a, b]`` is ``<v_a, v_b> / (|v_a| |v_b|)``: 1 for vectors pointing the same way, 0 for
    orthogonal ones, -1 for opposite ones. Rows of zeros are not allowed.
    """
    if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or not vectors.is_floating_point():
        raise ValueError(f"vectors must be a 2-D floating-point tensor (n, d), got {_describe(vectors)}")
    norms = vectors.norm(dim=1, keepdim=True)  # (n, 1)
    if (norms == 0).any():
        raise ValueError("cosine similarity is undefined for a row of zeros")
    unit = vectors / norms  # (n, d)
    return unit @ unit.T  # (n, n)


def rotation_by_offset(offset: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The ``(d_model, d_model)`` matrix that moves a sinusoidal encoding ``offset`` positions on.

    Pair ``i`` of a sinusoidal encoding is a point ``(sin, cos)`` at angle ``pos * omega_i`` on the
    unit circle; moving to ``pos + offset`` rotates it by ``offset * omega_i``. The matrix is
    block-diagonal with one 2 x 2 rotation per pair, and ``PE[pos + offset] == M @ PE[pos]`` for
    every ``pos``: it depends on the offset only. Returned in ``torch.float64``.
    """
    if type(offset) is not int:
        raise ValueError(f"offset must be an int, got {offset!r}")
    if type(d_model) is not int or d_model <= 0 or d_model % 2:
        raise ValueError(f"d_model must be a positive even int, got {d_model!r}")
    omega = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model / 2,)
    cos, sin = torch.cos(offset * omega), torch.sin(offset * omega)
    matrix = torch.zeros(d_model, d_model, dtype=torch.float64)
    # (sin a, cos a) -> (sin(a + b), cos(a + b)) = (sin a cos b + cos a sin b, cos a cos b - sin a sin b)
    matrix[0::2, 0::2] = torch.diag(cos)
    matrix[0::2, 1::2] = torch.diag(sin)
    matrix[1::2, 0::2] = torch.diag(-sin)
    matrix[1::2, 1::2] = torch.diag(cos)
    return matrix
