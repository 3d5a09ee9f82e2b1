"""Split a sentence into words with character offsets into the original text, for NER prediction.

    >>> split_words("@anna_k: Paris, France! http://t.co/x")
    (['@anna_k', ':', 'Paris', ',', 'France', '!', 'http://t.co/x'],
     [(0, 7), (7, 8), (9, 14), (14, 15), (16, 22), (22, 23), (24, 37)])

Modes (``WORD_SPLITS``):

* ``whitespace``: runs of non-space characters; every CJK character is a word of its own.
* ``bert``: BERT's ``BasicTokenizer`` split (``tokenize_chinese_chars=True``, no lowercasing or accent
  stripping), as the token-classification pipeline of ``transformers`` splits words: at white space,
  and every punctuation character and every CJK character is a word of its own.
* ``tweet`` (the default): ``bert``, except that what tweet tokenizers keep whole stays one word:
  URLs, e-mail addresses, @mentions, #hashtags, HTML entities (``&amp;``), contractions (``don't``,
  ``I'm``; but ``'s`` is split off: ``Obama's`` gives ``Obama`` ``'s``), hyphenated compounds
  (``t-shirt``), numbers with inner separators (``3.14``, ``30,000``, ``7:30``), abbreviations
  (``U.S.``), emoticons (``:)``, ``;D``) and runs of ``.!?…`` or dashes (``...``, ``?!``, ``--``).
  So ``Paris, France`` gives ``Paris`` ``,`` ``France`` while ``@john_doe`` and ``http://t.co/abc``
  stay whole. Each rule was kept because it makes the split agree with the WNUT-17 training
  tokenisation on more sentences (see ``_TWEET_RULES``). No rule spans a CJK character.

The text is never normalised: ``text[start:end] == word`` for every word. Characters that BERT deletes
(control and format characters such as U+200B ZERO WIDTH SPACE, U+00AD SOFT HYPHEN, U+FEFF, and
U+FFFD; BERT's ``_is_control``) are neither separators nor words: as in BERT, ``a<U+200B>b`` is one
word, which keeps the character inside its span; such characters at a word's edge are left out of
it, and alone they make no word. Every character that ``str.isspace`` calls white space separates
words in every mode (BERT deletes the control characters among them, such as U+000C FORM FEED,
which would join ``a<FF>b``; a line or page break between words should not).

Known differences from ``BasicTokenizer``: it applies NFC to the text before splitting at
punctuation, which we cannot do without changing offsets. Only one character changes its class
under NFC on its own (U+1FEF GREEK VARIA becomes the backquote), and we follow BERT there; but
``=``, ``<`` or ``>`` followed by U+0338 COMBINING LONG SOLIDUS OVERLAY compose into one symbol
(``≠``) that BERT does not split, while we split the ``=`` off.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

WORD_SPLITS = ("whitespace", "bert", "tweet")

# The code-point blocks BERT's ``_is_chinese_char`` treats as Chinese characters (one token each):
# CJK Unified Ideographs and Extensions A-E, and the Compatibility Ideographs. Hiragana, Katakana
# and Hangul are not among them: those scripts separate words with spaces.
CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# The same ranges as the body of a regex character class: ``re.compile(f"[{CJK_CHAR_CLASS}]")``.
CJK_CHAR_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)


def is_cjk_char(char: str) -> bool:
    """Is ``char`` a CJK ideograph, as BERT's ``_is_chinese_char`` says?"""
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_bert_punctuation(char: str) -> bool:
    """BERT's ``_is_punctuation``: Unicode category P*, and every ASCII character that is neither a
    letter, a digit nor a space (so ``$``, ``^``, ``` ` ``` and ``+`` too)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_bert_ignored(char: str) -> bool:
    """Does BERT's ``_clean_text`` delete ``char``? (NUL, U+FFFD and categories C* other than tab,
    newline and carriage return; callers test white space first.)"""
    return char == "\ufffd" or (char not in "\t\n\r" and unicodedata.category(char).startswith("C"))


_SPACE, _IGNORED, _ALONE, _WORD = range(4)


@lru_cache(maxsize=4096)
def _kind(char: str, split_punctuation: bool) -> int:
    if char.isspace():
        return _SPACE
    if is_bert_ignored(char):
        return _IGNORED
    if is_cjk_char(char):
        return _ALONE
    if split_punctuation:
        # BasicTokenizer tests punctuation after NFC; a single character's NFC is one character
        # except for a few combining marks, none of them punctuation.
        if is_bert_punctuation(char) or is_bert_punctuation(unicodedata.normalize("NFC", char)[0]):
            return _ALONE
    return _WORD


def _split_span(text: str, lo: int, hi: int, split_punctuation: bool, spans: list[tuple[int, int]]) -> None:
    """Append to ``spans`` the words of ``text[lo:hi]``: runs of word characters, and each CJK (and,
    when ``split_punctuation``, punctuation) character alone."""
    start = -1  # start of the word being read, -1 when none is
    end = lo  # end of its last character that is not an ignored one
    for i in range(lo, hi):
        kind = _kind(text[i], split_punctuation)
        if kind == _WORD:
            if start < 0:
                start = i
            end = i + 1
        elif kind != _IGNORED:
            if start >= 0:
                spans.append((start, end))
                start = -1
            if kind == _ALONE:
                spans.append((i, i + 1))
    if start >= 0:
        spans.append((start, end))


# ---- what the ``tweet`` mode keeps whole ----
# No rule spans white space or a CJK character, so CJK characters stay words of their own.
_NOT_CJK_SPACE = rf"[^\s{CJK_CHAR_CLASS}]"
_ALNUM = rf"[^\W_{CJK_CHAR_CLASS}]"  # a letter or digit
_WORDCHAR = rf"[^\W{CJK_CHAR_CLASS}]"  # ... or underscore
_START = rf"(?<!{_ALNUM})"  # at the start of a word: "foo@bar" is no mention, "a#1" no hashtag
_END = rf"(?!{_ALNUM})"
_TWEET_RULES = {
    # To the last character that is not closing punctuation: "(see http://x.co/a)." ends at "a".
    "url": rf"{_START}(?:https?://|www\.){_NOT_CJK_SPACE}*[^\s{CJK_CHAR_CLASS}.,;:!?'\"()\[\]{{}}<>]",
    # The local part is at most 64 characters (RFC 5321); unbounded, "a.b+a.b+..." takes quadratic time.
    "email": rf"{_START}{_WORDCHAR}(?:{_WORDCHAR}|[.+-]){{0,63}}@{_ALNUM}+(?:[.-]{_ALNUM}+)*\.{_ALNUM}+",
    "mention": rf"{_START}@{_WORDCHAR}+",
    "hashtag": rf"{_START}#{_WORDCHAR}+",
    "html_entity": r"&(?:[a-zA-Z]+|#[0-9]+);",
    # "don't", "I'm", "rock'n'roll", "do n't"; but the possessive or "is" clitic is a word of its own,
    # as in WNUT-17 (and the Penn Treebank): "Obama's" gives "Obama" "'s", "it 's" stays "it" "'s".
    "contraction": rf"{_START}{_ALNUM}+(?:['’](?!s{_END}){_ALNUM}+)+|['’](?:[smd]|ll|re|ve){_END}",
    # Hyphenated compounds: "t-shirt", "Spider-Man", "4-1" (WNUT-17, like CoNLL, keeps them whole).
    "compound": rf"{_START}{_ALNUM}+(?:-{_ALNUM}+)+",
    # Numbers with inner separators: "3.14", "30,000", "7:30", "9/11".
    "number": rf"{_START}[0-9]+(?:[.,:/-][0-9]+)+{_END}",
    # Abbreviations: "U.S.", "p.m.", "e.g.".
    "abbreviation": rf"{_START}(?:[^\W\d_{CJK_CHAR_CLASS}]\.){{2,}}",
    # Eyes, an optional nose, a mouth: ":)", ":-(", ";D", "=/"; "<3", "^_^", "-_-".
    "emoticon": rf"{_START}(?:[:;=][-o^']?[)(\]\[dpo/\\|*]|<3|\^_\^|-_-){_END}",
    # Runs of sentence-final marks ("...", "?!", "!!!") and dashes ("--").
    "punct_run": r"[!?.…]{2,}|-{2,}",
}
_TWEET_WORD = re.compile("|".join(_TWEET_RULES.values()), re.IGNORECASE)


def split_words(text: str, mode: str = "tweet") -> tuple[list[str], list[tuple[int, int]]]:
    """The words of ``text`` and their ``(start, end)`` character offsets in ``text``, in order."""
    if mode not in WORD_SPLITS:
        raise ValueError(f"unknown word split {mode!r}; expected one of {', '.join(WORD_SPLITS)}")
    spans: list[tuple[int, int]] = []
    if mode == "tweet":
        done = 0
        for m in _TWEET_WORD.finditer(text):
            start, end = m.span()
            while is_bert_ignored(text[end - 1]):  # a URL may end in one; it belongs to no word
                end -= 1
            _split_span(text, done, start, True, spans)
            spans.append((start, end))
            done = end
        _split_span(text, done, len(text), True, spans)
    else:
        _split_span(text, 0, len(text), mode == "bert", spans)
    return [text[s:e] for s, e in spans], spans
