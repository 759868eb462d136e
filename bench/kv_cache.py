"""Decoding with and without a KV cache on this CPU: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.kv_cache                 # both small models, up to 512 new tokens
    PYTHONPATH=. .venv/bin/python -m bench.kv_cache --lengths 64 128 --repeats 1 --model llama

Each model is untrained (the speed does not depend on the weights), in float32 and evaluation mode.
For each length N it times the greedy generation of N tokens after a 16-token prompt, the best of
``--repeats`` runs: without a cache (Chapter 5's ``sampling.generate``, which runs the whole text
through the model for every token) and with one (``kv_cache.generate``: one prefill, then one token
per step), checks that both chose the same tokens, and prints the times, the tokens per second and
the speed-up. The course's goal: at least 5x faster with the cache at 512 new tokens.
"""

from __future__ import annotations

from course_lib import gpt, kv_cache, llama, sampling

import argparse
import os

import torch

PROMPT = 16
#: Two small models of about the same size, each with room for the prompt and 512 new tokens: width 256 (the Llama's
#: feed-forward width 768 is Meta's rule for it, Chapter 6), 4 blocks, 4 heads (the Llama's sharing 2 key/value heads).
#: Smaller models measure Python's overhead per step more than the cache: at width 192 the ratio fell to 4-5x.
MODELS = {
    "gpt2": lambda: gpt.GPT(gpt.GPTConfig(vocab_size=2048, context_length=1024, d_model=256, n_layers=4, n_heads=4)),
    "llama": lambda: llama.Llama(
        llama.LlamaConfig(
            vocab_size=2048, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=768, context_length=1024
        )
    ),
}


def measure(name: str, lengths: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """``{N: (seconds without a cache, seconds with one)}`` for one model of :data:`MODELS`."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    prompt = torch.randint(model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    times = {}
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, prompt {PROMPT} tokens")
    columns = ("new tokens", "no cache (s)", "cache (s)", "tok/s no cache", "tok/s cache", "speed-up")
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, (10, 13, 10, 15, 12, 9))))
    for n in lengths:
        same = torch.equal(
            kv_cache.generate(model, prompt, n, temperature=0),
            sampling.generate(model, prompt, n, temperature=0),
        )
        slow = kv_cache.time_generation(model, prompt, n, use_cache=False, repeats=repeats)
        fast = kv_cache.time_generation(model, prompt, n, use_cache=True, repeats=repeats)
        times[n] = (slow, fast)
        flag = "" if same else "  (the tokens differ!)"
        print(f"{n:>10} {slow:>13.3f} {fast:>10.3f} {n / slow:>15.0f} {n / fast:>12.0f} {slow / fast:>8.1f}x{flag}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind; the best counts (default 3)")
    parser.add_argument("--model", choices=[*MODELS, "both"], default="both")
    args = parser.parse_args()
    os.environ.setdefault("COURSE_LIB_SOLUTIONS", "1")  # the references, unless told otherwise
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in MODELS if args.model == "both" else [args.model]:
        times = measure(name, args.lengths, args.repeats)
        longest = max(times)
        slow, fast = times[longest]
        verdict = "meets" if slow / fast >= 5 else "misses"
        print(f"{name}: {slow / fast:.1f}x faster with the cache at {longest} new tokens ({verdict} the goal of 5x)")


if __name__ == "__main__":
    main()
