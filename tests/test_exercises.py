"""The exercise mechanism: the registry, the solutions switch, the stubs, the visible checks, the
filled-in release and the chapter notebooks' graded cells.

The suite runs with COURSE_LIB_SOLUTIONS=1; tests of the learner's starting state use ``stubs``.
"""

from __future__ import annotations

from course_lib import exercises
from course_lib.grading import ExerciseFailed, run_checks, visible_checks

import ast
import inspect
import operator
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, python_env

from grader import cells
from grader.fill import fill_module
from hidden import hidden_tests, run_hidden

ALL = exercises.all_exercises()
IDS = [e.id for e in ALL]
EXERCISE_FILE = REPO / "course_lib" / "tokenization.py"
SOLUTION_FILE = REPO / "solutions" / "tokenization.py"
MODULES = sorted({e.module for e in ALL})  # every course_lib module that holds exercises


def _exercise_file(module: str) -> Path:
    return REPO / "course_lib" / f"{module}.py"


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=python_env(**env), capture_output=True, text=True, timeout=180
    )


def _copy_course_lib(into: Path) -> Path:
    shutil.copytree(REPO / "course_lib", into / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    return into


# -- the stubs and the switch ---------------------------------------------------------------


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_a_bare_raise_and_its_message_comes_from_the_registry(exercise_id):
    entry = exercises.get(exercise_id)
    stub = exercises.implementation(entry).__wrapped__
    node = _function_node(_exercise_file(entry.module).read_text(encoding="utf-8"), entry.qualname)
    body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert [ast.unparse(n) for n in body] == ["raise NotImplementedError"], f"Exercise {entry.id}: the stub's body"
    assert exercises._is_the_stub(_raised_by(stub), stub)


def _function_node(source: str, qualname: str):
    body = ast.parse(source).body
    for name in qualname.split("."):
        node = next(n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
        body = node.body
    return node


def _raised_by(stub) -> NotImplementedError:
    """What a stub raises when called (its arguments never matter: it raises before using them)."""
    args = [None] * stub.__code__.co_argcount
    with pytest.raises(NotImplementedError) as info:
        stub(*args)
    return info.value


def test_a_bare_stub_says_which_exercise_it_is_and_other_errors_pass_through(stubs, scratch_registry):
    def stub(x):
        raise NotImplementedError

    def deeper(x):
        return stub(x)

    def with_a_message(x):
        raise NotImplementedError("the learner's own words")

    for fn in (stub, deeper, with_a_message):
        fn.__module__ = "course_lib.tokenization"
    wrapped = exercises.exercise("97.1", "Bare", points=2)(stub)
    with pytest.raises(NotImplementedError, match=r"^Exercise 97\.1 — `.*stub` in course_lib/tokenization\.py is not"):
        wrapped(1)
    for i, fn in enumerate((deeper, with_a_message), start=2):
        wrapped = exercises.exercise(f"97.{i}", "Other", points=2)(fn)
        with pytest.raises(NotImplementedError) as info:
            wrapped(1)
        assert not str(info.value).startswith("Exercise 97")


def test_switch_is_read_at_call_time(monkeypatch):
    from course_lib.tokenization import merge_pair

    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "1")
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "0")
    with pytest.raises(NotImplementedError):
        merge_pair([1, 2], (1, 2), 3)
    monkeypatch.delenv(exercises.SOLUTIONS_ENV)
    with pytest.raises(NotImplementedError):
        merge_pair([1, 2], (1, 2), 3)


