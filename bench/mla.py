"""Multi-head Latent Attention on this CPU, naive against absorbed: a benchmark, not a test.

    PYTHONPATH=. .venv/bin/python -m bench.mla                        # 16 and 64 heads, contexts up to 8,192
    PYTHONPATH=. .venv/bin/python -m bench.mla --heads 16 --contexts 256 1024 --repeats 3

One MLA layer with V3's per-head sizes (keys 128 + 64 wide, values 128, latent 512) and a narrower model
(width 1,024, query rank 384, ``--heads`` heads instead of 128), untrained, float32, one text. For each
context ``t`` it times one decoding step (the median of ``--repeats``) through the cache of every head's keys
and values (``forward_expanded``) and through the latent cache (``forward_absorbed``), then prefills of a few
lengths both ways, and prints the times and the ratios side by side, all in one process. Absorption should win
in decoding by more as the context grows (the step reads the cache), and lose in prefill (its scores are
``2 kv_lora_rank + rope`` wide per head instead of ``qk_head_dim + v_head_dim``).
"""

from __future__ import annotations

from course_lib import mla
from course_lib.deepseek import DeepSeekConfig

import argparse


def config(heads: int, context: int) -> DeepSeekConfig:
    return DeepSeekConfig.v3(d_model=1024, n_heads=heads, q_lora_rank=384, context_length=context, yarn=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--prefill", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for heads in args.heads:
        c = config(heads, max(args.contexts + args.prefill))
        per_token = mla.cache_elements(c)
        print(f"\n{heads} heads: {per_token['naive']:,} numbers cached per token naive, {per_token['latent']} latent")
        print(
            f"{'context':>8} {'naive ms':>9} {'absorbed ms':>12} {'naive/absorbed':>15} {'cache MiB naive/latent':>23}"
        )
        decode, prefill = mla.time_mla(c, args.contexts, args.prefill, repeats=args.repeats)
        for row in decode:
            naive, absorbed = row["naive"] * 1e3, row["absorbed"] * 1e3
            mib = f"{row['naive_bytes'] / 2**20:.1f} / {row['latent_bytes'] / 2**20:.2f}"
            print(f"{row['context']:>8} {naive:>9.2f} {absorbed:>12.2f} {naive / absorbed:>14.2f}x {mib:>23}")
        print(f"{'prefill':>8} {'naive ms':>9} {'absorbed ms':>12} {'naive/absorbed':>15} {'FLOPs absorbed/naive':>23}")
        for row in prefill:
            t = row["length"]
            flops = mla.attention_flops(c, t, t, True)["flops"] / mla.attention_flops(c, t, t, False)["flops"]
            naive, absorbed = row["naive"] * 1e3, row["absorbed"] * 1e3
            print(f"{t:>8} {naive:>9.1f} {absorbed:>12.1f} {naive / absorbed:>14.2f}x {flops:>22.2f}x")


if __name__ == "__main__":
    main()
