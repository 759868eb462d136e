"""Chapter 5 — turning logits into text: greedy decoding, temperature, top-k and top-p sampling.

A GPT gives, at its last position, one logit per vocabulary token. Generation repeats one step:
turn the last logits into a probability distribution, choose a token from it, append the token,
and run the model again. How the distribution is shaped decides the character of the text:

- **greedy** decoding always takes the most likely token (``temperature = 0``);
- **temperature** ``T`` divides the logits: ``T < 1`` sharpens the distribution, ``T > 1`` flattens it;
- **top-k** keeps only the ``k`` most likely tokens;
- **top-p** (nucleus) keeps the smallest set of most likely tokens whose probabilities add up to at
  least ``p`` [Holtzman et al., 2020].

Exercises in this module: 5.5 :func:`next_token_probs`, 5.6 :func:`generate`.
"""

from __future__ import annotations

import torch
from torch import nn

from .exercises import exercise


@exercise("5.5", "Temperature, top-k and top-p", points=3)
def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution to sample the next token from, after temperature, top-k and top-p.

    Work along the last dimension, in this order:

    1. **Temperature**: ``logits / temperature``.
    2. **Top-k** (if ``top_k`` is not ``None``): let ``v`` be the ``k``-th largest scaled logit
       (``torch.topk(...).values[..., -1:]``, with ``k = min(top_k, vocab)``); set every logit
       *below* ``v`` to ``-inf``. Logits tied with ``v`` are all kept.
    3. Softmax.
    4. **Top-p** (if ``top_p`` is not ``None``): sort the probabilities in descending order
       (``torch.sort(..., descending=True, stable=True)``) and keep a token if the probability
       mass strictly *before* it in that order is less than ``top_p``. This keeps the smallest
       prefix whose sum reaches ``top_p``, and always the most likely token. Zero the others and
       divide by the kept mass so the result sums to 1.

    Args:
        logits: a floating-point tensor of shape ``(..., vocab)`` (e.g. ``(batch, vocab)``).
        temperature: a number ``> 0``.
        top_k: ``None`` or an ``int >= 1``.
        top_p: ``None`` or a number with ``0 < top_p <= 1``.

    Returns:
        A tensor of the shape and dtype of ``logits``: probabilities that are ``0`` for the
        filtered tokens and sum to 1 along the last dimension.

    Raises:
        ValueError: if ``temperature <= 0``, ``top_k < 1`` (or not an int), ``top_p`` outside
            ``(0, 1]``, or ``logits`` is not a floating-point tensor with at least one dimension.

    Example:
        >>> next_token_probs(torch.tensor([2.0, 1.0, 0.0, -1.0]), top_k=2)
        tensor([0.7311, 0.2689, 0.0000, 0.0000])
        >>> next_token_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), top_p=0.75)
        tensor([0.6250, 0.3750, 0.0000, 0.0000])
    """
    raise NotImplementedError


@exercise("5.6", "Generate text, token by token", points=3)
def generate(
    model: nn.Module,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Extend every sequence of ``ids`` by ``max_new_tokens`` tokens chosen by ``model``.

    Each new token is chosen from the model's scores for the position after the last token, the
    model reading at most the last ``model.config.context_length`` tokens of the text so far
    (prompt and new tokens). With ``temperature == 0`` the choice is greedy: the highest-scoring
    token, the lowest id on a tie (as ``argmax`` picks), ``top_k`` and ``top_p`` playing no part.
    Otherwise the token is drawn from the distribution that :func:`next_token_probs`, your
    Exercise 5.5, makes of those scores with ``temperature``, ``top_k`` and ``top_p``.

    Randomness: every draw is made by ``torch.multinomial``, one call per new token for the whole
    batch, with one sample per sequence. With a ``seed``, all the draws of a call come from a
    single ``torch.Generator(device=ids.device)`` seeded with ``seed``, so the same arguments give
    the same tokens, and the same tokens as ours; with ``seed=None`` they come from PyTorch's
    global generator, so two calls differ.

    The model runs in evaluation mode (no dropout) and records no gradients; afterwards
    ``model.training`` is what it was before the call, also when the model raises an error.

    Args:
        model: a :class:`course_lib.gpt.GPT` (anything with ``.config.context_length`` that maps
            ``(batch, seq)`` ids to ``(batch, seq, vocab)`` logits).
        ids: the prompt, an int64 tensor of shape ``(batch, seq)`` with ``seq >= 1`` (it may be
            longer than the context: only its last ``context_length`` tokens are read).
        max_new_tokens: an ``int >= 0``.
        temperature: ``0`` for greedy decoding, or a positive number (``int`` or ``float``).
        top_k, top_p: as for :func:`next_token_probs`.
        seed: ``None`` or an ``int`` that makes sampling reproducible.

    Returns:
        An int64 tensor of shape ``(batch, seq + max_new_tokens)`` that starts with ``ids``.

    Raises:
        ValueError: if ``ids`` is not a 2-D integer tensor with at least one token,
            ``max_new_tokens`` is not an ``int >= 0`` (a float, even ``2.0``, is not an int), or
            ``temperature < 0``.

    Example:
        >>> model = GPT(GPTConfig(vocab_size=50, context_length=8, d_model=16, n_layers=1, n_heads=2))
        >>> out = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=10, temperature=0)
        >>> out.shape
        torch.Size([1, 13])
    """
    raise NotImplementedError


def top_tokens(probs: torch.Tensor, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` most probable ``(token id, probability)`` pairs of a 1-D distribution, most likely first."""
    if not isinstance(probs, torch.Tensor) or probs.ndim != 1:
        raise ValueError(f"probs must be a 1-D tensor, got {getattr(probs, 'shape', type(probs).__name__)}")
    if type(k) is not int or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [(int(i), float(v)) for i, v in zip(indices, values)]
