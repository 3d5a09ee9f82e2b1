"""Corpus reading (files and `datasets`), its errors, and the generated default corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertlab.data.corpus import CorpusStats, Document, check_corpus, iter_documents, iter_hub_documents
from bertlab.data.default_corpus import generate_documents, write_default_corpus
from bertlab.errors import BertlabError


def _write(tmp_path: Path, data: bytes | str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _lines(docs: list[Document]) -> list[list[str]]:
    return [d.lines for d in docs]


# -- format --------------------------------------------------------------------------------------------


def test_documents_split_on_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "\n\nA one.\nA two.\n\n\nB one.\n  \t \nC one.\n  C two.  \nC three.\n\n")
    docs = list(iter_documents([path]))
    assert _lines(docs) == [["A one.", "A two."], ["B one."], ["C one.", "C two.", "C three."]]
    assert [d.first_line for d in docs] == [3, 7, 9]
    assert all(d.source == str(path) for d in docs)


def test_crlf_bom_and_trailing_cr(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\xef\xbb\xbfFirst line.\r\nSecond\tline.\r\n\r\nOther doc.\r")
    docs = list(iter_documents(path))
    assert _lines(docs) == [["First line.", "Second\tline."], ["Other doc."]]
    assert docs[0].lines[0][0] == "F"  # the BOM is gone


def test_whitespace_only_lines_separate(tmp_path: Path) -> None:
    path = _write(tmp_path, "a\n \u3000 \nb\n\t\nc\n\xa0\nd")
    assert _lines(list(iter_documents([path]))) == [["a"], ["b"], ["c"], ["d"]]


def test_doc_per_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "one doc\n\nsecond doc\nthird doc\n")
    docs = list(iter_documents([path], doc_per_line=True))
    assert _lines(docs) == [["one doc"], ["second doc"], ["third doc"]]
    assert [d.first_line for d in docs] == [1, 3, 4]


def test_several_files_in_order(tmp_path: Path) -> None:
    a = _write(tmp_path, "a1\n\na2\n", "a.txt")
    b = _write(tmp_path, "b1\nb2", "b.txt")
    docs = list(iter_documents([a, str(b)]))
    assert _lines(docs) == [["a1"], ["a2"], ["b1", "b2"]]
    assert [d.source for d in docs] == [str(a), str(a), str(b)]


def test_streaming_is_lazy(tmp_path: Path) -> None:
    good = _write(tmp_path, "a\n\nb\n", "good.txt")
    it = iter_documents([good, tmp_path / "missing.txt"])
    assert next(it).lines == ["a"]  # the missing second file is not touched yet
    assert next(it).lines == ["b"]
    with pytest.raises(BertlabError, match="missing.txt"):
        next(it)


def test_check_corpus_counts(tmp_path: Path) -> None:
    a = _write(tmp_path, "ab cd\nef\n\ngh\n", "a.txt")
    b = _write(tmp_path, "xyz\n", "b.txt")
    stats = check_corpus([a, b])
    assert isinstance(stats, CorpusStats)
    assert [(f.path, f.documents, f.lines, f.chars) for f in stats.files] == [
        (str(a), 2, 3, 9),
        (str(b), 1, 1, 3),
    ]
    assert (stats.documents, stats.lines, stats.chars) == (3, 4, 12)


# -- errors ----------------------------------------------------------------------------------------------


def _error(paths, **kwargs) -> str:
    with pytest.raises(BertlabError) as info:
        list(iter_documents(paths, **kwargs))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    msg = _error([tmp_path / "nope.txt"])
    assert msg == f"corpus file not found: {tmp_path / 'nope.txt'}"


def test_directory(tmp_path: Path) -> None:
    assert str(tmp_path) in _error([tmp_path])
    assert "directory" in _error([tmp_path])


def test_no_paths() -> None:
    with pytest.raises(BertlabError, match="no corpus files"):
        list(iter_documents([]))


def test_invalid_utf8_names_line_and_offset(tmp_path: Path) -> None:
    path = _write(tmp_path, b"fine\n\nstill fine\nab\xffcd\n")
    msg = _error([path])
    assert msg.startswith(f"{path}:4: invalid UTF-8 at byte offset 2")


def test_invalid_utf8_after_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\xef\xbb\xbf\xc3(\n")
    assert _error([path]).startswith(f"{path}:1: invalid UTF-8")


def test_utf16_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "hello\nworld\n".encode("utf-16"))
    msg = _error([path])
    assert msg.startswith(f"{path}:1:") and "UTF-16" in msg


def test_line_too_long(tmp_path: Path) -> None:
    path = _write(tmp_path, "short\n" + "é" * 30 + "\nok\n")
    msg = _error([path], max_line_chars=20)
    assert msg.startswith(f"{path}:2: line has 30 characters, more than data.max_line_chars=20")


def test_very_long_line_is_counted_without_reading_it_whole(tmp_path: Path) -> None:
    path = _write(tmp_path, "a\n" + "x" * 5000 + "\r\nb\n")
    msg = _error([path], max_line_chars=10)
    assert msg.startswith(f"{path}:2: line has 5000 characters, more than data.max_line_chars=10")


def test_nul_byte(tmp_path: Path) -> None:
    path = _write(tmp_path, b"text\nmore\x00text\n")
    assert _error([path]) == f"{path}:2: contains a NUL byte; is this a text file?"


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \r\n\t\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path, content)
    assert _error([path]) == f"{path}: corpus file is empty"


def test_single_document(tmp_path: Path) -> None:
    path = _write(tmp_path, "one\ntwo\nthree\n")
    with pytest.raises(BertlabError) as info:
        check_corpus([path])
    assert str(info.value) == (
        f"corpus has a single document ({path}): next-sentence prediction needs at least 2 documents; "
        "separate documents with a blank line"
    )
    assert check_corpus([path], doc_per_line=True).documents == 3


def test_check_corpus_raises_reading_errors(tmp_path: Path) -> None:
    good = _write(tmp_path, "a\n\nb\n", "good.txt")
    bad = _write(tmp_path, b"a\n\n\nb\xc0\n", "bad.txt")
    with pytest.raises(BertlabError, match=rf"^{bad}:4: invalid UTF-8"):
        check_corpus([good, bad])


# -- property ----------------------------------------------------------------------------------------------


def _expected_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return [s.strip() for s in text.split("\n") if s.strip()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=300).map(lambda s: s.encode("utf-8")),
        st.lists(
            st.sampled_from(["a b", "\n", "\r\n", " ", "\t", "é", "\ufeff", "x\x00", "\xff"]), max_size=40
        ).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
    ),
    doc_per_line=st.booleans(),
)
def test_iter_documents_property(tmp_path: Path, data: bytes, doc_per_line: bool) -> None:
    path = tmp_path / "prop.txt"
    path.write_bytes(data)
    try:
        docs = list(iter_documents([path], doc_per_line=doc_per_line))
    except BertlabError as exc:
        assert str(path) in str(exc)
        return
    lines = [line for d in docs for line in d.lines]
    assert lines == _expected_lines(data)
    assert all(d.lines and all(line == line.strip() and line for line in d.lines) for d in docs)
    if doc_per_line:
        assert all(len(d.lines) == 1 for d in docs)


# -- datasets ----------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache, raising=False)
    return tmp_path


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_text_blank_rows_separate(offline: Path, streaming: bool) -> None:
    path = _write(
        offline, " = Title = \nFirst sentence.\nSecond one.\n \nNext doc.\n\n\nLast doc.\n", "wiki.txt"
    )
    docs = list(iter_hub_documents("text", None, "train", "text", data_files=str(path), streaming=streaming))
    assert _lines(docs) == [["= Title =", "First sentence.", "Second one."], ["Next doc."], ["Last doc."]]
    assert [d.first_line for d in docs] == [1, 5, 8]
    assert docs[0].source == "text:train"


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_json_doc_column(offline: Path, streaming: bool) -> None:
    rows = [
        {"id": 1, "sentence": "a one"},
        {"id": 1, "sentence": "a two\nalso a"},
        {"id": 2, "sentence": "b one"},
        {"id": 2, "sentence": "  "},
        {"id": 2, "sentence": "b two"},
        {"id": 3, "sentence": "c one"},
    ]
    path = offline / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    docs = list(
        iter_hub_documents(
            "json", None, "train", "sentence", doc_column="id", data_files=[str(path)], streaming=streaming
        )
    )
    assert _lines(docs) == [["a one", "a two", "also a"], ["b one", "b two"], ["c one"]]
    assert [d.first_line for d in docs] == [1, 3, 6]


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_missing_column(offline: Path, streaming: bool) -> None:
    path = offline / "rows.jsonl"
    path.write_text(json.dumps({"title": "x", "body": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(
        BertlabError, match=r"text_column 'text' is not a column; columns are: 'title', 'body'"
    ):
        list(iter_hub_documents("json", None, "train", "text", data_files=str(path), streaming=streaming))
    with pytest.raises(BertlabError, match=r"doc_column 'doc' is not a column"):
        list(iter_hub_documents("json", None, "train", "body", doc_column="doc", data_files=str(path)))


def test_hub_non_text_column(offline: Path) -> None:
    path = offline / "rows.jsonl"
    path.write_text(json.dumps({"text": 3}) + "\n", encoding="utf-8")
    with pytest.raises(BertlabError, match=r"row 1: text_column 'text' holds int"):
        list(iter_hub_documents("json", None, "train", "text", data_files=str(path)))


def test_hub_load_failure_is_bertlab_error(offline: Path) -> None:
    with pytest.raises(BertlabError, match="cannot load dataset 'text'"):
        list(iter_hub_documents("text", None, "train", "text", data_files=str(offline / "absent.txt")))


# -- default corpus ------------------------------------------------------------------------------------------


def test_default_corpus_deterministic_and_readable(tmp_path: Path) -> None:
    a = write_default_corpus(tmp_path / "a" / "corpus.txt", num_documents=200, seed=3)
    b = write_default_corpus(tmp_path / "b.txt", num_documents=200, seed=3)
    c = write_default_corpus(tmp_path / "c.txt", num_documents=200, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(os.listdir(tmp_path / "a")) == ["corpus.txt"]  # no temp file left
    docs = list(iter_documents([a]))
    assert len(docs) == 200
    assert all(8 <= len(d.lines) <= 20 for d in docs)
    assert _lines(docs) == generate_documents(200, seed=3)
    assert check_corpus([a]).documents == 200


def test_default_corpus_size_and_topics() -> None:
    docs = generate_documents()
    words = [w.strip(".,").lower() for d in docs for s in d for w in s.split()]
    assert 100_000 <= len(words) <= 300_000
    assert 300 <= len(set(words)) <= 2500
    # Each document keeps to its subject: its first sentence's first word (a name) recurs in it.
    for doc in docs[:50]:
        name = doc[0].split()[0] if doc[0].split()[0] != "The" else doc[0].split()[1]
        assert sum(name in s for s in doc) >= len(doc) // 2


def test_default_corpus_needs_two_documents(tmp_path: Path) -> None:
    with pytest.raises(BertlabError, match="num_documents=1"):
        write_default_corpus(tmp_path / "c.txt", num_documents=1)
    assert not (tmp_path / "c.txt").exists()
