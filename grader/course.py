"""The instructor's commands: release the chapters and autograde submissions with nbgrader.

    python -m grader.course release      # source/ and release/ for every graded chapter
    python -m grader.course autograde    # grade submitted/, write feedback/ and grades.csv

``COURSE_DIR`` (default: ``course/`` in the repository, git-ignored) is nbgrader's course
directory. ``COURSE_GRADEBOOK_URL`` picks the gradebook (any SQLAlchemy URL; default SQLite in
``COURSE_DIR``). The Makefile's ``release`` and ``autograde`` targets call these.
"""

from __future__ import annotations

from course_lib import exercises, threads

import argparse
import ast
import contextlib
import csv
import json
import os
import queue
import select
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from grader import nbgrader_hooks
from grader.sandbox import deadline

REPO = Path(__file__).resolve().parent.parent
COURSE_ID = "tokens-journey"
VERDICTS = ".verdicts"  # <COURSE_DIR>/.verdicts/<assignment>/<student>.json while make autograde runs


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
c.GradeInSandbox.verdicts_root = {str(root / VERDICTS)!r}
"""
    )


def _scripts_on_path() -> str:
    """``PATH`` with this environment's scripts first: nbgrader runs `alembic` to create the gradebook."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def nbgrader(root: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=_scripts_on_path())
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


def default_jobs() -> int:
    """How many submissions ``make autograde`` judges at once: ``JOBS``, else the cores."""
    value = os.environ.get("JOBS", "")
    if value and (not value.isdigit() or int(value) < 1):
        raise SystemExit(f"JOBS must be a positive integer, got {value!r}")
    return int(value) if value else threads.cores()


class JudgeServer:
    """One ``python -m grader.judge --serve`` process, judging the submissions it is given one at a time."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "grader.judge", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        first = self._line(deadline("COURSE_GRADER_START_TIMEOUT", 60) * 5)
        self.broken = "the judge did not start" if first is None else first.get("broken")

    def _line(self, timeout: float):
        """The next line the judge answers, parsed, or ``None`` (it crashed, timed out or answered garbage)."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        try:
            return json.loads(line) if line else None
        except json.JSONDecodeError:
            return None

    def judge(self, chapter: int, submission: Path, sources: list[str]) -> list[dict] | None:
        """The verdicts of one submission, or ``None`` if the judge failed (it is then closed)."""
        task = {"chapter": chapter, "submission": str(submission), "sources": sources}
        try:
            self.process.stdin.write(json.dumps(task) + "\n")
            self.process.stdin.flush()
        except OSError:
            self.close()
            return None
        verdicts = self._line(deadline("COURSE_GRADER_SUBMISSION_TIMEOUT", 3600))
        if not isinstance(verdicts, list) or len(verdicts) != len(sources):
            self.close()
            return None
        return verdicts

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


def graded_cells(notebook: Path) -> list[str]:
    """The sources of a source notebook's test cells (visible checks and hidden tests), in order."""
    nb = nbformat.read(notebook, as_version=4)
    return [cell.source for cell in nb.cells if nbgrader_hooks.is_test_cell(cell)]


