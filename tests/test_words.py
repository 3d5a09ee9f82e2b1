"""Splitting sentences into words with offsets (``bertlab.data.words``), against transformers' BERT."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertlab.data.words import (
    CJK_CHAR_CLASS,
    CJK_RANGES,
    WORD_SPLITS,
    is_bert_ignored,
    is_bert_punctuation,
    is_cjk_char,
    split_words,
)

from .conftest import SHARED_DATA

legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
tokenization_python = pytest.importorskip("transformers.tokenization_python")
tokenizers = pytest.importorskip("tokenizers")

BASIC = legacy.BasicTokenizer(do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True)

TRICKY = [
    "",
    "   \t\n ",
    "Paris, France.",
    "Hello,world!How's it going?",
    '"Quoted" (parenthesised) [bracketed] {braced} <angled>',
    "$5.99 + 10% = ~6.59 ^_^ `code` a|b \\ back_slash",
    "U.S.A. e.g. Mr. Smith's dog's toy, don't can't won't rock'n'roll",
    "我爱北京天安门 and Tokyo 東京 mixed中文text with 𠀀𪜀 ext-B and 﨎 compat",
    "ひらがな カタカナ 한국어 are not CJK ideographs",
    "Café résumé naïve façade Ünïcödé straße Crème Brûlée",
    "decomposed: cafe\u0301 re\u0301sume\u0301",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇩🇪 :) :-( <3",
    "http://t.co/abc https://www.example.com/path?q=1&x=2#frag www.foo.org/bar.",
    "mail me at john.doe+tag@example.co.uk!",
    "@john_doe #NowPlaying #1 &amp; &lt;3 RT @user: hi…",
    "¡Hola! ¿Qué tal? «guillemets» „Anführungszeichen“ ‘single’ “double” — dash – en-dash",
    "Arabic ،؛؟ Devanagari । ॥ CJK punctuation 「」『』、。！？",
    "zero\u200bwidth\u200c joiner\u200d soft\u00adhyphen \ufeffbom \ufffdreplacement \x00nul \x7fdel",
    "line\u2028separator\u2029paragraph\u00a0nbsp\u3000ideographic space",
    "...!!!???!?--- ***~~~",
    "#Pathologist-Childrens t-shirt Spider-Man 4-1 30,000 7:30 3.14 9/11",
]

# Where we knowingly differ from BasicTokenizer: control characters that Python calls white space
# (BERT deletes them, joining their neighbours; we split there), and U+0338, which BERT's NFC composes
# with "=", "<" or ">" into one symbol.
KNOWN_DIFFERENCES = "\x0b\x0c\x1c\x1d\x1e\x1f\x85\u0338"

# Random text with plenty of what the rules look at, besides arbitrary code points.
PIECES = [
    " ",
    "  ",
    "\t",
    "\n",
    "a",
    "Z",
    "é",
    "1",
    "42",
    ",",
    ".",
    "...",
    "'",
    "'s",
    "n't",
    "’",
    "-",
    "_",
    "@",
    "#",
    ":",
    ")",
    ":)",
    "/",
    "http://",
    "https://t.co/",
    "www.",
    "@x_1",
    "#tag",
    "a@b.co",
    "&amp;",
    "U.S.",
    "北",
    "京",
    "\U00020000",
    "\uf900",
    "\u200b",
    "\u00ad",
    "\x00",
    "\ufffd",
    "\x0c",
    "\u2028",
    "\u0301",
    "😀",
]
TEXT = st.lists(
    st.one_of(st.sampled_from(PIECES), st.characters(exclude_categories=("Cs",))), max_size=30
).map("".join)


def _bert_view(words: list[str]) -> list[str]:
    """Our words as BasicTokenizer shows them: without the characters it deletes, and in NFC."""
    return [unicodedata.normalize("NFC", "".join(c for c in w if not is_bert_ignored(c))) for w in words]


def _fast_pretokens(text: str) -> list[str]:
    """The words of ``tokenizers``' BERT normalizer and pre-tokenizer (the fast tokenizer's split)."""
    norm = tokenizers.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    return [
        w for w, _ in tokenizers.pre_tokenizers.BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))
    ]


@settings(max_examples=250, deadline=None)
@given(TEXT)
def test_offsets_are_exact_ordered_and_free_of_white_space(text: str) -> None:
    for mode in WORD_SPLITS:
        words, offsets = split_words(text, mode)
        assert len(words) == len(offsets)
        previous_end = 0
        for word, (start, end) in zip(words, offsets):
            assert text[start:end] == word
            assert previous_end <= start < end
            previous_end = end
            assert not any(c.isspace() for c in word)
            # A word never starts or ends with a character BERT deletes, so it always has pieces.
            assert not is_bert_ignored(word[0]) and not is_bert_ignored(word[-1])


@settings(max_examples=250, deadline=None)
@given(TEXT)
def test_bert_mode_is_basic_tokenizer(text: str) -> None:
    text = "".join(c for c in text if c not in KNOWN_DIFFERENCES)
    assert _bert_view(split_words(text, "bert")[0]) == BASIC.tokenize(text)


@pytest.mark.parametrize("text", TRICKY)
def test_bert_mode_on_tricky_texts(text: str) -> None:
    words = split_words(text, "bert")[0]
    assert _bert_view(words) == BASIC.tokenize(text)
    # The fast tokenizer's pre-tokenizer (what the token-classification pipeline uses) agrees too;
    # it deletes the same characters but does not apply NFC.
    assert ["".join(c for c in w if not is_bert_ignored(c)) for w in words] == _fast_pretokens(text)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_whitespace_mode_is_todays_split(text: str) -> None:
    # Today's prediction regex (with BERT's CJK ranges), on text without characters BERT deletes.
    text = "".join(c for c in text if not is_bert_ignored(c))
    old = re.compile(rf"[{CJK_CHAR_CLASS}]|[^\s{CJK_CHAR_CLASS}]+")
    words, offsets = split_words(text, "whitespace")
    assert words == old.findall(text)
    assert offsets == [m.span() for m in old.finditer(text)]


@pytest.mark.parametrize("mode", WORD_SPLITS)
def test_cjk_characters_are_words_of_their_own_in_every_mode(mode: str) -> None:
    text = "我爱北京abc東京 #北京 @東京 http://x.cn/北京 \U00020000\U0002a700\uf900x"
    words = split_words(text, mode)[0]
    for char in "我爱北京東京\U00020000\U0002a700\uf900":
        assert char in words
    assert all(len(w) == 1 for w in words if any(is_cjk_char(c) for c in w))


def test_cjk_ranges_are_berts() -> None:
    assert BASIC._is_chinese_char(0x4E00)
    for lo, hi in CJK_RANGES:
        for cp in (lo - 1, lo, (lo + hi) // 2, hi, hi + 1):
            char = chr(cp)
            assert is_cjk_char(char) == BASIC._is_chinese_char(cp), hex(cp)
            assert bool(re.fullmatch(f"[{CJK_CHAR_CLASS}]", char)) == is_cjk_char(char), hex(cp)
    assert not any(is_cjk_char(c) for c in "ひカ한a1,")


def test_punctuation_is_berts() -> None:
    for cp in range(0x3000):  # ASCII, Latin, the general punctuation block and more
        char = chr(cp)
        assert is_bert_punctuation(char) == tokenization_python._is_punctuation(char), hex(cp)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Paris, France", ["Paris", ",", "France"]),
        ("@john_doe: see http://t.co/abc.", ["@john_doe", ":", "see", "http://t.co/abc", "."]),
        ("(https://en.wikipedia.org/wiki/Paris)", ["(", "https://en.wikipedia.org/wiki/Paris", ")"]),
        ("www.example.com/a?b=1&c=2, ok", ["www.example.com/a?b=1&c=2", ",", "ok"]),
        ("mail john.doe+x@mail.example.org!", ["mail", "john.doe+x@mail.example.org", "!"]),
        ("#NowPlaying #1, RT @user_2:", ["#NowPlaying", "#1", ",", "RT", "@user_2", ":"]),
        ("foo@bar a#b", ["foo", "@", "bar", "a", "#", "b"]),  # not at the start of a word
        ("I'm sure they don't", ["I'm", "sure", "they", "don't"]),
        ("It's Obama's", ["It", "'s", "Obama", "'s"]),  # the clitic 's is a word, as in WNUT-17
        ("it 's , do n't", ["it", "'s", ",", "do", "n't"]),  # pre-tokenized text stays as it is
        ("'quoted' dogs'", ["'", "quoted", "'", "dogs", "'"]),
        (
            "pi is 3.14, 30,000 at 7:30 on 9/11",
            ["pi", "is", "3.14", ",", "30,000", "at", "7:30", "on", "9/11"],
        ),
        ("a t-shirt, Spider-Man 4-1", ["a", "t-shirt", ",", "Spider-Man", "4-1"]),
        ("the U.S. at 5 p.m.", ["the", "U.S.", "at", "5", "p.m."]),
        ("wait... what?! no!!! -- ok", ["wait", "...", "what", "?!", "no", "!!!", "--", "ok"]),
        ("great :) :-( ;D <3", ["great", ":)", ":-(", ";D", "<3"]),
        ("re:Do", ["re", ":", "Do"]),  # no emoticon inside a word
        ("Tom &amp; Jerry", ["Tom", "&amp;", "Jerry"]),
        ("http://x.com\u200b.", ["http://x.com", "."]),
    ],
)
def test_tweet_mode(text: str, words: list[str]) -> None:
    assert split_words(text)[0] == words
    assert split_words(text, "tweet")[0] == words


def test_bert_mode_splits_what_tweet_keeps_whole() -> None:
    assert split_words("@john_doe http://t.co/a", "bert")[0] == [
        "@",
        "john",
        "_",
        "doe",
        "http",
        ":",
        "/",
        "/",
        "t",
        ".",
        "co",
        "/",
        "a",
    ]
    assert split_words("@john_doe, don't", "whitespace")[0] == ["@john_doe,", "don't"]


@pytest.mark.parametrize("mode", WORD_SPLITS)
def test_ignored_and_space_characters(mode: str) -> None:
    # Characters BERT deletes join their neighbours, stay inside the word's span, and make no word alone.
    text = "a\u200bb \u200b \x00 \ufeffc\u00ad d\x0ce\u2028f"
    words, offsets = split_words(text, mode)
    assert words == ["a\u200bb", "c", "d", "e", "f"]
    assert offsets == [(0, 3), (9, 10), (12, 13), (14, 15), (16, 17)]
    assert BASIC.tokenize(text)[:3] == ["ab", "c", "de"]  # BERT would join "d" and "e"


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="whitespace, bert, tweet"):
        split_words("text", "spacy")


WNUT_TRAIN = SHARED_DATA / "wnut17" / "train.txt"


@pytest.mark.skipif(not WNUT_TRAIN.exists(), reason="shared WNUT-17 data not present")
def test_tweet_mode_mostly_reproduces_wnut17_tokens() -> None:
    sentences, current = [], []
    for line in WNUT_TRAIN.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split("\t")[0])
        elif current:
            sentences.append(current)
            current = []
    agree = sum(split_words(" ".join(tokens))[0] == tokens for tokens in sentences[:1500])
    assert agree >= 0.8 * 1500  # 84% at the time of writing; "bert" mode: 12%


@pytest.mark.parametrize("piece", ["a.b+", "a@b-", "http://", "a-'", "U.S", ":-"])
def test_linear_time_on_long_words(piece: str) -> None:
    # An unbounded e-mail local part once made "a.b+a.b+..." quadratic: 16 s for these 20,000 characters.
    start = time.perf_counter()
    words = split_words(piece * (20_000 // len(piece)))[0]
    assert time.perf_counter() - start < 3
    assert "".join(words) == piece * (20_000 // len(piece))
