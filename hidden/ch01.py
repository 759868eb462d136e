"""Hidden tests of Chapter 1 — tokenization (instructors only: never released).

Each test is a check ``test(t)`` of a :class:`course_lib.grading.Tester`, registered with
:func:`hidden.hidden_test`; the notebook's hidden cell runs them with ``run_hidden(id)``.
They may compute expected values with ``t.reference(module)``.
"""

from course_lib.data import load_shakespeare
from course_lib.tokenization import cl100k_base

import random

from hidden import hidden_test

# -- 1.1 pretokenize ----------------------------------------------------------------------------------


@hidden_test("1.1")
def seeded_random_strings(t):
    """seeded random strings of letters, digits, whitespace and symbols"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    rng = random.Random(11)
    alphabet = list("abcXYZ019 '\n\r\t.,!?-_()") + ["é", "ß", "世", "👋", "  ", "'s", "'LL", "\u00a0"]
    for _ in range(40):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        t.equal(lib.pretokenize(text), ref.pretokenize(text), "random string")


@hidden_test("1.1")
def shakespeare_excerpt(t):
    """an excerpt of The Tempest"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    text = load_shakespeare(["the-tempest"])[2000:6000]
    t.equal(lib.pretokenize(text), ref.pretokenize(text))


@hidden_test("1.1")
def whitespace_and_scripts(t):
    """whitespace runs, trailing whitespace, contractions and non-Latin scripts"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    for text in [
        "   ",
        "\n",
        "x  \n\n  y   ",
        "end \n",
        "\t\tindent",
        "Ünïcödé 123.45 ... 😀😀",
        "東京タワー 333メートル",
        "Привет,мир!!\n\n\n",
        "don't DON'T Don'T it'd",
        "a\r\nb\r\n",
    ]:
        t.equal(lib.pretokenize(text), ref.pretokenize(text), "edge case")


@hidden_test("1.1")
def gpt2_pattern(t):
    """uses the pattern argument (GPT-2's pattern on code, numbers and contractions)"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    gpt2 = ref.GPT2_SPLIT_PATTERN
    for text in ["def f(x):\n    return x**2  # 12345\n", "I'm 100% sure they'll win 2-1!", "   padded   "]:
        t.equal(lib.pretokenize(text, gpt2), ref.pretokenize(text, gpt2), "GPT-2 pattern")


@hidden_test("1.1")
def other_character_classes_and_patterns(t):
    """combining marks, joined emoji, other digits, rare whitespace; GPT-2's cased contractions; sparse patterns"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    for text in [
        "cafe\u0301 nai\u0308ve Ame\u0301lie",  # letters followed by combining marks (not normalised)
        "नमस्ते दुनिया",  # Devanagari: its vowel signs are marks
        "👨\u200d👩\u200d👧 🏳\ufe0f\u200d🌈 👍🏿!",  # zero-width joiners, a variation selector, a skin tone
        "٣٤٥٦ ١٢ ½ ²³ ①②③④ 四",  # digits of other scripts and other numbers
        "a\u2028b\u3000c\x0bd\x0ce\x85f \u200b g\x00h",  # line separator, ideographic space, VT, FF, NEL, ZWSP, NUL
        "ﬁne ＦＵＬＬ１２３４ Å",  # a ligature, full-width forms and an angstrom sign stay as they are
    ]:
        t.equal(lib.pretokenize(text), ref.pretokenize(text), "character class")
    gpt2 = ref.GPT2_SPLIT_PATTERN
    for text in ["IT'S THEY'LL WE'VE I'D", "Don'T it'S"]:
        t.equal(lib.pretokenize(text, gpt2), ref.pretokenize(text, gpt2), "GPT-2 contractions")
    for pattern in [r"\p{L}+", r"\p{N}{2}", r"[aeiou]|!"]:  # patterns that leave text out: only the matches
        t.equal(lib.pretokenize("Hi, 2024 you! Oui", pattern), ref.pretokenize("Hi, 2024 you! Oui", pattern), pattern)


# -- 1.2 merge_pair -----------------------------------------------------------------------------------


@hidden_test("1.2")
def long_random_sequences(t):
    """long random sequences with many occurrences"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    rng = random.Random(12)
    for pair in [(1, 2), (3, 3), (0, 1)]:
        ids = [rng.randrange(4) for _ in range(3000)]
        t.equal(lib.merge_pair(ids, pair, 300), ref.merge_pair(ids, pair, 300), f"pair {pair}")


@hidden_test("1.2")
def runs_of_one_id(t):
    """runs of a repeated id, of odd and even lengths"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    for n in range(8):
        ids = [7] * n + [8] + [7] * (n + 1)
        t.equal(lib.merge_pair(ids, (7, 7), 9), ref.merge_pair(ids, (7, 7), 9), f"run of {n}")


@hidden_test("1.2")
def tuples_ends_and_large_ids(t):
    """tuple input, pairs at both ends, a single id, large ids"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    cases = [
        ((1, 2, 1, 2, 1), (2, 1), 9),
        ((9, 1, 2), (1, 2), 9),
        ([1], (1, 1), 5),
        ((2,), (2, 3), 4),
        ([100255, 300, 100255, 300, 300], (100255, 300), 100277),
    ]
    for ids, pair, new_id in cases:
        t.equal(lib.merge_pair(ids, pair, new_id), ref.merge_pair(ids, pair, new_id), f"case {ids}")


