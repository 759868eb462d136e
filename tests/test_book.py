"""The HTML book builds with warnings as errors, renders math offline and hides what it must."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env

pytestmark = pytest.mark.slow

JUPYTER_BOOK = str(Path(sys.executable).parent / "jupyter-book")


def _build(source: Path, out: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [JUPYTER_BOOK, "build", str(source), "--path-output", str(out), "-W", "-n", "--keep-going"]
        + (["--config", str(config)] if config else []),
        env=python_env(COURSE_LIB_SOLUTIONS="1"),
        capture_output=True,
        text=True,
    )


def stored_outputs_config(folder: Path) -> Path:
    """``_config.yml`` with execution off: the book built from the notebooks' stored outputs.

    ``make book`` executes every chapter. The suite need not do it twice: nbval, in the same run,
    executes each chapter and fails unless its stored outputs are what the code prints now, so
    building from them tests the same pages at half the cost (and ten chapters fit the budget).
    """
    config = (REPO / "_config.yml").read_text()
    assert "execute_notebooks: force" in config
    path = folder / "_config.yml"
    path.write_text(config.replace("execute_notebooks: force", 'execute_notebooks: "off"'))
    return path


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    done = _build(REPO, out, stored_outputs_config(tmp_path_factory.mktemp("config")))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out / "_build" / "html"


def _chapters() -> list[str]:
    toc = (REPO / "_toc.yml").read_text()
    return re.findall(r"^\s*- file: (book/ch\d\d_\w+)", toc, re.MULTILINE)


def test_every_chapter_in_the_toc_is_built(html):
    assert (html / "index.html").exists()
    assert (html / "book" / "intro.html").exists()
    chapters = _chapters()
    assert chapters, "the table of contents lists no chapter"
    for chapter in chapters:
        assert (html / f"{chapter}.html").exists(), chapter


def test_math_is_served_from_the_book_itself(html):
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()
    for chapter in _chapters():
        page = (html / f"{chapter}.html").read_text()
        scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page, re.IGNORECASE)
        assert scripts, f"{chapter} loads no MathJax (does it have math?)"
        assert all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts


def test_hidden_tests_and_solutions_are_not_published(html):
    for page in html.rglob("*.html"):
        text = page.read_text()
        assert "BEGIN HIDDEN TESTS" not in text, page
        assert "t.reference(" not in text, page
    assert not any(html.rglob("solutions*")), "solutions/ must never be published"
    assert not (html / "_sources" / "solutions").exists()


def test_figures_are_rendered(html):
    for chapter in _chapters():
        page = (html / f"{chapter}.html").read_text()
        assert re.search(r'<img[^>]+src="[^"]+\.png"', page), f"{chapter} shows no figure"


def test_a_notebook_that_fails_to_execute_fails_the_build(tmp_path):
    book = tmp_path / "broken"
    book.mkdir()
    shutil.copy(REPO / "_config.yml", book / "_config.yml")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: broken\n")
    (book / "intro.md").write_text("# Intro\n")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Broken"), nbformat.v4.new_code_cell("1 / 0")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book / "broken.ipynb")
    done = _build(book, tmp_path / "out")
    assert done.returncode != 0, done.stdout[-2000:]


PROBE = """
import os, sys

seen = {}


class Probe:  # notes the thread settings in force when torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.update(policy=os.environ.get("OMP_WAIT_POLICY"), threads=os.environ.get("OMP_NUM_THREADS"))


sys.meta_path.insert(0, Probe())
exec(compile(sys.stdin.read(), "<first code cell>", "exec"))
import course_lib, torch  # a cell that imports no torch: torch comes after course_lib here
print(seen.get("policy"), seen.get("threads"), torch.get_num_threads(), course_lib.threads.cores())
"""


@pytest.mark.parametrize("path", sorted((REPO / "book").glob("ch[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_a_notebook_sets_the_threads_before_torch_starts(path):
    """Opened in plain Jupyter (no Makefile, no settings in the environment), a chapter's first code cell
    imports course_lib before torch, so torch's threads sleep when idle instead of spinning on a busy machine."""
    import nbformat

    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
    env = {k: v for k, v in python_env().items() if not k.startswith(("OMP_", "MKL_", "PYTEST_"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], input=code, env=env, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    policy, threads, torch_threads, cores = done.stdout.split()
    assert (policy, threads, torch_threads) == ("PASSIVE", cores, cores)
