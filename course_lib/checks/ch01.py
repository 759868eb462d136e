"""Visible checks of Chapter 1 — tokenization."""

from course_lib.grading import visible_check

SEED = "A true friend accepts you"


def _cl100k():
    from course_lib.tokenization import cl100k_base

    return cl100k_base()


# -- 1.1 pretokenize ----------------------------------------------------------------------


@visible_check("1.1")
def splits_the_docstring_example(t):
    """splits 'Hello world!!! It's 2024.' as GPT-4 does"""
    lib = t.learner("tokenization")
    t.equal(lib.pretokenize("Hello world!!! It's 2024."), ["Hello", " world", "!!!", " It", "'s", " ", "202", "4", "."])


@visible_check("1.1")
def handles_case_numbers_and_whitespace(t):
    """contractions in any case, digits in threes, runs of spaces and newlines"""
    lib = t.learner("tokenization")
    t.equal(lib.pretokenize("WE'LL pay 1234567 now"), ["WE", "'LL", " pay", " ", "123", "456", "7", " now"])
    t.equal(lib.pretokenize("a   b\n\n  c"), ["a", "  ", " b", "\n\n", " ", " c"])
    t.equal(lib.pretokenize(""), [])


@visible_check("1.1")
def uses_the_pattern_argument(t):
    """uses the pattern it is given (GPT-2's here)"""
    lib = t.learner("tokenization")
    gpt2 = t.value(lib.GPT2_SPLIT_PATTERN)
    t.equal(lib.pretokenize("It's 12345", gpt2), ["It", "'s", " 12345"])


# -- 1.2 merge_pair ------------------------------------------------------------------------


@visible_check("1.2")
def merges_the_docstring_example(t):
    """merge_pair([1, 2, 3, 1, 2], (1, 2), 99) == [99, 3, 99]"""
    lib = t.learner("tokenization")
    t.equal(lib.merge_pair([1, 2, 3, 1, 2], (1, 2), 99), [99, 3, 99])


@visible_check("1.2")
def never_overlaps(t):
    """occurrences never overlap and are taken from the left"""
    lib = t.learner("tokenization")
    t.equal(lib.merge_pair([5, 5, 5], (5, 5), 7), [7, 5])
    t.equal(lib.merge_pair([5, 5, 5, 5], (5, 5), 7), [7, 7])


@visible_check("1.2")
def handles_edge_cases(t):
    """empty input, no occurrence, a pair at the very end"""
    lib = t.learner("tokenization")
    t.equal(lib.merge_pair([], (1, 2), 3), [])
    t.equal(lib.merge_pair([2, 1], (1, 2), 3), [2, 1])
    t.equal(lib.merge_pair((4, 1, 2), (1, 2), 3), [4, 3])


# -- 1.3 train_bpe ---------------------------------------------------------------------------


@visible_check("1.3")
def learns_the_docstring_example(t):
    """learns [(97, 97), (97, 98), (256, 257)] from 'aaabdaaabac'"""
    lib = t.learner("tokenization")
    t.equal(lib.train_bpe("aaabdaaabac", 259), [(97, 97), (97, 98), (256, 257)])


@visible_check("1.3")
def counts_within_pieces_and_breaks_ties(t):
    """counts pairs inside pre-tokens only; ties go to the smallest pair"""
    lib = t.learner("tokenization")
    # 'ab ab' is cut into 'ab' and ' ab': (97, 98) occurs twice, (32, 97) once, (98, 32) never.
    t.equal(lib.train_bpe("ab ab", 258), [(97, 98), (32, 256)])
    # Every pair of 'dcba' occurs once: the smallest, (98, 97), wins; then (99, 256) beats (100, 99).
    t.equal(lib.train_bpe("dcba", 258), [(98, 97), (99, 256)])


@visible_check("1.3")
def stops_when_nothing_is_left_to_merge(t):
    """vocab_size 256 learns nothing; training stops once every piece is one token"""
    lib = t.learner("tokenization")
    t.equal(lib.train_bpe("hello", 256), [])
    t.equal(lib.train_bpe("ab", 300), [(97, 98)])


@visible_check("1.3", inputs=True)
def rejects_a_vocabulary_below_256(t):
    """vocab_size below 256 raises ValueError"""
    lib = t.learner("tokenization")
    t.raises(ValueError, lib.train_bpe, "hello", 255)


@visible_check("1.3")
def special_tokens_cut_the_text_and_take_ids(t):
    """special tokens cut the text (no merge crosses or uses one) and count towards vocab_size"""
    lib = t.learner("tokenization")
    eot = ["<|endoftext|>"]
    # Without the cut, '<|', 'endoftext' and '|>' would be pieces whose pairs get merged.
    t.equal(lib.train_bpe("ab<|endoftext|>ab<|endoftext|>ab", 262, special_tokens=eot), [(97, 98)])
    # One of the 259 ids belongs to the special token: two merges are left.
    t.equal(lib.train_bpe("aaabdaaabac", 259, special_tokens=eot), [(97, 97), (97, 98)])


