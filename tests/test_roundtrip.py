"""The nbgrader round trip, as an instructor runs it, with honest and dishonest students.

release → submissions → autograde → feedback → grades.csv. An untouched release scores 0 on every
test cell, the release with the reference code filled in scores full marks, and each attempt to
game the grader costs that submission the points of the exercises it touched — never the grading
run, and never another student's grades.
"""

from __future__ import annotations

from course_lib import exercises

import ast
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, python_env

from grader import cells
from grader.fill import fill_module

pytestmark = pytest.mark.slow

NOTEBOOK = "ch01_tokenization"
CHAPTER = "ch01"
EXERCISE_FILE = "course_lib/tokenization.py"


def _insert_at_top_of(source: str, qualname: str, code: str) -> str:
    """Put ``code`` first in the body of function ``qualname`` (after its docstring)."""
    tree = ast.parse(source)
    body = tree.body
    for name in qualname.split("."):
        node = next(n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
        body = node.body
    first = node.body[1] if isinstance(node.body[0], ast.Expr) else node.body[0]
    lines = source.splitlines(keepends=True)
    indent = " " * first.col_offset
    lines.insert(first.lineno - 1, "".join(f"{indent}{line}\n" for line in code.splitlines()))
    return "".join(lines)


def _solved(release: Path) -> str:
    return fill_module((release / EXERCISE_FILE).read_text(), (REPO / "solutions" / "tokenization.py").read_text())


def _cells_of(entry: exercises.Exercise) -> set[str]:
    """The grade ids of an exercise's test cells: visible checks, hidden tests and, if any, input checks."""
    kinds = ["visible", "hidden"] + (["inputs"] if any(cells.has_input_checks(entry)) else [])
    return {f"ex{entry.chapter}_{entry.number}_{kind}" for kind in kinds}


def _points(*ids: str) -> int:
    return sum(exercises.get(i).points for i in ids)


TOTAL = sum(e.points for e in exercises.chapter_exercises(1))


def _cheat_by_reading_solutions() -> str:
    """A module whose every exercise tries to run the instructor's reference instead."""
    path = REPO / "solutions" / "tokenization.py"
    return f"""
import sys
sys.path.insert(0, {str(REPO)!r})
try:
    import solutions.tokenization as _ref
except ImportError:
    _ns = {{}}
    exec(open({str(path)!r}).read(), _ns)
    class _ref:
        pass
    for _k, _v in _ns.items():
        setattr(_ref, _k, _v)
"""


# Each student: (how their submission is made, the points they should get, exercises they lose).
def _students(release: Path) -> dict[str, tuple]:
    solved = _solved(release)
    stub = (release / EXERCISE_FILE).read_text()
    hijack = """
import sys
import course_lib.grading as _grading
_grading.Tester.equal = lambda *a, **k: None
_grading.Tester.raises = lambda *a, **k: ""
_grading.run_checks = lambda *a, **k: print("all checks passed")
sys.excepthook = lambda *a: None
try:
    import IPython
    IPython.core.interactiveshell.InteractiveShell.showtraceback = lambda *a, **k: None
except Exception:
    pass
"""
    cheat = _insert_at_top_of(stub, "merge_pair", "return _ref.merge_pair(ids, pair, new_id)")
    cheat = cheat.replace(
        "from .exercises import exercise\n", "from .exercises import exercise\n" + _cheat_by_reading_solutions()
    )
    assert cheat.count("_ref.merge_pair") == 1 and "import solutions.tokenization" in cheat
    fake_eq = (
        "class _Anything(list):\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
        "return _Anything()"
    )
    return {
        "alice": ({EXERCISE_FILE: stub}, 0, "untouched release"),
        "bob": ({EXERCISE_FILE: solved}, TOTAL, "reference code filled in"),
        "carol": (
            {EXERCISE_FILE: _insert_at_top_of(solved, "BPETokenizer.decode", "while True:\n    pass")},
            TOTAL - _points("1.6"),
            "loops forever in decode",
        ),
        "dave": (
            {EXERCISE_FILE: _insert_at_top_of(solved, "train_bpe", "import sys\nsys.exit(0)")},
            TOTAL - _points("1.3"),
            "sys.exit in train_bpe",
        ),
        "erin": (
            {EXERCISE_FILE: _insert_at_top_of(solved, "BPETokenizer.decode", "_hog = bytearray(64 << 30)")},
            TOTAL - _points("1.6"),
            "allocates 64 GiB in decode",
        ),
        "frank": (
            {EXERCISE_FILE: _insert_at_top_of(solved, "train_bpe", fake_eq)},
            TOTAL - _points("1.3"),
            "returns an object that equals anything",
        ),
        "grace": (
            {
                EXERCISE_FILE: stub.replace(
                    "from .exercises import exercise\n", "from .exercises import exercise\n" + hijack
                )
            },
            0,
            "patches the harness at import",
        ),
        "heidi": ({EXERCISE_FILE: cheat}, 0, "reads the instructor's solutions"),
        "ivan": (
            {EXERCISE_FILE: solved, "notebook": "tamper"},
            TOTAL,
            "solved, notebook's test cells deleted and a 100-point cell added",
        ),
        "judy": ({EXERCISE_FILE: stub, "notebook": "fake-pass"}, 0, "test cells rewritten to pass"),
        "mallory": ({EXERCISE_FILE: "symlink"}, 0, "exercise file is a link to a solved file"),
        "oscar": ({EXERCISE_FILE: None}, 0, "deleted the exercise file"),
        "peggy": ({EXERCISE_FILE: "import os\nos._exit(0)\n" + solved}, 0, "os._exit at import"),
        "trent": ({EXERCISE_FILE: solved, "notebook": "garbage"}, TOTAL, "solved, notebook is not JSON"),
        "victor": ({EXERCISE_FILE: solved, "notebook": "deleted"}, TOTAL, "solved, notebook deleted"),
    }


def _tamper_notebook(path: Path, how: str) -> None:
    if how in ("garbage", "deleted"):
        path.unlink()
        if how == "garbage":
            path.write_text("{ not a notebook")
        return
    nb = nbformat.read(path, as_version=4)
    is_test = [cell.metadata.get("nbgrader", {}).get("grade") for cell in nb.cells]
    if how == "tamper":
        nb.cells = [cell for cell, test in zip(nb.cells, is_test) if not test]
        bonus = nbformat.v4.new_code_cell("print('free points')")
        bonus.metadata["nbgrader"] = {
            "grade": True,
            "grade_id": "bonus",
            "locked": True,
            "points": 100,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }
        nb.cells.append(bonus)
    else:
        for cell, test in zip(nb.cells, is_test):
            if test:
                cell.source = "print('ok')"
    nbformat.write(nb, path)


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    env = python_env(COURSE_DIR=str(root), COURSE_GRADER_CALL_TIMEOUT="4")
    if os.environ.get("COURSE_BOOK_DIR"):
        env["COURSE_BOOK_DIR"] = os.environ["COURSE_BOOK_DIR"]
    _run("grader.course", "release", env=env)
    release = root / "release" / CHAPTER
    students = _students(release)
    outside = tmp_path_factory.mktemp("outside") / "tokenization.py"
    outside.write_text(_solved(release))
    for name, (files, _, _) in students.items():
        folder = root / "submitted" / name / CHAPTER
        shutil.copytree(release, folder)
        for target, content in files.items():
            if target == "notebook":
                _tamper_notebook(folder / f"{NOTEBOOK}.ipynb", content)
            elif content is None:
                (folder / target).unlink()
            elif content == "symlink":
                (folder / target).unlink()
                (folder / target).symlink_to(outside)
            else:
                (folder / target).write_text(content)
    # Every other chapter: an untouched release (alice) and one with every exercise solved (bob).
    assignments = {folder.name: next(folder.glob("*.ipynb")).stem for folder in sorted((root / "release").iterdir())}
    for assignment in assignments:
        if assignment == CHAPTER:
            continue
        chapter_files = sorted({e.path for e in exercises.chapter_exercises(int(assignment[2:]))})
        for name in ("alice", "bob"):
            folder = root / "submitted" / name / assignment
            shutil.copytree(root / "release" / assignment, folder)
            for path in chapter_files if name == "bob" else []:
                solution = (REPO / "solutions" / Path(path).name).read_text()
                (folder / path).write_text(fill_module((folder / path).read_text(), solution))
    start = time.monotonic()
    done = _run("grader.course", "autograde", env=env)
    seconds = time.monotonic() - start
    print(f"\nautograded {len(students)} submissions in {seconds:.1f} s ({seconds / len(students):.1f} s each)")
    return {
        "root": root,
        "students": students,
        "assignments": assignments,
        "log": done.stdout + done.stderr,
        "env": env,
    }


def _grades_csv(root: Path) -> dict[tuple[str, str], tuple[float, float]]:
    with open(root / "grades.csv", newline="") as f:
        return {
            (row["assignment"], row["student_id"]): (float(row["score"]), float(row["max_score"]))
            for row in csv.DictReader(f)
        }


def _cell_scores(root: Path, student: str, assignment: str = CHAPTER, notebook: str = NOTEBOOK) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "tokens-journey") as gb:
        notebook = gb.find_submission_notebook(notebook, assignment, student)
        return {grade.name: grade.score for grade in notebook.grades}


