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
import contextlib
import csv
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
        f"""# Written by `python -m grader.course`; edit grader/course.py instead.
import sys
sys.path.insert(0, {str(REPO)!r})
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties, CheckCellMetadata, LimitOutput, OverwriteKernelspec, SaveAutoGrades,
)
from grader.nbgrader_hooks import GradeInSandbox, UseSourceNotebook

c = get_config()
c.CourseDirectory.root = {str(root)!r}
c.CourseDirectory.course_id = {COURSE_ID!r}
c.CourseDirectory.db_url = {gradebook_url(root)!r}
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".DS_Store"]
# The learner's exercise files are their work: nbgrader must not put the stubs back over them.
c.Autograde.exclude_overwriting = {exclude!r}
c.Autograde.sanitize_preprocessors = [UseSourceNotebook, OverwriteKernelspec, CheckCellMetadata]
c.Autograde.autograde_preprocessors = [
    GradeInSandbox, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
]
c.UseSourceNotebook.source_root = {str(root / "source")!r}
c.GradeInSandbox.submitted_root = {str(root / "submitted")!r}
"""
    )


def nbgrader(root: Path, *args: str) -> None:
    # nbgrader runs `alembic` to create the gradebook: the environment's scripts must be on PATH.
    env = dict(
        os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
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
        shutil.copytree(
            REPO / "course_lib", source / "course_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        nbgrader(root, "generate_assignment", assignment, "--force")
        check_release(root / "release" / assignment)
        print(f"released {assignment}: {root / 'release' / assignment}")


def check_release(folder: Path) -> None:
    """Fail loudly if a released folder holds reference code or hidden tests."""
    for instructors_only in ("solutions", "hidden"):
        if any(folder.rglob(instructors_only)):
            raise SystemExit(f"{folder} contains a {instructors_only}/ folder")
    for text_file in folder.rglob("*.py"):
        if "run_hidden" in text_file.read_text(encoding="utf-8", errors="replace"):
            raise SystemExit(f"{text_file} calls the hidden tests")
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
        if "BEGIN HIDDEN TESTS" in text or "BEGIN SOLUTION" in text or "run_hidden" in text:
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
            except Exception as err:
                print(
                    f"warning: {submitted} is missing or unreadable ({type(err).__name__}); using the released notebook"
                )
                shutil.copy(released, submitted)


def preflight() -> None:
    """Prove the sandbox works before grading anything: the references must pass a check inside it.

    Without this, a grading machine whose sandbox cannot run (an interpreter the sandbox's user
    cannot read, no ``unshare``) would score every submission 0 and blame the learners.
    """
    done = subprocess.run(
        [sys.executable, "-m", "grader.judge", "--self-test"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(
            "The grader's sandbox does not work on this machine, so nothing was graded:\n"
            f"{(done.stdout + done.stderr).strip()[-3000:]}\n"
            "Fix: run the grader as root or with unprivileged user namespaces and util-linux's unshare and setpriv, "
            "with the Python environment readable by others (see 'How grading resists gaming' in the README)."
        )


def _failed_submissions(root: Path, assignment: str) -> list[str]:
    """Students whose submission of ``assignment`` nbgrader could not autograde (no autograded folder)."""
    return sorted(
        folder.parent.name
        for folder in (root / "submitted").glob(f"*/{assignment}")
        if not (root / "autograded" / folder.parent.name / assignment).is_dir()
    )


def _forget(root: Path, failed: dict[str, list[str]]) -> None:
    """Remove the submissions the machine failed to grade from the gradebook: no score, not even 0."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(gradebook_url(root), COURSE_ID) as gradebook:
        for assignment, students in failed.items():
            for student in students:
                with contextlib.suppress(MissingEntry):
                    gradebook.remove_submission(assignment, student)


def _mark_csv(root: Path, path: Path, failed: dict[str, list[str]]) -> None:
    """Add a ``status`` column to grades.csv; a submission the machine failed to grade has no score."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    for row in rows:
        if row["student_id"] in failed.get(row["assignment"], []):
            row.update(status="grading error", raw_score="", score="")
        else:
            submitted = (root / "submitted" / row["student_id"] / row["assignment"]).is_dir()
            row["status"] = "graded" if submitted else "not submitted"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def autograde(root: Path) -> None:
    write_config(root)
    prepare_submissions(root)
    preflight()
    failed: dict[str, list[str]] = {}
    for assignment in chapter_notebooks():
        if not any((root / "submitted").glob(f"*/{assignment}")):
            continue
        try:
            nbgrader(root, "autograde", assignment, "--force")
        except subprocess.CalledProcessError:
            print(f"warning: nbgrader reported errors while autograding {assignment} (see above); continuing")
        failed[assignment] = _failed_submissions(root, assignment)
        nbgrader(root, "generate_feedback", assignment, "--force")
    failed = {assignment: students for assignment, students in failed.items() if students}
    _forget(root, failed)
    nbgrader(root, "export", f"--to={root / 'grades.csv'}")
    _mark_csv(root, root / "grades.csv", failed)
    print(f"grades: {root / 'grades.csv'}")
    if failed:
        listed = ", ".join(f"{student}/{assignment}" for assignment, students in failed.items() for student in students)
        raise SystemExit(
            f"The grading machine failed on {listed}: no grade was recorded for them (see the errors above); "
            "fix the machine and run `make autograde` again."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["release", "autograde"])
    args = parser.parse_args()
    {"release": release, "autograde": autograde}[args.command](course_dir())


if __name__ == "__main__":
    main()
