"""Chapter 15's ring attention on the reference solutions: the ring's arithmetic in one process and across real
processes (``torch.distributed`` with gloo, started by ``torch.multiprocessing``, rendezvous in a temporary
``FileStore``: no port), both against ``torch.nn.functional.scaled_dot_product_attention`` with the causal mask;
and the communication counted by hand.

Every multi-process run has a timeout and kills and reaps its processes (``run_ring``'s ``finally``).
The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture); the spawned
processes inherit it.
"""

from __future__ import annotations

from course_lib import ring

import multiprocessing

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_randn as _randn


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _qkv(seed, shape, d_v=None, dtype=torch.float32):
    q, k = _randn(seed, *shape, dtype=dtype), _randn(seed + 1, *shape, dtype=dtype)
    return q, k, _randn(seed + 2, *shape[:-1], d_v or shape[-1], dtype=dtype)


def test_the_docstring_example():
    q = k = v = torch.eye(2)[None]
    out, lse = ring.ring_step(q, k, v, torch.zeros(1, 2, 2), torch.full((1, 2), float("-inf")), rank=0, source=0)
    assert out[0, 0].tolist() == [1.0, 0.0]
    torch.testing.assert_close(
        lse, torch.logsumexp(torch.tensor([[[1 / 2**0.5, float("-inf")], [0.0, 1 / 2**0.5]]]), -1)
    )


def test_the_schedule_passes_each_block_once_to_every_rank():
    schedule = ring.ring_schedule(4)
    assert schedule[0] == [0, 1, 2, 3]  # each rank starts with its own block
    assert schedule[1] == [3, 0, 1, 2]  # then its left neighbour's
    for rank in range(4):
        assert sorted(step[rank] for step in schedule) == [0, 1, 2, 3]
    assert ring.causal_work(4) == [1, 2, 3, 4]


@pytest.mark.parametrize("world, n", [(1, 7), (2, 5), (3, 4), (4, 3)])
def test_the_ring_in_one_process_is_causal_attention(world, n):
    q, k, v = _qkv(0, (2, 3, world * n, 5), d_v=3)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ring.simulate_ring(q, k, v, world), expected, atol=1e-6, rtol=1e-5)


def test_blocks_must_divide_the_sequence():
    q, k, v = _qkv(10, (1, 1, 7, 2))
    with pytest.raises(ValueError, match="divisible"):
        ring.simulate_ring(q, k, v, 2)
    with pytest.raises(ValueError, match="divisible"):
        ring.run_ring(q, k, v, 2)  # refused before any process starts
    with pytest.raises(ValueError, match="world_size"):
        ring.split_blocks(q, 0)


def test_communication_by_hand():
    # 2 × 4 heads × (96 / 3 = 32 positions) × (16 key + 8 value numbers) × 4 bytes per step and rank.
    counted = ring.ring_bytes(batch=2, heads=4, seq=96, d_head=16, world_size=3, d_value=8)
    per_step = 2 * 4 * 32 * (16 + 8) * 4
    assert counted == {"per_step": per_step, "per_rank": 2 * per_step, "total": 3 * 2 * per_step}
    assert ring.ring_bytes(1, 1, 8, 4, 1)["total"] == 0  # one process sends nothing
    assert ring.block_flops(2, 4, 32, 16, 8) == 2 * (2 * 4 * 32 * 32 * 16) + 2 * (2 * 4 * 32 * 32 * 8)


@pytest.mark.parametrize("world", [2, 3])
def test_ring_attention_across_processes(world):
    q, k, v = _qkv(20, (2, 3, 6 * world, 5), d_v=4)
    result = ring.run_ring(q, k, v, world, timeout=60)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(result["out"], expected, atol=1e-6, rtol=1e-5)
    counted = ring.ring_bytes(2, 3, 6 * world, 5, world, d_value=4)
    assert result["sent"] == [[counted["per_step"]] * (world - 1)] * world  # what each rank measured it sent
    assert sum(map(sum, result["sent"])) == counted["total"]


def test_a_ring_past_its_timeout_is_killed_and_reaped():
    q, k, v = _qkv(30, (1, 1, 8, 2))
    with pytest.raises(TimeoutError, match="did not finish"):
        ring.run_ring(q, k, v, 2, timeout=0.01)
    assert not [p for p in multiprocessing.active_children() if getattr(p, "_target", None) is ring._worker]


def test_a_failing_rank_is_reported(stubs):
    q, k, v = _qkv(40, (1, 1, 8, 2))
    with pytest.raises(RuntimeError, match="failed"):
        ring.run_ring(q, k, v, 2, timeout=60)  # the stub of ring_step raises in every process