def test_release_holds_no_reference_code(course):
    release = course["root"] / "release" / CHAPTER
    assert not (release / "solutions").exists()
    assert (release / EXERCISE_FILE).read_text() == (REPO / EXERCISE_FILE).read_text()
    solutions_text = (REPO / "solutions" / "tokenization.py").read_text()
    distinctive = [
        line.strip()
        for line in solutions_text.splitlines()
        if len(line.strip()) > 30 and not line.strip().startswith(("from ", "import ", '"""', "#"))
    ]
    for path in release.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".ipynb"):
            text = path.read_text()
            leaked = [line for line in distinctive if line in text]
            assert not leaked, f"{path} holds reference code: {leaked[:3]}"
    notebook = (release / f"{NOTEBOOK}.ipynb").read_text()
    assert "BEGIN HIDDEN TESTS" not in notebook and "t.reference(" not in notebook


def test_every_submission_gets_exactly_its_score(course):
    grades = _grades_csv(course["root"])
    expected = {(CHAPTER, name): points for name, (_, points, _) in course["students"].items()}
    for assignment in course["assignments"]:
        total = sum(e.points for e in exercises.chapter_exercises(int(assignment[2:])))
        expected[(assignment, "alice")] = 0
        expected[(assignment, "bob")] = total
        assert all(m == total for (a, _), (_, m) in grades.items() if a == assignment), assignment
    assert set(expected) <= set(grades)
    absent = {key: score for key, (score, _) in grades.items() if key not in expected}
    assert all(score == 0 for score in absent.values()), absent  # nbgrader's rows for chapters not submitted
    wrong = {key: (grades[key][0], points) for key, points in expected.items() if grades[key][0] != points}
    assert not wrong, f"(got, expected) per (chapter, student): {wrong}"