@hidden_test("1.2")
def leaves_ids_alone(t):
    """ids is left unchanged and the result is a new list, with and without occurrences"""
    lib = t.learner("tokenization")
    for ids, pair in [([1, 2, 3, 1, 2], (1, 2)), ([4, 5, 6], (7, 8)), ([9], (9, 9)), ([], (1, 2))]:
        before = list(ids)
        out = lib.merge_pair(ids, pair, 99)
        t.equal(ids, before, "ids after the call")
        out.append(-1)  # a result that is ids itself would change ids too (in-process: the sandbox gets a copy)
        t.equal(ids, before, "ids after changing the result")


# -- 1.3 train_bpe ------------------------------------------------------------------------------------


@hidden_test("1.3")
def tempest_excerpt(t):
    """8 KB of The Tempest, 320 tokens"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    text = load_shakespeare(["the-tempest"])[:8000]
    t.equal(lib.train_bpe(text, 320), ref.train_bpe(text, 320))


@hidden_test("1.3")
def many_ties(t):
    """seeded random text over a tiny alphabet (many ties)"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    rng = random.Random(13)
    text = "".join(rng.choice("ab ba\n") for _ in range(3000))
    t.equal(lib.train_bpe(text, 300), ref.train_bpe(text, 300))


@hidden_test("1.3")
def multibyte_text(t):
    """multi-byte UTF-8 text: merges inside characters"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    text = "naïve café 東京 東京都 Привет 👋👋 👋🏽 " * 20
    t.equal(lib.train_bpe(text, 300), ref.train_bpe(text, 300))


@hidden_test("1.3")
def pattern_and_early_stop(t):
    """the pattern argument, and stopping when nothing is left to merge"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    text = "It's 12345 and 12345! Isn't it? " * 10
    t.equal(
        lib.train_bpe(text, 290, ref.GPT2_SPLIT_PATTERN),
        ref.train_bpe(text, 290, ref.GPT2_SPLIT_PATTERN),
        "GPT-2 pattern",
    )
    t.equal(lib.train_bpe("aaaa aaaa", 1000), ref.train_bpe("aaaa aaaa", 1000), "early stop")


@hidden_test("1.3", inputs=True)
def rejects_bad_sizes(t):
    """a vocab_size that is too small or not an int raises ValueError"""
    lib = t.learner("tokenization")
    for bad in [0, -5, 255, 300.0, "300"]:
        t.raises(ValueError, lib.train_bpe, "hello", bad)


EOT = "<|endoftext|>"


def _same_merges(t, text, vocab_size, *special_lists):
    """The learner's merges are the reference's, for each list of special tokens."""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    for specials in special_lists:
        mine, theirs = (m.train_bpe(text, vocab_size, special_tokens=specials) for m in (lib, ref))
        t.equal(mine, theirs, f"special tokens {specials}, vocab_size {vocab_size}")


@hidden_test("1.3")
def documents_separated_by_endoftext(t):
    """Shakespeare scenes separated by <|endoftext|>: the special token is never learned"""
    text = EOT.join(load_shakespeare(["the-tempest"])[i : i + 600] for i in range(0, 6000, 600))
    _same_merges(t, text, 300, [EOT])


@hidden_test("1.3")
def stretches_are_pretokenized_apart(t):
    """the text on either side of a special token is pre-tokenized on its own, without a stand-in"""
    for text in [f"hello{EOT}world" * 8, f"ab{EOT}{EOT}cd {EOT} ef{EOT}"]:
        _same_merges(t, text, 280, [EOT])


@hidden_test("1.3")
def special_tokens_are_plain_strings(t):
    """special tokens made of regex symbols ('|', '.', '+', '[') cut only where they occur as written"""
    text = f"KING: MASK, SKA. <b>endoftext</b> aab axb a+b a.b [MASK]{EOT}|| " * 8
    _same_merges(t, text, 290, [EOT, "[MASK]", "a.b", "a+b"])


