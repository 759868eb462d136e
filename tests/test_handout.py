"""A learner can set up from what they are given, and a learner alone can be graded as a class is.

A released chapter folder carries ``requirements.txt`` and ``README.md`` (``grader/handout.py``); a
fresh virtual environment built from that requirements file alone runs the chapter's visible checks
(slow: minutes of installing, so it runs where ``COURSE_FRESH_VENV=1``, which ``make test-fresh-venv`` sets,
and is skipped, saying so, elsewhere). ``make workspace`` gives a learner every chapter's stubs and
``make grade-workspace`` grades them with the real grader, hidden tests included, with nbgrader's
feedback page (``grader/workspace.py``): tested on Chapter 1.
"""

from __future__ import annotations

from course_lib import exercises

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO, python_env

from grader import handout
from grader.fill import fill_module

pytestmark = pytest.mark.slow

CHAPTER, NOTEBOOK = "ch01", "ch01_tokenization.ipynb"


def _run(*args: str, env: dict, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """``python -m grader.workspace create`` with Chapter 1 as the only chapter of the book."""
    book = tmp_path_factory.mktemp("book")
    shutil.copy(REPO / "book" / NOTEBOOK, book / NOTEBOOK)
    folder = tmp_path_factory.mktemp("workspace")
    done = _run(
        sys.executable,
        "-m",
        "grader.workspace",
        "create",
        "--dir",
        str(folder),
        env=python_env(COURSE_BOOK_DIR=str(book)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def _solve(folder: Path) -> None:
    for path in sorted({e.path for e in exercises.chapter_exercises(int(CHAPTER[2:]))}):
        reference = (REPO / "solutions" / Path(path).name).read_text(encoding="utf-8")
        (folder / path).write_text(fill_module((folder / path).read_text(encoding="utf-8"), reference))


def test_a_release_says_how_to_install_it(workspace):
    released = workspace / ".course" / "release" / CHAPTER
    requirements = (released / "requirements.txt").read_text()
    assert f"torch=={handout.torch_version()}" in requirements.splitlines()
    assert f"--extra-index-url {handout.TORCH_CPU_INDEX}" in requirements  # the CPU build by default
    for name in handout.LEARNER_PACKAGES:
        assert re.search(rf"^{re.escape(name)}\b", requirements, re.MULTILINE | re.IGNORECASE), name
    readme = (released / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.txt" in readme
    assert NOTEBOOK in readme and "course_lib/tokenization.py" in readme
    assert "Chapter 1" in readme.splitlines()[0]
    assert (workspace / CHAPTER / "README.md").read_text() == readme  # the learner's copy


def test_a_workspace_is_graded_with_the_hidden_tests_and_feedback(workspace):
    """A learner alone: the stubs as released, solved, then graded by the instructor's grader."""
    assert "raise NotImplementedError" in (workspace / CHAPTER / "course_lib" / "tokenization.py").read_text()
    _solve(workspace / CHAPTER)
    done = _run(sys.executable, "-m", "grader.workspace", "grade", CHAPTER, "--dir", str(workspace), env=python_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    total = sum(e.points for e in exercises.chapter_exercises(1))
    assert f"{CHAPTER}: {total:g} / {total:g} points" in done.stdout, done.stdout[-2000:]
    feedback = (workspace / "feedback" / f"{CHAPTER}.html").read_text()
    assert "long random sequences with many occurrences" in feedback  # a hidden test, by name
    assert "t.reference(" not in feedback  # never its code


@pytest.mark.skipif(
    os.environ.get("COURSE_FRESH_VENV") != "1",
    reason="installs a fresh virtual environment (minutes): make test-fresh-venv runs it",
)
def test_a_fresh_environment_from_the_release_runs_the_visible_checks(workspace, tmp_path):
    """Only the released folder and its requirements.txt: no repository, no PYTHONPATH, no course settings."""
    folder = tmp_path / CHAPTER
    shutil.copytree(workspace / ".course" / "release" / CHAPTER, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTHON", "OMP_", "VIRTUAL_ENV"))}
    env.setdefault("PIP_RETRIES", "1")  # a machine that cannot reach PyTorch's index falls back to PyPI sooner
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    done = _run(python, "-m", "pip", "install", "-q", "-r", "requirements.txt", env=env, cwd=folder, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stubs = _run(python, "-m", "course_lib", "progress", "--chapter", "1", env=env, cwd=folder)
    assert stubs.returncode == 1 and "0/" in stubs.stdout, stubs.stdout[-2000:] + stubs.stderr[-2000:]
    assert "Traceback" not in stubs.stdout + stubs.stderr
    _solve(folder)
    solved = _run(python, "-m", "course_lib", "progress", "--chapter", "1", env=env, cwd=folder)
    assert solved.returncode == 0, solved.stdout[-3000:] + solved.stderr[-3000:]
    # and the notebook itself, top to bottom, in that environment's kernel
    run = _run(
        python,
        "-m",
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--output",
        "executed.ipynb",
        NOTEBOOK,
        env=env,
        cwd=folder,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
