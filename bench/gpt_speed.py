"""How fast the course's GPT trains next to Hugging Face's GPT-2 with the same weights: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.gpt_speed                 # 4 layers, width 256, vocab 4096, batch 8 x 256
    PYTHONPATH=. .venv/bin/python -m bench.gpt_speed --repeats 20 --threads 1

One Hugging Face ``GPT2LMHeadModel`` (its default attention, PyTorch's fused
``scaled_dot_product_attention``) is saved and loaded into the course's :class:`~course_lib.gpt.GPT`
twice, with ``kernels="fused"`` (the default) and ``kernels="course"`` (the learner's own attention,
LayerNorm and GELU; here the references, ``COURSE_LIB_SOLUTIONS=1``). All three models first prove
they compute the same logits. Then, in one process, each round times one training step of each model
in turn (zero the gradients, forward, cross-entropy, backward, AdamW step, the same batch and the
same optimizer settings for all, from ``course_lib.training.make_optimizer``), then one forward pass
in evaluation mode without gradients, in an order reversed every other round. Interleaving spreads
any change in the machine's load over all the models alike; the report is the median time of each
and the median, over rounds, of Hugging Face's time divided by the model's: its speed relative to
Hugging Face's (above 1: faster), with the quartiles of those ratios, on the clock and in the CPU
time the process spent (which other processes on a busy machine disturb less). Dropout is 0, so all
models do the same arithmetic, and all get the same work: the loss is computed outside every model
(Hugging Face's is given no ``labels``), and Hugging Face's model keeps no key-value cache
(``use_cache=False``; by default it copies every layer's keys and values into one during training
too, which the course's GPT never does).
"""

from __future__ import annotations

import os

os.environ["COURSE_LIB_SOLUTIONS"] = "1"  # the learner's exercises run as their references

from course_lib.gpt import GPT  # course_lib before torch (threads), after the switch above
from course_lib.training import make_optimizer

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def hugging_face_gpt2(vocab: int, context: int, width: int, layers: int, heads: int, seed: int):
    """A freshly initialised ``GPT2LMHeadModel`` (transformers' default attention), without dropout or KV cache."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,  # the course's GPT keeps no key-value cache either: the same work for both
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits  # (batch, seq, vocab)


def train_step(model, optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    logits = logits_of(model, inputs)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    optimizer.step()


def quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles of ``values`` (the middle half of them lies between)."""
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    first, _, third = statistics.quantiles(values, n=4)
    return [first, third]


def timed(fn, *args) -> tuple[float, float]:
    """Seconds that ``fn(*args)`` took: on the clock, and of CPU time spent by this process (all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def forward_only(model, ids: torch.Tensor) -> None:
    logits_of(model, ids)


def measure(
    vocab: int = 4096,
    context: int = 256,
    width: int = 256,
    layers: int = 4,
    heads: int = 4,
    batch: int = 8,
    repeats: int = 40,
    threads: int | None = None,
) -> dict:
    """The interleaved rounds described above: per model, its median times and its speed against Hugging Face's."""
    if threads is not None:
        torch.set_num_threads(threads)

    hf = hugging_face_gpt2(vocab, context, width, layers, heads, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        models = {
            "Hugging Face GPT2LMHeadModel": hf,
            'course GPT, kernels="fused"': GPT.from_pretrained(folder),
            'course GPT, kernels="course"': GPT.from_pretrained(folder, kernels="course"),
        }
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randint(vocab, (2, batch, context), generator=generator)

    for model in models.values():
        model.eval()
    with torch.no_grad():
        expected = logits_of(hf, inputs)
        for name, model in models.items():
            gap = (logits_of(model, inputs) - expected).abs().max().item()
            if gap > 1e-4:
                raise SystemExit(f"{name} differs from Hugging Face's logits by {gap:.2e}: not the same model")

    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    kinds = ("train", "forward")
    times = {name: {(kind, clock): [] for kind in kinds for clock in (0, 1)} for name in models}  # clock 0: wall
    order = list(models.items())
    for round_ in range(repeats + 1):  # round 0 warms up (allocations, first-call costs) and is dropped
        for name, model in order if round_ % 2 else order[::-1]:  # so that no model always runs after the same one
            model.train()
            train = timed(train_step, model, optimizers[name], inputs, targets)
            model.eval()
            forward = timed(forward_only, model, inputs)
            if round_:
                for kind, measured in zip(kinds, (train, forward)):
                    for clock in (0, 1):
                        times[name][kind, clock].append(measured[clock])

    reference = times["Hugging Face GPT2LMHeadModel"]
    results = {}
    for name, measured in times.items():
        results[name] = {}
        for kind in kinds:
            # One ratio per round: Hugging Face's time over the model's, both measured within that round.
            wall, cpu = ([h / m for h, m in zip(reference[kind, clock], measured[kind, clock])] for clock in (0, 1))
            results[name].update({f"{kind}_ms": statistics.median(measured[kind, 0]) * 1e3})
            results[name][f"{kind}_speed"] = statistics.median(wall)
            # The middle half of the rounds' ratios: how far one number of this run can be trusted.
            results[name][f"{kind}_speed_quartiles"] = quartiles(wall)
            results[name][f"{kind}_cpu_speed"] = statistics.median(cpu)
    config = dict(vocab=vocab, context=context, width=width, layers=layers, heads=heads, batch=batch)
    return {"config": config, "threads": torch.get_num_threads(), "rounds": repeats, "models": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=256, help="sequence length of the batch (default 256)")
    parser.add_argument("--width", type=int, default=256, help="d_model (default 256)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=40, help="interleaved rounds; the medians count (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: course_lib's choice)")
    args = parser.parse_args()
    result = measure(**vars(args))
    print(
        f"{args.layers} layers, width {args.width}, {args.heads} heads, vocab {args.vocab}, "
        f"batch {args.batch} x {args.context}, {result['threads']} threads, {args.repeats} rounds. "
        "Speed: Hugging Face's time / the model's (median over rounds, and its quartiles); "
        "cpu: the same in CPU time"
    )
    print(f"{'':<30}{'train step':>11}{'speed':>8}{'quartiles':>12}{'cpu':>7}{'forward':>12}{'speed':>8}{'cpu':>7}")
    for name, measured in result["models"].items():
        row = f"{name:<30}"
        for kind in ("train", "forward"):
            ms, speed, cpu = (measured[f"{kind}_{what}"] for what in ("ms", "speed", "cpu_speed"))
            row += f"{ms:>8.0f} ms{speed:>7.2f}x"
            if kind == "train":
                row += "{:>7.2f}-{:.2f}".format(*measured["train_speed_quartiles"])
            row += f"{cpu:>6.2f}x"
        print(row)


if __name__ == "__main__":
    main()