@pytest.mark.parametrize("value", ["2", "true", "yes", " 1"])
def test_a_bad_switch_value_names_the_variable(monkeypatch, value):
    from course_lib.tokenization import merge_pair

    monkeypatch.setenv(exercises.SOLUTIONS_ENV, value)
    with pytest.raises(ValueError, match=exercises.SOLUTIONS_ENV):
        merge_pair([1, 2], (1, 2), 3)


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes_visible_checks(references, exercise_id, capsys):
    run_checks(exercise_id)
    if visible_checks(exercise_id, inputs=True):
        run_checks(exercise_id, inputs=True)
    out = capsys.readouterr().out
    assert out.startswith(f"Exercise {exercise_id} — ")
    assert "✗" not in out


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_fails_visible_checks(stubs, exercise_id, capsys):
    with pytest.raises(ExerciseFailed, match=rf"^Exercise {re.escape(exercise_id)}: "):
        run_checks(exercise_id)
    if visible_checks(exercise_id, inputs=True):
        with pytest.raises(ExerciseFailed, match=rf"^Exercise {re.escape(exercise_id)}: "):
            run_checks(exercise_id, inputs=True)
    out = capsys.readouterr().out
    assert exercises.get(exercise_id).not_implemented_message() in out
    assert "✓" not in out  # no visible check passes on a stub


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_exercise_has_a_reference_that_is_not_the_stub(exercise_id):
    entry = exercises.get(exercise_id)
    ref = exercises.reference(entry)
    stub = exercises.implementation(entry)
    assert callable(ref)
    assert ref is not stub and ref is not stub.__wrapped__
    assert ref.__module__ == f"solutions.{entry.module}"
    assert ref.__qualname__ == entry.qualname
    assert not hasattr(ref, "exercise")  # the reference is not itself a registered exercise


# -- the filled-in release ------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled_source() -> dict[str, str]:
    """Each exercise module with the reference bodies filled in, by module name."""
    return {
        module: fill_module(
            _exercise_file(module).read_text(encoding="utf-8"),
            (REPO / "solutions" / f"{module}.py").read_text(encoding="utf-8"),
        )
        for module in MODULES
    }


def _docstrings(source: str) -> dict[str, str | None]:
    found = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[prefix + node.name] = ast.get_docstring(node, clean=False)
            if isinstance(node, ast.ClassDef):  # methods, not the helpers nested in a body
                visit(node.body, f"{prefix}{node.name}.")

    tree = ast.parse(source)
    found["<module>"] = ast.get_docstring(tree, clean=False)
    visit(tree.body, "")
    return found


def test_filled_module_keeps_every_docstring_and_implements_every_exercise(filled_source):
    for module, filled in filled_source.items():
        stub_docs = _docstrings(_exercise_file(module).read_text(encoding="utf-8"))
        filled_docs = _docstrings(filled)
        assert filled_docs == stub_docs  # same functions and classes, same docstrings
        for entry in ALL:
            if entry.module == module:
                assert stub_docs[entry.qualname], f"Exercise {entry.id} has no docstring (its docstring is the spec)"
        assert "not implemented yet" not in filled
        assert "NotImplementedError" not in filled


def test_filled_release_passes_every_visible_check_without_solutions(tmp_path, filled_source):
    folder = _copy_course_lib(tmp_path)
    for module, filled in filled_source.items():
        (folder / "course_lib" / f"{module}.py").write_text(filled, encoding="utf-8")
    where = _run(
        [
            "-c",
            "import importlib.util, course_lib.tokenization as m; "
            "print(m.__file__); print(importlib.util.find_spec('solutions'))",
        ],
        folder,
        PYTHONPATH=str(folder),
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(folder / "course_lib" / "tokenization.py"), "None"]

    done = _run(["-m", "course_lib", "progress"], folder, PYTHONPATH=str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    for entry in ALL:
        assert f"[x] {entry.id}" in done.stdout
    assert f"{len(ALL)}/{len(ALL)} exercises pass" in done.stdout


def test_untouched_release_fails_its_visible_checks(tmp_path):
    folder = _copy_course_lib(tmp_path)
    done = _run(["-m", "course_lib", "progress"], folder, PYTHONPATH=str(folder))
    assert done.returncode == 1, done.stdout + done.stderr
    for entry in ALL:
        assert f"[ ] {entry.id}" in done.stdout
    assert f"0/{len(ALL)} exercises pass" in done.stdout


def test_course_lib_imports_where_solutions_is_not_importable(tmp_path):
    folder = _copy_course_lib(tmp_path)
    program = (
        "import importlib, importlib.util, course_lib\n"
        "from course_lib import exercises\n"
        "assert importlib.util.find_spec('solutions') is None\n"
        "for name in exercises.EXERCISE_MODULES:\n"
        "    importlib.import_module('course_lib.' + name)\n"
        "import course_lib.grading, course_lib.data, course_lib.__main__\n"
        "for e in exercises.all_exercises():\n"
        "    importlib.import_module(f'course_lib.checks.ch{e.chapter:02d}')\n"
        "print(course_lib.__file__)\n"
        "print(' '.join(e.id for e in exercises.all_exercises()))\n"
    )
    done = _run(["-c", program], folder, PYTHONPATH=str(folder))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(folder / "course_lib" / "__init__.py"), " ".join(IDS)]

    # With the switch on but no solutions/, a call explains itself instead of failing obscurely.
    call = "from course_lib.tokenization import merge_pair\nmerge_pair([1, 2], (1, 2), 3)"
    done = _run(["-c", call], folder, PYTHONPATH=str(folder), COURSE_LIB_SOLUTIONS="1")
    assert done.returncode == 1
    assert "RuntimeError" in done.stderr and "COURSE_LIB_SOLUTIONS" in done.stderr and "solutions" in done.stderr


