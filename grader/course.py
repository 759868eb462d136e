"""The instructor's commands: release the chapters and autograde submissions with nbgrader.

    python -m grader.course release                  # source/ and release/ for every graded chapter
    python -m grader.course autograde                # grade submitted/, write feedback/ and grades.csv
    python -m grader.course autograde --shard 2/3    # only the second of three shares of the students
    python -m grader.course export                   # grades.csv again, from the gradebook
    python -m grader.course report                   # grades.csv and report/ (grader/report.py)

``COURSE_DIR`` (default: ``course/`` in the repository, git-ignored) is nbgrader's course
directory. ``COURSE_GRADEBOOK_URL`` picks the gradebook (any SQLAlchemy URL; default SQLite in
``COURSE_DIR``; PostgreSQL for several graders at once). The Makefile's ``release``,
``autograde`` and ``report`` targets call these.

``autograde`` is safe to kill at any moment: each submission's verdicts are kept in
``<COURSE_DIR>/.verdicts/`` the moment they are judged, and a run judges and records only what is
not there yet (``--regrade`` judges everything again).
"""

from __future__ import annotations

from course_lib import exercises, threads

import argparse
import ast
import contextlib
import csv
import datetime
import json
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from grader import handout, nbgrader_hooks
from grader.sandbox import deadline

REPO = Path(__file__).resolve().parent.parent
COURSE_ID = "tokens-journey"
VERDICTS = ".verdicts"  # <COURSE_DIR>/.verdicts/<assignment>/<student>.json: each submission's verdicts, kept


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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a reader (or a grader killed meanwhile) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as f:
        f.write(text)
    os.replace(f.name, path)


