"""The trusted judge: runs a chapter's test cells against one submission, outside any notebook kernel.

    python -m grader.judge CHAPTER SUBMISSION_DIR < cells.json > verdicts.json

It reads a JSON list of test-cell sources (the instructor's, never the learner's), and for each
one runs the source in a fresh namespace of this clean process, with the instructor's
``course_lib`` and the reference solutions. The cells drive the learner's code through
:mod:`course_lib.grading`, which (because ``COURSE_GRADER_SUBMISSION`` is set) runs it in a
sandboxed worker. The learner's code is never imported here, so no verdict can be rewritten by
it. The package handed to the worker is the instructor's ``course_lib`` with only this chapter's
exercise files taken from the submission (and earlier chapters' modules completed with the
references): whatever else a submission holds is ignored.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from course_lib import exercises
from course_lib.grading import SUBMISSION_ENV
from grader.fill import fill_module


def stage_package(chapter: int, submission: Path, into: Path) -> list[str]:
    """Build the package the sandboxed worker imports for grading ``chapter``.

    It is the instructor's ``course_lib`` with, for each exercise module:

    - the submission's file, if the module holds exercises of ``chapter`` (a missing, linked or
      non-regular file is skipped: the stub stays, and its exercises score nothing);
    - the references filled in, if all its exercises belong to earlier chapters: a chapter's
      grading never depends on how the learner did before (Chapter 5's GPT gets working blocks);
    - the stubs otherwise.

    Returns the files taken from the submission.
    """
    shutil.copytree(exercises.package_root() / "course_lib", into / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    by_file: dict[str, set[int]] = {}
    for entry in exercises.all_exercises():
        by_file.setdefault(entry.path, set()).add(entry.chapter)
    taken = []
    for path, chapters in sorted(by_file.items()):
        learner_file = submission / path
        if chapter in chapters:
            # Through no link, at any depth: a link could lead to the instructor's files.
            if not learner_file.is_file() or learner_file.resolve() != submission.resolve() / path:
                continue
            shutil.copyfile(learner_file, into / path, follow_symlinks=False)
            taken.append(path)
        elif max(chapters) < chapter:
            module = Path(path).stem
            stub = (into / path).read_text(encoding="utf-8")
            solution = (exercises.package_root() / "solutions" / f"{module}.py").read_text(encoding="utf-8")
            (into / path).write_text(fill_module(stub, solution), encoding="utf-8")
    return taken


def judge_cell(source: str) -> dict:
    """Run one test cell; the verdict is what it printed and whether it raised."""
    out = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(source, "<test cell>", "exec"), namespace)  # noqa: S102 - the instructor's own test code
        except Exception as err:  # noqa: BLE001 - a failing cell is a verdict, not a crash
            return {"passed": False, "stdout": out.getvalue(), "ename": type(err).__name__, "evalue": str(err)}
    return {"passed": True, "stdout": out.getvalue()}


def main() -> None:
    chapter, submission = int(sys.argv[1]), Path(sys.argv[2]).resolve()
    sources = json.load(sys.stdin)
    os.environ[exercises.SOLUTIONS_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="course-judge-") as staging:
        stage_package(chapter, submission, Path(staging))
        os.environ[SUBMISSION_ENV] = staging
        verdicts = [judge_cell(source) for source in sources]
    json.dump(verdicts, sys.stdout)


if __name__ == "__main__":
    main()
