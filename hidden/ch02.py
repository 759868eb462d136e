"""Hidden tests of Chapter 2 — embeddings (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.checks import seeded_randn

import torch
import torch.nn.functional as F

from hidden import hidden_test

# -- 2.1 TokenEmbedding.forward -----------------------------------------------------------------------


@hidden_test("2.1")
def float64_table_and_3d_ids(t):
    """a float64 table of 1000 x 32 and ids of shape (4, 7, 3), first and last rows included"""
    lib = t.learner("embeddings")
    torch.manual_seed(210)
    weight = torch.randn(1000, 32, dtype=torch.float64)
    emb = lib.TokenEmbedding(1000, 32).double()
    emb.load_state_dict({"weight": weight})
    ids = torch.randint(0, 1000, (4, 7, 3))
    ids[0, 0, 0], ids[-1, -1, -1] = 0, 999
    t.equal(emb(ids), F.embedding(ids, weight))


@hidden_test("2.1")
def int32_and_empty_ids(t):
    """int32 ids, and empty ids of shapes (0,) and (2, 0)"""
    lib = t.learner("embeddings")
    torch.manual_seed(211)
    weight = torch.randn(30, 5)
    emb = lib.TokenEmbedding(30, 5)
    emb.load_state_dict({"weight": weight})
    ids = torch.tensor([[29, 0, 13], [13, 13, 2]], dtype=torch.int32)
    t.equal(emb(ids), F.embedding(ids.long(), weight), "int32 ids")
    t.equal(emb(torch.zeros(0, dtype=torch.int64)), torch.zeros(0, 5), "ids of shape (0,)")
    t.equal(emb(torch.zeros(2, 0, dtype=torch.int64)), torch.zeros(2, 0, 5), "ids of shape (2, 0)")


@hidden_test("2.1", inputs=True)
def refuses_every_bad_id(t):
    """ids at vocab_size, far past it or negative, float64 and bool ids raise ValueError naming the id"""
    lib = t.learner("embeddings")
    emb = lib.TokenEmbedding(1000, 4)
    t.raises(ValueError, emb, torch.tensor([0, 999, 1000]))
    message = t.raises(ValueError, emb, torch.tensor([[3, 4], [4321, 5]]))
    t.true("4321" in message, "the message should name the offending id")
    message = t.raises(ValueError, emb, torch.tensor([2, -7, 1]))
    t.true("-7" in message, "the message should name the offending id")
    t.raises(ValueError, emb, torch.tensor([1.0, 2.0], dtype=torch.float64))
    t.raises(ValueError, emb, torch.tensor([True, False]))


@hidden_test("2.1")
def keeps_the_graph(t):
    """the output is connected to the weight for training (requires grad)"""
    lib = t.learner("embeddings")
    emb = lib.TokenEmbedding(10, 3)
    out = emb(torch.tensor([[1, 2, 3]]))
    t.true(out.requires_grad, "the output must require grad: do not detach it or read weight.data")


@hidden_test("2.1")
def small_integer_dtypes(t):
    """uint8, int8 and int16 ids are looked up as ids (a uint8 index is not a mask)"""
    lib = t.learner("embeddings")
    weight = seeded_randn(212, 3, 4)
    emb = lib.TokenEmbedding(3, 4).double()
    emb.load_state_dict({"weight": weight})
    for dtype in (torch.uint8, torch.int8, torch.int16):
        for ids in (torch.tensor([2, 0, 2], dtype=dtype), torch.tensor([[1, 1, 1], [0, 2, 1]], dtype=dtype)):
            t.equal(emb(ids), F.embedding(ids.long(), weight), f"{dtype} ids of shape {tuple(ids.shape)}")


@hidden_test("2.1", inputs=True)
def checks_small_integer_ids(t):
    """a uint8 id past the end raises ValueError naming the id"""
    lib = t.learner("embeddings")
    emb = lib.TokenEmbedding(3, 4).double()
    message = t.raises(ValueError, emb, torch.tensor([1, 200], dtype=torch.uint8))
    t.true("200" in message, "the message should name the offending id")


# -- 2.2 sinusoidal_positions -------------------------------------------------------------------------


@hidden_test("2.2")
def long_and_wide_tables(t):
    """512 positions of width 128 and 2048 positions of width 64"""
    lib, ref = t.learner("embeddings"), t.reference("embeddings")
    t.close(lib.sinusoidal_positions(512, 128), ref.sinusoidal_positions(512, 128), atol=2e-4, what="(512, 128)")
    t.close(lib.sinusoidal_positions(2048, 64), ref.sinusoidal_positions(2048, 64), atol=5e-4, what="(2048, 64)")


@hidden_test("2.2")
def other_bases(t):
    """bases 500 and 1,000,000 (base as a keyword and as a positional argument)"""
    lib, ref = t.learner("embeddings"), t.reference("embeddings")
    t.close(
        lib.sinusoidal_positions(64, 10, base=500.0),
        ref.sinusoidal_positions(64, 10, base=500.0),
        atol=1e-5,
        what="base 500",
    )
    t.close(lib.sinusoidal_positions(64, 12, 1e6), ref.sinusoidal_positions(64, 12, 1e6), atol=1e-5, what="base 1e6")


@hidden_test("2.2")
def smallest_tables(t):
    """tables of width 2, and a table with no positions"""
    lib = t.learner("embeddings")
    t.close(lib.sinusoidal_positions(1, 2), torch.tensor([[0.0, 1.0]]), atol=1e-7, what="(1, 2)")
    t.close(
        lib.sinusoidal_positions(3, 2),
        torch.tensor([[0.0, 1.0], [0.8414710, 0.5403023], [0.9092974, -0.4161468]]),
        atol=1e-6,
        what="(3, 2)",
    )
    t.equal(lib.sinusoidal_positions(0, 8), torch.zeros(0, 8), "(0, 8)")


@hidden_test("2.2", inputs=True)
def refuses_bad_sizes(t):
    """odd or zero d_model and a negative seq_len raise ValueError"""
    lib = t.learner("embeddings")
    t.raises(ValueError, lib.sinusoidal_positions, 4, 3)
    t.raises(ValueError, lib.sinusoidal_positions, 4, 0)
    t.raises(ValueError, lib.sinusoidal_positions, -1, 8)


@hidden_test("2.2")
def far_positions_keep_their_digits(t):
    """positions up to 50,000 are as exact as float32 allows (angles computed in float64)"""
    lib = t.learner("embeddings")
    table = lib.sinusoidal_positions(50_000, 8)
    pos = torch.arange(50_000, dtype=torch.float64)[:, None]
    angles = pos / 10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    expected = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(50_000, 8).float()
    t.close(table, expected, atol=1e-6, rtol=0)


@hidden_test("2.2", inputs=True)
def refuses_a_width_that_is_not_an_int(t):
    """a float or negative d_model raises ValueError"""
    lib = t.learner("embeddings")
    t.raises(ValueError, lib.sinusoidal_positions, 4, 8.0)
    t.raises(ValueError, lib.sinusoidal_positions, 4, -4)


# -- 2.3 InputEmbedding.forward -----------------------------------------------------------------------


def _weights(seed, vocab_size, d_model, context_length, dtype=torch.float32):
    torch.manual_seed(seed)
    return {
        "token.weight": torch.randn(vocab_size, d_model, dtype=dtype),
        "position.weight": torch.randn(context_length, d_model, dtype=dtype),
    }


@hidden_test("2.3")
def full_context_and_single_token(t):
    """a batch that fills the whole context, and a single token"""
    lib, ref = t.learner("embeddings"), t.reference("embeddings")
    weights = _weights(230, 300, 16, 32)
    mine, theirs = lib.InputEmbedding(300, 16, 32), ref.InputEmbedding(300, 16, 32)
    mine.load_state_dict(weights)
    theirs.load_state_dict(weights)
    torch.manual_seed(231)
    for ids in [torch.randint(0, 300, (3, 32)), torch.randint(0, 300, (2, 17)), torch.tensor([[299]])]:
        t.close(mine(ids), theirs(ids), atol=1e-6, what=f"ids of shape {tuple(ids.shape)}")


@hidden_test("2.3")
def float64_tables(t):
    """float64 tables give a float64 result"""
    lib, ref = t.learner("embeddings"), t.reference("embeddings")
    weights = _weights(232, 50, 8, 10, torch.float64)
    mine, theirs = lib.InputEmbedding(50, 8, 10).double(), ref.InputEmbedding(50, 8, 10).double()
    mine.load_state_dict(weights)
    theirs.load_state_dict(weights)
    ids = torch.tensor([[49, 0, 7, 7, 7, 1, 2, 3, 4, 5]])
    t.close(mine(ids), theirs(ids), atol=1e-12)


@hidden_test("2.3")
def dropout_in_training_only(t):
    """dropout zeroes or rescales each number in training mode, and does nothing in eval mode"""
    lib = t.learner("embeddings")
    weights = _weights(233, 40, 16, 12)
    ids = torch.tensor([[3, 9, 27, 3, 39, 0, 11, 12, 3, 3], [1, 1, 2, 3, 5, 8, 13, 21, 34, 0]])
    clean = weights["token.weight"][ids] + weights["position.weight"][:10]
    emb = lib.InputEmbedding(40, 16, 12, dropout=0.5)
    emb.load_state_dict(weights)
    emb.eval()
    t.close(emb(ids), clean, atol=1e-6, what="eval mode")
    emb.train()
    out = emb(ids)
    kept = out != 0
    t.true(bool(kept.any()) and bool((~kept).any()), "in training mode some numbers should be dropped and some kept")
    t.close(torch.where(kept, out, 2 * clean), 2 * clean, atol=1e-5, what="kept numbers, scaled by 1 / (1 - p)")
    plain = lib.InputEmbedding(40, 16, 12)
    plain.load_state_dict(weights)
    plain.train()
    t.close(plain(ids), clean, atol=1e-6, what="dropout=0 in training mode")


@hidden_test("2.3", inputs=True)
def refuses_bad_shapes(t):
    """too long (the message gives both lengths), 1-D and 3-D ids raise ValueError"""
    lib = t.learner("embeddings")
    emb = lib.InputEmbedding(40, 4, 12)
    message = t.raises(ValueError, emb, torch.zeros(2, 13, dtype=torch.int64))
    t.true("13" in message and "12" in message, "the message should give the sequence length and the context length")
    t.raises(ValueError, emb, torch.tensor([1, 2, 3]))
    t.raises(ValueError, emb, torch.zeros(1, 2, 3, dtype=torch.int64))


@hidden_test("2.3")
def int32_ids(t):
    """int32 ids give the same embedding as int64 ids"""
    lib = t.learner("embeddings")
    weights = _weights(234, 40, 8, 6, torch.float64)
    emb = lib.InputEmbedding(40, 8, 6).double()
    emb.load_state_dict(weights)
    emb.eval()
    ids = torch.tensor([[3, 39, 0, 7], [1, 1, 2, 3]])
    clean = weights["token.weight"][ids] + weights["position.weight"][:4]
    for dtype in (torch.int64, torch.int32):
        t.close(emb(ids.to(dtype)), clean, atol=1e-12, rtol=0, what=f"{dtype} ids")
