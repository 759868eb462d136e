"""Chapter 2 on the reference solutions, against PyTorch's own operations: ``F.embedding``,
one-hot matrix products, ``nn.Embedding``, ``nn.Dropout`` and the sinusoidal formula written out.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import embeddings as E
from course_lib.embeddings import (
    InputEmbedding,
    TokenEmbedding,
    cosine_similarities,
    rotation_by_offset,
    sinusoidal_positions,
)

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references."""


def _formula(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)), entry by entry in float64."""
    table = torch.empty(seq_len, d_model, dtype=torch.float64)
    for pos in range(seq_len):
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            table[pos, 2 * i], table[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return table


def _token_embedding(
    vocab_size: int, d_model: int, seed: int = 0, dtype=torch.float64
) -> tuple[TokenEmbedding, torch.Tensor]:
    torch.manual_seed(seed)
    weight = torch.randn(vocab_size, d_model, dtype=dtype)
    emb = TokenEmbedding(vocab_size, d_model).to(dtype)
    emb.load_state_dict({"weight": weight})
    return emb, weight


# -- TokenEmbedding ----------------------------------------------------------------------------


def test_token_embedding_table_is_a_parameter_initialised_like_gpt2():
    torch.manual_seed(0)
    emb = TokenEmbedding(5000, 64)
    assert isinstance(emb.weight, nn.Parameter) and emb.weight.shape == (5000, 64)
    assert emb.weight.dtype == torch.float32
    assert [name for name, _ in emb.named_parameters()] == ["weight"]
    assert abs(emb.weight.mean().item()) < 1e-3
    assert emb.weight.std().item() == pytest.approx(E.INIT_STD, rel=0.01)
    assert (emb.vocab_size, emb.d_model) == (5000, 64)
    assert repr(emb) == "TokenEmbedding(vocab_size=5000, d_model=64)"


@pytest.mark.parametrize("args", [(0, 4), (10, 0), (-1, 4), (10.0, 4), (10, "4"), (True, 4)])
def test_token_embedding_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="must be a positive int"):
        TokenEmbedding(*args)


@pytest.mark.parametrize("shape", [(), (1,), (9,), (3, 4), (2, 3, 5), (2, 1, 1, 3)])
def test_lookup_equals_torch_embedding(shape):
    emb, weight = _token_embedding(100, 12, seed=len(shape))
    ids = torch.randint(0, 100, shape)
    out = emb(ids)
    assert out.shape == (*shape, 12) and out.dtype == torch.float64
    assert torch.equal(out, F.embedding(ids, weight))
    reference = nn.Embedding(100, 12, dtype=torch.float64)
    reference.weight.data.copy_(weight)
    assert torch.equal(out, reference(ids))


def test_lookup_equals_one_hot_times_the_table():
    emb, weight = _token_embedding(50, 8)
    ids = torch.tensor([[3, 49, 0, 3], [7, 7, 7, 1]])
    one_hot = F.one_hot(ids, num_classes=50).to(torch.float64)  # (2, 4, 50)
    torch.testing.assert_close(emb(ids), one_hot @ weight, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_every_integer_dtype_is_an_id(dtype):
    emb, weight = _token_embedding(100, 4)
    ids = torch.tensor([[0, 99, 5], [5, 5, 1]], dtype=dtype)
    assert torch.equal(emb(ids), weight[ids.long()])  # uint8 is not read as a mask


def test_empty_ids():
    emb, _ = _token_embedding(10, 3)
    assert emb(torch.zeros(0, dtype=torch.int64)).shape == (0, 3)
    assert emb(torch.zeros(4, 0, dtype=torch.int64)).shape == (4, 0, 3)


@pytest.mark.parametrize(
    ("ids", "pattern"),
    [
        (torch.tensor([1.0, 2.0]), "integer token ids.*float32"),
        (torch.tensor([1, 2], dtype=torch.float64), "integer token ids.*float64"),
        (torch.tensor([True, False]), "integer token ids.*bool"),
        ([1, 2, 3], "integer token ids.*list"),
        (torch.tensor([0, 10]), "token id 10 is outside the vocabulary \\[0, 10\\)"),
        (torch.tensor([[3, -1], [2, 2]]), "token id -1 is outside"),
        (torch.tensor([123456]), "token id 123456"),
    ],
)
def test_lookup_rejects_bad_ids_with_a_helpful_message(ids, pattern):
    emb, _ = _token_embedding(10, 3)
    with pytest.raises(ValueError, match=pattern):
        emb(ids)


def test_gradient_reaches_only_the_rows_looked_up():
    emb, _ = _token_embedding(20, 4)
    ids = torch.tensor([[2, 5, 2], [2, 19, 0]])
    upstream = torch.randn(2, 3, 4, dtype=torch.float64)
    (emb(ids) * upstream).sum().backward()
    expected = torch.zeros(20, 4, dtype=torch.float64).index_add_(0, ids.reshape(-1), upstream.reshape(-1, 4))
    torch.testing.assert_close(emb.weight.grad, expected)
    used = emb.weight.grad.abs().sum(dim=1) != 0
    assert used.nonzero().flatten().tolist() == [0, 2, 5, 19]


def test_lookup_is_deterministic_and_leaves_the_table_alone():
    emb, weight = _token_embedding(30, 6)
    ids = torch.randint(0, 30, (4, 7))
    assert torch.equal(emb(ids), emb(ids))
    assert torch.equal(emb.weight, weight)


# -- sinusoidal_positions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq_len", "d_model", "base"), [(1, 2, 10000.0), (64, 16, 10000.0), (33, 6, 100.0), (20, 10, 1e6)]
)
def test_sinusoidal_table_follows_the_formula(seq_len, d_model, base):
    table = sinusoidal_positions(seq_len, d_model, base)
    assert table.dtype == torch.float32 and table.shape == (seq_len, d_model)
    torch.testing.assert_close(table, _formula(seq_len, d_model, base).float(), rtol=0, atol=1e-7)


def test_sinusoidal_table_is_accurate_at_long_range():
    # The angles are computed in float64, so even position 8191 rounds only when stored in float32.
    table = sinusoidal_positions(8192, 8)
    assert torch.equal(table[-1], _formula(8192, 8)[-1].float())


def test_sinusoidal_table_layout():
    table = sinusoidal_positions(100, 8).double()
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4, dtype=torch.float64))
    torch.testing.assert_close(
        table[:, 0::2] ** 2 + table[:, 1::2] ** 2, torch.ones(100, 4, dtype=torch.float64), rtol=0, atol=1e-6
    )
    assert table.abs().max() <= 1.0
    # Column 0 has wavelength 2 pi; the last pair turns 10000^(6/8) = 1000 times more slowly.
    torch.testing.assert_close(table[:, 0], torch.sin(torch.arange(100, dtype=torch.float64)), rtol=0, atol=1e-7)
    torch.testing.assert_close(table[:, 6], torch.sin(torch.arange(100, dtype=torch.float64) / 1000), rtol=0, atol=1e-7)
    assert torch.equal(sinusoidal_positions(0, 8), torch.zeros(0, 8))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((4, 3), "positive even int"),
        ((4, 0), "positive even int"),
        ((4, 7.0), "positive even int"),
        ((-1, 8), "seq_len"),
        ((2.0, 8), "seq_len"),
    ],
)
def test_sinusoidal_table_rejects_bad_sizes(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        sinusoidal_positions(*args)


def test_a_fixed_rotation_moves_every_position_by_the_same_offset():
    table = sinusoidal_positions(300, 32).double()
    for offset in [1, 7, 100]:
        rotation = rotation_by_offset(offset, 32)
        torch.testing.assert_close(table[offset:], table[:-offset] @ rotation.T, rtol=0, atol=1e-6)
        assert torch.allclose(rotation @ rotation.T, torch.eye(32, dtype=torch.float64))  # a rotation
    torch.testing.assert_close(rotation_by_offset(0, 8), torch.eye(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive even"):
        rotation_by_offset(1, 5)
    with pytest.raises(ValueError, match="offset"):
        rotation_by_offset(1.5, 4)


def test_dot_products_of_positions_depend_only_on_their_distance():
    table = sinusoidal_positions(200, 64).double()
    gram = table @ table.T  # (200, 200)
    for k in [0, 3, 50]:
        band = torch.diagonal(gram, offset=k)
        torch.testing.assert_close(band, torch.full_like(band, band[0].item()), rtol=0, atol=1e-4)


# -- cosine_similarities ------------------------------------------------------------------------


def test_cosine_similarities_match_torch():
    torch.manual_seed(1)
    vectors = torch.randn(7, 5, dtype=torch.float64)
    expected = F.cosine_similarity(vectors[:, None, :], vectors[None, :, :], dim=-1)
    torch.testing.assert_close(cosine_similarities(vectors), expected)
    for bad in [torch.randn(3), torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, 3), [[1.0]]]:
        with pytest.raises(ValueError):
            cosine_similarities(bad)


# -- InputEmbedding -----------------------------------------------------------------------------


def _input_embedding(vocab_size=40, d_model=8, context_length=12, dropout=0.0, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    weights = {
        "token.weight": torch.randn(vocab_size, d_model, dtype=dtype),
        "position.weight": torch.randn(context_length, d_model, dtype=dtype),
    }
    emb = InputEmbedding(vocab_size, d_model, context_length, dropout).to(dtype)
    emb.load_state_dict(weights)
    return emb, weights["token.weight"], weights["position.weight"]


def test_input_embedding_parts_names_and_initialisation():
    torch.manual_seed(0)
    emb = InputEmbedding(5000, 64, 1024, dropout=0.1)
    assert isinstance(emb.token, TokenEmbedding) and emb.token.weight.shape == (5000, 64)
    assert isinstance(emb.position, nn.Embedding) and emb.position.weight.shape == (1024, 64)
    assert isinstance(emb.dropout, nn.Dropout) and emb.dropout.p == 0.1
    assert sorted(name for name, _ in emb.named_parameters()) == ["position.weight", "token.weight"]
    assert emb.position.weight.std().item() == pytest.approx(E.INIT_STD, rel=0.02)
    assert (emb.d_model, emb.context_length) == (64, 1024)
    assert "context_length=1024" in repr(emb)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((10, 4, 0), "context_length"),
        ((10, 0, 8), "d_model"),
        ((0, 4, 8), "vocab_size"),
        ((10, 4, 8, 1.0), "dropout"),
        ((10, 4, 8, -0.1), "dropout"),
        ((10, 4, 8, "0.1"), "dropout"),
    ],
)
def test_input_embedding_rejects_bad_settings(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        InputEmbedding(*args)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 12)])
def test_input_embedding_adds_tokens_and_positions(shape):
    emb, tokens, positions = _input_embedding()
    ids = torch.randint(0, 40, shape)
    out = emb(ids)
    assert out.shape == (*shape, 8) and out.dtype == torch.float64
    torch.testing.assert_close(out, F.embedding(ids, tokens) + positions[: shape[1]], rtol=0, atol=0)


def test_the_two_dogs_differ_only_by_their_positions():
    emb, _tokens, positions = _input_embedding()
    out = emb(torch.tensor([[5, 9, 5]]))
    assert not torch.equal(out[0, 0], out[0, 2])
    torch.testing.assert_close(out[0, 0] - out[0, 2], positions[0] - positions[2])
    assert torch.equal(emb.token(torch.tensor([5, 5]))[0], emb.token(torch.tensor([5, 5]))[1])


def test_dropout_acts_in_training_only():
    emb, tokens, positions = _input_embedding(d_model=64, dropout=0.25)
    ids = torch.randint(0, 40, (4, 12))
    clean = F.embedding(ids, tokens) + positions[:12]
    emb.eval()
    assert torch.equal(emb(ids), clean)
    emb.train()
    torch.manual_seed(5)
    out = emb(ids)
    kept = out != 0
    torch.testing.assert_close(out[kept], clean[kept] / 0.75)
    assert 0.15 < 1 - kept.double().mean().item() < 0.35
    torch.manual_seed(5)
    assert torch.equal(emb(ids), out)  # seeded dropout is reproducible


@pytest.mark.parametrize(
    ("ids", "pattern"),
    [
        (torch.zeros(1, 13, dtype=torch.int64), "13 tokens is longer than the context length 12"),
        (torch.tensor([1, 2, 3]), "2-D"),
        (torch.zeros(1, 2, 3, dtype=torch.int64), "2-D"),
        ([[1, 2]], "2-D"),
        (torch.tensor([[1, 40]]), "token id 40"),
        (torch.tensor([[1.0, 2.0]]), "integer"),
    ],
)
def test_input_embedding_rejects_bad_input(ids, pattern):
    emb, _, _ = _input_embedding()
    with pytest.raises(ValueError, match=pattern):
        emb(ids)


def test_gradients_reach_both_tables():
    emb, _, _ = _input_embedding()
    emb(torch.tensor([[1, 2, 3], [3, 2, 1]])).pow(2).sum().backward()
    assert emb.token.weight.grad[[1, 2, 3]].abs().sum() > 0 and emb.token.weight.grad[4:].abs().sum() == 0
    assert emb.position.weight.grad[:3].abs().sum() > 0 and emb.position.weight.grad[3:].abs().sum() == 0


def test_token_table_can_be_tied_to_the_output_projection():
    emb, tokens, _ = _input_embedding()
    x = emb(torch.tensor([[4, 8, 15, 16]]))  # (1, 4, d_model)
    logits = F.linear(x, emb.token.weight)  # Chapter 5: scores for every token of the vocabulary
    assert logits.shape == (1, 4, 40)
    torch.testing.assert_close(logits, x @ tokens.T)
