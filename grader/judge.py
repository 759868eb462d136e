"""The trusted judge: runs a chapter's test cells against one submission, outside any notebook kernel.

    python -m grader.judge CHAPTER SUBMISSION_DIR < cells.json > verdicts.json
    python -m grader.judge --serve       # many submissions, one task per line (see serve())
    python -m grader.judge --self-test   # exit 0 when the sandbox works on this machine

It reads a JSON list of test-cell sources (the instructor's, never the learner's), and for each
one runs the source in a fresh namespace of this clean process, with the instructor's
``course_lib`` and the reference solutions. The cells drive the learner's code through
:mod:`course_lib.grading`, into which the judge installs :class:`grader.sandbox.SandboxBackend`: the
learner's code runs in a sandboxed worker. The learner's code is never imported here, so no verdict can be rewritten by
it. The package handed to the worker is the instructor's ``course_lib`` with only this chapter's
exercise files taken from the submission (and earlier chapters' modules completed with the
references): whatever else a submission holds is ignored.
"""

from __future__ import annotations

from course_lib import exercises, grading

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grader.fill import fill_module
from grader.sandbox import Patience, Sandbox, SandboxBackend

# The exercise a test cell grades: every graded cell calls run_checks or run_hidden with its id (grader/cells.py).
EXERCISE_OF_CELL = re.compile(r"""\brun_(?:checks|hidden)\(\s*["'](\d+\.\d+)["']""")


def stage_package(chapter: int, submission: Path, into: Path) -> list[str]:
    """Build the package the sandboxed worker imports for grading ``chapter``.

    It is the instructor's ``course_lib`` with, for each exercise module:

    - the submission's file, if the module holds exercises of ``chapter`` (a missing, linked or
      non-regular file is skipped: the stub stays, and its exercises score nothing);
    - the stubs otherwise;
    - and in either, the references filled in for the exercises of earlier chapters: a chapter's
      grading never depends on how the learner did before (Chapter 5's GPT gets working blocks,
      and Chapter 6's RMSNorm is graded beside a finished LayerNorm in the same file).

    Returns the files taken from the submission.
    """
    shutil.copytree(
        exercises.package_root() / "course_lib", into / "course_lib", ignore=shutil.ignore_patterns("__pycache__")
    )
    by_file: dict[str, list[exercises.Exercise]] = {}
    for entry in exercises.all_exercises():
        by_file.setdefault(entry.path, []).append(entry)
    taken = []
    for path, entries in sorted(by_file.items()):
        learner_file = submission / path
        if chapter in {entry.chapter for entry in entries}:
            # Through no link, at any depth: a link could lead to the instructor's files.
            if not learner_file.is_file() or learner_file.resolve() != submission.resolve() / path:
                continue
            shutil.copyfile(learner_file, into / path, follow_symlinks=False)
            taken.append(path)
        earlier = {entry.qualname for entry in entries if entry.chapter < chapter}
        if earlier:
            module = Path(path).stem
            source = (into / path).read_text(encoding="utf-8", errors="replace")
            solution = (exercises.package_root() / "solutions" / f"{module}.py").read_text(encoding="utf-8")
            # A learner's file that does not parse (or is otherwise odd) fails its own exercises, as it is.
            with contextlib.suppress(Exception):
                (into / path).write_text(fill_module(source, solution, only=earlier), encoding="utf-8")
    return taken


def judge_cell(source: str) -> dict:
    """Run one test cell; the verdict is what it printed and whether it raised.

    A failure of the grading machine is no verdict: it comes back as ``{"grading_error": why}``.
    """
    out = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(source, "<test cell>", "exec"), namespace)
        except grading.GradingError as err:
            return {"grading_error": str(err), "stdout": out.getvalue()}
        except Exception as err:
            return {"passed": False, "stdout": out.getvalue(), "ename": type(err).__name__, "evalue": str(err)}
    return {"passed": True, "stdout": out.getvalue()}


def judge_submission(chapter: int, submission: Path, sources: list[str]) -> list[dict]:
    """The verdicts of ``sources`` (a chapter's test cells) on one submission, in one sandbox of its own.

    The submission has one :class:`Patience`: a time budget for all its cells, a deadline per call
    (shorter once it has hung), and the exercises whose calls hung, whose other checks fail at once.
    Each verdict carries ``seconds`` and ``flags``: what the instructor's report lists (a hang, an
    exit, the memory cap, a spent budget, a patched harness), each with the exercise and the reason.
    """
    os.environ[exercises.SOLUTIONS_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="course-judge-") as staging:
        stage_package(chapter, submission, Path(staging))
        patience = Patience()
        sandbox = Sandbox(Path(staging), patience=patience)
        verdicts = []
        try:
            for source in sources:
                found = EXERCISE_OF_CELL.search(source)
                exercise = found.group(1) if found else None
                grading.use_backend(lambda exercise=exercise: SandboxBackend(sandbox, exercise=exercise))
                flagged, noted, start = len(patience.flags), len(sandbox.notes), time.monotonic()
                verdict = judge_cell(source)
                for name in sorted(set(sandbox.notes[noted:])):
                    patience.flag(exercise, "patched", f"the harness was changed in the worker: {name}")
                verdict["seconds"] = round(time.monotonic() - start, 3)
                verdict["flags"] = patience.flags[flagged:]
                verdicts.append(verdict)
            return verdicts
        finally:
            sandbox.close()


def self_test() -> str | None:
    """Grade the references of the first exercise in the sandbox: ``None`` when the sandbox works, else why not."""
    os.environ[exercises.SOLUTIONS_ENV] = "1"
    first = exercises.all_exercises()[0]
    with tempfile.TemporaryDirectory(prefix="course-judge-") as staging:
        stage_package(first.chapter + 1, Path(staging) / "none", Path(staging))  # earlier chapters: references
        grading.use_backend(lambda: SandboxBackend(Path(staging)))
        verdict = judge_cell(f"from course_lib.grading import run_checks\nrun_checks({first.id!r})")
    if verdict.get("passed"):
        return None
    return verdict.get("grading_error") or f"{verdict['stdout']}{verdict.get('ename')}: {verdict.get('evalue')}"


def serve() -> None:
    """Judge submission after submission: the instructor's ``make autograde`` runs one of these per job.

    It first proves the sandbox works (``{"ready": true}``, or ``{"broken": why}`` and exit), then
    reads one task per line on stdin, ``{"chapter": 3, "submission": "/path", "sources": [...]}``,
    and answers each with one line, the list of verdicts. Torch, the references and the hidden tests
    are imported once for all the submissions; each submission still gets a sandbox of its own.
    """
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else prints must not mix with the answers

    def answer(message) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    broken = self_test()
    answer({"broken": broken} if broken else {"ready": True})
    if broken:
        return
    for line in sys.stdin:
        task = json.loads(line)
        try:
            answer(judge_submission(task["chapter"], Path(task["submission"]).resolve(), task["sources"]))
        except Exception as err:  # the judge's own failure: this submission gets no verdict, the next one does
            answer([{"grading_error": f"the judge failed: {type(err).__name__}: {err}"}] * len(task["sources"]))


def main() -> None:
    if sys.argv[1:] == ["--self-test"]:
        broken = self_test()
        if broken:
            print(broken)
        sys.exit(1 if broken else 0)
    if sys.argv[1:] == ["--serve"]:
        return serve()
    chapter, submission = int(sys.argv[1]), Path(sys.argv[2]).resolve()
    sources = json.load(sys.stdin)
    json.dump(judge_submission(chapter, submission, sources), sys.stdout)


if __name__ == "__main__":
    main()
