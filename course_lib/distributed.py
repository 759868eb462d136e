"""Chapter 14 — the capstone's training on several processes, with PyTorch's ``DistributedDataParallel``.

Data parallelism: every process holds a whole copy of the model and computes the gradient of its own share of
the global batch; the backward pass averages the gradients across processes (an all-reduce), so that every
copy takes the same optimizer step and the copies stay equal. PyTorch's ``DistributedDataParallel`` (DDP;
Li et al., 2020, arXiv:2006.15704) does that averaging, in buckets overlapped with the backward pass. This
module drives the chapter's training step, :func:`course_lib.deepseek.train_step`, under it::

    python -m course_lib.distributed --steps 200                                    # one process
    torchrun --standalone --nproc_per_node=2 -m course_lib.distributed --steps 200  # two, on one machine

(``torchrun`` is ``python -m torch.distributed.run``.) With the same ``--global-batch`` both runs see the same
tokens and compute the same losses, to float rounding. What makes that true for DeepSeek's model:

- **Equal shares, mean losses.** Process ``r`` of ``W`` takes rows ``r·B/W ... (r+1)·B/W - 1`` of the global batch
  of ``B`` windows (:func:`shard_rows`; ``B`` must be divisible by ``W``). Each process's loss is a mean over its
  rows, and DDP *averages* the gradients, so the result is the gradient of the mean over the global batch.
- **Experts no token chose.** With few tokens per process, a routed expert may receive none of a process's
  tokens: its parameters then get no gradient there. Unless told (``find_unused_parameters=True``), DDP waits for
  that gradient, never finishes averaging the step's gradients, and stops with an error at the next forward
  pass. Told, it counts such a gradient as zero in the average, and leaves ``grad`` as ``None`` for a parameter
  that no process used, as one process would: AdamW skips a ``None`` gradient (no step, no weight decay, no moment
  update) but not a zero one.
- **The routing bias is a buffer**, changed by the auxiliary-loss-free rule, not by gradients. Every process
  applies the same update from the *global* load — its own load summed over the processes by an all-reduce
  (:func:`sum_over_processes`, passed as ``reduce_load``) — so the biases stay equal without DDP broadcasting
  them at every forward (``forward_sync_buffers=False``); the run measures that they agree.
- **Clipping** happens after the backward pass, on the averaged gradient, so every process clips by the same
  global norm. **Seeds:** every process seeds the same way and draws the same global batch; DDP also copies
  process 0's parameters to the others when it wraps the model.

Process 0 writes the losses of every step (means over the global batch), the final routing biases and a
parameter checksum to ``--out`` (JSON); :func:`launch` runs the command in fresh processes and reads that file
back (the chapter and ``tests/test_distributed.py`` use it). Only ``torch.distributed`` is used:
``init_process_group`` reads the rendezvous that ``torchrun`` sets up in the environment; gloo on CPUs, NCCL on
GPUs (``--backend nccl``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from .validation import check_positive_int


def shard_rows(global_batch: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch of ``global_batch`` windows that process ``rank`` of ``world_size`` trains on:
    ``rank·B/W ... (rank+1)·B/W - 1``, as a ``slice``. Equal shares make the mean of the processes' mean losses
    the mean over the global batch.

    Raises:
        ValueError: if ``global_batch`` is not divisible by ``world_size`` (unequal shares would weigh the rows of
            the smaller ones more), or a size or rank is out of range.
    """
    check_positive_int("global_batch", global_batch)
    check_positive_int("world_size", world_size)
    if type(rank) is not int or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    if global_batch % world_size:
        raise ValueError(
            f"the global batch of {global_batch} windows cannot be split equally between {world_size} processes: "
            f"choose a multiple of {world_size}"
        )
    share = global_batch // world_size
    return slice(rank * share, (rank + 1) * share)


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed element-wise over all the processes (an all-reduce, in place), returned; the tensor
    itself when no process group is initialised (one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _spread(tensors: list[torch.Tensor]) -> float:
    """The largest absolute difference between process 0's copy of ``tensors`` and any other process's (0.0 for
    one process): whether the copies really are equal."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    first = flat.clone()
    dist.broadcast(first, src=0)
    gap = (flat - first).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)


def train(
    model: nn.Module,
    ids: torch.Tensor,
    steps: int,
    global_batch: int,
    context_length: int,
    lr: float = 3e-3,
    seed: int = 0,
    mtp_weight: float = 0.3,
    bias_rate: float = 1e-3,
    max_norm: float = 1.0,
    progress: bool = False,
) -> dict[str, list]:
    """Train ``model`` (a :class:`~course_lib.deepseek.DeepSeek`, or DDP wrapping one) for ``steps`` steps of
    :func:`course_lib.deepseek.train_step` on this process's share of seeded global batches of ``ids``.

    Every process draws the same ``global_batch`` windows of ``context_length + 1`` tokens with a generator
    seeded by ``seed`` (:func:`course_lib.data.get_batch`) and keeps its rows (:func:`shard_rows`). The recipe is
    Chapter 5's (AdamW from :func:`~course_lib.training.make_optimizer`, warm-up over ``steps // 20`` steps and a
    cosine decay to ``lr / 10``, :func:`~course_lib.training.apply_schedule`); the routing-bias update reads the load
    summed over the processes.

    Returns:
        ``{"loss", "main", "mtp": [per step, the mean over the global batch], "idle_local": [per step, routed
        experts (over all MoE layers) that received none of some process's tokens, counted per process and
        summed], "idle_global": [per step, those that received no token of the global batch], "adam_steps": [for
        each parameter, the steps AdamW took on it]}``.
    """
    from tqdm import tqdm

    from .data import get_batch
    from .deepseek import train_step
    from .moe import moe_layers
    from .training import apply_schedule, make_optimizer

    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    rows = shard_rows(global_batch, rank, world_size)
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    layers = moe_layers(model)
    history: dict[str, list] = {"loss": [], "main": [], "mtp": [], "idle_local": [], "idle_global": []}
    global_loads: list[torch.Tensor] = []

    def reduce_load(load: torch.Tensor) -> torch.Tensor:
        load = sum_over_processes(load)
        global_loads.append(load)
        return load

    model.train()
    for step in tqdm(range(steps), disable=not progress, desc=f"training on {world_size}", mininterval=1.0):
        apply_schedule(optimizer, step, lr, steps)
        x, y = get_batch(ids, global_batch, context_length, generator)  # (B, T) each: the same on every process
        windows = torch.cat([x, y[:, -1:]], dim=1)  # (B, T + 1): inputs and targets in one, as the chapter's run
        global_loads.clear()
        losses = train_step(
            model, optimizer, windows[rows].to(device), mtp_weight, bias_rate, max_norm, reduce_load=reduce_load
        )
        # Each process's losses are means over its rows; their mean over the processes is the global batch's.
        values = torch.tensor([losses["loss"], losses["main"], losses["mtp"]], dtype=torch.float64, device=device)
        idle = torch.tensor(
            [sum(int((layer.last_load == 0).sum()) for layer in layers)], dtype=torch.int64, device=device
        )
        sum_over_processes(values)
        sum_over_processes(idle)
        for name, value in zip(("loss", "main", "mtp"), (values / world_size).tolist(), strict=True):
            history[name].append(value)
        history["idle_local"].append(int(idle))
        history["idle_global"].append(sum(int((load == 0).sum()) for load in global_loads))
    # How many steps AdamW took on each parameter: it skips a parameter whose gradient is None (an expert no
    # token of the global batch chose), so the counts show whether DDP kept those gradients None.
    history["adam_steps"] = [int(optimizer.state[p]["step"]) if p in optimizer.state else 0 for p in model.parameters()]
    model.eval()
    return history


def launch(args: list[str], nproc: int = 1, timeout: float = 300.0, env: dict[str, str] | None = None) -> dict:
    """Run this module's training in fresh processes and return process 0's results (the ``--out`` JSON, written
    to a temporary file here): ``nproc = 1`` is plain ``python -m course_lib.distributed``, more is ``torchrun
    --standalone --nproc_per_node=nproc`` (one machine, a free port). ``args`` are the command's flags.

    The processes share one process group, killed as a whole if the run exceeds ``timeout`` seconds, and are
    always reaped. ``env`` (default: this process's) gets this ``course_lib`` on ``PYTHONPATH`` and, unless it
    says otherwise, ``COURSE_LIB_THREADS`` splitting this machine's cores between the processes.

    Raises:
        RuntimeError: if the run fails (its output's end in the message) or times out.
    """
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from .threads import cores

    check_positive_int("nproc", nproc)
    env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parent.parent)  # the folder holding course_lib
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("COURSE_LIB_THREADS", str(max(1, cores() // nproc)))
    command = [sys.executable, "-m", "course_lib.distributed"]
    if nproc > 1:
        command[2:2] = ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        process = subprocess.Popen(
            [*command, *args, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # torchrun and its workers in one process group: killed together
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(command)} ran past {timeout} s and was stopped") from None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(command)} failed (exit code {process.returncode}):\n{output[-3000:]}")
        return json.loads(out.read_text())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.distributed",
        description="Train the capstone's mini-DeepSeek on one process, or on several under torchrun with DDP.",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--global-batch", type=int, default=16, help="windows per step, over all processes")
    parser.add_argument("--context-length", type=int, default=32)
    parser.add_argument("--plays", nargs="*", default=["hamlet"])
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--bpe-chars", type=int, default=100_000, help="the tokenizer learns from this many characters")
    parser.add_argument("--n-routed-experts", type=int, default=None, help="default: capstone.mini_config's")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mtp-weight", type=float, default=0.3)
    parser.add_argument("--bias-rate", type=float, default=1e-3)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="nccl: one GPU per process")
    parser.add_argument("--eval-windows", type=int, default=256, help="held-out windows measured at the end (0: none)")
    parser.add_argument("--out", default=None, help="process 0 writes the losses and checks here (JSON)")
    parser.add_argument("--state", default=None, help="process 0 saves the trained weights here (a state dict)")
    parser.add_argument("--progress", action="store_true", help="a progress bar on process 0")
    args = parser.parse_args(argv)
    for name in ("steps", "global_batch", "vocab_size", "bpe_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.context_length < 2 or args.eval_windows < 0:
        parser.error(
            "--context-length must be at least 2 (the MTP module reads one position less) and --eval-windows >= 0"
        )
    return args


def main(argv: list[str] | None = None) -> dict | None:
    """Train on one process (plain ``python -m course_lib.distributed``) or on each process ``torchrun`` starts;
    returns process 0's results (``None`` on the others)."""
    import course_lib

    from .baselines import bigram_loss
    from .capstone import mini_config
    from .data import plays_corpus, sliding_windows
    from .deepseek import DeepSeek
    from .moe import moe_layers
    from .training import evaluate

    args = _parse(argv)
    launched = "WORLD_SIZE" in os.environ  # torchrun's rendezvous is in the environment
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    shard_rows(args.global_batch, rank, world_size)  # a bad batch fails here, before any work
    if args.backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("--backend nccl needs CUDA GPUs; use gloo on CPUs")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if launched:
        dist.init_process_group(backend=args.backend)
    try:
        course_lib.seed_everything(args.seed)
        train_ids, val_ids, bpe = plays_corpus(args.plays, args.vocab_size, bpe_chars=args.bpe_chars)
        overrides = {} if args.n_routed_experts is None else {"n_routed_experts": args.n_routed_experts}
        config = mini_config(bpe.n_vocab, args.context_length, **overrides)  # the chapter's mini-DeepSeek
        torch.manual_seed(args.seed)
        model = DeepSeek(config).to(device=device, dtype=getattr(torch, args.dtype))
        net = model
        if launched:
            net = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,  # an expert may receive none of a process's tokens
                forward_sync_buffers=False,  # the routing biases change the same way everywhere (global load)
            )
        start = time.perf_counter()
        history = train(
            net,
            train_ids,
            args.steps,
            args.global_batch,
            args.context_length,
            lr=args.lr,
            seed=args.seed,
            mtp_weight=args.mtp_weight,
            bias_rate=args.bias_rate,
            max_norm=args.max_norm,
            progress=args.progress and rank == 0,
        )
        seconds = time.perf_counter() - start
        biases = [layer.gate.e_score_correction_bias for layer in moe_layers(model)]
        params = list(model.parameters())
        result = {
            "world_size": world_size,
            "backend": args.backend if launched else None,
            "steps": args.steps,
            "global_batch": args.global_batch,
            "context_length": args.context_length,
            "dtype": args.dtype,
            **history,
            "bias": [bias.tolist() for bias in biases],
            "checksum": math.fsum(float(p.detach().double().sum()) for p in params),
            "bias_spread": _spread(biases),
            "param_spread": _spread(params),
            "seconds": seconds,
        }
        if rank != 0:
            return None
        if args.eval_windows:  # the first windows of the held-out tenth, against a bigram model's loss there
            inputs, targets = sliding_windows(val_ids, args.context_length, args.context_length)
            val = list(zip(inputs[: args.eval_windows].split(16), targets[: args.eval_windows].split(16), strict=True))
            result["held_out"] = evaluate(model, [(x.to(device), y.to(device)) for x, y in val])
            result["bigram"] = bigram_loss(train_ids, val_ids, bpe.n_vocab)
        if args.out:
            with open(args.out, "w") as file:
                json.dump(result, file)
        if args.state:
            torch.save(model.state_dict(), args.state)
        held_out = f", held-out {result['held_out']:.3f} (bigram {result['bigram']:.3f})" if args.eval_windows else ""
        print(
            f"{world_size} process(es), {args.steps} steps of {args.global_batch} windows: last loss "
            f"{result['loss'][-1]:.4f}{held_out}, {seconds:.1f} s"
        )
        return result
    finally:
        if launched:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
