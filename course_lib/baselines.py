"""Chapter 5 — count models as baselines for a trained language model.

A loss means little on its own. Before calling a GPT good, compare it with the simplest models that
could have produced the same kind of number from the same training text:

- the **unigram** model predicts every token from its frequency alone, ignoring the context;
- the **bigram** model predicts each token from the one token before it (a table of counts).

Both are *add-alpha smoothed*: every count gets ``alpha`` added before normalising, so that a token
(or a pair) never seen in training still gets a small probability and the held-out loss stays finite.
A GPT whose held-out loss is above the bigram's has not yet used more than one token of context.

Losses here are mean cross-entropies in **nats per token** (natural logarithms), like
:func:`course_lib.training.cross_entropy_loss`. Two tokenizers cut the same text into different
numbers of tokens, so per-token losses of different vocabularies do not compare; :func:`bits_per_byte`
turns a loss into a measure per byte of text that does.

These are finished helpers, not exercises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["bigram_loss", "bits_per_byte", "perplexity", "unigram_loss"]


def _ids(name: str, ids: torch.Tensor | Sequence[int], vocab_size: int, min_len: int) -> torch.Tensor:
    """``ids`` as a 1-D int64 tensor on the CPU, after checking it; errors name ``name``."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one stream of token ids), got shape {tuple(ids.shape)}")
        out = ids.detach().to("cpu", torch.int64)
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        if not all(type(i) is int for i in ids):
            bad = next(i for i in ids if type(i) is not int)
            raise ValueError(f"{name} must hold ints, got an element of type {type(bad).__name__}: {bad!r}")
        out = torch.tensor(list(ids), dtype=torch.int64)
    else:
        raise ValueError(f"{name} must be a 1-D integer tensor or a sequence of ints, got {type(ids).__name__}")
    if len(out) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} token id(s), got {len(out)}")
    low, high = int(out.min()), int(out.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}) (vocab_size={vocab_size}), got values from {low} to {high}"
        )
    return out


def _check_vocab_alpha(vocab_size: int, alpha: float) -> float:
    """Validate the shared arguments; return ``alpha`` as a float."""
    if type(vocab_size) is not int or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if type(alpha) not in (int, float) or not (math.isfinite(alpha) and alpha > 0):
        # alpha = 0 would give a held-out token never seen in training probability 0: an infinite loss.
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    return float(alpha)


def unigram_loss(
    train_ids: torch.Tensor | Sequence[int], val_ids: torch.Tensor | Sequence[int], vocab_size: int, alpha: float = 0.1
) -> float:
    """The held-out loss of an add-``alpha`` smoothed unigram model, in nats per token.

    The model counts each token id in ``train_ids`` (``c(v)`` for ``v`` in ``[0, vocab_size)``, over
    ``N = len(train_ids)`` tokens) and predicts every token, whatever came before, with

        ``p(v) = (c(v) + alpha) / (N + alpha * vocab_size)``.

    Returns ``-mean(log p(v))`` over every token ``v`` of ``val_ids`` (natural logarithm), computed in
    float64. With ``alpha`` large compared with the counts it tends to ``ln(vocab_size)``, uniform guessing.

    Args:
        train_ids: the training stream: a 1-D integer tensor or a sequence of ints, at least 1 id.
        val_ids: the held-out stream, same kinds, at least 1 id.
        vocab_size: the number of token ids; every id must lie in ``[0, vocab_size)``.
        alpha: the pseudo-count added to every token, a positive number.

    Returns:
        A Python ``float``.

    Raises:
        ValueError: naming what was expected and what came, for ids that are not a 1-D integer tensor
            or a sequence of ints, an empty stream, an id outside ``[0, vocab_size)``, a ``vocab_size``
            that is not a positive int, or an ``alpha`` that is not a positive finite number.

    Example:
        >>> unigram_loss([0, 0, 1], [0, 1], vocab_size=2, alpha=1.0)  # p = 3/5, 2/5
        0.7136...
    """
    alpha = _check_vocab_alpha(vocab_size, alpha)
    train = _ids("train_ids", train_ids, vocab_size, 1)
    val = _ids("val_ids", val_ids, vocab_size, 1)
    counts = torch.bincount(train, minlength=vocab_size).to(torch.float64)  # (V,)
    log_p = torch.log(counts + alpha) - math.log(len(train) + alpha * vocab_size)  # (V,)
    return float(-log_p[val].mean())