@hidden_test("1.3")
def special_tokens_count_towards_vocab_size(t):
    """every special token takes one of the vocab_size ids, whether it occurs or not"""
    text = load_shakespeare(["macbeth"])[:3000] + EOT + "<pad>"
    for vocab_size in (259, 260, 275):
        _same_merges(t, text, vocab_size, [EOT, "<pad>", "<|never_seen|>"])


@hidden_test("1.3")
def the_longer_special_token_wins(t):
    """where two special tokens start at the same place, the longer one cuts, in whatever order they are listed"""
    _same_merges(t, "x<a>bcd y<a>bcd <a>z " * 6, 280, ["<a>", "<a>bc"], ["<a>bc", "<a>"])


@hidden_test("1.3")
def the_leftmost_special_token_wins(t):
    """overlapping special tokens: the one that starts first cuts, even if a longer one starts later"""
    _same_merges(t, "x<a>bcd qx<a>bcd x<a> <a>bc " * 6, 280, ["<a>bc", "x<a>"], ["x<a>", "<a>bc"])


@hidden_test("1.3")
def special_tokens_as_a_tuple_with_a_pattern(t):
    """special tokens given as a tuple, after a pattern given by position"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    text = f"It's 12345{EOT}and 12345! Isn't it?{EOT}[MASK] " * 10
    specials = (EOT, "[MASK]")
    t.equal(
        lib.train_bpe(text, 290, ref.GPT2_SPLIT_PATTERN, specials),
        ref.train_bpe(text, 290, ref.GPT2_SPLIT_PATTERN, specials),
    )


@hidden_test("1.3", inputs=True)
def rejects_bad_special_tokens(t):
    """special tokens that are empty, repeated, not strings or not in a list or tuple, or no room for them, raise"""
    lib = t.learner("tokenization")
    for bad in ([EOT, ""], (EOT, EOT), [b"<s>"], [None], "<s>", {"<s>"}, None):
        t.raises(ValueError, lib.train_bpe, "hello", 300, special_tokens=bad)
    t.raises(ValueError, lib.train_bpe, "hello", 257, special_tokens=[EOT, "<pad>"])


# -- 1.4 bpe_encode_piece -----------------------------------------------------------------------------


@hidden_test("1.4")
def macbeth_pieces_cl100k(t):
    """distinct pieces of a Macbeth excerpt, on cl100k_base"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    enc = cl100k_base()
    ranks = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()).ranks
    pieces = sorted(set(ref.pretokenize(load_shakespeare(["macbeth"])[5000:9000])))[:120]
    for piece in pieces:
        data = piece.encode("utf-8")
        t.equal(lib.bpe_encode_piece(data, ranks), enc._encode_single_piece(data), f"piece {piece!r}")


@hidden_test("1.4")
def random_pieces_cl100k(t):
    """seeded random letter strings with multi-byte characters, on cl100k_base"""
    lib = t.learner("tokenization")
    enc = cl100k_base()
    ranks = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()).ranks
    rng = random.Random(14)
    letters = "abcdefghijklmnopqrstuvwxyzäöüñ東京"
    for _ in range(60):
        piece = (" " if rng.random() < 0.5 else "") + "".join(rng.choice(letters) for _ in range(rng.randint(1, 16)))
        data = piece.encode("utf-8")
        t.equal(lib.bpe_encode_piece(data, ranks), enc._encode_single_piece(data), "random piece")


@hidden_test("1.4")
def random_bytes_small_vocabulary(t):
    """seeded random bytes (not always valid UTF-8) with a small trained vocabulary"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    ranks = ref.BPETokenizer.from_merges(ref.train_bpe(load_shakespeare(["macbeth"])[:6000], 300)).ranks
    rng = random.Random(15)
    alphabet = list(b"the ando\xe4\xb8\x96\xff")
    for _ in range(60):
        piece = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        t.equal(lib.bpe_encode_piece(piece, ranks), ref.bpe_encode_piece(piece, ranks), "random bytes")


@hidden_test("1.4")
def rank_order_leftmost_and_whole_piece(t):
    """lowest rank first, leftmost among equals, and a piece that is itself a token"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    ranks = {bytes([b]): b for b in range(256)} | {
        b"bc": 256,
        b"ab": 257,
        b"abc": 258,
        b"cd": 259,
        b"xyz": 260,
        b"aa": 261,
        b"aab": 262,
    }
    for piece in [b"abcd", b"ababab", b"bcbcb", b"xyz", b"xyzx", b"dcba", b"a", b"aaa", b"aaab", b"aaaaab", b"caaab"]:
        t.equal(lib.bpe_encode_piece(piece, ranks), ref.bpe_encode_piece(piece, ranks), f"piece {piece!r}")