def write_config(root: Path) -> None:
    exclude = {a: sorted({e.path for e in exercises.chapter_exercises(int(a[2:]))}) for a in chapter_notebooks()}
    write_atomically(
        root / "nbgrader_config.py",
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
""",
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
        handout.write(source, assignment, notebook)  # requirements.txt and README.md: how a learner installs it
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


def shard_of(student: str, shards: int) -> int:
    """The share (1 to ``shards``) a student's submissions belong to: a hash of the id, so that graders on
    different machines agree without talking to each other, and a late student changes no one else's share."""
    return zlib.crc32(student.encode("utf-8")) % shards + 1


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"2/3"`` -> ``(2, 3)``; ``None`` or ``""`` -> ``None`` (every student)."""
    if not value:
        return None
    try:
        k, n = (int(part) for part in value.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise SystemExit(f"SHARD must look like k/n with 1 <= k <= n (say 2/3), got {value!r}")
    return k, n


def students(root: Path, shard: tuple[int, int] | None = None) -> list[str]:
    """The students with a submission in ``submitted/`` (those of ``shard`` only, if given)."""
    found = sorted(folder.name for folder in (root / "submitted").iterdir() if folder.is_dir())
    return [s for s in found if shard is None or shard_of(s, shard[1]) == shard[0]]


def prepare_submissions(root: Path, only: list[str] | None = None) -> None:
    """Make every submission gradable without trusting anything in it but its exercise files.

    Links and special files are removed (a link could point at the instructor's files). A missing
    or unreadable chapter notebook is replaced by the released one: the notebook is not graded
    (its test cells come from the source notebook), but nbgrader needs one to record the grades.
    ``only`` limits this to some students' folders. What it finds (and released files a submission
    replaced, which are ignored) is kept for the report in ``.verdicts/<assignment>/<student>.files.json``.
    """
    flags: dict[tuple[str, str], list[dict]] = {}

    def flag(path: Path, detail: str) -> None:
        relative = path.relative_to(root / "submitted").parts
        if len(relative) >= 2:
            flags.setdefault((relative[1], relative[0]), []).append(
                {"exercise": None, "kind": "files", "detail": detail}
            )

    folders = [root / "submitted" / s for s in (only if only is not None else students(root))]
    for path in sorted(p for folder in folders for p in folder.rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            print(f"warning: removing {path} from the submission (links and special files are not accepted)")
            flag(path, f"{path.name}: a link or special file, removed")
            path.unlink()
    for folder in sorted(f for student in folders for f in student.glob("ch[0-9][0-9]")):
        for released in sorted((root / "release" / folder.name).glob("*.ipynb")):
            submitted = folder / released.name
            try:
                nb = nbformat.read(submitted, as_version=4)
            except Exception as err:
                print(
                    f"warning: {submitted} is missing or unreadable ({type(err).__name__}); using the released notebook"
                )
                flag(submitted, f"{released.name}: missing or unreadable, the released one used")
                shutil.copy(released, submitted)
                continue
            tests = [cell.source for cell in nb.cells if nbgrader_hooks.is_test_cell(cell)]
            if tests != graded_cells(released):
                flag(submitted, f"{released.name}: test cells edited or removed (the source notebook's are graded)")
    for (assignment, student), found in _replaced_files(root, folders).items():
        flags.setdefault((assignment, student), []).extend(found)
    for (assignment, student), found in flags.items():  # kept across runs: a link removed once is gone the next
        path = files_flags_path(root, assignment, student)
        known = read_files_flags(root, assignment, student)
        write_atomically(path, json.dumps(known + [f for f in found if f not in known]))


def files_flags_path(root: Path, assignment: str, student: str) -> Path:
    return root / VERDICTS / assignment / f"{student}.files.json"


def read_files_flags(root: Path, assignment: str, student: str) -> list[dict]:
    """What :func:`prepare_submissions` found in a submission's files (links, replaced files, edited test cells)."""
    try:
        found = json.loads(files_flags_path(root, assignment, student).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return found if isinstance(found, list) else []


def _replaced_files(root: Path, folders: list[Path]) -> dict[tuple[str, str], list[dict]]:
    """Released files, other than exercise files and notebooks, that a submission changed (ignored when
    grading: the instructor's copies run), for the report."""
    found: dict[tuple[str, str], list[dict]] = {}
    for release in sorted((root / "release").glob("ch[0-9][0-9]")):
        own = {e.path for e in exercises.chapter_exercises(int(release.name[2:]))}
        released = {
            p.relative_to(release).as_posix(): p
            for p in release.rglob("*")
            if p.is_file() and p.suffix != ".ipynb" and "__pycache__" not in p.parts
        }
        for student in folders:
            folder = student / release.name
            if not folder.is_dir():
                continue
            for relative, original in sorted(released.items()):
                if relative in own:
                    continue
                mine = folder / relative
                if mine.is_file() and mine.read_bytes() != original.read_bytes():
                    detail = f"{relative}: replaced (ignored: the released file is used)"
                    found.setdefault((release.name, student.name), []).append(
                        {"exercise": None, "kind": "files", "detail": detail}
                    )
    return found


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


# -- what each submission's grading left: <COURSE_DIR>/.verdicts/<assignment>/<student>.json -----------------


def state_path(root: Path, assignment: str, student: str) -> Path:
    return root / VERDICTS / assignment / f"{student}.json"


def read_state(root: Path, assignment: str, student: str) -> dict | None:
    """A submission's kept record: ``fingerprint``, ``sources``, ``verdicts`` (each with its ``flags``),
    ``seconds``, ``judged_at``, ``status`` (``judged``, ``recorded`` or ``grading error``)."""
    try:
        state = json.loads(state_path(root, assignment, student).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(root: Path, assignment: str, student: str, state: dict) -> None:
    write_atomically(state_path(root, assignment, student), json.dumps(state))


def _grading_error(verdicts: list[dict] | None) -> bool:
    return verdicts is None or any("grading_error" in v for v in verdicts)


class Task:
    """One submission to grade: what its record says, and whether it must be judged or only recorded."""

    def __init__(self, root: Path, assignment: str, student: str, sources: list[str], regrade: bool):
        self.assignment, self.student, self.sources = assignment, student, sources
        self.folder = root / "submitted" / student / assignment
        self.fingerprint = nbgrader_hooks.fingerprint(self.folder, sources)
        state = None if regrade else read_state(root, assignment, student)
        valid = state is not None and state.get("fingerprint") == self.fingerprint
        self.state = state if valid and not _grading_error(state.get("verdicts")) else None


def judge_all(root: Path, tasks: list[Task], jobs: int, done: queue.Queue) -> threading.Thread | None:
    """Judge ``tasks``, ``jobs`` at a time, in the background; put each task on ``done`` as its record is kept.

    First every judge proves the sandbox works (``grader.judge --self-test``: the references pass a
    check inside it); if it does not, nothing is graded, since a machine whose sandbox cannot run (an
    interpreter its user cannot read, no namespaces) would otherwise score every submission 0. A judge that
    crashes, overruns ``COURSE_GRADER_SUBMISSION_TIMEOUT`` or reports a grading error (a sandbox that could
    not start) is replaced; the submission it was on is tried once more in the new one, and then recorded
    as a grading error. No submission's verdicts depend on another's. Returns the thread that judges (joined
    by the caller), or ``None`` when there is nothing to judge.
    """
    pending: queue.Queue = queue.Queue()
    for task in tasks:
        pending.put(task)
    count = pending.qsize()
    if not count:
        return None
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
    print(f"judging {count} submissions, {jobs} at a time", flush=True)

    def work(server: JudgeServer) -> None:
        while True:
            try:
                task = pending.get_nowait()
            except queue.Empty:
                server.close()
                return
            start = time.monotonic()
            verdicts = None
            for _attempt in (1, 2):
                if server.process.poll() is not None or _attempt == 2:  # it crashed, or the machine failed it
                    server.close()
                    server = JudgeServer(env)
                if not server.broken:
                    verdicts = server.judge(int(task.assignment[2:]), task.folder, task.sources)
                if not _grading_error(verdicts):
                    break
            if verdicts is None:
                verdicts = [{"grading_error": "the judge crashed or timed out (see its errors above)"}] * len(
                    task.sources
                )
            seconds = round(time.monotonic() - start, 2)
            task.state = {
                "fingerprint": task.fingerprint,
                "sources": task.sources,
                "verdicts": verdicts,
                "seconds": seconds,
                "judged_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "status": "grading error" if _grading_error(verdicts) else "judged",
            }
            write_state(root, task.assignment, task.student, task.state)
            passed = sum(bool(v.get("passed")) for v in verdicts)
            errors = " — grading error" if _grading_error(verdicts) else ""
            where = f"{task.student}/{task.assignment}"
            print(f"judged {where}: {passed}/{len(verdicts)} cells passed ({seconds:.1f} s){errors}", flush=True)
            done.put(task)

    def judge() -> None:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(work, servers))

    thread = threading.Thread(target=judge, name="judges", daemon=True)
    thread.start()
    return thread


def run_nbgrader(root: Path, assignment: str, chosen: list[str]) -> None:
    """nbgrader's autograde and feedback for the ``chosen`` students' submissions of ``assignment``, here.

    The verdicts are in ``<root>/.verdicts/`` by now, so nbgrader only records them: running its
    commands in this process rather than as processes of their own saves their start-up, seconds each.
    """
    from nbgrader.converters import Autograde, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from sqlalchemy.exc import SAWarning
    from traitlets.config.loader import PyFileConfigLoader

    others = [s for s in students(root) if s not in chosen and (root / "submitted" / s / assignment).is_dir()]
    os.environ["PATH"] = _scripts_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    with contextlib.chdir(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's ORM warns about its own sessions
        for converter in (Autograde, GenerateFeedback):
            coursedir = CourseDirectory(config=config)
            coursedir.assignment_id = assignment
            coursedir.student_id_exclude = ",".join(others)
            app = converter(coursedir=coursedir, config=config)
            app.force = True
            if converter is Autograde:
                app.create_student = True
            try:
                app.start()
            except Exception as err:  # nbgrader says which submissions failed in its log above
                print(f"warning: nbgrader {converter.__name__} reported errors for {assignment} ({err}); continuing")


def recorded_in_gradebook(root: Path, assignment: str) -> set[str]:
    """The students whose submission of ``assignment`` the gradebook holds."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(gradebook_url(root), COURSE_ID) as gradebook:
        try:
            return {submission.student.id for submission in gradebook.find_assignment(assignment).submissions}
        except MissingEntry:
            return set()


def record(root: Path, assignment: str, tasks: list[Task]) -> list[str]:
    """Record the judged ``tasks`` of ``assignment`` in the gradebook; return the students the machine failed."""
    failed = sorted(t.student for t in tasks if t.state["status"] == "grading error")
    chosen = [t.student for t in tasks]
    for student in chosen:  # a kill between nbgrader's steps leaves a folder it would take as done
        shutil.rmtree(root / "autograded" / student / assignment, ignore_errors=True)
    run_nbgrader(root, assignment, chosen)
    failed += [t.student for t in tasks if not (root / "autograded" / t.student / assignment).is_dir()]
    failed = sorted(set(failed))
    _forget(root, {assignment: failed})
    for task in tasks:
        if task.student not in failed:
            task.state["status"] = "recorded"
        else:
            task.state["status"] = "grading error"
        write_state(root, assignment, task.student, task.state)
    return failed


def export(root: Path) -> Path:
    """grades.csv from the gradebook (nbgrader's CSV export, and a ``status`` column); returns its path.

    A submission the grading machine failed (its kept record says so) has no score and the status
    ``grading error``; the others are ``graded`` or ``not submitted``.
    """
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin

    path = root / "grades.csv"
    exporter = CsvExportPlugin()
    # Graders of several shards export as they go: one at a time, each reading the gradebook after the one
    # before has written, so the file the last of them leaves holds every grade recorded before it.
    with _exclusive(root / ".grades.csv.lock"), tempfile.TemporaryDirectory(prefix="course-export-") as tmp:
        exporter.to = str(Path(tmp) / "grades.csv")
        with Gradebook(gradebook_url(root), COURSE_ID) as gradebook:
            exporter.export(gradebook)
        _mark_csv(root, Path(exporter.to))
        write_atomically(path, Path(exporter.to).read_text(encoding="utf-8"))
    return path


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Run the block holding an exclusive lock on the file ``lock`` (made if absent), waiting for any other
    process that holds it. Where Python has no ``fcntl`` (Windows), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _forget(root: Path, failed: dict[str, list[str]]) -> None:
    """Remove the submissions the machine failed to grade from the gradebook: no score, not even 0."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(gradebook_url(root), COURSE_ID) as gradebook:
        for assignment, students in failed.items():
            for student in students:
                with contextlib.suppress(MissingEntry):
                    gradebook.remove_submission(assignment, student)


def _mark_csv(root: Path, path: Path) -> None:
    """Add a ``status`` column to grades.csv; a submission the machine failed to grade has no score."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    for row in rows:
        state = read_state(root, row["assignment"], row["student_id"]) or {}
        if state.get("status") == "grading error":
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


def autograde(root: Path, jobs: int | None = None, shard: tuple[int, int] | None = None, regrade: bool = False) -> None:
    """Grade every submission (of ``shard``'s students), judging only those not judged yet (unless ``regrade``).

    Judges run in the background while this thread records each chapter in the gradebook as soon as
    all its submissions are judged, and rewrites grades.csv after each: a run killed at any moment
    loses at most the submissions being judged, and the next run finishes the class.
    """
    root = root.resolve()
    write_config(root)
    mine = students(root, shard)
    prepare_submissions(root, mine)
    assignments = [a for a in chapter_notebooks() if any((root / "submitted" / s / a).is_dir() for s in mine)]
    to_judge: list[Task] = []
    to_record: dict[str, list[Task]] = {a: [] for a in assignments}
    skipped = 0
    for assignment in assignments:
        sources = graded_cells(next((root / "source" / assignment).glob("*.ipynb")))
        in_gradebook = recorded_in_gradebook(root, assignment)
        for student in mine:
            if not (root / "submitted" / student / assignment).is_dir():
                continue
            task = Task(root, assignment, student, sources, regrade)
            if task.state is not None and task.state.get("status") == "recorded" and student in in_gradebook:
                skipped += 1  # judged and recorded by an earlier run: nothing to do
                continue
            (to_judge if task.state is None else to_record[assignment]).append(task)
    if skipped:
        print(f"{skipped} submissions were graded by an earlier run and are kept (--regrade grades them again)")
    left = {a: sum(t.assignment == a for t in to_judge) for a in assignments}
    done: queue.Queue = queue.Queue()
    judging = judge_all(root, to_judge, jobs or default_jobs(), done)
    failed: dict[str, list[str]] = {}
    for assignment in assignments:  # in order: each chapter is recorded once all its submissions are judged
        while left[assignment]:
            task = done.get()
            left[task.assignment] -= 1
            to_record[task.assignment].append(task)
        if to_record[assignment]:
            failed_here = record(root, assignment, to_record[assignment])
            if failed_here:
                failed[assignment] = failed_here
            if assignment != assignments[-1]:  # grades.csv as it stands, while the next chapters are judged
                export(root)
    if judging is not None:
        judging.join()
    path = export(root)
    print(f"grades: {path}")
    if failed:
        listed = ", ".join(f"{student}/{assignment}" for assignment, students in failed.items() for student in students)
        raise SystemExit(
            f"The grading machine failed on {listed}: no grade was recorded for them (see the errors above); "
            "fix the machine and run `make autograde` again."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["release", "autograde", "export", "report"])
    parser.add_argument(
        "--jobs", type=int, default=None, help="submissions judged at once (default: JOBS, else the cores)"
    )
    parser.add_argument("--shard", default=os.environ.get("SHARD"), help="k/n: grade the k-th of n shares of students")
    parser.add_argument(
        "--regrade",
        action="store_true",
        default=os.environ.get("REGRADE", "") not in ("", "0"),
        help="judge every submission again, even those an earlier run graded",
    )
    args = parser.parse_args()
    if args.command == "release":
        release(course_dir())
    elif args.command == "autograde":
        autograde(course_dir(), args.jobs, parse_shard(args.shard), args.regrade)
    elif args.command == "export":
        print(f"grades: {export(course_dir())}")
    else:
        from grader import report

        print(f"grades: {export(course_dir())}")
        print(f"report: {report.build(course_dir())}")


if __name__ == "__main__":
    main()
