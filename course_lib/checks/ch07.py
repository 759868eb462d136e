"""Visible checks of Chapter 7 — rotary position embeddings.

Expected values are written out, or computed here from the public definitions: Hugging Face's
``inv_freq`` formula and ``rotate_half`` for the split-halves convention, and complex multiplication
(``torch.view_as_complex``) for the adjacent-pairs convention of Meta's reference code.
"""

from course_lib.checks import seeded_randn
from course_lib.grading import visible_check

import torch

F32, F64 = torch.float32, torch.float64


def _inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """Hugging Face's ``LlamaRotaryEmbedding.compute_default_rope_parameters``, written out."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=F32) / head_dim))


def _tables(head_dim: int, positions: torch.Tensor, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    angles = positions.to(F32)[:, None] * _inv_freq(head_dim, base)  # (seq, head_dim / 2)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _halves(x, cos, sin):
    """Hugging Face's ``apply_rotary_pos_emb``: cos and sin duplicated over the two halves."""
    cos, sin = torch.cat((cos, cos), dim=-1).to(x.dtype), torch.cat((sin, sin), dim=-1).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def _module(lib, head_dim: int, max_seq_len: int, base: float = 10000.0, interleaved: bool = False):
    """The learner's RotaryEmbedding with Hugging Face's frequencies: 7.3 is checked whatever 7.1 does."""
    return lib.RotaryEmbedding.from_frequencies(_inv_freq(head_dim, base), max_seq_len, interleaved=interleaved)


def _complex(x, cos, sin):
    """Meta's convention: features (2i, 2i + 1) are the complex number x_2i + i x_2i+1, times e^(i angle)."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    turn = torch.complex(cos.to(x.dtype), sin.to(x.dtype))
    return torch.view_as_real(z * turn).flatten(-2)


# -- 7.1 rope_frequencies ---------------------------------------------------------------------------


@visible_check("7.1")
def small_example_and_dtype(t):
    """head_dim 8, base 10000 -> [1, 0.1, 0.01, 0.001] in float32; head_dim 2 -> [1]"""
    lib = t.learner("rope")
    t.close(lib.rope_frequencies(8), torch.tensor([1.0, 0.1, 0.01, 0.001]), atol=0, rtol=1e-6, what="head_dim 8")
    t.close(lib.rope_frequencies(8, 10000.0), torch.tensor([1.0, 0.1, 0.01, 0.001]), atol=0, rtol=1e-6)
    t.close(lib.rope_frequencies(2), torch.tensor([1.0]), atol=0, rtol=0, what="head_dim 2")


@visible_check("7.1")
def matches_hugging_face(t):
    """equals Hugging Face's inv_freq for Llama's head_dim 128, bases 10000 and 500000"""
    lib = t.learner("rope")
    for base in (10000.0, 500000.0):
        t.close(lib.rope_frequencies(128, base), _inv_freq(128, base), atol=0, rtol=1e-6, what=f"base {base:g}")


@visible_check("7.1", inputs=True)
def rejects_odd_widths_and_small_bases(t):
    """an odd or non-positive head_dim, a base of 1 or less raise ValueError"""
    lib = t.learner("rope")
    for bad in (7, 0, -4):
        t.raises(ValueError, lib.rope_frequencies, bad)
    for bad in (1.0, 0.5, -10000.0):
        t.raises(ValueError, lib.rope_frequencies, 8, bad)


# -- 7.2 apply_rope ---------------------------------------------------------------------------------


@visible_check("7.2")
def docstring_example(t):
    """the docstring's example: a quarter turn of one pair, in both conventions"""
    lib = t.learner("rope")
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    cos, sin = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    t.close(lib.apply_rope(x, cos, sin), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), what="split halves")
    t.close(lib.apply_rope(x, cos, sin, interleaved=True), torch.tensor([[0.0, 1.0, 0.0, 1.0]]), what="adjacent")


