"""Grading a class as an instructor does: the report on it, and a grading run killed at any moment.

One small class hands in Chapter 2 (a cheap chapter to grade): a solved submission, the untouched
release, and solved ones that exit the interpreter, loop forever, patch the harness, or replace
released files. ``make autograde`` grades it once, uninterrupted; ``make report`` reports on it;
and a second copy of the class is graded by a run that is killed with SIGKILL mid-way and then
run again, which must end with the same grades without judging again what was judged before.
"""

from __future__ import annotations

from course_lib import exercises

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, python_env

from grader import course, report
from grader.fill import fill_module, replace_bodies

pytestmark = pytest.mark.slow

CHAPTER = "ch02"
FILE = "course_lib/embeddings.py"
POINTS = {e.id: e.points for e in exercises.chapter_exercises(2)}
TOTAL = sum(POINTS.values())
HARNESS_PATCH = """
import course_lib.grading as _grading
_grading.Tester.close = lambda *a, **k: None
"""
# student: (how the submission is made, the score it must get)
CLASS = {
    "ann": ("solved", TOTAL),
    "bea": ("stub", 0),
    "cal": ("exits in 2.2", TOTAL - POINTS["2.2"]),
    "dan": ("patches the harness", TOTAL),
    "eve": ("replaces files", TOTAL),
    "fay": ("hangs in 2.2", TOTAL - POINTS["2.2"]),
}


