"""bertlab.tagging: entity scores equal seqeval's, conversions round-trip, spans map to text."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seqeval import metrics as sm
from seqeval import scheme as ss

from bertlab.tagging import (
    EntityCounts,
    bio_to_bioes,
    bio_to_bmes,
    bioes_to_bio,
    bmes_to_bio,
    check_tag,
    convert_tags,
    entity_spans_with_offsets,
    get_entities,
    get_entities_strict,
    spans_from_tags,
    word_char_offsets,
)

TYPES = ["PER", "LOC", "ORG.NAM", "MISC-X"]
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEQEVAL_SCHEMES = {
    "IOB1": ss.IOB1,
    "IOB2": ss.IOB2,
    "IOE1": ss.IOE1,
    "IOE2": ss.IOE2,
    "IOBES": ss.IOBES,
    "BILOU": ss.BILOU,
}
STRICT_PREFIXES = {
    "IOB1": "IB",
    "IOB2": "IB",
    "IOE1": "IE",
    "IOE2": "IE",
    "IOBES": "IBES",
    "BILOU": "BILU",
    "BMES": "BMES",
}


def tag_strategy(prefixes: str, extra: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    typed = st.builds(lambda p, t: f"{p}-{t}", st.sampled_from(list(prefixes)), st.sampled_from(TYPES))
    return st.one_of(st.just("O"), typed, *(st.just(e) for e in extra))


@st.composite
def corpora(draw, prefixes: str = "BIES", extra: tuple[str, ...] = ()):
    tag = tag_strategy(prefixes, extra)
    lengths = draw(st.lists(st.integers(0, 10), min_size=1, max_size=6))
    gold = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    pred = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    return gold, pred


def counts_for(gold, pred, scheme="IOB2", mode="default") -> EntityCounts:
    c = EntityCounts(scheme=scheme, mode=mode)
    for g, p in zip(gold, pred):
        c.update(g, p)
    return c


def seqeval_figures(gold, pred, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            sm.precision_score(gold, pred, **kw),
            sm.recall_score(gold, pred, **kw),
            sm.f1_score(gold, pred, **kw),
            sm.classification_report(gold, pred, output_dict=True, **kw),
        )


def assert_same(counts: EntityCounts, gold, pred, **kw) -> None:
    p, r, f, report = seqeval_figures(gold, pred, **kw)
    ours = counts.compute()
    assert (ours["precision"], ours["recall"], ours["f1"]) == (p, r, f)
    mine = counts.report()
    assert set(mine) == set(report)
    for name, row in report.items():
        for key in ("precision", "recall", "f1-score", "support"):
            a, b = mine[name][key], row[key]
            if name in ("macro avg", "weighted avg"):
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), (name, key)
            else:
                assert a == b, (name, key, a, b)


# ------------------------------------------------------------------------- default mode


@FAST
@given(corpora())
def test_default_mode_equals_seqeval(data):
    gold, pred = data
    assert_same(counts_for(gold, pred), gold, pred)


@FAST
@given(corpora(prefixes="BIESUL", extra=("B", "I", "E", "S", "X", ".", "-PER", "O-PER")))
def test_default_mode_equals_seqeval_on_odd_tags(data):
    # Bare prefixes and ill-formed tags: seqeval's quirks (state that runs across sentences) are kept.
    gold, pred = data
    assert_same(counts_for(gold, pred, scheme="IOBES"), gold, pred)


@FAST
@given(st.lists(tag_strategy("BIES", ("B", "I", "X")), max_size=15))
def test_get_entities_equals_seqeval(tags):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert get_entities(tags) == sm.sequence_labeling.get_entities(tags)
        nested = [tags[:3], tags[3:]]
        assert get_entities(nested) == sm.sequence_labeling.get_entities(nested)


def test_get_entities_suffix_style():
    tags = ["PER-B", "PER-I", "O", "LOC-S", "ORG-B", "ORG-E"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sm.sequence_labeling.get_entities(tags, suffix=True)
    assert get_entities(tags, suffix=True) == expected == [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 5)]


@FAST
@given(corpora(prefixes="BMES"))
def test_bmes_default_mode_is_seqeval_on_iobes(data):
    gold, pred = data
    mapped = [[[t.replace("M-", "I-", 1) if t.startswith("M-") else t for t in s] for s in x] for x in data]
    assert_same(counts_for(gold, pred, scheme="BMES"), *mapped)


# -------------------------------------------------------------------------- strict mode


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU"])
@FAST
@given(data=st.data())
def test_strict_mode_equals_seqeval(scheme, data):
    gold, pred = data.draw(corpora(prefixes=STRICT_PREFIXES[scheme]))
    assert_same(
        counts_for(gold, pred, scheme=scheme, mode="strict"),
        gold,
        pred,
        mode="strict",
        scheme=SEQEVAL_SCHEMES[scheme],
    )


@pytest.mark.parametrize("scheme", ["IOB2", "IOE2", "IOBES"])
@settings(max_examples=80, deadline=None)
@given(tags=st.lists(tag_strategy("BIES"), max_size=8))
def test_strict_mode_raises_where_seqeval_raises(scheme, tags):
    try:
        expected = ss.Tokens(tags, SEQEVAL_SCHEMES[scheme]).entities
    except (ValueError, KeyError):
        with pytest.raises(ValueError):
            get_entities_strict(tags, scheme)
        return
    assert get_entities_strict(tags, scheme) == [(e.tag, e.start, e.end - 1) for e in expected]


@FAST
@given(corpora(prefixes="BMES"))
def test_bmes_strict_mode_is_seqeval_iobes(data):
    gold, pred = data
    mapped = [[[t.replace("M-", "I-", 1) if t.startswith("M-") else t for t in s] for s in x] for x in data]
    assert_same(counts_for(gold, pred, scheme="BMES", mode="strict"), *mapped, mode="strict", scheme=ss.IOBES)


def test_zero_division_and_empty():
    c = EntityCounts()
    out = c.compute()
    assert (out["precision"], out["recall"], out["f1"]) == (0.0, 0.0, 0.0)
    c.update(["O", "O"], ["B-PER", "O"])  # no gold entity: recall 0/0 -> 0
    assert_same(c, [["O", "O"]], [["B-PER", "O"]])
    with pytest.raises(ValueError):
        c.update(["O"], ["O", "O"])


def test_merge_adds_counts():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O"], ["B-ORG"], ["O", "B-ORG"]]
    a, b = counts_for(gold[:2], pred[:2]), counts_for(gold[2:], pred[2:])
    a.merge(b)
    assert_same(a, gold, pred)


# ------------------------------------------------------------------- conversions, offsets


def spans_to_valid(draw, n: int):
    spans, i = [], 0
    while i < n:
        if draw(st.booleans()):
            length = draw(st.integers(1, min(4, n - i)))
            spans.append((draw(st.sampled_from(TYPES)), i, i + length - 1))
            i += length
        else:
            i += 1
    return spans


@st.composite
def valid_spans(draw):
    n = draw(st.integers(0, 14))
    return spans_to_valid(draw, n), n


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU", "BMES"])
@FAST
@given(data=valid_spans())
def test_convert_round_trips(scheme, data):
    from bertlab.tagging import tags_from_spans

    spans, n = data
    bio = tags_from_spans(spans, n, "IOB2")
    assert spans_from_tags(bio, "IOB2") == spans
    other = convert_tags(bio, "IOB2", scheme)
    assert all(check_tag(t, scheme) for t in other)
    assert spans_from_tags(other, scheme) == spans
    assert convert_tags(other, scheme, "IOB2") == bio
    # A valid sequence reads the same in seqeval's strict mode.
    strict_scheme = "IOBES" if scheme == "BMES" else scheme
    if scheme != "IOE1":  # seqeval's IOE1 is marked unfinished upstream
        assert get_entities_strict(other, strict_scheme if scheme != "BMES" else "BMES") == spans


@FAST
@given(data=valid_spans())
def test_bmes_bio_named_conversions(data):
    from bertlab.tagging import tags_from_spans

    spans, n = data
    bio = tags_from_spans(spans, n, "IOB2")
    bmes = bio_to_bmes(bio)
    assert bmes_to_bio(bmes) == bio
    assert bio_to_bmes(bmes_to_bio(bmes)) == bmes
    assert bioes_to_bio(bio_to_bioes(bio)) == bio


def test_orphan_inside_reads_as_begin():
    assert bio_to_bmes(["O", "I-PER", "I-PER", "I-LOC"]) == ["O", "B-PER", "E-PER", "S-LOC"]
    assert bmes_to_bio(["M-PER", "E-PER", "E-LOC", "O"]) == ["B-PER", "I-PER", "B-LOC", "O"]
    assert spans_from_tags(["B-PER", "E-PER", "I-PER"], "IOBES") == [("PER", 0, 1), ("PER", 2, 2)]


def test_spans_map_to_char_offsets():
    text = "Ich  wohne in Neu-Berlin, sagt Anna Maria."
    words = ["Ich", "wohne", "in", "Neu-Berlin", ",", "sagt", "Anna", "Maria", "."]
    offsets = word_char_offsets(text, words)
    assert [text[s:e] for s, e in offsets] == words
    tags = ["O", "O", "O", "B-LOC", "O", "O", "B-PER", "I-PER", "O"]
    ents = entity_spans_with_offsets(words, offsets, tags, text=text)
    assert [(e["type"], e["text"], e["word_start"], e["word_end"]) for e in ents] == [
        ("LOC", "Neu-Berlin", 3, 4),
        ("PER", "Anna Maria", 6, 8),
    ]
    assert text[ents[1]["start"] : ents[1]["end"]] == "Anna Maria"
    zh = "我在北京工作"
    chars = list(zh)
    ents = entity_spans_with_offsets(
        chars, word_char_offsets(zh, chars), ["O", "O", "B-GPE", "E-GPE", "O", "O"], "BMES", text=zh
    )
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in ents] == [("GPE", 2, 4, "北京")]
    with pytest.raises(ValueError):
        word_char_offsets("abc", ["x"])
