"""Corpora read as streams: a `datasets` corpus in streaming mode gives the same instances as the
same text read from files, and building never turns the corpus into Python lists."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from bertlab.data.default_corpus import write_default_corpus
from bertlab.data.pretrain import PretrainDataModule


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache", raising=False)
    return tmp_path


def _instances(dm: PretrainDataModule) -> dict[str, list]:
    dm.prepare_data()
    dm.setup()
    assert dm.train_set is not None
    table = dm.train_set.table
    return {c: table[c][:] for c in ("input_ids", "a_len", "nsp_label")}


def test_streamed_hub_corpus_equals_the_files(offline: Path) -> None:
    corpus = write_default_corpus(offline / "corpus.txt", num_documents=40, seed=3)
    common = {"max_seq_length": 32, "tokenizer": {"vocab_size": 300}, "cache_dir": str(offline / "cache")}
    from_files = PretrainDataModule(source="text_files", files=[str(corpus)], **common)
    # One tokenizer for both: WordPiece training may break frequency ties differently from one
    # training to the next, and this test is about the instances, not the vocabulary.
    common["tokenizer"] = {"path": str(from_files.prepare_tokenizer())}
    streamed = PretrainDataModule(
        source="hub",
        hub={"name": "text", "data_files": str(corpus), "text_column": "text", "streaming": True},
        **common,
    )
    a, b = _instances(from_files), _instances(streamed)
    assert streamed.data_dir() != from_files.data_dir()
    assert len(a["input_ids"]) > 50
    assert a == b
    # what training reads is memory-mapped Arrow on disk, not a table in memory
    table = streamed.train_set.table
    assert isinstance(table, datasets.Dataset) and table.cache_files
    assert all(Path(f["filename"]).parent.parent == streamed.data_dir() for f in table.cache_files)
