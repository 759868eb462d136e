"""Write the graded cells of a chapter notebook from the exercise registry (each fact lives once).

    python -m grader.cells book/ch03_attention.ipynb [...]          # rewrite the cells' metadata
    python -m grader.cells --check book/ch03_attention.ipynb [...]  # exit 1 if a notebook disagrees
    python -m grader.cells --outputs book/ch03_attention.ipynb [...]  # and rerun their checks for the outputs

An exercise's id, title and points live in its ``@exercise`` decorator. In the notebook, the
author writes two code cells after the exercise: one calling ``run_checks("N.M")`` (the visible
checks) and one calling ``run_hidden("N.M")`` (the hidden tests in ``hidden/chNN.py``). This
command gives both cells their canonical source and nbgrader metadata: grade ids
``exN_M_visible`` / ``exN_M_hidden``, locked, 1 point for the visible checks and the rest of the
exercise's points for the hidden tests, and the ``remove-cell`` tag that keeps the hidden cell out
of the book. With ``--outputs`` it also runs each graded cell's checks on the references, in this
process, and stores what they print as the cell's output (what nbval compares): after you add or
rename a check, that is the whole update of the notebook.
"""

from __future__ import annotations

from course_lib import exercises

import argparse
import contextlib
import functools
import io
import os
import re
import sys
from pathlib import Path

import nbformat

COMMAND = "python -m grader.cells"
VISIBLE = re.compile(r"""\brun_checks\(\s*["'](\d+\.\d+)["']\s*\)""")
HIDDEN = re.compile(r"""\brun_hidden\(\s*["'](\d+\.\d+)["']\s*\)""")
INPUTS = re.compile(r"""\brun_(?:checks|hidden)\(\s*["'](\d+\.\d+)["']\s*,\s*inputs\s*=\s*True\s*\)""")
VISIBLE_POINTS = 1
#: The share of an exercise's points that its input checks carry (clear errors for bad input):
#: points reward the idea, so a chapter's input checks are worth at most a tenth of it.
INPUT_SHARE = 0.1


def visible_source(entry: exercises.Exercise) -> str:
    return (
        f'# Exercise {entry.id} — visible checks\nfrom course_lib.grading import run_checks\n\nrun_checks("{entry.id}")'
    )


def hidden_source(entry: exercises.Exercise) -> str:
    return (
        f"# Exercise {entry.id} — hidden tests: the grader runs these on your code.\n"
        "### BEGIN HIDDEN TESTS\n"
        "from hidden import run_hidden\n\n"
        f'run_hidden("{entry.id}")\n'
        "### END HIDDEN TESTS"
    )


def input_points(entry: exercises.Exercise) -> float:
    """What the input checks of ``entry`` are worth, when it has any."""
    return round(entry.points * INPUT_SHARE, 1)


def has_input_checks(entry: exercises.Exercise) -> tuple[bool, bool]:
    """Whether ``entry`` has visible input checks, and whether it has hidden ones."""
    from course_lib.grading import visible_checks

    from hidden import hidden_tests

    return bool(visible_checks(entry.id, inputs=True)), bool(hidden_tests(entry.id, inputs=True))


def inputs_source(entry: exercises.Exercise) -> str:
    """The input-checks cell: the visible ones run in the learner's notebook, the hidden ones in the grader."""
    visible, hidden = has_input_checks(entry)
    lines = [f"# Exercise {entry.id} — input checks: clear errors for bad input (a tenth of the exercise's points)"]
    if visible:
        lines += ["from course_lib.grading import run_checks", "", f'run_checks("{entry.id}", inputs=True)']
    if hidden:
        call = f'run_hidden("{entry.id}", inputs=True)'
        lines += ["### BEGIN HIDDEN TESTS", "from hidden import run_hidden", "", call, "### END HIDDEN TESTS"]
    return "\n".join(lines)


def _grade_metadata(grade_id: str, points: int) -> dict:
    return {
        "grade": True,
        "grade_id": grade_id,
        "locked": True,
        "points": points,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }


def chapter_of(path: Path) -> int:
    found = re.fullmatch(r"ch(\d\d)_.+\.ipynb", path.name)
    if not found:
        raise ValueError(f"chapter notebooks are named chNN_<topic>.ipynb, got {path.name}")
    return int(found.group(1))