# -- 1.5 BPETokenizer.encode --------------------------------------------------------------------------


@hidden_test("1.5")
def twelfth_night_cl100k(t):
    """an excerpt of Twelfth Night on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    text = load_shakespeare(["twelfth-night"])[:5000]
    t.equal(tok.encode(text), enc.encode(text))


@hidden_test("1.5")
def random_multilingual_cl100k(t):
    """seeded random multilingual strings with code, numbers and whitespace, on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    rng = random.Random(16)
    chunks = [
        "Hello",
        " world",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "123456",
        "3.14",
        "'s",
        "'VE",
        "東京",
        "Привет",
        "👋🏽",
        "é",
        "!!",
        "?",
        "def",
        "(x)",
        " ",
        "ß",
        "<|",
        "|>",
    ]
    for _ in range(30):
        text = "".join(rng.choice(chunks) for _ in range(rng.randint(1, 25)))
        t.equal(tok.encode(text), enc.encode(text), "random text")


@hidden_test("1.5")
def special_tokens_cl100k(t):
    """allowed, disallowed and ordinary special tokens on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    text = "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>  return 1<|endoftext|><|endofprompt|>"
    for allowed, disallowed in [
        ("all", "all"),
        ({"<|endoftext|>"}, ()),
        ({"<|fim_prefix|>", "<|fim_middle|>"}, ()),
        (set(), ()),
    ]:
        t.equal(
            tok.encode(text, allowed_special=allowed, disallowed_special=disallowed),
            enc.encode(text, allowed_special=allowed, disallowed_special=disallowed),
            f"allowed={allowed!r}",
        )
    t.raises(ValueError, tok.encode, "fine until <|endofprompt|>")
    t.raises(ValueError, tok.encode, text, allowed_special={"<|endoftext|>"})
    t.raises(ValueError, tok.encode, "x", allowed_special={"<|not_a_token|>"})


@hidden_test("1.5")
def trained_tokenizer_overlapping_specials(t):
    """a trained tokenizer with its own special tokens; the longer special token wins"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    merges = ref.train_bpe(load_shakespeare(["macbeth"])[:6000], 300)
    specials = {"<s>": 300, "<s><s>": 301, "</s>": 302}
    mine, theirs = lib.BPETokenizer.from_merges(merges, specials), ref.BPETokenizer.from_merges(merges, specials)
    text = "<s><s>Fair is foul,<s> and </s>foul is fair<s><s><s>"
    for allowed, disallowed in [("all", "all"), ({"<s>"}, ()), (set(), ())]:
        t.equal(
            mine.encode(text, allowed_special=allowed, disallowed_special=disallowed),
            theirs.encode(text, allowed_special=allowed, disallowed_special=disallowed),
            f"allowed={allowed!r}",
        )


@hidden_test("1.5")
def special_tokens_as_lists_and_tuples(t):
    """allowed_special and disallowed_special given as lists, tuples and frozensets, on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    text = "<|fim_prefix|>a<|endoftext|>b<|fim_middle|>c<|endofprompt|>"
    for allowed, disallowed in [
        (["<|endoftext|>"], []),
        (("<|fim_prefix|>", "<|fim_middle|>"), ()),
        (frozenset({"<|endoftext|>", "<|endofprompt|>"}), ()),
        ([], ("<|fim_suffix|>",)),
        (["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>"], ["<|fim_suffix|>"]),
        (["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|endofprompt|>"], "all"),
    ]:
        expected_disallowed = disallowed if disallowed == "all" else set(disallowed)
        t.equal(
            tok.encode(text, allowed_special=allowed, disallowed_special=disallowed),
            enc.encode(text, allowed_special=set(allowed), disallowed_special=expected_disallowed),
            f"allowed={allowed!r}, disallowed={disallowed!r}",
        )
    t.raises(ValueError, tok.encode, text, allowed_special=["<|endoftext|>"])
    t.raises(ValueError, tok.encode, text, allowed_special=("<|endoftext|>",), disallowed_special=["<|fim_prefix|>"])


@hidden_test("1.5")
def an_explicit_disallowed_collection(t):
    """a disallowed collection other than 'all' raises for its tokens, names them, and leaves the others as text"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    for disallowed in ({"<|endofprompt|>"}, ["<|fim_suffix|>", "<|endofprompt|>"]):
        message = t.raises(ValueError, tok.encode, "fine until <|endofprompt|> here", disallowed_special=disallowed)
        t.true("<|endofprompt|>" in message, "the message should name the disallowed special token")
    message = t.raises(ValueError, tok.encode, "x<|fim_middle|>y")
    t.true("<|fim_middle|>" in message, "the message should name the disallowed special token")
    text = "<|endoftext|> and <|fim_prefix|> stay text"
    t.equal(
        tok.encode(text, disallowed_special={"<|endofprompt|>"}),
        enc.encode(text, disallowed_special={"<|endofprompt|>"}),
        "special tokens neither allowed nor disallowed",
    )
    t.raises(ValueError, tok.encode, "x", disallowed_special={"<|not_a_token|>"})