def judge_all(root: Path, assignments: list[str], jobs: int) -> None:
    """Judge every submission of ``assignments``, ``jobs`` at a time, into ``<root>/.verdicts/``.

    First every judge proves the sandbox works (``grader.judge --self-test``: the references pass a
    check inside it); if it does not, nothing is graded, since a machine whose sandbox cannot run (an
    interpreter its user cannot read, no namespaces) would otherwise score every submission 0. A judge that
    crashes or overruns ``COURSE_GRADER_SUBMISSION_TIMEOUT`` is replaced; the submission it was on is
    tried once more in the new one, and then recorded as a grading error. No submission's verdicts
    depend on another's.
    """
    tasks: queue.Queue = queue.Queue()
    for assignment in assignments:
        sources = graded_cells(next((root / "source" / assignment).glob("*.ipynb")))
        for folder in sorted((root / "submitted").glob(f"*/{assignment}")):
            tasks.put((assignment, folder, sources))
    count = tasks.qsize()
    if not count:
        return
    env = {key: value for key, value in os.environ.items() if not key.startswith("COURSE_LIB_")}
    env["PYTHONPATH"] = str(REPO)
    jobs = max(1, min(jobs, count))
    env[threads.THREADS_ENV] = str(max(1, threads.cores() // jobs))  # the judges share the cores, never oversubscribe
    with ThreadPoolExecutor(jobs) as pool:
        servers = list(pool.map(lambda _: JudgeServer(env), range(jobs)))
    broken = next((server.broken for server in servers if server.broken), None)
    if broken:
        for server in servers:
            server.close()
        raise SystemExit(
            f"The grader's sandbox does not work on this machine, so nothing was graded:\n{broken}\n"
            "Fix: run the grader on Linux as root (or with unprivileged user namespaces) with util-linux's mount, "
            "with the Python environment readable by others (see 'How grading resists gaming' in the README)."
        )
    print(f"judging {count} submissions, {jobs} at a time")

    def work(server: JudgeServer) -> None:
        while True:
            try:
                assignment, folder, sources = tasks.get_nowait()
            except queue.Empty:
                server.close()
                return
            start = time.monotonic()
            verdicts = None
            for _attempt in (1, 2):
                if server.process.poll() is not None:  # it crashed, or its self-test failed
                    server.close()
                    server = JudgeServer(env)
                if not server.broken:
                    verdicts = server.judge(int(assignment[2:]), folder, sources)
                if verdicts is not None:
                    break
            if verdicts is None:
                verdicts = [{"grading_error": "the judge crashed or timed out (see its errors above)"}] * len(sources)
            target = root / VERDICTS / assignment / f"{folder.parent.name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"sources": sources, "verdicts": verdicts}), encoding="utf-8")
            passed = sum(bool(v.get("passed")) for v in verdicts)
            errors = " — grading error" if any("grading_error" in v for v in verdicts) else ""
            print(
                f"judged {folder.parent.name}/{assignment}: {passed}/{len(verdicts)} cells passed "
                f"({time.monotonic() - start:.1f} s){errors}",
                flush=True,
            )

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(work, servers))


def run_nbgrader(root: Path, assignments: list[str]) -> None:
    """nbgrader's autograde and feedback for ``assignments``, in this one process.

    The verdicts are in ``<root>/.verdicts/`` by now, so nbgrader only records them: running its
    commands here rather than as ten processes saves their start-up, seconds each.
    """
    from nbgrader.converters import Autograde, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from sqlalchemy.exc import SAWarning
    from traitlets.config.loader import PyFileConfigLoader

    os.environ["PATH"] = _scripts_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    with contextlib.chdir(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's ORM warns about its own sessions
        for assignment in assignments:
            for converter in (Autograde, GenerateFeedback):
                coursedir = CourseDirectory(config=config)
                coursedir.assignment_id = assignment
                app = converter(coursedir=coursedir, config=config)
                app.force = True
                if converter is Autograde:
                    app.create_student = True
                try:
                    app.start()
                except Exception as err:  # nbgrader says which submissions failed in its log above
                    print(
                        f"warning: nbgrader {converter.__name__} reported errors for {assignment} ({err}); continuing"
                    )


def export(root: Path) -> None:
    """nbgrader's CSV export of the gradebook to ``<root>/grades.csv``."""
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin

    exporter = CsvExportPlugin()
    exporter.to = str(root / "grades.csv")
    with Gradebook(gradebook_url(root), COURSE_ID) as gradebook:
        exporter.export(gradebook)


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
        for key in ("raw_score", "score", "max_score"):  # input checks carry tenths: 16.999999999999996 -> 17.0
            if row.get(key):
                row[key] = str(round(float(row[key]), 2))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def autograde(root: Path, jobs: int | None = None) -> None:
    write_config(root)
    prepare_submissions(root)
    assignments = [a for a in chapter_notebooks() if any((root / "submitted").glob(f"*/{a}"))]
    shutil.rmtree(root / VERDICTS, ignore_errors=True)
    try:
        judge_all(root, assignments, jobs or default_jobs())
        run_nbgrader(root, assignments)
    finally:
        shutil.rmtree(root / VERDICTS, ignore_errors=True)  # a later plain `nbgrader autograde` must judge afresh
    failed = {a: students for a in assignments if (students := _failed_submissions(root, a))}
    _forget(root, failed)
    export(root)
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
    parser.add_argument(
        "--jobs", type=int, default=None, help="submissions judged at once (default: JOBS, else the cores)"
    )
    args = parser.parse_args()
    if args.command == "release":
        release(course_dir())
    else:
        autograde(course_dir(), args.jobs)


if __name__ == "__main__":
    main()
