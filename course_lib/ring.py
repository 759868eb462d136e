"""Chapter 15 — ring attention: exact causal attention over a sequence split across processes.

Ring Attention (Liu, Zaharia & Abbeel 2023, arXiv:2310.01889) cuts the sequence into ``W`` contiguous blocks, one
per process (rank ``r`` holds positions ``r·n ... r·n + n - 1`` of the queries, keys and values). The key/value
blocks then travel around a ring: at each of ``W`` steps every process computes attention of its own queries to the
key/value block it holds, merges the result into a running state, and passes that block on to rank ``r + 1`` while
receiving the next one from rank ``r - 1``. After ``W`` steps each query block has met every key block once, so no
process ever holds more than two key/value blocks, and the transfer of the next block overlaps the computation on
the current one.

The merge is the online softmax of :mod:`course_lib.long_context`, here in its *log-sum-exp* form: the state is the
normalised output so far and the log of the softmax's denominator, ``lse``. Causality is decided by block index:
a block from an earlier rank is wholly visible, the own block is causal inside, a later rank's block is invisible.

The communication here is PyTorch's: ``torch.distributed`` with the gloo backend on CPU (NCCL would serve GPUs),
``batch_isend_irecv`` for the neighbour exchange, processes started with ``torch.multiprocessing`` (fresh processes
from a fork server, or spawned) and a ``FileStore`` in a temporary folder for the rendezvous (no port to choose).

Exercise in this module: 15.2 :func:`ring_step`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .exercises import exercise
from .validation import check_positive_int

# --------------------------------------------------------------------------------------
# Exercise: one step of the ring
# --------------------------------------------------------------------------------------


@exercise("15.2", "The ring step", points=3)
def ring_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rank: int,
    source: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the attention of rank ``rank``'s queries to the key/value block of rank ``source`` into the state.

    The sequence is split into equal contiguous blocks, block ``r`` held by rank ``r``; ``q`` is block ``rank``'s
    queries and ``k``, ``v`` are block ``source``'s keys and values. Causal attention decides by block index:

    * ``source < rank``: every key of the block is in the past — all visible;
    * ``source == rank``: the diagonal block — query ``i`` sees key ``j`` when ``j <= i`` (positions within the block);
    * ``source > rank``: every key is in the future — nothing visible: return the state unchanged (and compute nothing).

    Scores are ``q @ k.T / sqrt(d)``. The state is in log-sum-exp form: for each query row, over the keys merged so far,

    * ``lse`` = ``log Σ exp(score)`` (``-inf`` while no key has been merged),
    * ``out`` = the **normalised** attention output over those keys, ``Σ softmax(score) · value`` (zeros to start).

    Merging a block with its own ``lse_b`` and normalised ``out_b`` gives ``lse' = log(exp(lse) + exp(lse_b))`` and
    ``out' = exp(lse - lse') · out + exp(lse_b - lse') · out_b``. Compute it without overflow (``torch.logaddexp``).
    Every row sees at least one key of a block it computes (its own key on the diagonal), so ``lse'`` is finite; a
    later block on the empty state must leave it ``lse = -inf``, ``out = 0`` — never NaN (do not compute it).
    This is self-contained: do not rely on Exercise 15.1.

    Args:
        q: ``(..., n, d)`` rank ``rank``'s queries.
        k: ``(..., n, d)`` and v: ``(..., n, d_v)``, the block that started on rank ``source``.
        out: ``(..., n, d_v)``; lse: ``(..., n)``. All floating point of one dtype, the same leading dimensions.
        rank, source: ints of at least 0.

    Returns:
        A new tuple ``(out, lse)`` of the shapes and dtype of the inputs; the inputs are not modified.

    Raises:
        ValueError: if ``rank`` or ``source`` is not an int of at least 0 (a bool is not an int here), or the shapes
            do not fit together (``q`` and ``k`` must have the same ``n`` and ``d``).

    Example:
        >>> q = k = v = torch.eye(2)[None]                       # (1, 2, 2)
        >>> out, lse = torch.zeros(1, 2, 2), torch.full((1, 2), float("-inf"))
        >>> out, lse = ring_step(q, k, v, out, lse, rank=0, source=0)
        >>> out[0, 0]                                            # the first query sees only the first key
        tensor([1., 0.])
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The ring in one process (for checking, and for the figure)
# --------------------------------------------------------------------------------------


def split_blocks(x: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Cut ``(..., seq, d)`` into ``world_size`` equal contiguous blocks along ``seq``."""
    check_positive_int("world_size", world_size)
    if x.shape[-2] % world_size:
        raise ValueError(f"the sequence length {x.shape[-2]} must be divisible by world_size {world_size}")
    return list(x.split(x.shape[-2] // world_size, dim=-2))


def ring_schedule(world_size: int) -> list[list[int]]:
    """``schedule[step][rank]``: the rank whose key/value block rank ``rank`` holds at step ``step``."""
    return [[(rank - step) % world_size for rank in range(world_size)] for step in range(world_size)]


def simulate_ring(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, world_size: int) -> torch.Tensor:
    """The ring's arithmetic in one process: every rank's steps in ring order with :func:`ring_step`, no messages."""
    qs, ks, vs = (split_blocks(x, world_size) for x in (q, k, v))
    outputs = []
    for rank in range(world_size):
        out = torch.zeros_like(vs[rank].expand(*qs[rank].shape[:-1], vs[rank].shape[-1]))
        lse = q.new_full(qs[rank].shape[:-1], float("-inf"))
        for sources in ring_schedule(world_size):
            source = sources[rank]
            out, lse = ring_step(qs[rank], ks[source], vs[source], out, lse, rank, source)
        outputs.append(out)
    return torch.cat(outputs, dim=-2)


# --------------------------------------------------------------------------------------
# The ring across processes (finished: the communication the course provides)
# --------------------------------------------------------------------------------------


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Causal attention of this process's block, inside an initialised process group (every rank calls it).

    ``q``, ``k``, ``v`` are this rank's blocks ``(..., n, d)`` (equal ``n`` on every rank). Returns ``(out, lse,
    sent)``: the output for this rank's queries, its log-sum-exp, and the bytes this rank sent at each step.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    to_next, from_prev = (rank + 1) % world, (rank - 1) % world
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)  # (..., n, d_v)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype)  # (..., n)
    k_cur, v_cur = k.contiguous(), v.contiguous()
    sent = []
    for step, sources in enumerate(ring_schedule(world)):
        pending = []
        if step < world - 1:  # the last block needs to go nowhere: every rank has now seen all W blocks
            k_next, v_next = torch.empty_like(k_cur), torch.empty_like(v_cur)
            ops = [
                dist.P2POp(dist.isend, k_cur, to_next, tag=0),
                dist.P2POp(dist.isend, v_cur, to_next, tag=1),
                dist.P2POp(dist.irecv, k_next, from_prev, tag=0),
                dist.P2POp(dist.irecv, v_next, from_prev, tag=1),
            ]
            pending = dist.batch_isend_irecv(ops)
            sent.append(k_cur.nbytes + v_cur.nbytes)
        # The block in hand is computed while the next one travels.
        out, lse = ring_step(q, k_cur, v_cur, out, lse, rank, sources[rank])
        for request in pending:
            request.wait()
        if pending:
            k_cur, v_cur = k_next, v_next
    return out, lse, sent