def bigram_loss(
    train_ids: torch.Tensor | Sequence[int], val_ids: torch.Tensor | Sequence[int], vocab_size: int, alpha: float = 0.1
) -> float:
    """The held-out loss of an add-``alpha`` smoothed bigram model, in nats per token.

    The model counts the adjacent pairs of ``train_ids``: ``c(a, b)`` is how often ``b`` directly follows
    ``a`` (the ``len(train_ids) - 1`` pairs ``(train_ids[i], train_ids[i + 1])``), and
    ``c(a) = sum_b c(a, b)`` how often ``a`` has a successor. It predicts the token after ``a`` with

        ``p(b | a) = (c(a, b) + alpha) / (c(a) + alpha * vocab_size)``

    (a token never followed by anything in training gets the uniform distribution).

    Returns ``-mean(log p(val_ids[i + 1] | val_ids[i]))`` over ``i = 0 .. len(val_ids) - 2``: the first
    held-out token is not predicted, since it has no predecessor in ``val_ids``. Computed in float64
    without building the ``(vocab_size, vocab_size)`` table, so large vocabularies cost no extra memory.

    Args:
        train_ids: the training stream: a 1-D integer tensor or a sequence of ints, at least 2 ids.
        val_ids: the held-out stream, same kinds, at least 2 ids.
        vocab_size: the number of token ids; every id must lie in ``[0, vocab_size)``.
        alpha: the pseudo-count added to every pair, a positive number.

    Returns:
        A Python ``float``.

    Raises:
        ValueError: as :func:`unigram_loss`, with at least 2 ids needed in each stream.

    Example:
        >>> bigram_loss([0, 1, 0, 1], [0, 1], vocab_size=2, alpha=1.0)  # p(1 | 0) = (2 + 1) / (2 + 2)
        0.2876...
    """
    alpha = _check_vocab_alpha(vocab_size, alpha)
    train = _ids("train_ids", train_ids, vocab_size, 2)
    val = _ids("val_ids", val_ids, vocab_size, 2)
    # Each pair (a, b) becomes one int64 key a * V + b; V * V fits in int64 for any real vocabulary.
    train_keys = train[:-1] * vocab_size + train[1:]  # (N - 1,)
    keys, key_counts = torch.unique(train_keys, return_counts=True)  # sorted keys of the pairs seen, their counts
    val_keys = val[:-1] * vocab_size + val[1:]  # (M - 1,)
    # Look each held-out pair up among the sorted training keys; a pair not found has count 0.
    where = torch.searchsorted(keys, val_keys).clamp(max=len(keys) - 1)
    pair_counts = torch.where(keys[where] == val_keys, key_counts[where], 0).to(torch.float64)  # (M - 1,)
    row_counts = torch.bincount(train[:-1], minlength=vocab_size).to(torch.float64)  # (V,) c(a)
    log_p = torch.log(pair_counts + alpha) - torch.log(row_counts[val[:-1]] + alpha * vocab_size)  # (M - 1,)
    return float(-log_p.mean())


def _nonnegative_loss(name: str, loss: float) -> float:
    if type(loss) not in (int, float) or not (math.isfinite(loss) and loss >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (a cross-entropy in nats), got {loss!r}")
    return float(loss)


def perplexity(loss: float) -> float:
    """``exp(loss)`` for a mean cross-entropy ``loss`` in nats per token: the number of equally likely
    tokens that would leave the model as unsure as it is. A uniform model over ``V`` tokens has loss
    ``ln V`` and perplexity ``V``; a perfect one, loss 0 and perplexity 1.

    Raises:
        ValueError: if ``loss`` is not a finite int or float ``>= 0``.
    """
    return math.exp(_nonnegative_loss("loss", loss))


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """The loss per byte of text, in bits: ``loss_nats_per_token * n_tokens / (ln 2 * n_bytes)``.

    ``loss_nats_per_token * n_tokens`` is the total surprise of a text of ``n_tokens`` tokens in nats;
    dividing by ``ln 2`` makes it bits and dividing by ``n_bytes``, the length of the same text in
    UTF-8 bytes, spreads it over the text rather than over the tokens. So models with different
    tokenizers, which cut the text into different numbers of tokens, become comparable: a tokenizer
    with longer tokens has a higher loss per token but fewer tokens to pay it on. A uniform model over
    the 256 byte values (one token per byte, loss ``ln 256``) scores exactly 8.

    Args:
        loss_nats_per_token: a mean cross-entropy in nats per token (a finite number ``>= 0``).
        n_tokens: how many tokens the text has (a positive int).
        n_bytes: how many bytes its UTF-8 encoding has (a positive int).

    Raises:
        ValueError: naming what was expected and what came, for any argument outside those ranges.
    """
    loss = _nonnegative_loss("loss_nats_per_token", loss_nats_per_token)
    for name, value in (("n_tokens", n_tokens), ("n_bytes", n_bytes)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return loss * n_tokens / (math.log(2) * n_bytes)