@hidden_test("1.5")
def other_character_classes_cl100k(t):
    """combining marks, joined emoji, other digits, rare whitespace and control characters, on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    for text in [
        "cafe\u0301 nai\u0308ve Ame\u0301lie",
        "नमस्ते दुनिया",
        "👨\u200d👩\u200d👧 🏳\ufe0f\u200d🌈 👍🏿!",
        "٣٤٥٦ ١٢ ½ ²³ ①②③④",
        "a\u2028b\u3000c\x0bd\x0ce\x85f \u200b g\x00h\x7f",
        "ﬁne ＦＵＬＬ１２３４ Å",
        "\ud83d\ude00 and a lone \udfff at the end \ud800",  # a pair becomes one character (the wire already joins it)
    ]:
        t.equal(tok.encode(text), enc.encode(text), "character class")


# -- 1.6 BPETokenizer.decode --------------------------------------------------------------------------


@hidden_test("1.6")
def round_trip_cl100k(t):
    """round trip of Shakespeare, several scripts and a special token on cl100k_base"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    text = load_shakespeare(["macbeth"])[:3000] + "\nnaïve 東京 Привет 👋🏽 ∑x² <|endoftext|> done\t\n"
    t.equal(tok.decode(enc.encode(text, allowed_special="all")), text)


@hidden_test("1.6")
def random_ids_cl100k(t):
    """seeded random ids and cut-off characters decode as tiktoken does"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    rng = random.Random(17)
    for _ in range(30):
        ids = [rng.randrange(100256) for _ in range(rng.randint(0, 20))]
        t.equal(tok.decode(ids), enc.decode(ids), "random ids")
    ids = enc.encode("👋🏽東京é")
    for n in range(len(ids) + 1):
        t.equal(tok.decode(ids[:n]), enc.decode(ids[:n]), f"first {n} ids")


@hidden_test("1.6")
def trained_tokenizer_with_specials(t):
    """a trained tokenizer with a special token"""
    lib, ref = t.learner("tokenization"), t.reference("tokenization")
    merges = ref.train_bpe(load_shakespeare(["the-tempest"])[:6000], 300)
    specials = {"<|end|>": 400}
    mine, theirs = lib.BPETokenizer.from_merges(merges, specials), ref.BPETokenizer.from_merges(merges, specials)
    rng = random.Random(18)
    choices = list(range(300)) + [400]
    for _ in range(20):
        ids = [rng.choice(choices) for _ in range(rng.randint(1, 30))]
        t.equal(mine.decode(ids), theirs.decode(ids), "random ids")


@hidden_test("1.6", inputs=True)
def rejects_unknown_ids(t):
    """ids outside the vocabulary raise ValueError, whose message names the id"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_tiktoken(lib.cl100k_base())
    t.raises(ValueError, tok.decode, [100256])  # a gap between the ordinary and the special ids
    t.raises(ValueError, tok.decode, [1, 2, 10**6])
    t.raises(ValueError, tok.decode, [-1])
    message = t.raises(ValueError, tok.decode, (31373, 100256, 995))
    t.true("100256" in message, "the message should name the id that is not in the vocabulary")


@hidden_test("1.6")
def no_ids_decode_to_an_empty_string(t):
    """no ids give an empty string"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_tiktoken(lib.cl100k_base())
    t.equal(tok.decode([]), "")


@hidden_test("1.6")
def tuples_and_other_character_classes(t):
    """a tuple of ids, text with combining marks, joined emoji and rare whitespace"""
    lib = t.learner("tokenization")
    tok, enc = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()), cl100k_base()
    text = "cafe\u0301 👨\u200d👩\u200d👧 ٣٤٥ ＦＵＬＬ a\u2028b\u3000c\x0b\x00 <|endoftext|>"
    ids = enc.encode(text, allowed_special="all")
    t.equal(tok.decode(tuple(ids)), text, "a tuple of ids")
    t.equal(tok.decode(ids), text, "a list of ids")
