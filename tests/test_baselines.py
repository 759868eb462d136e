"""course_lib.baselines against independent computations: F.cross_entropy on the log of the smoothed
count tables (built densely here, by a Python loop), uniform models, and the errors of bad input.
"""

from __future__ import annotations

from course_lib import baselines

import math

import pytest
import torch
import torch.nn.functional as F

F64 = torch.float64


def _stream(seed: int, vocab_size: int, length: int) -> torch.Tensor:
    """A skewed random stream, so that counts differ and some tokens and pairs never occur."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.arange(1, vocab_size + 1, dtype=F64) ** -1.5
    return torch.multinomial(weights, length, replacement=True, generator=g)


def _dense_bigram_log_probs(train: list[int], vocab_size: int, alpha: float) -> torch.Tensor:
    counts = torch.zeros(vocab_size, vocab_size, dtype=F64)
    for a, b in zip(train[:-1], train[1:]):
        counts[a, b] += 1
    smoothed = counts + alpha
    return torch.log(smoothed / smoothed.sum(dim=1, keepdim=True))  # (V, V), row a: p(. | a)


@pytest.mark.parametrize("vocab_size, n_train, n_val, alpha", [(7, 50, 13, 0.1), (13, 301, 97, 0.5), (31, 999, 5, 2.0)])
def test_unigram_loss_equals_cross_entropy_of_smoothed_counts(vocab_size, n_train, n_val, alpha):
    train, val = _stream(1, vocab_size, n_train), _stream(2, vocab_size, n_val)
    counts = torch.tensor([train.tolist().count(v) for v in range(vocab_size)], dtype=F64)
    log_p = torch.log((counts + alpha) / (counts + alpha).sum())
    expected = F.cross_entropy(log_p.expand(n_val, vocab_size), val).item()
    assert baselines.unigram_loss(train, val, vocab_size, alpha) == pytest.approx(expected, rel=1e-12)
    assert baselines.unigram_loss(train.tolist(), val.tolist(), vocab_size, alpha) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("vocab_size, n_train, n_val, alpha", [(7, 50, 13, 0.1), (13, 301, 97, 0.5), (31, 999, 5, 2.0)])
def test_bigram_loss_equals_cross_entropy_of_smoothed_count_matrix(vocab_size, n_train, n_val, alpha):
    train, val = _stream(3, vocab_size, n_train), _stream(4, vocab_size, n_val)
    log_p = _dense_bigram_log_probs(train.tolist(), vocab_size, alpha)
    expected = F.cross_entropy(log_p[val[:-1]], val[1:]).item()  # row val[i] predicts val[i + 1]
    ours = baselines.bigram_loss(train, val, vocab_size, alpha)
    assert isinstance(ours, float)
    assert ours == pytest.approx(expected, rel=1e-12)
    assert baselines.bigram_loss(train.tolist(), val.tolist(), vocab_size, alpha) == pytest.approx(expected, rel=1e-12)


def test_bigram_handles_unseen_pairs_unseen_rows_and_large_vocabularies():
    # Token 2 is never followed by anything in training: its row is uniform; pair (0, 0) is unseen.
    train, val = [0, 1, 0, 1, 2], [2, 0, 0, 1]
    expected = -(math.log(1 / 3) + math.log(0.5 / (2 + 1.5)) + math.log(2.5 / (2 + 1.5))) / 3
    assert baselines.bigram_loss(train, val, 3, alpha=0.5) == pytest.approx(expected, rel=1e-12)
    # A vocabulary whose (V, V) table would not fit in memory costs nothing extra.
    big = 200_003
    loss = baselines.bigram_loss([5, big - 1, 5, big - 1], [5, big - 1, 7], big, alpha=0.1)
    assert loss == pytest.approx(-(math.log(2.1 / (2 + 0.1 * big)) + math.log(0.1 / (1 + 0.1 * big))) / 2, rel=1e-12)


def test_smoothing_limits_and_the_bigram_beats_the_unigram_on_a_structured_stream():
    train = _stream(5, 11, 400)
    assert baselines.unigram_loss(train, train, 11, alpha=1e9) == pytest.approx(math.log(11), rel=1e-6)
    assert baselines.bigram_loss(train, train, 11, alpha=1e9) == pytest.approx(math.log(11), rel=1e-6)
    cycle = torch.arange(10).repeat(40)  # each token fully determines the next
    assert baselines.bigram_loss(cycle, cycle, 10) < 0.05 < baselines.unigram_loss(cycle, cycle, 10)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    for vocab_size in (2, 256, 50257):
        assert baselines.perplexity(math.log(vocab_size)) == pytest.approx(vocab_size, rel=1e-12)
    assert baselines.perplexity(0) == 1.0
    counts_uniform = baselines.unigram_loss(list(range(64)), list(range(64)), 64)  # every token seen once
    assert baselines.perplexity(counts_uniform) == pytest.approx(64, rel=1e-12)


def test_bits_per_byte_of_a_byte_level_uniform_model_is_8():
    text = "A true friend accepts you — ça va?".encode()
    assert baselines.bits_per_byte(math.log(256), len(text), len(text)) == pytest.approx(8.0, rel=1e-12)
    # Two bytes per token at twice the loss per token is the same surprise per byte.
    assert baselines.bits_per_byte(2 * math.log(256), 10, 20) == pytest.approx(8.0, rel=1e-12)
    assert baselines.bits_per_byte(1.0, 3, 7) == pytest.approx(3 / (7 * math.log(2)), rel=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: baselines.unigram_loss(torch.tensor([0.0, 1.0]), [0], 2),
            "integer token ids, got dtype torch.float32",
        ),
        (lambda: baselines.unigram_loss(torch.zeros(2, 2, dtype=torch.int64), [0], 2), "1-D .* got shape \\(2, 2\\)"),
        (lambda: baselines.unigram_loss([0, 1], [0, 2], 2), "val_ids must lie in \\[0, 2\\) .* got values from 0 to 2"),
        (lambda: baselines.unigram_loss([-1, 1], [0], 2), "train_ids must lie in \\[0, 2\\).* from -1 to 1"),
        (lambda: baselines.unigram_loss([], [0], 2), "train_ids must hold at least 1 token id\\(s\\), got 0"),
        (lambda: baselines.bigram_loss([0, 1], [1], 2), "val_ids must hold at least 2 token id\\(s\\), got 1"),
        (lambda: baselines.bigram_loss([0, 1.0], [0, 1], 2), "must hold ints, got an element of type float"),
        (lambda: baselines.bigram_loss("01", [0, 1], 2), "sequence of ints, got str"),
        (lambda: baselines.bigram_loss([0, 1], [0, 1], 2, alpha=0), "alpha must be a positive finite number, got 0"),
        (lambda: baselines.bigram_loss([0, 1], [0, 1], 2.0), "vocab_size must be a positive int, got 2.0"),
        (lambda: baselines.perplexity(-0.5), "finite number >= 0 .* got -0.5"),
        (lambda: baselines.perplexity(float("inf")), "got inf"),
        (lambda: baselines.bits_per_byte(1.0, 0, 5), "n_tokens must be a positive int, got 0"),
        (lambda: baselines.bits_per_byte(1.0, 5, 2.5), "n_bytes must be a positive int, got 2.5"),
        (lambda: baselines.bits_per_byte("1", 5, 5), "loss_nats_per_token must be .* got '1'"),
    ],
)
def test_bad_input_raises_value_error_saying_what_was_expected_and_what_came(call, message):
    with pytest.raises(ValueError, match=message):
        call()