# -- the registry ------------------------------------------------------------------------------


def test_registry_ids_numbers_points_and_paths():
    assert ALL, "no exercises registered"
    assert len(set(IDS)) == len(IDS)
    assert len({(e.module, e.qualname) for e in ALL}) == len(ALL)
    for entry in ALL:
        assert re.fullmatch(r"[1-9][0-9]*\.[1-9][0-9]*", entry.id), entry.id
        assert type(entry.points) is int and entry.points > 0
        assert entry.module in exercises.EXERCISE_MODULES
        assert entry.title and entry.title == entry.title.strip()
        assert (exercises.package_root() / entry.path).is_file()
        assert exercises.get(entry.id) is entry
    chapters = sorted({e.chapter for e in ALL})
    assert chapters == list(range(1, len(chapters) + 1))
    for chapter in chapters:
        numbers = [e.number for e in exercises.chapter_exercises(chapter)]
        assert numbers == list(range(1, len(numbers) + 1)), f"chapter {chapter}: {numbers}"
    assert sorted(IDS, key=lambda i: tuple(map(int, i.split(".")))) == IDS
    assert exercises.package_root() == REPO
    with pytest.raises(KeyError, match=r"9\.9"):
        exercises.get("9.9")


@pytest.mark.parametrize("exercise_id", IDS)
def test_decorated_function_keeps_its_name_doc_and_entry(exercise_id):
    entry = exercises.get(exercise_id)
    fn = exercises.implementation(entry)
    assert fn.__name__ == entry.qualname.rpartition(".")[2]
    assert fn.__qualname__ == entry.qualname
    assert fn.__doc__ == _docstrings(_exercise_file(entry.module).read_text(encoding="utf-8"))[entry.qualname]
    assert fn.exercise is entry
    assert operator.attrgetter(entry.qualname)(sys.modules[f"course_lib.{entry.module}"]) is fn


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a test that registers exercises cannot leak them."""
    copy = dict(exercises.REGISTRY)
    monkeypatch.setattr(exercises, "REGISTRY", copy)
    return copy


def test_registering_another_function_under_a_taken_id_raises(scratch_registry):
    before = dict(scratch_registry)

    def impostor():
        pass

    with pytest.raises(ValueError, match=r"1\.1 is registered twice"):
        exercises.exercise("1.1", "Impostor", points=1)(impostor)
    assert scratch_registry == before

    # Registering the same function again (a module reload) is allowed.
    def pretokenize():
        pass

    pretokenize.__module__, pretokenize.__qualname__ = "course_lib.tokenization", "pretokenize"
    exercises.exercise("1.1", before["1.1"].title, points=before["1.1"].points)(pretokenize)
    assert scratch_registry == before


def test_a_new_exercise_registers_and_wraps(scratch_registry, monkeypatch):
    def brand_new(x):
        """Doc."""
        return x + 1

    brand_new.__qualname__ = "brand_new"
    wrapped = exercises.exercise("99.1", "New", points=3)(brand_new)
    entry = scratch_registry["99.1"]
    assert (entry.chapter, entry.number, entry.points, entry.qualname) == (99, 1, 3, "brand_new")
    assert wrapped.exercise is entry and wrapped.__doc__ == "Doc." and wrapped.__name__ == "brand_new"
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "0")
    assert wrapped(1) == 2


@pytest.mark.parametrize("bad_id", ["1", "1.", ".1", "a.1", "1.b", "1.2.3", "", "1,1", " 1.1", "1.1 ", "-1.1"])
def test_bad_ids_raise(scratch_registry, bad_id):
    with pytest.raises(ValueError, match="exercise id"):
        exercises.exercise(bad_id, "Bad", points=1)


@pytest.mark.parametrize("bad_points", [0, -1, 1.5, 2.0, "2", None])
def test_bad_points_raise(scratch_registry, bad_points):
    with pytest.raises(ValueError, match="points"):
        exercises.exercise("98.1", "Bad", points=bad_points)


# -- the chapter notebooks --------------------------------------------------------------------

NOTEBOOKS = sorted((REPO / "book").glob("ch[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_notebook_graded_cells_come_from_the_registry(path):
    nb = nbformat.read(path, as_version=4)
    problems = cells.derive(nb, cells.chapter_of(path))
    assert not problems, "\n".join(problems)
    assert nbformat.writes(nb) + "\n" == path.read_text(encoding="utf-8"), (
        f"{path.name}: its graded cells disagree with the registry; run `{cells.COMMAND} book/{path.name}`"
    )
    chapter = cells.chapter_of(path)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert sum(c.metadata["nbgrader"]["points"] for c in graded) == sum(
        e.points for e in exercises.chapter_exercises(chapter)
    )
    for cell in nb.cells:
        assert "### BEGIN SOLUTION" not in cell.source


@pytest.mark.parametrize("chapter", sorted({e.chapter for e in exercises.all_exercises()}))
def test_input_checks_carry_at_most_a_tenth_of_a_chapter(chapter):
    """Points reward the idea: clear errors for bad input are graded apart, for a tenth at most."""
    path = next(p for p in NOTEBOOKS if cells.chapter_of(p) == chapter)
    nb = nbformat.read(path, as_version=4)
    points = {
        c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"]
        for c in nb.cells
        if c.metadata.get("nbgrader")
    }
    total = sum(points.values())
    inputs = sum(value for key, value in points.items() if key.endswith("_inputs"))
    assert inputs <= 0.1 * total + 1e-9, f"Chapter {chapter}: input checks carry {inputs} of {total} points"
    for entry in exercises.chapter_exercises(chapter):
        has = any(cells.has_input_checks(entry))
        assert (f"ex{chapter}_{entry.number}_inputs" in points) == has, entry.id


def _raises_input_error(check) -> bool:
    """Whether a check's source expects a ValueError: the mark of a check of input validation."""
    return "t.raises(ValueError" in inspect.getsource(check)