@visible_check("1.3", inputs=True)
def rejects_bad_special_tokens(t):
    """empty, repeated or non-str special tokens, a lone str, and no room for them raise ValueError"""
    lib = t.learner("tokenization")
    for bad in ([""], ["<s>", "<s>"], [3], "<s>"):
        t.raises(ValueError, lib.train_bpe, "hello", 300, special_tokens=bad)
    t.raises(ValueError, lib.train_bpe, "hello", 256, special_tokens=["<s>"])


# -- 1.4 bpe_encode_piece -----------------------------------------------------------------------


@visible_check("1.4")
def encodes_the_docstring_example(t):
    """merges by lowest rank: b'abcab' -> [257, 256]"""
    lib = t.learner("tokenization")
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    t.equal(lib.bpe_encode_piece(b"abcab", ranks), [257, 256])
    t.equal(lib.bpe_encode_piece(b"xyz", ranks), [120, 121, 122])


@visible_check("1.4")
def merges_the_leftmost_of_equal_pairs(t):
    """of two equal pairs the leftmost merges first: b'aaa' -> [b'aa', b'a']"""
    lib = t.learner("tokenization")
    ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256}
    t.equal(lib.bpe_encode_piece(b"aaa", ranks), [256, 97])


@visible_check("1.4")
def matches_tiktoken_on_cl100k_pieces(t):
    """matches tiktoken's cl100k_base on single pieces"""
    lib = t.learner("tokenization")
    ranks = lib.BPETokenizer.from_tiktoken(lib.cl100k_base()).ranks
    enc = _cl100k()
    for piece in [b" tokenization", b" friend", b"\xf0\x9f\x91\x8b", b" Schmetterling", b"    "]:
        t.equal(lib.bpe_encode_piece(piece, ranks), enc._encode_single_piece(piece), f"piece {piece!r}")


# -- 1.5 BPETokenizer.encode ----------------------------------------------------------------------


@visible_check("1.5")
def encodes_with_trained_merges(t):
    """encodes with the merges of 'aaabdaaabac'"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_merges([(97, 97), (97, 98), (256, 257)])
    t.equal(tok.encode("aaabdaaabac"), [258, 100, 258, 97, 99])
    t.equal(tok.encode(""), [])


@visible_check("1.5")
def reproduces_tiktoken_cl100k(t):
    """reproduces tiktoken's cl100k_base ids, seed sentence and mixed text"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_tiktoken(lib.cl100k_base())
    enc = _cl100k()
    for text in [
        SEED,
        "def f(x):\n    return x ** 2  # 1234567\n",
        "héllo 世界 👋🏽  tabs\t\tand\r\nnewlines",
        "lone \ud800 surrogate",
    ]:
        t.equal(tok.encode(text), enc.encode(text), f"encode({text!r})")


@visible_check("1.5")
def handles_special_tokens_like_tiktoken(t):
    """allowed special tokens become one id; disallowed ones raise ValueError"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_tiktoken(lib.cl100k_base())
    enc = _cl100k()
    text = "The end.<|endoftext|>A new <|fim_prefix|>start"
    t.equal(tok.encode(text, allowed_special="all"), enc.encode(text, allowed_special="all"), "allowed_special='all'")
    only_eot = {"<|endoftext|>"}
    t.equal(
        tok.encode(text, allowed_special=only_eot, disallowed_special=()),
        enc.encode(text, allowed_special=only_eot, disallowed_special=()),
        "only <|endoftext|> allowed",
    )
    t.raises(ValueError, tok.encode, text)


# -- 1.6 BPETokenizer.decode ------------------------------------------------------------------------


@visible_check("1.6")
def decodes_what_tiktoken_encodes(t):
    """decodes cl100k ids back to the text, special tokens included"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_tiktoken(lib.cl100k_base())
    enc = _cl100k()
    for text in [SEED, "naïve café 👋🏽\n\tend", "a<|endoftext|>b"]:
        t.equal(tok.decode(enc.encode(text, allowed_special="all")), text, f"decode of {text!r}")


@visible_check("1.6")
def replaces_broken_characters(t):
    """a lone byte of a multi-byte character decodes to U+FFFD"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_merges([])
    t.equal(tok.decode([0xE4, 0xB8]), "\ufffd")
    t.equal(tok.decode([104, 105]), "hi")


@visible_check("1.6", inputs=True)
def rejects_unknown_ids(t):
    """an id outside the vocabulary raises ValueError"""
    lib = t.learner("tokenization")
    tok = lib.BPETokenizer.from_merges([(104, 105)])
    t.raises(ValueError, tok.decode, [104, 257])
