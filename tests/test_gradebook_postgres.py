"""Many graders, one gradebook: three ``make autograde SHARD=k/3`` at once, recording into a real PostgreSQL.

The test starts its own PostgreSQL server (Debian's ``postgresql`` package, which ``.ci/run``
installs) in a temporary folder, listening on loopback and on a socket in that folder, and stops
it at the end. A class of 12 students hands in two cheap chapters; three graders share the course
folder (as graders on several machines share it through the exchange's file system) and each
grades its share of the students at the same time. Then every grade is checked: each submission
recorded once, with the score it earned, none lost and none doubled.
"""

from __future__ import annotations

from course_lib import exercises

import csv
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, python_env

from grader import course
from grader.fill import fill_module

pytestmark = pytest.mark.slow

CHAPTERS = ("ch02", "ch07")
GRADERS = 3
STUDENTS_PER_SHARD = 4


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on PATH, or where Debian puts them."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of this test's own; yields the gradebook's SQLAlchemy URL."""
    pg = _postgres_bin()
    if pg is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="the psycopg driver is missing: pip install -r requirements.txt")
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the package's own user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="course-pg-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(args, cwd=folder, capture_output=True, text=True, **as_user)
        assert done.returncode == 0, f"{args[0]}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    try:
        run(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "grader", "-E", "UTF8", "--no-sync")
        options = f"-k {folder} -h 127.0.0.1 -p {port} -F"  # a socket in the folder, loopback only, no fsync
        run(str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
        run(str(pg / "createdb"), "-h", str(folder), "-p", str(port), "-U", "grader", "gradebook")
        yield f"postgresql+psycopg://grader@127.0.0.1:{port}/gradebook"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, **as_user
            )
        shutil.rmtree(folder, ignore_errors=True)


def _class() -> list[str]:
    """12 students, 4 in each of the 3 shares (a share is a hash of the id)."""
    shares: dict[int, list[str]] = {k: [] for k in range(1, GRADERS + 1)}
    for n in range(1000):
        name = f"s{n:03d}"
        share = shares[course.shard_of(name, GRADERS)]
        if len(share) < STUDENTS_PER_SHARD:
            share.append(name)
    return sorted(name for share in shares.values() for name in share)


def _solved(student: str, assignment: str) -> bool:
    """Who solved what: a pattern with both outcomes in every share and chapter."""
    n = int(student[1:])
    return n % 2 == 0 if assignment == "ch02" else n % 3 != 0


def test_three_graders_share_one_postgresql_gradebook(postgres, tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    for assignment in CHAPTERS:
        shutil.copy(next((REPO / "book").glob(f"{assignment}_*.ipynb")), book)
    root = tmp_path / "course"
    env = python_env(
        COURSE_DIR=str(root), COURSE_BOOK_DIR=str(book), COURSE_GRADEBOOK_URL=postgres, JOBS="1", PYTHONUNBUFFERED="1"
    )
    command = [sys.executable, "-m", "grader.course"]
    done = subprocess.run([*command, "release"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    students = _class()
    total = {}
    for assignment in CHAPTERS:
        chapter = exercises.chapter_exercises(int(assignment[2:]))
        total[assignment] = sum(e.points for e in chapter)
        for student in students:
            folder = root / "submitted" / student / assignment
            shutil.copytree(root / "release" / assignment, folder)
            for path in sorted({e.path for e in chapter}) if _solved(student, assignment) else []:
                solution = (REPO / "solutions" / Path(path).name).read_text()
                (folder / path).write_text(fill_module((folder / path).read_text(), solution))

    graders = [
        subprocess.Popen(
            [*command, "autograde", "--shard", f"{k}/{GRADERS}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(1, GRADERS + 1)
    ]
    outputs = [grader.communicate(timeout=600)[0] for grader in graders]
    for grader, output in zip(graders, outputs):
        assert grader.returncode == 0, output[-4000:]

    judged = [
        line.split()[1].rstrip(":") for output in outputs for line in output.splitlines() if line.startswith("judged ")
    ]
    expected = sorted(f"{s}/{a}" for s in students for a in CHAPTERS)
    assert sorted(judged) == expected  # each submission judged by exactly one grader

    from nbgrader.api import Gradebook, SubmittedAssignment

    with Gradebook(postgres, course.COURSE_ID) as gradebook:
        rows = gradebook.db.query(SubmittedAssignment).all()
        recorded = sorted(f"{row.student.id}/{row.assignment.name}" for row in rows)
        assert recorded == expected  # none lost, none doubled
        for row in rows:
            earned = total[row.assignment.name] if _solved(row.student.id, row.assignment.name) else 0
            assert round(row.score, 2) == earned, (row.student.id, row.assignment.name, row.score)
        assert sorted(s.id for s in gradebook.students) == students

    def check_grades_csv():
        with open(root / "grades.csv", newline="") as f:
            grades = {(row["student_id"], row["assignment"]): row for row in csv.DictReader(f)}
        assert sorted(grades) == sorted((s, a) for s in students for a in CHAPTERS)
        for (student, assignment), row in grades.items():
            assert row["status"] == "graded"
            assert float(row["score"]) == (total[assignment] if _solved(student, assignment) else 0)

    # The graders exported one at a time as they went (a lock): the file the last one left is the whole class.
    check_grades_csv()
    done = subprocess.run([*command, "export"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    check_grades_csv()