def _worker(rank: int, world_size: int, store_path: str, q, k, v, result_dir: str, environ: dict) -> None:
    """One process of :func:`run_ring`: join the group, run the ring on its block, save the result."""
    os.environ.update(environ)  # the caller's switches (COURSE_LIB_SOLUTIONS), not the fork server's
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        mine = [split_blocks(x, world_size)[rank] for x in (q, k, v)]
        out, lse, sent = ring_attention(*mine)
        torch.save({"out": out, "lse": lse, "sent": sent}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _context():
    """Fresh processes, as ``spawn`` makes them, but cheap: a *fork server* that has imported torch once forks them.

    Where there is no fork server (Windows), plain ``spawn``: each process then imports torch itself.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["course_lib.ring"])  # read when the server starts, ignored afterwards
    return context


def run_ring(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, world_size: int, timeout: float = 60.0) -> dict:
    """Start ``world_size`` processes (gloo), run ring attention on ``q, k, v`` ``(..., seq, d)``, gather the result.

    Each process receives the whole tensors but keeps only its block (a real run would load only its block).
    Returns ``{"out": (..., seq, d_v), "sent": [[bytes per step] per rank], "seconds": wall time}``.
    Raises ``TimeoutError`` if the processes have not finished within ``timeout`` seconds, ``RuntimeError`` if one
    fails; the processes are killed and reaped in every case.
    """
    split_blocks(q, world_size)  # validate before starting anything
    context = _context()
    environ = {name: value for name, value in os.environ.items() if name.startswith("COURSE_LIB_")}
    with tempfile.TemporaryDirectory(prefix="ring_") as tmp:
        store, results = str(Path(tmp) / "store"), Path(tmp)
        processes = []
        start = time.perf_counter()
        try:
            for rank in range(world_size):
                args = (rank, world_size, store, q, k, v, str(results), environ)
                process = context.Process(target=_worker, args=args, daemon=True)
                process.start()
                processes.append(process)
            deadline = start + timeout
            for process in processes:
                process.join(max(0.0, deadline - time.perf_counter()))
            if any(process.is_alive() for process in processes):
                raise TimeoutError(f"ring attention with {world_size} processes did not finish in {timeout} s")
            failed = [rank for rank, process in enumerate(processes) if process.exitcode != 0]
            if failed:
                codes = [processes[rank].exitcode for rank in failed]
                raise RuntimeError(f"ring attention: ranks {failed} failed (exit codes {codes})")
            seconds = time.perf_counter() - start
            parts = [torch.load(results / f"rank{rank}.pt") for rank in range(world_size)]
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join(5)
    return {"out": torch.cat([p["out"] for p in parts], dim=-2), "sent": [p["sent"] for p in parts], "seconds": seconds}


def ring_bytes(
    batch: int,
    heads: int,
    seq: int,
    d_head: int,
    world_size: int,
    bytes_per_number: int = 4,
    d_value: int | None = None,
) -> dict:
    """Communication of ring attention by hand: each of ``W - 1`` steps every rank sends one key and one value block.

    A block holds ``batch · heads · (seq / W)`` positions of ``d_head`` key numbers and ``d_value`` value numbers.
    Returns ``{"per_step": bytes one rank sends in one step, "per_rank": over the W - 1 steps,
    "total": over all W ranks}``.
    """
    d_value = d_head if d_value is None else d_value
    if seq % world_size:
        raise ValueError(f"seq {seq} must be divisible by world_size {world_size}")
    per_step = batch * heads * (seq // world_size) * (d_head + d_value) * bytes_per_number
    return {
        "per_step": per_step,
        "per_rank": per_step * (world_size - 1),
        "total": per_step * (world_size - 1) * world_size,
    }


def block_flops(batch: int, heads: int, n: int, d_head: int, d_value: int | None = None) -> int:
    """Floating-point operations of one full (query block, key block) tile, ``q·kᵀ`` and ``weights·v``.

    ``2·b·h·n²·d`` for the scores and ``2·b·h·n²·d_v`` for the weighted values (a multiply and an add each).
    """
    d_value = d_head if d_value is None else d_value
    return 2 * batch * heads * n * n * (d_head + d_value)


def causal_work(world_size: int) -> list[int]:
    """Tiles each rank computes (source <= rank) with contiguous blocks: ``rank + 1`` — the load imbalance."""
    return [sum(source <= rank for source in range(world_size)) for rank in range(world_size)]
