"""``make autograde`` when the machine, not the learner, fails — and when the machine is busy.

A grading machine whose sandbox cannot run must stop before grading anything; a judge that
crashes on one submission must leave that submission without a score (never a zero) and every
other submission graded; and a verdict must not depend on how busy the machine is.
"""

from __future__ import annotations

from course_lib import exercises, threads

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env

from grader import course
from grader.fill import fill_module, replace_bodies

pytestmark = pytest.mark.slow

CHAPTER = "ch01"
TOTAL = sum(e.points for e in exercises.chapter_exercises(1))


def _solve(folder: Path, break_merge: bool = False) -> None:
    """Fill the references into a released chapter folder (optionally with one subtle bug in merge_pair)."""
    path = folder / "course_lib" / "tokenization.py"
    solved = fill_module(path.read_text(), (REPO / "solutions" / "tokenization.py").read_text())
    if break_merge:  # merges a pair only when it is not at the very end: a plausible off-by-one
        solved = solved.replace("while i < len(ids):", "while i < len(ids) - 1:", 1)
        assert "while i < len(ids) - 1:" in solved
    path.write_text(solved)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A course directory with Chapter 1 released (and no other chapter, to keep it quick)."""
    book = tmp_path_factory.mktemp("book")
    shutil.copy(next((REPO / "book").glob(f"{CHAPTER}_*.ipynb")), book)
    root = tmp_path_factory.mktemp("course")
    env = python_env(COURSE_DIR=str(root), COURSE_BOOK_DIR=str(book))
    done = subprocess.run(
        [sys.executable, "-m", "grader.course", "release"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, book


@pytest.fixture
def class_of(released, tmp_path, monkeypatch):
    """A fresh copy of the released course with the given students' submissions of Chapter 1."""
    source_root, book = released

    def make(**students: str) -> Path:
        root = tmp_path / "course"
        shutil.copytree(source_root, root)
        for student, how in students.items():
            folder = root / "submitted" / student / CHAPTER
            shutil.copytree(root / "release" / CHAPTER, folder)
            if how != "stub":
                _solve(folder, break_merge=how == "off-by-one")
        for name in [n for n in os.environ if n.startswith(("COURSE_LIB_", "COURSE_GRADER_"))]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("COURSE_DIR", str(root))
        monkeypatch.setenv("COURSE_BOOK_DIR", str(book))
        monkeypatch.setenv("PATH", os.environ["PATH"])  # run_nbgrader prepends the venv's scripts
        return root

    return make


def _rows(root: Path) -> dict[str, dict]:
    with open(root / "grades.csv", newline="") as f:
        return {row["student_id"]: row for row in csv.DictReader(f) if row["assignment"] == CHAPTER}


def test_a_broken_sandbox_stops_autograde_before_anything_is_graded(class_of, monkeypatch, capsys):
    root = class_of(ann="solved")
    monkeypatch.setenv("COURSE_GRADER_SANDBOX", "broken")  # what a machine without working namespaces looks like
    with pytest.raises(SystemExit) as info:
        course.autograde(root, jobs=2)
    message = str(info.value)
    assert "sandbox does not work on this machine, so nothing was graded" in message
    assert "COURSE_GRADER_SANDBOX must be" in message and "Fix:" in message
    assert not (root / "autograded").exists() and not (root / "grades.csv").exists()


def test_a_judge_crash_is_a_grading_error_never_a_score(class_of, monkeypatch, capsys):
    root = class_of(ann="solved", bea="stub", zed="solved")
    judge = course.JudgeServer.judge
    crashed = []

    def crash_on_zed(self, chapter, submission, sources):
        if submission.parent.name == "zed":  # the judge process dies while grading zed, on both tries
            crashed.append(self.process.pid)
            self.process.kill()
        return judge(self, chapter, submission, sources)

    monkeypatch.setattr(course.JudgeServer, "judge", crash_on_zed)
    with pytest.raises(SystemExit) as info:
        course.autograde(root, jobs=2)
    assert "The grading machine failed on zed/ch01: no grade was recorded" in str(info.value)
    assert len(set(crashed)) == 2  # tried again in a fresh judge before giving up
    rows = _rows(root)
    assert rows["zed"]["status"] == "grading error" and rows["zed"]["score"] == ""
    assert (rows["ann"]["status"], float(rows["ann"]["score"])) == ("graded", TOTAL)
    assert (rows["bea"]["status"], float(rows["bea"]["score"])) == ("graded", 0)
    assert not (root / "autograded" / "zed" / CHAPTER).exists()
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(course.gradebook_url(root), course.COURSE_ID) as gradebook, pytest.raises(MissingEntry):
        gradebook.find_submission(CHAPTER, "zed")
    assert course.read_state(root, CHAPTER, "zed")["status"] == "grading error"  # the next run judges it again


