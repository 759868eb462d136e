"""Visible checks of Chapter 2 — embeddings."""

from course_lib.grading import visible_check

import math

import torch
import torch.nn.functional as F


def _formula(seq_len, d_model, base=10000.0):
    """The sinusoidal table written out entry by entry (Vaswani et al., 2017), in float64."""
    rows = []
    for pos in range(seq_len):
        row = []
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            row += [math.sin(angle), math.cos(angle)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).reshape(seq_len, d_model)


# -- 2.1 TokenEmbedding.forward -------------------------------------------------------------


@visible_check("2.1")
def looks_up_the_docstring_example(t):
    """looks up rows 3, 1, 1, 1 of a 4 x 2 table"""
    lib = t.learner("embeddings")
    emb = lib.TokenEmbedding(4, 2)
    emb.load_state_dict({"weight": torch.tensor([[0.0, 0.0], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])})
    expected = torch.tensor([[[3.0, 30.0], [1.0, 10.0]], [[1.0, 10.0], [1.0, 10.0]]])
    t.equal(emb(torch.tensor([[3, 1], [1, 1]])), expected)


@visible_check("2.1")
def matches_torch_embedding(t):
    """equals torch.nn.functional.embedding for ids of shapes (7,), (2, 5) and (2, 3, 4)"""
    lib = t.learner("embeddings")
    torch.manual_seed(21)
    weight = torch.randn(50, 8)
    emb = lib.TokenEmbedding(50, 8)
    emb.load_state_dict({"weight": weight})
    for shape in [(7,), (2, 5), (2, 3, 4)]:
        ids = torch.randint(0, 50, shape)
        t.equal(emb(ids), F.embedding(ids, weight), f"ids of shape {shape}")


@visible_check("2.1", inputs=True)
def refuses_bad_ids(t):
    """float ids, an id past the end and a negative id raise ValueError; the message names the id"""
    lib = t.learner("embeddings")
    emb = lib.TokenEmbedding(1000, 4)
    t.raises(ValueError, emb, torch.tensor([1.0, 2.0]))
    message = t.raises(ValueError, emb, torch.tensor([[5, 1234, 7]]))
    t.true("1234" in message, f"the message should name the id 1234, got {message!r}")
    t.raises(ValueError, emb, torch.tensor([3, -1]))


# -- 2.2 sinusoidal_positions -----------------------------------------------------------------


@visible_check("2.2")
def builds_the_docstring_example(t):
    """sinusoidal_positions(2, 4): sines in even columns, cosines in odd ones"""
    lib = t.learner("embeddings")
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]])
    t.close(lib.sinusoidal_positions(2, 4), expected, atol=1e-6)


@visible_check("2.2")
def follows_the_formula(t):
    """50 positions of width 16 follow PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)"""
    lib = t.learner("embeddings")
    t.close(lib.sinusoidal_positions(50, 16), _formula(50, 16).float(), atol=1e-5)


@visible_check("2.2")
def uses_the_base_argument(t):
    """uses the base it is given (100 here)"""
    lib = t.learner("embeddings")
    t.close(lib.sinusoidal_positions(10, 6, base=100.0), _formula(10, 6, base=100.0).float(), atol=1e-5)


@visible_check("2.2", inputs=True)
def refuses_an_odd_width(t):
    """an odd d_model raises ValueError"""
    lib = t.learner("embeddings")
    t.raises(ValueError, lib.sinusoidal_positions, 10, 7)


# -- 2.3 InputEmbedding.forward -----------------------------------------------------------------


def _input_embedding(lib, seed=23, vocab_size=20, d_model=6, context_length=8):
    torch.manual_seed(seed)
    tokens, positions = torch.randn(vocab_size, d_model), torch.randn(context_length, d_model)
    emb = lib.InputEmbedding(vocab_size, d_model, context_length)
    emb.load_state_dict({"token.weight": tokens, "position.weight": positions})
    return emb, tokens, positions


@visible_check("2.3")
def adds_token_and_position_vectors(t):
    """output = token vector + vector of positions 0, 1, ..., seq - 1, shape (batch, seq, d_model)"""
    lib = t.learner("embeddings")
    emb, tokens, positions = _input_embedding(lib)
    ids = torch.tensor([[1, 4, 4, 19, 0], [2, 2, 2, 2, 2]])
    t.close(emb(ids), F.embedding(ids, tokens) + positions[:5], atol=1e-6)


@visible_check("2.3")
def tells_two_equal_tokens_apart(t):
    """the same token at positions 0 and 2 differs exactly by position vector 0 - position vector 2"""
    lib = t.learner("embeddings")
    emb, _tokens, positions = _input_embedding(lib)
    out = emb(torch.tensor([[7, 3, 7]]))
    t.close(out[0, 0] - out[0, 2], positions[0] - positions[2], atol=1e-6)


@visible_check("2.3", inputs=True)
def refuses_long_or_flat_input(t):
    """a sequence longer than the context, or 1-D ids, raise ValueError naming the lengths"""
    lib = t.learner("embeddings")
    emb, _, _ = _input_embedding(lib)
    message = t.raises(ValueError, emb, torch.zeros(1, 11, dtype=torch.int64))
    t.true(
        "11" in message and "8" in message, f"the message should give the length 11 and the context 8, got {message!r}"
    )
    t.raises(ValueError, emb, torch.tensor([1, 2, 3]))
