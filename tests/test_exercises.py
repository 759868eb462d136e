"""The exercise mechanism: the registry, the solutions switch, the stubs, the visible checks, the
filled-in release and the chapter notebooks' graded cells.

The suite runs with COURSE_LIB_SOLUTIONS=1; tests of the learner's starting state use ``stubs``.
"""

from __future__ import annotations

import ast
import operator
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO, python_env
from course_lib import exercises
from course_lib.grading import ExerciseFailed, run_checks
from grader.fill import fill_module

ALL = exercises.all_exercises()
IDS = [e.id for e in ALL]
EXERCISE_FILE = REPO / "course_lib" / "tokenization.py"
SOLUTION_FILE = REPO / "solutions" / "tokenization.py"
MODULES = sorted({e.module for e in ALL})  # every course_lib module that holds exercises


def _exercise_file(module: str) -> Path:
    return REPO / "course_lib" / f"{module}.py"


def _plausible_call(entry: exercises.Exercise):
    """(callable, args) that exercise ``entry`` with arguments its docstring allows."""
    from course_lib.tokenization import BPETokenizer

    if entry.module == "embeddings":  # Chapter 2: methods are called on small instances
        import torch

        from course_lib import embeddings

        ids = torch.tensor([[1, 2, 3]])
        return {
            "TokenEmbedding.forward": (embeddings.TokenEmbedding(10, 4).forward, (ids,)),
            "sinusoidal_positions": (exercises.implementation(entry), (4, 8)),
            "InputEmbedding.forward": (embeddings.InputEmbedding(10, 4, 8).forward, (ids,)),
        }[entry.qualname]

    if entry.module == "attention":  # Chapter 3: the forward method is called on a small layer
        import torch

        from course_lib import attention

        qkv = torch.ones(1, 3, 4)
        return {
            "scaled_dot_product_attention": (exercises.implementation(entry), (qkv, qkv, qkv)),
            "causal_mask": (exercises.implementation(entry), (3,)),
            "MultiHeadAttention.forward": (attention.MultiHeadAttention(4, 2).forward, (qkv,)),
        }[entry.qualname]

    if entry.module in ("layers", "block"):  # Chapter 4: functions, and forward methods of small layers
        import torch

        from course_lib import block, layers

        x = torch.ones(1, 3, 4)
        return {
            "LayerNorm.forward": (layers.LayerNorm(4).forward, (x,)),
            "gelu": (exercises.implementation(entry), (x,)),
            "FeedForward.forward": (layers.FeedForward(4).forward, (x,)),
            "TransformerBlock.forward": (block.TransformerBlock(4, 2).forward, (x,)),
        }[entry.qualname]

    if entry.module in ("gpt", "training", "sampling"):  # Chapter 5: a tiny GPT, its loss, a step, sampling
        import torch

        from course_lib import gpt, sampling, training

        model = gpt.GPT(gpt.GPTConfig(vocab_size=11, context_length=4, d_model=8, n_layers=1, n_heads=2))
        ids, logits = torch.tensor([[1, 2, 3]]), torch.zeros(1, 3, 11)
        return {
            "GPT.forward": (model.forward, (ids,)),
            "count_parameters": (exercises.implementation(entry), (model.config,)),
            "cross_entropy_loss": (exercises.implementation(entry), (logits, ids)),
            "train_step": (exercises.implementation(entry), (model, training.make_optimizer(model), ids, ids)),
            "next_token_probs": (exercises.implementation(entry), (logits[:, -1],)),
            "generate": (exercises.implementation(entry), (model, ids, 2)),
        }[entry.qualname]

    single_bytes = {bytes([b]): b for b in range(256)}
    calls = {
        "pretokenize": ("Hello world!!! It's 2024.",),
        "merge_pair": ([1, 2, 3, 1, 2], (1, 2), 99),
        "train_bpe": ("aaabdaaabac", 259),
        "bpe_encode_piece": (b"abcab", single_bytes | {b"ab": 256, b"abc": 257}),
        "BPETokenizer.encode": ("hello world",),
        "BPETokenizer.decode": ([104, 105],),
    }
    if entry.qualname not in calls:
        pytest.fail(f"add plausible arguments for Exercise {entry.id} ({entry.qualname}) to this test")
    if "." in entry.qualname:  # a method: call it on an instance
        owner, _, name = entry.qualname.rpartition(".")
        assert owner == "BPETokenizer", f"add an instance of {owner} to this test"
        fn = getattr(BPETokenizer.from_merges([(104, 105)]), name)
    else:
        fn = exercises.implementation(entry)
    return fn, calls[entry.qualname]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=python_env(**env), capture_output=True, text=True, timeout=180
    )


