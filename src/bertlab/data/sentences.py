"""A small rule-based sentence splitter for paragraph-per-line corpora.

BERT's recipe packs *sentences* into NSP segments. Corpora such as Wikipedia dumps put a whole
paragraph on one line; splitting it into sentences gives NSP chunk boundaries inside paragraphs,
as the original one-sentence-per-line data had. The rules: a sentence ends at ``.``, ``!`` or ``?``
(with any closing quotes or brackets) followed by space and an upper-case letter, digit, quote or
bracket, unless the word before is a common abbreviation or a single initial; and at the CJK marks
``。！？`` (with closing quotes).
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "no", "vs", "etc", "inc", "ltd", "co", "mt",
    "gen", "col", "lt", "sgt", "capt", "rev", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "e.g", "i.e", "approx", "dept", "est", "vol", "ed", "eds",
}  # fmt: skip

_LATIN_END = re.compile(r"""[.!?]+["'”’)\]]*\s+(?=["'“‘(\[]?[A-Z0-9])""")
_CJK_END = re.compile(r"[。！？]+[”」』）]*")
_WORD_BEFORE_DOT = re.compile(r"(\S+)\.$")


def _is_abbreviation(text: str, end: int) -> bool:
    """Does the '.' that ends ``text[:end]`` belong to an abbreviation or an initial?"""
    # Only the word before the '.' matters: look at a short window, not the whole prefix (which made
    # long paragraphs quadratic).
    match = _WORD_BEFORE_DOT.search(text, max(0, end - 64), end)
    if not match:
        return False
    word = match.group(1).lstrip("(\"'“‘").lower()
    # "dr", a single initial "h", or dotted forms such as "u.s"
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or "." in word


def split_sentences(text: str) -> list[str]:
    """Split one line of text into sentences (never loses a character other than the spaces
    between sentences)."""
    pieces: list[str] = []
    start = 0
    for m in _LATIN_END.finditer(text):
        punct_end = m.start() + len(m.group().rstrip())
        if text[m.start()] == "." and _is_abbreviation(text, m.start() + 1):
            continue
        pieces.append(text[start:punct_end])
        start = m.end()
    pieces.append(text[start:])
    out: list[str] = []
    for piece in pieces:
        last = 0
        for m in _CJK_END.finditer(piece):
            out.append(piece[last : m.end()])
            last = m.end()
        out.append(piece[last:])
    return [s.strip() for s in out if s.strip()]