@pytest.mark.parametrize("exercise_id", IDS)
def test_checks_of_the_idea_do_not_test_input_validation(exercise_id):
    """A ValueError check must be marked ``inputs=True`` (graded apart) unless the error is the idea
    itself (listed here with why)."""
    idea_errors = {
        ("1.5", "handles_special_tokens_like_tiktoken"),  # tiktoken's contract for disallowed special tokens
        ("1.5", "special_tokens_cl100k"),
        ("1.5", "special_tokens_as_lists_and_tuples"),
        ("1.5", "an_explicit_disallowed_collection"),
    }
    checks = visible_checks(exercise_id) + hidden_tests(exercise_id)
    unmarked = [c.__name__ for c in checks if _raises_input_error(c) and (exercise_id, c.__name__) not in idea_errors]
    assert not unmarked, f"Exercise {exercise_id}: mark these inputs=True or make them test the idea: {unmarked}"


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_reference_passes_every_input_check(references, exercise_id, capsys):
    if hidden_tests(exercise_id, inputs=True):
        run_hidden(exercise_id, inputs=True)
    assert "✗" not in capsys.readouterr().out


def test_the_cells_command_writes_the_cells_and_names_what_is_missing(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('run_checks("3.1")'), nbformat.v4.new_code_cell("run_hidden('3.1')")]
    problems = cells.derive(nb, 3)
    visible, hidden = nb.cells[:2]
    assert visible.metadata["nbgrader"]["grade_id"] == "ex3_1_visible" and visible.metadata["nbgrader"]["points"] == 1
    assert hidden.metadata["nbgrader"]["points"] == exercises.get("3.1").points - 1 - cells.input_points(
        exercises.get("3.1")
    )
    assert hidden.metadata["tags"] == ["remove-cell"] and "### BEGIN HIDDEN TESTS" in hidden.source
    # 3.1 has input checks: their cell is derived, right after the hidden cell
    inputs = nb.cells[2]
    assert inputs.metadata["nbgrader"]["grade_id"] == "ex3_1_inputs"
    assert 'run_checks("3.1", inputs=True)' in inputs.source and 'run_hidden("3.1", inputs=True)' in inputs.source
    assert "### BEGIN HIDDEN TESTS" in inputs.source and inputs.metadata["tags"] == ["remove-cell"]
    cells.derive(nb, 3)  # deriving again changes nothing (no second input cell)
    assert len(nb.cells) == 3 and nb.cells[2].source == inputs.source
    assert 'Exercise 3.2 has no visible cell: add a code cell calling run_checks("3.2")' in problems
    path = tmp_path / "ch03_x.ipynb"
    nbformat.write(nb, path)
    assert cells.main(["--check", str(path)]) == 1


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_exercise_has_hidden_tests_the_reference_passes_and_the_stub_fails(exercise_id, monkeypatch, capsys):
    tests = hidden_tests(exercise_id)
    assert tests and all((t.__doc__ or "").strip() for t in tests), "every hidden test has a docstring: its name"
    monkeypatch.setenv(exercises.SOLUTIONS_ENV, "0")
    with pytest.raises(ExerciseFailed):
        run_hidden(exercise_id)
    assert "✓" not in capsys.readouterr().out  # no hidden test passes on a stub