def _copy_course_lib(into: Path) -> Path:
    shutil.copytree(REPO / "course_lib", into / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    return into


# -- the stubs and the switch ---------------------------------------------------------------


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_raises_its_not_implemented_message(stubs, exercise_id):
    entry = exercises.get(exercise_id)
    fn, args = _plausible_call(entry)
    with pytest.raises(NotImplementedError) as info:
        fn(*args)
    assert str(info.value) == entry.not_implemented_message()


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_runs_when_the_switch_is_on(references, exercise_id):
    entry = exercises.get(exercise_id)
    fn, args = _plausible_call(entry)
    fn(*args)  # no NotImplementedError: the call went to solutions/


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
    out = capsys.readouterr().out
    assert out.startswith(f"Exercise {exercise_id} — ")
    assert "✗" not in out


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_fails_visible_checks(stubs, exercise_id, capsys):
    with pytest.raises(ExerciseFailed, match=rf"^Exercise {re.escape(exercise_id)}: "):
        run_checks(exercise_id)
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
        module: fill_module(_exercise_file(module).read_text(encoding="utf-8"),
                            (REPO / "solutions" / f"{module}.py").read_text(encoding="utf-8"))
        for module in MODULES
    }  # fmt: skip


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
        ["-c", "import importlib.util, course_lib.tokenization as m; print(m.__file__); print(importlib.util.find_spec('solutions'))"],
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
    assert IDS == sorted(IDS, key=lambda i: tuple(map(int, i.split("."))))
    assert exercises.package_root() == REPO
    with pytest.raises(KeyError, match="9.9"):
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
HIDDEN_REGION = re.compile(r"### BEGIN HIDDEN TESTS\n(.*)\n### END HIDDEN TESTS", re.DOTALL)


def _run_checks_calls(source: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run_checks"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS or [pytest.param(None, marks=pytest.mark.skip(reason="no chapter notebook yet"))],
                         ids=lambda p: p.name if p else "none")  # fmt: skip
def test_chapter_notebook_graded_cells(path):
    chapter = int(path.name[2:4])
    nb = nbformat.read(path, as_version=4)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "grade_id" in c.metadata.get("nbgrader", {})]
    assert len(ids) == len(set(ids)), "duplicate grade_ids"
    for cell in nb.cells:
        assert "### BEGIN SOLUTION" not in cell.source and "### END SOLUTION" not in cell.source

    entries = exercises.chapter_exercises(chapter)
    assert entries, f"{path.name}: no exercises registered for chapter {chapter}"
    expected_ids = set()
    for entry in entries:
        key = f"ex{chapter}_{entry.number}"
        visible = [c for c in graded if c.metadata["nbgrader"]["grade_id"] == f"{key}_visible"]
        hidden = [c for c in graded if c.metadata["nbgrader"]["grade_id"] == f"{key}_hidden"]
        assert len(visible) == 1 and len(hidden) == 1, f"Exercise {entry.id}: one visible and one hidden cell"
        visible, hidden = visible[0], hidden[0]
        expected_ids |= {f"{key}_visible", f"{key}_hidden"}

        for cell in (visible, hidden):
            meta = cell.metadata["nbgrader"]
            assert cell.cell_type == "code"
            assert meta["grade"] is True and meta["solution"] is False
            assert type(meta["points"]) is int and meta["points"] >= 1
        assert visible.metadata["nbgrader"]["points"] == 1
        assert visible.metadata["nbgrader"]["points"] + hidden.metadata["nbgrader"]["points"] == entry.points

        assert "HIDDEN TESTS" not in visible.source
        [call] = _run_checks_calls(visible.source)
        assert len(call.args) == 1 and isinstance(call.args[0], ast.Constant) and call.args[0].value == entry.id
        assert not call.keywords

        assert "remove-cell" in hidden.metadata.get("tags", [])
        region = HIDDEN_REGION.search(hidden.source)
        assert region, f"Exercise {entry.id}: hidden cell without a BEGIN/END HIDDEN TESTS region"
        assert hidden.source.count("### BEGIN HIDDEN TESTS") == 1
        calls = _run_checks_calls(region.group(1))
        assert len(calls) == 1 and len(_run_checks_calls(hidden.source)) == 1, "one run_checks call, inside the region"
        call = calls[0]
        assert isinstance(call.args[0], ast.Constant) and call.args[0].value == entry.id
        assert len(call.args) == 2 and isinstance(call.args[1], ast.List) and call.args[1].elts
        assert [(k.arg, getattr(k.value, "value", None)) for k in call.keywords] == [("hidden", True)]

    assert set(c.metadata["nbgrader"]["grade_id"] for c in graded) == expected_ids, "graded cells beyond the exercises'"


# -- device, seeding and the progress command ------------------------------------------------------


def test_device(monkeypatch):
    import torch

    import course_lib

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
    import random

    import numpy
    import torch

    import course_lib

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
    from grader.judge import stage_package
    from grader.fill import fill_module

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
    filled = fill_module((REPO / "course_lib" / "tokenization.py").read_text(), (REPO / "solutions" / "tokenization.py").read_text())
    assert (staged_later / "course_lib" / "tokenization.py").read_text() == filled


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
        assert (staged / "course_lib" / "tokenization.py").read_text() == (REPO / "course_lib" / "tokenization.py").read_text()
