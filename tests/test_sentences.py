from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bertlab.data.corpus import iter_documents
from bertlab.data.sentences import split_sentences
from tests.conftest import SHARED_DATA


def test_splits_sentences_but_not_abbreviations():
    text = 'Mr. Smith went to St. Louis in the U.S. Army. He met Dr. Who! Really? "Yes." It is H. americanus.'
    assert split_sentences(text) == [
        "Mr. Smith went to St. Louis in the U.S. Army.",
        "He met Dr. Who!",
        "Really?",
        '"Yes."',
        "It is H. americanus.",
    ]


def test_splits_chinese_marks():
    assert split_sentences("我爱北京。天安门很大！你呢？“好的。”然后") == [
        "我爱北京。",
        "天安门很大！",
        "你呢？",
        "“好的。”",
        "然后",
    ]


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200))
def test_never_loses_text(text):
    # only the white space between sentences may go
    assert "".join("".join(split_sentences(text)).split()) == "".join(text.split())


def test_wikitext_titles_are_document_boundaries(tmp_path: Path):
    f = tmp_path / "wiki.raw"
    f.write_text(
        " \n = Alpha = \n \n First paragraph . \n \n = = Section = = \n \n Second . \n \n = Beta = \n \n Other text . \n"
    )
    docs = list(iter_documents([f]))
    assert [d.lines for d in docs] == [["Alpha", "First paragraph .", "Second ."], ["Beta", "Other text ."]]
    assert docs[1].first_line == 10


def test_shared_wikitext_has_its_articles():
    path = SHARED_DATA / "wikitext2_raw" / "wiki.valid.raw"
    if not path.exists():
        import pytest

        pytest.skip("shared data not present")
    assert len(list(iter_documents([path]))) == 60
