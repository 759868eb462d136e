"""Reference solutions for Chapter 1 (course_lib/tokenization.py)."""

from __future__ import annotations

from course_lib.tokenization import GPT4_SPLIT_PATTERN

import heapq
from collections import Counter

import regex


def pretokenize(text, pattern=GPT4_SPLIT_PATTERN):
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return regex.findall(pattern, text)


def merge_pair(ids, pair, new_id):
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text, vocab_size, pattern=GPT4_SPLIT_PATTERN, special_tokens=()):
    if not isinstance(special_tokens, (list, tuple)):
        raise ValueError(f"special_tokens must be a list or tuple of strings, got {type(special_tokens).__name__}")
    for special in special_tokens:
        if not isinstance(special, str) or not special:
            raise ValueError(f"every special token must be a non-empty str, got {special!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)!r}")
    smallest = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be an int of at least {smallest} (the single bytes and the special tokens), "
            f"got {vocab_size!r}"
        )
    # Cut the text at the special tokens (leftmost first, the longer of two at one place) and drop them.
    stretches = [text]
    if special_tokens:
        longest_first = sorted(special_tokens, key=len, reverse=True)
        stretches = regex.split("|".join(regex.escape(s) for s in longest_first), text)
    # Work on distinct pieces, each weighted by how often it occurs.
    piece_counts = Counter(piece for stretch in stretches for piece in pretokenize(stretch, pattern))
    words = [list(piece.encode("utf-8")) for piece in piece_counts]
    weights = list(piece_counts.values())

    # Pair counts are kept up to date incrementally: a merge only touches the pieces that hold it.
    counts: Counter = Counter()
    holders: dict[tuple[int, int], set[int]] = {}
    for w, (word, weight) in enumerate(zip(words, weights)):
        for pair in zip(word, word[1:]):
            counts[pair] += weight
            holders.setdefault(pair, set()).add(w)
    # Max-heap on count; among equal counts heapq pops the smallest pair, which is the tie rule.
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(merges) < vocab_size - smallest:
        while heap and -heap[0][0] != counts.get(heap[0][1], 0):
            heapq.heappop(heap)  # stale entry: the pair's count changed since it was pushed
        if not heap or -heap[0][0] <= 0:
            break
        _, pair = heapq.heappop(heap)
        new_id = 256 + len(merges)
        merges.append(pair)
        changed = set()
        for w in holders.pop(pair):
            old, weight = words[w], weights[w]
            new = merge_pair(old, pair, new_id)
            for p in zip(old, old[1:]):
                counts[p] -= weight
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] += weight
                changed.add(p)
                holders.setdefault(p, set()).add(w)
            words[w] = new
        for p in changed:
            if p != pair and counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
        del counts[pair]
    return merges


def bpe_encode_piece(piece, ranks):
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[part] for part in parts]


class BPETokenizer:
    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: U+FFFD instead, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

        def resolve(value, name):
            if isinstance(value, str):
                if value != "all":
                    raise ValueError(f"{name} must be 'all' or a collection of special-token strings, got {value!r}")
                return set(self.special_tokens)
            chosen = set(value)
            unknown = chosen - set(self.special_tokens)
            if unknown:
                raise ValueError(
                    f"{name} names {sorted(unknown)}, "
                    f"not special tokens of this tokenizer {sorted(self.special_tokens)}"
                )
            return chosen

        allowed = resolve(allowed_special, "allowed_special")
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = resolve(disallowed_special, "disallowed_special")
        if disallowed:
            found = regex.search("|".join(regex.escape(s) for s in disallowed), text)
            if found:
                raise ValueError(
                    f"text contains the disallowed special token {found.group()!r}; pass it in allowed_special "
                    "to encode it as a special token, or disallowed_special=() to encode it as ordinary text"
                )
        cache = self.__dict__.setdefault("_piece_cache", {})
        ids = []

        def encode_stretch(stretch):
            for piece in pretokenize(stretch, self.pattern):
                if piece not in cache:
                    cache[piece] = bpe_encode_piece(piece.encode("utf-8"), self.ranks)
                ids.extend(cache[piece])

        start = 0
        if allowed:
            special_re = regex.compile("|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)))
            for match in special_re.finditer(text):
                encode_stretch(text[start : match.start()])
                ids.append(self.special_tokens[match.group()])
                start = match.end()
        encode_stretch(text[start:])
        return ids

    def decode(self, ids):
        parts = []
        for i in ids:
            if type(i) is not int or i not in self.vocab:
                raise ValueError(f"token id {i!r} is not in the vocabulary (ids are ints below {self.n_vocab})")
            parts.append(self.vocab[i])
        return b"".join(parts).decode("utf-8", errors="replace")
