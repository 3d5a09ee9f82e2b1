"""Random bytes into every reader where data enters: each input is read or rejected with a
BertlabError naming the file; no other exception, ever."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertlab.data.conll import read_conll
from bertlab.data.tables import read_table
from bertlab.data.tokenizer import load_tokenizer
from bertlab.errors import BertlabError

# Bytes that look like the formats: separators, quotes, BOMs, CRLF, tabs, invalid UTF-8.
PIECES = [b"a", b"B-PER", b"O", b"\t", b" ", b"\n", b"\r\n", b",", b'"', b"{", b"}", b":", b"[", b"]",
          b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00", b"label", b"sentence", b"-DOCSTART-", b"1", "é".encode()]  # fmt: skip
FILES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(data: bytes, name: str) -> Path:
    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(data)
    return path


@SETTINGS
@given(FILES, st.sampled_from(["train.tsv", "train.csv", "train.jsonl", "train.json"]))
def test_table_reader_reads_or_names_the_file(data, name):
    path = _write(data, name)
    try:
        read_table(path, quoting="none" if name.endswith(".tsv") else "minimal")
    except BertlabError as e:
        assert path.name in str(e)


@SETTINGS
@given(FILES, st.sampled_from([None, "\t"]))
def test_conll_reader_reads_or_names_the_file(data, delimiter):
    path = _write(data, "train.txt")
    try:
        sentences = read_conll(path, delimiter=delimiter)
    except BertlabError as e:
        assert path.name in str(e)
    else:
        assert all(len(s.words) == len(s.tags) > 0 for s in sentences)


@SETTINGS
@given(FILES, st.sampled_from(["tokenizer.json", "vocab.txt"]))
def test_tokenizer_loader_reads_or_names_the_file(data, name):
    path = _write(data, name)
    try:
        load_tokenizer(path.parent)
    except BertlabError as e:
        assert str(path.parent) in str(e) or path.name in str(e)
