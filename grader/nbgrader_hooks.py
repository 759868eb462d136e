"""nbgrader preprocessors that make ``nbgrader autograde`` grade through the trusted judge.

nbgrader normally executes the submitted notebook in a kernel and scores each test cell by
whether its output holds an error. A kernel that imported a learner's module cannot be trusted
to report errors (the module can rewrite how they are shown), so here:

- :class:`UseSourceNotebook` (sanitising step) swaps the submitted notebook's cells for the
  instructor's source notebook: cells a learner added, edited or deleted do not matter, since
  only the exercise files in ``course_lib/`` are the learner's work;
- :class:`GradeInSandbox` (in place of ``Execute``) sends the test cells to
  :mod:`grader.judge`, writes its verdicts as the cells' outputs (an error output for a failed
  cell, which ``SaveAutoGrades`` scores as zero) and removes the hidden tests' code, so the
  feedback shows which hidden tests failed but never how they test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer, Unicode

REPO = Path(__file__).resolve().parent.parent
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", re.DOTALL)
HIDDEN_NOTE = "# The hidden tests of this exercise ran on your code; their results are printed below."


def is_test_cell(cell) -> bool:
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


def chapter_of(assignment: str) -> int:
    found = re.fullmatch(r"ch(\d+)", assignment)
    if not found:
        raise ValueError(f"assignment ids look like 'ch01', got {assignment!r}")
    return int(found.group(1))


def fingerprint(submission: Path, sources: list[str]) -> str:
    """What a submission's verdicts depend on: its files and the test cells; a kept verdict with another is stale."""
    digest = hashlib.sha256(json.dumps(sources).encode("utf-8"))
    for path in sorted(submission.rglob("*")):
        relative = path.relative_to(submission).as_posix()
        if path.is_symlink() or not path.is_file() or "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        digest.update(relative.encode("utf-8") + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class GradingMachineError(RuntimeError):
    """The grading machine (not the submission) failed; nbgrader then records no grade for it."""


class UseSourceNotebook(NbGraderPreprocessor):
    """Replace the submitted cells by the instructor's source notebook's, outputs cleared."""

    source_root = Unicode(help="nbgrader's source folder: <source_root>/<assignment>/<notebook>.ipynb").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        path = Path(self.source_root) / info["assignment"] / f"{info['notebook']}.ipynb"
        source = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        for cell in source.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.cells = source.cells
        return nb, resources


class GradeInSandbox(NbGraderPreprocessor):
    """Score the test cells with verdicts from :mod:`grader.judge` instead of executing a kernel."""

    submitted_root = Unicode(help="nbgrader's submitted folder: <submitted_root>/<student>/<assignment>/").tag(
        config=True
    )
    verdicts_root = Unicode(
        "", help="where `make autograde` left its verdicts: <verdicts_root>/<assignment>/<student>.json"
    ).tag(config=True)
    timeout = Integer(3600, help="seconds for judging one notebook").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        submission = Path(self.submitted_root) / info["student"] / info["assignment"]
        tests = [cell for cell in nb.cells if is_test_cell(cell)]
        sources = [cell.source for cell in tests]
        verdicts = self._judged(info["assignment"], info["student"], submission, sources)
        if verdicts is None:  # a plain `nbgrader autograde`: judge here and now
            verdicts = self._judge(chapter_of(info["assignment"]), submission, sources)
        failures = sorted({v["grading_error"] for v in verdicts if "grading_error" in v})
        if failures:  # the machine failed: record nothing rather than a score the learner did not earn
            raise GradingMachineError(f"{info['student']}/{info['assignment']}: " + "; ".join(failures))
        for cell, verdict in zip(tests, verdicts):
            outputs = []
            if verdict.get("stdout"):
                outputs.append(nbformat.v4.new_output("stream", name="stdout", text=verdict["stdout"]))
            if not verdict["passed"]:
                line = f"{verdict['ename']}: {verdict['evalue']}"
                outputs.append(
                    nbformat.v4.new_output("error", ename=verdict["ename"], evalue=verdict["evalue"], traceback=[line])
                )
            cell.outputs = outputs
            cell.source = HIDDEN.sub(HIDDEN_NOTE, cell.source)
        return nb, resources

    def _judged(self, assignment: str, student: str, submission: Path, sources: list[str]) -> list[dict] | None:
        """The verdicts `make autograde` judged ahead for these very test cells and files, if any."""
        if not self.verdicts_root:
            return None
        try:
            found = json.loads((Path(self.verdicts_root) / assignment / f"{student}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if found.get("sources") != sources or len(found.get("verdicts", [])) != len(sources):
            return None
        if found.get("fingerprint") != fingerprint(submission, sources):  # the submission changed since
            return None
        return found["verdicts"]

    def _judge(self, chapter: int, submission: Path, sources: list[str]) -> list[dict]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("COURSE_LIB_")}
        env["PYTHONPATH"] = str(REPO)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "grader.judge", str(chapter), str(submission)],
                input=json.dumps(sources),
                capture_output=True,
                text=True,
                cwd=REPO,
                env=env,
                timeout=self.timeout,
            )
            verdicts = json.loads(done.stdout) if done.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as err:
            done, verdicts = None, None
            self.log.error("judging %s failed: %s", submission, err)
        if not isinstance(verdicts, list) or len(verdicts) != len(sources):
            if done is not None:
                self.log.error("the judge failed on %s:\n%s", submission, done.stderr[-4000:])
            verdicts = [{"grading_error": "the judge crashed (see the log above)"}] * len(sources)
        return verdicts