@visible_check("7.2")
def halves_match_hugging_face(t):
    """interleaved=False equals Hugging Face's apply_rotary_pos_emb on (batch 2, heads 3, seq 5, head_dim 8)"""
    lib = t.learner("rope")
    x = seeded_randn(1, 2, 3, 5, 8)
    cos, sin = _tables(8, torch.arange(5))
    t.close(lib.apply_rope(x, cos, sin), _halves(x, cos, sin), atol=1e-12, rtol=1e-12)


@visible_check("7.2")
def adjacent_pairs_are_complex_multiplication(t):
    """interleaved=True equals multiplying (x_2i + i x_2i+1) by e^(i angle), on (2, 3, 5, 8)"""
    lib = t.learner("rope")
    x = seeded_randn(2, 2, 3, 5, 8)
    cos, sin = _tables(8, torch.arange(3, 8))
    t.close(lib.apply_rope(x, cos, sin, interleaved=True), _complex(x, cos, sin), atol=1e-12, rtol=1e-12)


@visible_check("7.2", inputs=True)
def rejects_mismatched_tables(t):
    """an odd head_dim, or cos and sin not of shape (seq, head_dim // 2), raise ValueError"""
    lib = t.learner("rope")
    cos, sin = _tables(4, torch.arange(3))
    t.raises(ValueError, lib.apply_rope, torch.zeros(3, 5), cos, sin)
    t.raises(ValueError, lib.apply_rope, torch.zeros(2, 3, 8), cos, sin)
    t.raises(ValueError, lib.apply_rope, torch.zeros(2, 4, 4), cos, sin)


# -- 7.3 RotaryEmbedding.forward ----------------------------------------------------------------------


@visible_check("7.3")
def rotates_positions_from_zero(t):
    """forward(q) rotates positions 0 ... seq - 1 as Hugging Face does (batch 2, heads 3, seq 6, head_dim 8)"""
    lib = t.learner("rope")
    rope = _module(lib, 8, 16)
    q = seeded_randn(3, 2, 3, 6, 8)
    cos, sin = _tables(8, torch.arange(6))
    t.close(rope(q), _halves(q, cos, sin), atol=1e-6, rtol=1e-6)


@visible_check("7.3")
def offsets_continue_the_positions(t):
    """forward(x, offset=5) rotates positions 5 ... 9; the pieces of a sequence equal the whole"""
    lib = t.learner("rope")
    rope = _module(lib, 8, 16, base=500000.0)
    x = seeded_randn(4, 1, 2, 10, 8)
    cos, sin = _tables(8, torch.arange(5, 10), base=500000.0)
    t.close(rope(x[..., 5:, :], offset=5), _halves(x[..., 5:, :], cos, sin), atol=1e-6, rtol=1e-6, what="offset 5")
    whole = rope(x)
    t.close(rope(x[..., 9:, :], offset=9), whole[..., 9:, :], atol=1e-12, rtol=1e-12, what="one token at 9")


@visible_check("7.3")
def interleaved_module(t):
    """a module made with interleaved=True rotates adjacent pairs (complex multiplication)"""
    lib = t.learner("rope")
    rope = _module(lib, 6, 12, interleaved=True)
    k = seeded_randn(5, 2, 4, 3, 6)
    cos, sin = _tables(6, torch.arange(2, 5))
    t.close(rope(k, offset=2), _complex(k, cos, sin), atol=1e-6, rtol=1e-6)


@visible_check("7.3", inputs=True)
def rejects_positions_past_the_tables(t):
    """offset + seq > max_seq_len and a negative offset raise ValueError"""
    lib = t.learner("rope")
    rope = _module(lib, 8, 16)
    t.raises(ValueError, rope, torch.zeros(1, 1, 4, 8), offset=13)
    t.raises(ValueError, rope, torch.zeros(1, 1, 17, 8))
    t.raises(ValueError, rope, torch.zeros(1, 1, 1, 8), offset=-1)