def test_a_hanging_exercise_fails_its_checks_at_once_and_costs_only_its_points(class_of, monkeypatch):
    """train_bpe loops forever and decode fills memory: those two exercises score 0 and every other full marks,
    and after its first hang (or the memory cap) each fails its other checks at once, for the same reason."""
    root = class_of(kim="solved")
    path = root / "submitted" / "kim" / CHAPTER / "course_lib" / "tokenization.py"
    source = replace_bodies(path.read_text(), "while True:\n    pass", {"train_bpe"})
    hog = (
        "import torch\n_hog = []\nwhile True:\n    _hog.append(torch.empty(1 << 28, dtype=torch.uint8))"  # 256 MiB each
    )
    path.write_text(replace_bodies(source, hog, {"BPETokenizer.decode"}))
    monkeypatch.setenv("COURSE_GRADER_CALL_TIMEOUT", "3")
    course.autograde(root, jobs=1)
    lost = exercises.get("1.3").points + exercises.get("1.6").points
    assert float(_rows(root)["kim"]["score"]) == TOTAL - lost
    state = course.read_state(root, CHAPTER, "kim")
    why = {"1.3": "timed out after", "1.6": "allocate memory"}  # torch's words; later checks: "hit the memory cap"
    for source, verdict in zip(state["sources"], state["verdicts"]):
        exercise = next(e for e in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6") if f'"{e}"' in source)
        assert verdict["passed"] == (exercise not in why), (exercise, verdict["stdout"])
        if exercise in why:
            failed = [line for line in verdict["stdout"].splitlines() if line.startswith("  ✗")]
            assert failed and all(why[exercise] in line for line in failed), failed
    flags = {(f["exercise"], f["kind"]) for v in state["verdicts"] for f in v["flags"]}
    assert flags == {("1.3", "hung"), ("1.6", "memory")}


def _judge(folder: Path, cells: list[str]) -> list[bool]:
    done = subprocess.run(
        [sys.executable, "-m", "grader.judge", "1", str(folder)],
        input=json.dumps(cells),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=python_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [bool(v.get("passed")) for v in json.loads(done.stdout)]


def test_verdicts_do_not_depend_on_load(released, tmp_path):
    """With every core kept busy by other processes, a correct submission passes every test cell, the stub none,
    and a subtly wrong one fails the very cells it fails on an idle machine (those of merge_pair among them)."""
    source_root, _ = released
    submissions = {}
    for how in ("solved", "stub", "off-by-one"):
        folder = tmp_path / how
        shutil.copytree(source_root / "release" / CHAPTER, folder)
        if how != "stub":
            _solve(folder, break_merge=how == "off-by-one")
        submissions[how] = folder
    cells = course.graded_cells(next((source_root / "source" / CHAPTER).glob("*.ipynb")))
    idle = _judge(submissions["off-by-one"], cells)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, threads.cores()))]
    try:  # more runnable processes than cores, for the whole grading
        verdicts = {how: _judge(folder, cells) for how, folder in submissions.items()}
    finally:
        for process in busy:
            process.kill()
            process.wait()
    merge = [i for i, source in enumerate(cells) if '"1.2"' in source]
    assert len(merge) == 2 and not any(idle[i] for i in merge) and idle[0] and idle[1]
    assert verdicts["solved"] == [True] * len(cells)
    assert verdicts["stub"] == [False] * len(cells)
    assert verdicts["off-by-one"] == idle