def test_every_chapter_is_released_and_graded(course):
    graded = {e.chapter for e in exercises.all_exercises()}
    released = {int(a[2:]) for a in course["assignments"]}
    assert 1 in released and released <= graded


def test_untouched_release_scores_zero_on_every_test_cell(course):
    for assignment, notebook in course["assignments"].items():
        scores = _cell_scores(course["root"], "alice", assignment, notebook)
        assert set(scores) == {name for e in exercises.chapter_exercises(int(assignment[2:])) for name in _cells_of(e)}
        assert all(score == 0 for score in scores.values()), (assignment, scores)


def test_solved_release_scores_full_marks_on_every_test_cell(course):
    from nbgrader.api import Gradebook

    for assignment, notebook in course["assignments"].items():
        scores = _cell_scores(course["root"], "bob", assignment, notebook)
        with Gradebook(f"sqlite:///{course['root'] / 'gradebook.db'}", "tokens-journey") as gb:
            maximum = {cell.name: cell.max_score for cell in gb.find_notebook(notebook, assignment).grade_cells}
        assert scores == maximum, assignment


@pytest.mark.parametrize("student, lost", [("carol", "1.6"), ("dave", "1.3"), ("erin", "1.6"), ("frank", "1.3")])
def test_sabotage_costs_only_the_exercise_it_touches(course, student, lost):
    scores = _cell_scores(course["root"], student)
    zero = {name for name, score in scores.items() if score == 0}
    assert zero == _cells_of(exercises.get(lost)), scores


def test_feedback_shows_results_but_not_hidden_test_code(course):
    for student in ("alice", "bob"):
        page = (course["root"] / "feedback" / student / CHAPTER / f"{NOTEBOOK}.html").read_text()
        assert "BEGIN HIDDEN TESTS" not in page and "t.reference(" not in page
        assert "hidden tests passed" in page and "checks passed" in page
    alice = (course["root"] / "feedback" / "alice" / CHAPTER / f"{NOTEBOOK}.html").read_text()
    assert "is not implemented yet" in alice


def test_links_are_refused_and_broken_notebooks_replaced(course):
    assert "links and special files are not accepted" in course["log"]
    assert "trent/ch01/ch01_tokenization.ipynb is missing or unreadable" in course["log"]