# -- device, seeding and the progress command ------------------------------------------------------


def test_device(monkeypatch):
    import course_lib

    import torch

    monkeypatch.delenv("COURSE_LIB_DEVICE", raising=False)
    found = course_lib.device()
    assert isinstance(found, torch.device)
    assert found.type in ("cuda", "mps", "cpu")
    if torch.cuda.is_available():
        assert found.type == "cuda"
    monkeypatch.setenv("COURSE_LIB_DEVICE", "cpu")
    assert course_lib.device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_LIB_DEVICE", "meta")  # a device no machine would pick by itself
    assert course_lib.device() == torch.device("meta")


def test_seed_everything_makes_runs_reproducible():
    import course_lib

    import random

    import numpy
    import torch

    def draw():
        return torch.rand(8), random.random(), numpy.random.rand(3)

    course_lib.seed_everything(3)
    first = draw()
    course_lib.seed_everything(3)
    second = draw()
    course_lib.seed_everything(4)
    third = draw()
    assert torch.equal(first[0], second[0]) and first[1] == second[1] and (first[2] == second[2]).all()
    assert not torch.equal(first[0], third[0]) and first[1] != third[1]


def test_progress_on_stubs_and_on_references():
    stub = _run(["-m", "course_lib", "progress", "--chapter", "1"], REPO, COURSE_LIB_SOLUTIONS="0")
    assert stub.returncode == 1, stub.stdout + stub.stderr
    assert "[ ] 1.1" in stub.stdout and "[x]" not in stub.stdout

    ref = _run(["-m", "course_lib", "progress", "--chapter", "1"], REPO, COURSE_LIB_SOLUTIONS="1")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert "[x] 1.6" in ref.stdout and "[ ]" not in ref.stdout
    chapter_one = exercises.chapter_exercises(1)
    assert f"{len(chapter_one)}/{len(chapter_one)} exercises pass" in ref.stdout
    assert f"{sum(e.points for e in chapter_one)} points in all" in ref.stdout


@pytest.mark.parametrize("bad_id", ["².1", "١.١", "0.1", "1.0", "1", "1.2.3", 1.2])
def test_exercise_ids_must_be_ascii_chapter_dot_number(bad_id):
    with pytest.raises(ValueError, match="exercise id"):
        exercises.exercise(bad_id, "t", points=1)


@pytest.mark.parametrize("bad_points", [0, -1, True, 1.5])
def test_points_must_be_a_positive_int(bad_points):
    with pytest.raises(ValueError, match="points"):
        exercises.exercise("9.9", "t", points=bad_points)


