"""The performance appendix is drawn from bench/results.json: tables and figures from any results, quickly.

``make bench`` (minutes) writes the JSON; nothing here runs a benchmark. nbval checks that the
appendix's stored outputs are what ``bench/report.py`` draws from the committed JSON now.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from bench import report, run_all

MACHINE = {
    "cores": 2,
    "threads": 2,
    "processor": "x86_64",
    "python": "3.11.7",
    "torch": "2.13.0",
    "load_average": 1.5,
    "load_average_after": 2.5,
}


def _section(**values) -> dict:
    return {**values, "machine": MACHINE, "date": "2026-12-03", "wall_s": 12.0}


RESULTS = {
    "tokenizer": _section(
        encoding="cl100k_base",
        chars=1000,
        tokens=250,
        repeats=1,
        tiktoken_s=0.01,
        course_s=0.04,
        same_ids=True,
        round_trip=True,
    ),
    "kv_cache": _section(
        prompt=16,
        repeats=1,
        models={
            "gpt2": {"lengths": [32, 64], "no_cache_s": [0.5, 2.0], "cache_s": [0.25, 0.25]},
            "llama": {"lengths": [32, 64], "no_cache_s": [0.6, 2.4], "cache_s": [0.3, 0.4]},
        },
    ),
    "gpt_speed": _section(
        config=dict(vocab=4096, context=256, width=256, layers=4, heads=4, batch=8),
        threads=2,
        rounds=3,
        models={
            name: dict(train_ms=ms, train_speed=s, train_cpu_speed=s, forward_ms=ms / 3, forward_speed=s)
            for name, ms, s in (
                ("Hugging Face GPT2LMHeadModel", 300.0, 1.0),
                ('course GPT, kernels="fused"', 250.0, 1.2),
            )
        },
    ),
    "notebooks": _section(seconds={"ch01_tokenization": 20.0, "ch02_embeddings": 10.5}),
    "autograde": _section(learners=2, submissions=4, chapters=2, seconds=10.0),
}


def test_every_section_makes_its_tables_and_sentences():
    assert "4.0x faster" in report.tokenizer_summary(RESULTS["tokenizer"])
    assert "| tiktoken (Rust) | 0.01 | 100,000 |" in report.tokenizer_table(RESULTS["tokenizer"])
    kv = report.kv_cache_table(RESULTS["kv_cache"])
    assert "| gpt2 | 64 | 2 | 0.25 | 256 | 8 |" in kv and kv.count("\n") == 5  # header, rule, 4 rows
    assert "gpt2 8.0x faster with the cache at 64 new tokens; llama 6.0x" in report.kv_cache_summary(
        RESULTS["kv_cache"]
    )
    assert '| course GPT, kernels="fused" | 250 | 1.2 |' in report.gpt_speed_table(RESULTS["gpt_speed"])
    assert "| all chapters measured | 30.5 |" in report.notebooks_table(RESULTS["notebooks"])
    assert "| 2 | 2 | 4 | 10 | 2.5 |" in report.autograde_table(RESULTS["autograde"])
    assert "load average 1.5 before and 2.5 after" in report.machine(RESULTS["tokenizer"])


def test_the_gpt_speed_table_and_figure_show_the_quartiles_of_the_rounds_when_the_results_hold_them():
    from bench.gpt_speed import quartiles

    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == [1.5, 4.5]
    assert quartiles([1.1]) == [1.1, 1.1] and quartiles([]) == []
    section = json.loads(json.dumps(RESULTS["gpt_speed"]))
    assert '| course GPT, kernels="fused" | 250 | 1.2 | — |' in report.gpt_speed_table(section)  # older results
    for model, (low, high) in zip(section["models"].values(), ((1.0, 1.0), (1.05, 1.31))):
        model["train_speed_quartiles"] = model["forward_speed_quartiles"] = [low, high]
    assert '| course GPT, kernels="fused" | 250 | 1.2 | 1.05–1.31 |' in report.gpt_speed_table(section)
    ax = report.plot_gpt_speed(section)
    assert len(ax.containers) == 4  # two bar groups, each with its error bars
    plt.close(ax.figure)


def test_a_disagreeing_tokenizer_is_said_loudly():
    assert "DIFFERENT ids" in report.tokenizer_summary(RESULTS["tokenizer"] | {"same_ids": False})


@pytest.mark.parametrize("name", ["kv_cache", "gpt_speed", "notebooks"])
def test_every_figure_has_a_title_and_labelled_axes(name):
    ax = getattr(report, f"plot_{name}")(RESULTS[name])
    assert ax.get_title() and ax.get_xlabel()
    assert ax.get_ylabel() or ax.get_yticklabels()
    plt.close(ax.figure)


def test_the_committed_results_hold_every_section_the_appendix_shows(tmp_path):
    results = report.load()
    assert set(run_all.SECTIONS) <= set(results)
    for name in run_all.SECTIONS:
        assert {"machine", "date", "wall_s"} <= set(results[name]), name
    appendix = json.loads(report.NOTEBOOK.read_text())
    code = "\n".join("".join(c["source"]) for c in appendix["cells"] if c["cell_type"] == "code")
    for name in run_all.SECTIONS:
        assert f'results["{name}"]' in code, f"the appendix does not show {name}"
