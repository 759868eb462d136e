"""``make bench``: every benchmark of the course, its results written to one JSON file.

    PYTHONPATH=. .venv/bin/python -m bench.run_all                          # all, into bench/results.json
    PYTHONPATH=. .venv/bin/python -m bench.run_all --only tokenizer kv_cache  # some; the others are kept

Runs, in this order: the tokenizer against tiktoken (``bench.tokenizer``), KV-cache decoding
(``bench.kv_cache``), GPT training and forward speed against Hugging Face (``bench.gpt_speed``), each
chapter notebook's execution time (as ``bench.notebooks`` runs them, alone), and one whole
``make autograde`` of a class of solved submissions (``bench.autograde``, in its own process). Each
section of the JSON holds its settings and raw measurements, with the machine it ran on (cores, load
average before and after: the figures of a busy machine are slower and noisier). Then it re-executes
the book's appendix (``book/appendix_performance.ipynb``), which draws its tables and figures from the
JSON, so that the page and its stored outputs show the new results. Minutes: not part of the tests.
"""

from __future__ import annotations

import os

os.environ["COURSE_LIB_SOLUTIONS"] = "1"  # the learner's exercises run as their references

import course_lib  # noqa: F401 - before torch: threads and wait policy

import argparse
import contextlib
import datetime
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import gpt_speed, kv_cache, notebooks, report, tokenizer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"


def run_tokenizer(args) -> dict:
    return tokenizer.measure(chars=200_000, repeats=args.repeats)


def run_kv_cache(args) -> dict:
    lengths = [32, 64, 128, 256, 512]
    found = {}
    for name in kv_cache.MODELS:
        times = kv_cache.measure(name, lengths, repeats=args.repeats)
        found[name] = {
            "lengths": lengths,
            "no_cache_s": [times[n][0] for n in lengths],
            "cache_s": [times[n][1] for n in lengths],
        }
    return {"prompt": kv_cache.PROMPT, "repeats": args.repeats, "models": found}


def run_gpt_speed(args) -> dict:
    return gpt_speed.measure(repeats=args.rounds)


@contextlib.contextmanager
def _plain_environment():
    """The kernels' environment: none of the course's settings (as for a learner in plain Jupyter), the references."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith(("OMP_", "MKL_", "COURSE_LIB_", "PYTEST_"))]:
        del os.environ[name]
    os.environ.update(COURSE_LIB_SOLUTIONS="1", PYTHONPATH=str(REPO))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_notebooks(args) -> dict:
    seconds, failed = {}, {}
    with _plain_environment():
        for path in sorted((REPO / "book").glob("ch[0-9][0-9]_*.ipynb")):
            try:
                seconds[path.stem] = notebooks.run_once(path)
            except Exception as err:  # a chapter being written: its time is not measured, and the page says so
                failed[path.stem] = f"{type(err).__name__}: {str(err)[-300:]}"
                print(f"{path.stem:<36}  failed: {failed[path.stem]}", flush=True)
                continue
            print(f"{path.stem:<36}{seconds[path.stem]:>8.1f} s", flush=True)
    return {"seconds": seconds, "failed": failed}


def run_autograde(args) -> dict:
    learners = args.learners
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_LIB_", "COURSE_GRADER_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "bench.autograde", "--learners", str(learners)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    print(done.stdout, done.stderr[-3000:], sep="")
    if done.returncode != 0:
        raise SystemExit(f"bench.autograde failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    submissions = re.search(r"(\d+) solved submissions", done.stdout)
    total = re.search(r"([\d.]+) s in all", done.stdout)
    if not (submissions and total):
        raise SystemExit(f"could not read bench.autograde's summary:\n{done.stdout[-2000:]}")
    count = int(submissions.group(1))
    return {"learners": learners, "submissions": count, "chapters": count // learners, "seconds": float(total.group(1))}


SECTIONS = {
    "tokenizer": run_tokenizer,
    "kv_cache": run_kv_cache,
    "gpt_speed": run_gpt_speed,
    "notebooks": run_notebooks,
    "autograde": run_autograde,
}


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections; keep the others")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON file (default bench/results.json)")
    parser.add_argument("--no-render", action="store_true", help="do not re-execute the appendix notebook")
    parser.add_argument("--repeats", type=int, default=3, help="tokenizer and KV cache: runs, the best counts (3)")
    parser.add_argument("--rounds", type=int, default=40, help="GPT speed: interleaved rounds, the medians count (40)")
    parser.add_argument("--learners", type=int, default=4, help="autograde: solved submissions per chapter (4)")
    args = parser.parse_args()
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    for name in args.only or SECTIONS:
        print(f"\n== {name}", flush=True)
        before = machine()
        start = time.perf_counter()
        section = SECTIONS[name](args)
        section["machine"] = before | {"load_average_after": round(os.getloadavg()[0], 2)}
        section["date"] = datetime.date.today().isoformat()
        section["wall_s"] = round(time.perf_counter() - start, 1)
        results[name] = section
        args.output.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")  # each section kept as it ends
    print(f"\nresults: {args.output}")
    if not args.no_render and args.output.resolve() == RESULTS:
        report.refresh_notebook()
        print(f"appendix: {report.NOTEBOOK}")


if __name__ == "__main__":
    main()
