"""Text to token ids and back, exactly: a document is stored as tokens only if they give back its bytes.

Long texts are handled in pieces, so memory follows the piece, not the document
(a tokenizer's per-token bookkeeping is ~100 bytes).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence

from .models import LoadedModel

PIECE_CHARS = 1 << 16  # tokenize long texts in pieces of about this many characters

_CUT = re.compile(r"(?<=[A-Za-z]) (?=[A-Za-z])")


def _pieces(text: str, size: int | None = None) -> list[tuple[int, int]]:
    """Cut before a single space between two letters: byte-level pre-tokenizers split there
    anyway (the space goes with the next word)."""
    cuts, start, n, size = [], 0, len(text), size or PIECE_CHARS
    while n - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        cuts.append((start, m.start()))
        start = m.start()
    return cuts + [(start, n)]


def tokenize_exact(lm: LoadedModel, data: bytes) -> array | None:
    """Token ids (int32 array) whose decoding gives back exactly `data`, or None.

    A long text is tokenized piece by piece, so memory follows the piece, not
    the document (a tokenizer's per-token bookkeeping is ~100 bytes). Each
    piece must decode to itself, and the ids around each cut must decode to
    the concatenation of their halves; else the whole text is tokenized at once.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = array("i")
    prev: list[int] = []
    for a, b in _pieces(text):
        ids = lm.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ok = _text(lm, ids) == text[a:b]
        if ok and prev and ids:
            ok = _clean_cut(lm, prev[-16:], ids[:16])
        if not ok:
            if a == 0 and b == len(text):
                return None
            return _tokenize_whole(lm, text)
        out.extend(ids)
        prev = ids
    return out


def _tokenize_whole(lm: LoadedModel, text: str) -> array | None:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return array("i", ids) if detokenize(lm, ids) == text.encode("utf-8") else None

DECODE_TOKENS = 1 << 16  # detokenize long documents in windows of about this many tokens


def _text(lm: LoadedModel, ids: Sequence[int]) -> str:
    return lm.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _clean_cut(lm: LoadedModel, left: Sequence[int], right: Sequence[int]) -> bool:
    """Whether ids may be decoded on either side of this cut separately (no merge across it)."""
    return _text(lm, list(left) + list(right)) == _text(lm, left) + _text(lm, right)


def detokenize(lm: LoadedModel, ids: Sequence[int]) -> bytes:
    """The document's bytes. Long documents are decoded window by window (a tokenizer's
    decode of millions of ids costs ~100 bytes each), cutting only where the ids on both
    sides decode to the concatenation of their halves; where none is found, all at once."""
    out, a, n = [], 0, len(ids)
    while n - a > DECODE_TOKENS:
        for b in range(a + DECODE_TOKENS, min(a + DECODE_TOKENS + 64, n - 1)):
            if _clean_cut(lm, ids[b - 8 : b], ids[b : b + 8]):
                break
        else:
            return _text(lm, ids).encode("utf-8")
        out.append(_text(lm, ids[a:b]).encode("utf-8"))
        a = b
    out.append(_text(lm, ids[a:]).encode("utf-8"))
    return b"".join(out)
