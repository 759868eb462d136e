"""The course's BPE tokenizer against tiktoken on the same ranks: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.tokenizer                    # 200,000 characters of Shakespeare
    PYTHONPATH=. .venv/bin/python -m bench.tokenizer --chars 50000 --repeats 1

Both tokenizers get GPT-4's genuine ``cl100k_base`` ranks (read offline, ``course_lib.tokenization.cl100k_base``):
tiktoken's Rust implementation, and the course's ``BPETokenizer.from_tiktoken`` (Chapter 1, pure Python,
here the references: ``COURSE_LIB_SOLUTIONS=1``). Each encodes the same text, the first characters of
the Shakespeare corpus, best of ``--repeats`` runs (the course's, a new tokenizer each run: it
remembers the pieces it has encoded), and the benchmark checks they produce the same ids
(and that decoding gives the text back). It prints characters per second and how many times faster
tiktoken is: the price of readable Python, which the course pays on purpose.
"""

from __future__ import annotations

import os

os.environ.setdefault("COURSE_LIB_SOLUTIONS", "1")  # the learner's exercises run as their references

from course_lib import data, tokenization  # course_lib before torch (threads), after the switch above

import argparse
import time


def best_time(make, text: str, repeats: int) -> tuple[float, list[int]]:
    """The fastest of ``repeats`` encodings of ``text``, each by a new tokenizer from ``make()``: seconds, and the ids.

    A new one each time: the course's tokenizer remembers the pieces it has encoded, so a second pass over the
    same text would measure that memory, not byte-pair encoding.
    """
    best, result = float("inf"), None
    for _ in range(repeats):
        tokenizer = make()
        start = time.perf_counter()
        result = tokenizer.encode_ordinary(text)
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(chars: int = 200_000, repeats: int = 3) -> dict:
    """Seconds for each tokenizer to encode ``chars`` characters of Shakespeare, and the check that they agree."""
    text = data.load_shakespeare()[:chars]
    reference = tokenization.cl100k_base()
    course = tokenization.BPETokenizer.from_tiktoken(reference)  # for the round trip
    tiktoken_s, expected = best_time(lambda: reference, text, repeats)
    course_s, ids = best_time(lambda: tokenization.BPETokenizer.from_tiktoken(reference), text, repeats)
    return {
        "encoding": "cl100k_base",
        "chars": len(text),
        "tokens": len(expected),
        "repeats": repeats,
        "tiktoken_s": tiktoken_s,
        "course_s": course_s,
        "same_ids": ids == expected,
        "round_trip": course.decode(ids) == text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=200_000, help="characters of Shakespeare (default 200,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts (default 3)")
    args = parser.parse_args()
    result = measure(args.chars, args.repeats)
    print(f"{result['encoding']}: {result['chars']:,} characters, {result['tokens']:,} tokens")
    for name in ("tiktoken", "course"):
        seconds = result[f"{name}_s"]
        print(f"{name:<10}{seconds:>9.3f} s{result['chars'] / seconds:>14,.0f} characters/s")
    print(
        f"tiktoken is {result['course_s'] / result['tiktoken_s']:.0f}x faster; "
        f"same ids: {result['same_ids']}, decodes back: {result['round_trip']}"
    )
    if not (result["same_ids"] and result["round_trip"]):
        raise SystemExit("the course's tokenizer disagrees with tiktoken")


if __name__ == "__main__":
    main()
