"""The instructor's commands: release the chapters and autograde submissions with nbgrader.

    python -m grader.course release      # source/ and release/ for every graded chapter
    python -m grader.course autograde    # grade submitted/, write feedback/ and grades.csv

``COURSE_DIR`` (default: ``course/`` in the repository, git-ignored) is nbgrader's course
directory. ``COURSE_GRADEBOOK_URL`` picks the gradebook (any SQLAlchemy URL; default SQLite in
``COURSE_DIR``). The Makefile's ``release`` and ``autograde`` targets call these.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from course_lib import exercises

REPO = Path(__file__).resolve().parent.parent
COURSE_ID = "tokens-journey"


def course_dir() -> Path:
    return Path(os.environ.get("COURSE_DIR") or REPO / "course").resolve()


def gradebook_url(root: Path) -> str:
    return os.environ.get("COURSE_GRADEBOOK_URL") or f"sqlite:///{root / 'gradebook.db'}"


def chapter_notebooks() -> dict[str, Path]:
    """Assignment id ("ch01") -> the chapter notebook in book/, for every notebook with graded cells."""
    found = {}
    for path in sorted(Path(os.environ.get("COURSE_BOOK_DIR") or REPO / "book").glob("ch[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if any(cell.metadata.get("nbgrader", {}).get("grade") for cell in nb.cells):
            found[path.name[:4]] = path
    return found


def write_config(root: Path) -> None:
    exclude = {a: sorted({e.path for e in exercises.chapter_exercises(int(a[2:]))}) for a in chapter_notebooks()}
    (root / "nbgrader_config.py").write_text(
        f'''# Written by `python -m grader.course`; edit grader/course.py instead.
import sys
sys.path.insert(0, {str(REPO)!r})
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, LimitOutput, OverwriteKernelspec, SaveAutoGrades
from grader.nbgrader_hooks import GradeInSandbox, UseSourceNotebook

c = get_config()
c.CourseDirectory.root = {str(root)!r}
c.CourseDirectory.course_id = {COURSE_ID!r}
c.CourseDirectory.db_url = {gradebook_url(root)!r}
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".DS_Store"]
# The learner's exercise files are their work: nbgrader must not put the stubs back over them.
c.Autograde.exclude_overwriting = {exclude!r}
c.Autograde.sanitize_preprocessors = [UseSourceNotebook, OverwriteKernelspec, CheckCellMetadata]
c.Autograde.autograde_preprocessors = [GradeInSandbox, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.UseSourceNotebook.source_root = {str(root / "source")!r}
c.GradeInSandbox.submitted_root = {str(root / "submitted")!r}
'''
    )


def nbgrader(root: Path, *args: str) -> None:
    # nbgrader runs `alembic` to create the gradebook: the environment's scripts must be on PATH.
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop(exercises.SOLUTIONS_ENV, None)
    subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env, check=True)


def release(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_config(root)
    for assignment, notebook in chapter_notebooks().items():
        source = root / "source" / assignment
        if source.exists():
            shutil.rmtree(source)
        source.mkdir(parents=True)
        shutil.copy(notebook, source / notebook.name)
        shutil.copytree(REPO / "course_lib", source / "course_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        nbgrader(root, "generate_assignment", assignment, "--force")
        check_release(root / "release" / assignment)
        print(f"released {assignment}: {root / 'release' / assignment}")


def check_release(folder: Path) -> None:
    """Fail loudly if a released folder holds reference code or hidden tests."""
    if any(folder.rglob("solutions")):
        raise SystemExit(f"{folder} contains a solutions/ folder")
    for entry in exercises.all_exercises():
        path = folder / entry.path
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        node = _function(tree, entry.qualname)
        raises = [n for n in node.body if isinstance(n, ast.Raise)]
        body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if body != raises or len(raises) != 1 or "NotImplementedError" not in ast.unparse(raises[0]):
            raise SystemExit(f"{path}: Exercise {entry.id} ({entry.qualname}) is not a stub in the release")
    for notebook in folder.glob("*.ipynb"):
        text = notebook.read_text(encoding="utf-8")
        if "BEGIN HIDDEN TESTS" in text or "BEGIN SOLUTION" in text:
            raise SystemExit(f"{notebook} still holds hidden tests or a solution region")


def _function(tree: ast.Module, qualname: str):
    body = tree.body
    for name in qualname.split("."):
        node = next(n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
        body = node.body
    return node


def prepare_submissions(root: Path) -> None:
    """Make every submission gradable without trusting anything in it but its exercise files.

    Links and special files are removed (a link could point at the instructor's files). A missing
    or unreadable chapter notebook is replaced by the released one: the notebook is not graded
    (its test cells come from the source notebook), but nbgrader needs one to record the grades.
    """
    for path in sorted((root / "submitted").rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            print(f"warning: removing {path} from the submission (links and special files are not accepted)")
            path.unlink()
    for folder in sorted((root / "submitted").glob("*/ch[0-9][0-9]")):
        for released in sorted((root / "release" / folder.name).glob("*.ipynb")):
            submitted = folder / released.name
            try:
                nbformat.read(submitted, as_version=4)
            except Exception as err:  # noqa: BLE001 - any unreadable notebook is replaced the same way
                print(f"warning: {submitted} is missing or unreadable ({type(err).__name__}); using the released notebook")
                shutil.copy(released, submitted)


def autograde(root: Path) -> None:
    write_config(root)
    prepare_submissions(root)
    for assignment in chapter_notebooks():
        if not any((root / "submitted").glob(f"*/{assignment}")):
            continue
        try:
            nbgrader(root, "autograde", assignment, "--force")
        except subprocess.CalledProcessError:
            print(f"warning: nbgrader reported errors while autograding {assignment} (see above); continuing")
        nbgrader(root, "generate_feedback", assignment, "--force")
    nbgrader(root, "export", f"--to={root / 'grades.csv'}")
    print(f"grades: {root / 'grades.csv'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["release", "autograde"])
    args = parser.parse_args()
    {"release": release, "autograde": autograde}[args.command](course_dir())


if __name__ == "__main__":
    main()