def hand_in(root: Path) -> None:
    release = root / "release" / CHAPTER
    stub = (release / FILE).read_text()
    solved = fill_module(stub, (REPO / "solutions" / "embeddings.py").read_text())
    sources = {
        "solved": solved,
        "stub": stub,
        "exits in 2.2": replace_bodies(solved, "import os\nos._exit(3)", {"sinusoidal_positions"}),
        "patches the harness": solved.replace("\nimport torch\n", "\nimport torch\n" + HARNESS_PATCH, 1),
        "replaces files": solved,
        "hangs in 2.2": replace_bodies(solved, "while True:\n    pass", {"sinusoidal_positions"}),
    }
    for student, (how, _) in CLASS.items():
        folder = root / "submitted" / student / CHAPTER
        shutil.copytree(release, folder)
        (folder / FILE).write_text(sources[how])
        if how == "replaces files":
            (folder / "course_lib" / "grading.py").write_text("def run_checks(*a, **k):\n    print('all passed')\n")
            notebook = next(folder.glob("*.ipynb"))
            nb = nbformat.read(notebook, as_version=4)
            for cell in nb.cells:
                if cell.metadata.get("nbgrader", {}).get("grade"):
                    cell.source = "print('ok')"
            nbformat.write(nb, notebook)
    assert HARNESS_PATCH in sources["patches the harness"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    shutil.copy(next((REPO / "book").glob(f"{CHAPTER}_*.ipynb")), book)
    root = tmp_path_factory.mktemp("released") / "course"
    env = python_env(COURSE_DIR=str(root), COURSE_BOOK_DIR=str(book), COURSE_GRADER_CALL_TIMEOUT="3", JOBS="2")
    done = subprocess.run([sys.executable, "-m", "grader.course", "release"], cwd=REPO, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    hand_in(root)
    return root, env


def _copy(released, into: Path) -> tuple[Path, dict]:
    root, env = released
    shutil.copytree(root, into)
    return into, dict(env, COURSE_DIR=str(into))


def _autograde(env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grader.course", "autograde"], cwd=REPO, env=env, capture_output=True, text=True, **extra
    )


@pytest.fixture(scope="module")
def graded(released, tmp_path_factory):
    """The class graded by one uninterrupted run, and then reported on."""
    root, env = _copy(released, tmp_path_factory.mktemp("graded") / "course")
    done = _autograde(env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = subprocess.run(
        [sys.executable, "-m", "grader.course", "report"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return root


def _grades(root: Path) -> dict[str, tuple[str, str]]:
    with open(root / "grades.csv", newline="") as f:
        return {row["student_id"]: (row["status"], row["score"]) for row in csv.DictReader(f)}


def test_every_student_gets_the_score_of_what_they_did(graded):
    grades = _grades(graded)
    assert {student: float(score) for student, (_, score) in grades.items()} == {
        student: float(points) for student, (_, points) in CLASS.items()
    }
    assert {status for status, _ in grades.values()} == {"graded"}


def test_the_report_shows_the_class_and_flags_who_did_what(graded):
    page = (graded / "report" / "index.html").read_text()
    assert page.count("<img ") == 3 and "data:image/png;base64," in page  # histogram, exercises, tests
    for heading in ("Score distribution", "exercise&#x27;s pass rate", "Slowest submissions", "Flagged (4 students)"):
        assert heading in page, heading
    with open(graded / "report" / "flags.csv", newline="") as f:
        flags = {(row["student"], row["exercise"], row["kind"]): row["reason"] for row in csv.DictReader(f)}
    assert "ended" in flags["cal", "2.2", "exited"]
    assert "timed out" in flags["fay", "2.2", "hung"]
    assert "course_lib.grading.Tester.close" in next(
        r for (s, _, k), r in flags.items() if (s, k) == ("dan", "patched")
    )
    assert "course_lib/grading.py: replaced" in flags["eve", "", "files"]
    assert {student for student, _, _ in flags} == {"cal", "dan", "eve", "fay"}
    with open(graded / "report" / "tests.csv", newline="") as f:
        tests = list(csv.DictReader(f))
    assert {row["exercise"] for row in tests} == set(POINTS)
    for row in tests:  # everyone but the stub passes every test of 2.1 and 2.3; cal and fay fail 2.2's
        passed, ran = int(row["passed"]), int(row["submissions"])
        assert passed == len(CLASS) - (1 if row["exercise"] != "2.2" else 3), row
        # every submission ran every test, but an input-checks cell whose visible checks failed skips its hidden ones
        assert ran == len(CLASS) or (row["cell"] == "input checks" and ran >= passed), row
    with open(graded / "report" / "submissions.csv", newline="") as f:
        timed = {row["student"]: float(row["seconds"]) for row in csv.DictReader(f)}
    assert set(timed) == set(CLASS) and all(seconds > 0 for seconds in timed.values())


def _alive_in_group(group: int) -> list[int]:
    """The processes of a process group that still run (not the dead awaiting their parent's wait)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _judged_lines(output: str) -> set[str]:
    return {line.split()[1].split("/")[0] for line in output.splitlines() if line.startswith("judged ")}


def test_a_run_killed_midway_finishes_with_the_same_grades_without_judging_again(released, graded, tmp_path):
    root, env = _copy(released, tmp_path / "course")
    env = dict(env, JOBS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "grader.course", "autograde"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its judges, sandboxes and all: killed together, as a crash would
    )
    seen = []
    try:
        for line in process.stdout:  # kill once two submissions are judged, in the middle of the class
            if line.startswith("judged "):
                seen.append(line)
                if len(seen) == 2:
                    os.killpg(process.pid, signal.SIGKILL)
                    break
    finally:
        with_pid = process.pid
        process.kill()
        process.wait()
        process.stdout.close()
    assert len(seen) == 2, "the run ended before two submissions were judged"
    end = time.monotonic() + 60
    while _alive_in_group(with_pid):  # the whole group dies: judges and sandbox factories with it
        assert time.monotonic() < end, "the killed run left processes behind"
        time.sleep(0.1)
    kept = {}
    for student in CLASS:
        state = course.read_state(root, CHAPTER, student)
        if state is not None:
            kept[student] = state["judged_at"]
    assert len(kept) >= 2 and all(course.read_state(root, CHAPTER, s)["status"] == "judged" for s in kept)

    done = _autograde(env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _grades(root) == _grades(graded)  # the same grades as the uninterrupted run
    assert _judged_lines(done.stdout) == set(CLASS) - set(kept)  # what was judged is not judged again
    assert {s: course.read_state(root, CHAPTER, s)["judged_at"] for s in kept} == kept

    again = _autograde(env)  # and a third run has nothing left to do
    assert again.returncode == 0 and not _judged_lines(again.stdout)
    assert f"{len(CLASS)} submissions were graded by an earlier run" in again.stdout
    assert _grades(root) == _grades(graded)
    assert json.loads(json.dumps(_grades(root)))  # grades.csv is whole: written in one step


def test_report_of_a_class_with_a_grading_error(graded, tmp_path):
    """A submission the machine failed is listed as such in the report (and has no score), never as a 0."""
    root = tmp_path / "course"
    shutil.copytree(graded, root)
    state = course.read_state(root, CHAPTER, "ann")
    state.update(status="grading error", verdicts=[{"grading_error": "the sandbox could not start"}])
    course.write_state(root, CHAPTER, "ann", state)
    course.export(root)
    report.build(root)
    assert _grades(root)["ann"] == ("grading error", "")
    with open(root / "report" / "flags.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["student"] == "ann"]
    assert [(row["kind"], row["reason"]) for row in rows] == [("grading error", "the sandbox could not start")]