def test_the_grader_completes_earlier_chapters_and_takes_only_this_chapters_files(tmp_path):
    """Grading chapter N uses the submission's chapter-N files, references for earlier chapters'
    modules, and the stubs for later ones; nothing else from the submission."""
    from grader.fill import fill_module
    from grader.judge import stage_package

    submission = tmp_path / "submission"
    shutil.copytree(REPO / "course_lib", submission / "course_lib")
    (submission / "course_lib" / "tokenization.py").write_text("# the learner's file\n")
    (submission / "course_lib" / "grading.py").write_text("# a tampered harness\n")
    (submission / "course_lib" / "extra.py").write_text("# a file the learner added\n")
    staged = tmp_path / "staged"
    assert stage_package(1, submission, staged) == ["course_lib/tokenization.py"]
    assert (staged / "course_lib" / "tokenization.py").read_text() == "# the learner's file\n"
    assert (staged / "course_lib" / "grading.py").read_text() == (REPO / "course_lib" / "grading.py").read_text()
    assert not (staged / "course_lib" / "extra.py").exists()

    later = max(e.chapter for e in exercises.all_exercises()) + 1
    staged_later = tmp_path / "later"
    assert stage_package(later, submission, staged_later) == []
    filled = fill_module(
        (REPO / "course_lib" / "tokenization.py").read_text(), (REPO / "solutions" / "tokenization.py").read_text()
    )
    assert (staged_later / "course_lib" / "tokenization.py").read_text() == filled


def test_a_file_shared_by_two_chapters_is_the_learners_with_the_earlier_chapter_completed(tmp_path, monkeypatch):
    """Chapter 6 adds exercises to Chapter 4's layers.py: grading Chapter 6 takes the learner's file
    but fills in the references of Chapter 4's exercises in it, so Chapter 6 never depends on them."""
    import dataclasses

    from grader.fill import fill_module
    from grader.judge import stage_package

    real = exercises.all_exercises()
    moved = {e.id: dataclasses.replace(e, id="2.9") if e.qualname == "BPETokenizer.decode" else e for e in real}
    monkeypatch.setattr(exercises, "all_exercises", lambda: list(moved.values()))
    submission = tmp_path / "submission"
    shutil.copytree(REPO / "course_lib", submission / "course_lib")
    learner = (submission / "course_lib" / "tokenization.py").read_text() + "# the learner's own line\n"
    (submission / "course_lib" / "tokenization.py").write_text(learner)
    staged = tmp_path / "staged"
    assert "course_lib/tokenization.py" in stage_package(2, submission, staged)
    earlier = {e.qualname for e in moved.values() if e.module == "tokenization" and e.chapter == 1}
    solution = (REPO / "solutions" / "tokenization.py").read_text()
    assert "BPETokenizer.decode" not in earlier and len(earlier) == 5
    assert (staged / "course_lib" / "tokenization.py").read_text() == fill_module(learner, solution, only=earlier)
    (submission / "course_lib" / "tokenization.py").write_text("def broken(:\n")  # does not parse: kept as it is
    assert "course_lib/tokenization.py" in stage_package(2, submission, tmp_path / "broken")
    assert (tmp_path / "broken" / "course_lib" / "tokenization.py").read_text() == "def broken(:\n"


def test_the_grader_never_follows_links_out_of_a_submission(tmp_path):
    from grader.judge import stage_package

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "course_lib", elsewhere / "course_lib")
    (elsewhere / "course_lib" / "tokenization.py").write_text("# not the learner's\n")
    linked_file = tmp_path / "file-link"
    shutil.copytree(REPO / "course_lib", linked_file / "course_lib")
    (linked_file / "course_lib" / "tokenization.py").unlink()
    (linked_file / "course_lib" / "tokenization.py").symlink_to(elsewhere / "course_lib" / "tokenization.py")
    linked_folder = tmp_path / "folder-link"
    linked_folder.mkdir()
    (linked_folder / "course_lib").symlink_to(elsewhere / "course_lib")
    for submission in (linked_file, linked_folder):
        staged = tmp_path / f"staged-{submission.name}"
        assert stage_package(1, submission, staged) == []
        assert (staged / "course_lib" / "tokenization.py").read_text() == (
            REPO / "course_lib" / "tokenization.py"
        ).read_text()
