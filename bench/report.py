"""The performance appendix's tables and figures, drawn from ``bench/results.json`` (``make bench`` writes it).

The appendix notebook (``book/appendix_performance.ipynb``) calls these; nothing here runs a benchmark,
so the book builds from the committed JSON alone. ``refresh_notebook()`` re-executes the appendix
after new results (``bench.run_all`` does it), so its stored outputs match the JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
NOTEBOOK = REPO / "book" / "appendix_performance.ipynb"
BLUE, ORANGE, GREEN, GREY = "#4C72B0", "#DD8452", "#55A868", "#6b6b6b"


def load(path: Path = RESULTS) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def machine(section: dict) -> str:
    """Where and when a section was measured, in words."""
    m = section["machine"]
    return (
        f"Measured on {section['date']}: {m['cores']} cores ({m['processor']}), {m['threads']} torch threads, "
        f"Python {m['python']}, torch {m['torch']}; load average {m['load_average']} before and "
        f"{m['load_average_after']} after ({section['wall_s']:.0f} s in all)."
    )


def tokenizer_table(section: dict) -> str:
    rows = [
        [name, section[f"{key}_s"], round(section["chars"] / section[f"{key}_s"])]
        for name, key in (("tiktoken (Rust)", "tiktoken"), ("course BPETokenizer (Python)", "course"))
    ]
    return table(["tokenizer", "seconds", "characters / s"], rows)


def tokenizer_summary(section: dict) -> str:
    agree = "the same ids" if section["same_ids"] else "DIFFERENT ids"
    return (
        f"{section['chars']:,} characters of Shakespeare, {section['tokens']:,} tokens of `{section['encoding']}`: "
        f"tiktoken is {section['course_s'] / section['tiktoken_s']:.1f}x faster than the course's tokenizer, "
        f"which gives {agree} and decodes {'back to the text' if section['round_trip'] else 'WRONGLY'}."
    )


def kv_cache_table(section: dict) -> str:
    rows = []
    for name, model in section["models"].items():
        for n, slow, fast in zip(model["lengths"], model["no_cache_s"], model["cache_s"]):
            rows.append([name, n, slow, fast, round(n / fast), slow / fast])
    return table(["model", "new tokens", "no cache (s)", "cache (s)", "tokens / s with cache", "speed-up"], rows)


def kv_cache_summary(section: dict) -> str:
    parts = []
    for name, model in section["models"].items():
        n, slow, fast = model["lengths"][-1], model["no_cache_s"][-1], model["cache_s"][-1]
        parts.append(f"{name} {slow / fast:.1f}x faster with the cache at {n} new tokens")
    return "Decoding: " + "; ".join(parts) + " (the course's goal: at least 5x)."


def plot_kv_cache(section: dict, ax=None):
    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    for (name, model), color in zip(section["models"].items(), (BLUE, ORANGE, GREEN)):
        ax.plot(model["lengths"], model["no_cache_s"], "o--", color=color, label=f"{name}, no cache")
        ax.plot(model["lengths"], model["cache_s"], "o-", color=color, label=f"{name}, KV cache")
    ax.set_xscale("log", base=2)
    lengths = sorted({n for model in section["models"].values() for n in model["lengths"]})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel(f"new tokens generated (greedy, after a {section['prompt']}-token prompt)")
    ax.set_ylabel("seconds (best of runs)")
    ax.set_title("Decoding with and without a KV cache")
    ax.legend(fontsize=8)
    return ax


def gpt_speed_table(section: dict) -> str:
    rows = []
    for name, m in section["models"].items():
        quartiles = m.get("train_speed_quartiles")  # absent from results measured before they were recorded
        middle = "{:.2f}–{:.2f}".format(*quartiles) if quartiles else "—"
        rows.append(
            [name, m["train_ms"], m["train_speed"], middle, m["train_cpu_speed"], m["forward_ms"], m["forward_speed"]]
        )
    headers = [
        "model",
        "train step (ms)",
        "speed vs HF",
        "middle half of rounds",
        "speed vs HF (CPU time)",
        "forward (ms)",
        "speed vs HF",
    ]
    return table(headers, rows)


def gpt_speed_summary(section: dict) -> str:
    c = section["config"]
    return (
        f"{c['layers']} layers, width {c['width']}, {c['heads']} heads, vocabulary {c['vocab']:,}, a batch of "
        f"{c['batch']} x {c['context']} tokens, {section['threads']} torch threads, median of {section['rounds']} "
        "interleaved rounds. Speed: Hugging Face's time divided by the model's (above 1: faster than Hugging Face)."
    )


def plot_gpt_speed(section: dict, ax=None):
    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    names = list(section["models"])
    width = 0.38
    for i, (kind, color) in enumerate((("train", BLUE), ("forward", ORANGE))):
        models = [section["models"][name] for name in names]
        speeds = [m[f"{kind}_speed"] for m in models]
        spread = None  # the quartiles of the rounds' ratios, as error bars, where the results hold them
        if all(f"{kind}_speed_quartiles" in m for m in models):
            spread = [
                [s - m[f"{kind}_speed_quartiles"][0] for s, m in zip(speeds, models)],
                [m[f"{kind}_speed_quartiles"][1] - s for s, m in zip(speeds, models)],
            ]
        ax.barh(
            [y + (i - 0.5) * width for y in range(len(names))],
            speeds,
            height=width,
            color=color,
            label=kind,
            xerr=spread,
            error_kw={"elinewidth": 1, "capsize": 2},
        )
    ax.axvline(1.0, color=GREY, linewidth=1)
    ax.set_yticks(range(len(names)), [name.replace(", ", "\n") for name in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed relative to Hugging Face's GPT2LMHeadModel (1 = the same)")
    ax.set_title("Training step and forward pass against Hugging Face")
    ax.legend(title="measured", fontsize=8)
    return ax


def notebooks_table(section: dict) -> str:
    rows = [[name, seconds] for name, seconds in section["seconds"].items()]
    rows.append(["all chapters measured", sum(section["seconds"].values())])
    rows += [[name, f"failed to run: {error}"] for name, error in section.get("failed", {}).items()]
    return table(["notebook", "seconds to execute"], rows)


def plot_notebooks(section: dict, ax=None):
    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    names = list(section["seconds"])
    ax.barh(names, [section["seconds"][n] for n in names], color=BLUE)
    ax.invert_yaxis()
    ax.set_xlabel("seconds to execute, in a fresh kernel")
    ax.set_title("Each chapter notebook, run on the references")
    return ax


def autograde_table(section: dict) -> str:
    row = [
        section["learners"],
        section["chapters"],
        section["submissions"],
        section["seconds"],
        section["seconds"] / section["submissions"],
    ]
    return table(["learners", "chapters", "submissions", "seconds in all", "seconds per submission"], [row])


def refresh_notebook(path: Path = NOTEBOOK) -> None:
    """Re-execute the appendix in place, so that its stored outputs show the current JSON."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LIB_")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(nb, path)