def derive(nb, chapter: int) -> list[str]:
    """Rewrite ``nb``'s graded cells in place from the registry; return the problems that need the author."""
    problems = []
    entries = {e.id: e for e in exercises.chapter_exercises(chapter)}
    if any(entry.points <= VISIBLE_POINTS for entry in entries.values()):
        problems += [f"Exercise {e.id} needs at least 2 points (1 visible)" for e in entries.values() if e.points < 2]
    with_inputs = {key for key, entry in entries.items() if any(has_input_checks(entry))}
    # The input cells are derived, not written: take them all out, then put one after each hidden cell
    # that needs it (the cell that was there, if any, so its id and outputs stay).
    existing = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and INPUTS.search(cell.source):
            existing.setdefault(INPUTS.search(cell.source).group(1), cell)
    nb.cells = [cell for cell in nb.cells if not (cell.cell_type == "code" and INPUTS.search(cell.source))]
    for index in reversed(range(len(nb.cells))):
        found = HIDDEN.findall(nb.cells[index].source) if nb.cells[index].cell_type == "code" else []
        if len(found) == 1 and found[0] in with_inputs:
            entry = entries[found[0]]
            cell = existing.get(entry.id) or nbformat.v4.new_code_cell()
            cell.source = inputs_source(entry)
            cell.metadata["nbgrader"] = _grade_metadata(f"ex{chapter}_{entry.number}_inputs", input_points(entry))
            cell.metadata["tags"] = ["remove-cell"]  # the book's reader needs the idea; the learner runs these
            nb.cells.insert(index + 1, cell)
    seen: dict[tuple[str, str], int] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or INPUTS.search(cell.source):
            continue
        for kind, pattern in (("visible", VISIBLE), ("hidden", HIDDEN)):
            ids = pattern.findall(cell.source)
            if not ids:
                continue
            if len(ids) > 1:
                problems.append(f"cell {index} calls {pattern.pattern} for {ids}: one exercise per cell")
                continue
            entry = entries.get(ids[0])
            if entry is None:
                problems.append(f"cell {index} runs Exercise {ids[0]}, which is not registered in Chapter {chapter}")
                continue
            if (entry.id, kind) in seen:
                problems.append(f"Exercise {entry.id} has two {kind} cells ({seen[entry.id, kind]} and {index})")
                continue
            seen[entry.id, kind] = index
            key = f"ex{chapter}_{entry.number}_{kind}"
            if kind == "visible":
                cell.source = visible_source(entry)
                cell.metadata["nbgrader"] = _grade_metadata(key, VISIBLE_POINTS)
                tags = [tag for tag in cell.metadata.get("tags", []) if tag != "remove-cell"]
            else:
                cell.source = hidden_source(entry)
                inputs = input_points(entry) if entry.id in with_inputs else 0
                cell.metadata["nbgrader"] = _grade_metadata(key, round(entry.points - VISIBLE_POINTS - inputs, 1))
                tags = sorted({*cell.metadata.get("tags", []), "remove-cell"})
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        if "nbgrader" in cell.metadata and not any(p.search(cell.source) for p in (VISIBLE, HIDDEN, INPUTS)):
            problems.append(f"cell {index} has nbgrader metadata but runs no exercise's checks")
    for entry in entries.values():
        for kind, call in (("visible", "run_checks"), ("hidden", "run_hidden")):
            if (entry.id, kind) not in seen:
                problems.append(f'Exercise {entry.id} has no {kind} cell: add a code cell calling {call}("{entry.id}")')
    return problems


def refresh_outputs(nb) -> list[str]:
    """Run each graded cell's checks on the references and store what they print; return the failures."""
    from course_lib.grading import ExerciseFailed, run_checks

    from hidden import run_hidden

    os.environ[exercises.SOLUTIONS_ENV] = "1"
    problems = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if INPUTS.search(cell.source):
            exercise_id = INPUTS.search(cell.source).group(1)
            visible, hidden = has_input_checks(exercises.get(exercise_id))
            runs = [run for run, there in ((run_checks, visible), (run_hidden, hidden)) if there]
            calls = [functools.partial(run, exercise_id, inputs=True) for run in runs]
        else:
            found = [(VISIBLE.search(cell.source), run_checks), (HIDDEN.search(cell.source), run_hidden)]
            calls = [functools.partial(run, match.group(1)) for match, run in found if match]
        if not calls:
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            for call in calls:
                try:
                    call()
                except ExerciseFailed as err:
                    problems.append(f"the references fail: {err}")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed.getvalue())]
        cell.execution_count = cell.execution_count or 1  # nbval compares only cells that have run
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook disagrees")
    parser.add_argument("--outputs", action="store_true", help="also rerun the graded cells for their outputs")
    args = parser.parse_args(argv)
    if args.check and args.outputs:
        parser.error("--check changes nothing: it cannot rewrite outputs")
    status = 0
    for path in args.notebooks:
        before = path.read_text(encoding="utf-8")
        nb = nbformat.reads(before, as_version=4)
        problems = derive(nb, chapter_of(path))
        if args.outputs and not problems:
            problems = refresh_outputs(nb)
        after = nbformat.writes(nb) + "\n"
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
            status = 1
        if after != before:
            if args.check:
                print(f"{path}: graded cells disagree with the registry; run `{COMMAND} {path}`", file=sys.stderr)
                status = 1
            elif not problems:
                path.write_text(after, encoding="utf-8")
                print(f"{path}: graded cells rewritten")
    return status


if __name__ == "__main__":
    sys.exit(main())
