"""Corpora read as streams: a `datasets` corpus in streaming mode gives the same instances as the
same text read from files, and building never turns the corpus into Python lists."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest

from bertlab.data.default_corpus import write_default_corpus
from bertlab.data.pretrain import PretrainDataModule, keep_rows


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


def _docs_naming_themselves(num_docs: int) -> datasets.Dataset:
    # every token of document d is 10_000 + d, so an instance tells where A and B came from
    return datasets.Dataset.from_dict(
        {"segments": [[[10_000 + d] * 7 for _ in range(2 + d % 5)] for d in range(num_docs)]}
    )


def _nsp_instances(docs: datasets.Dataset, window: int | None) -> dict[str, list]:
    from bertlab.data.pretrain import build_instances

    return build_instances(
        {},
        list(range(len(docs))),
        docs,
        max_seq_length=32,
        short_seq_prob=0.1,
        dupe_factor=2,
        seed=7,
        cls_id=1,
        sep_id=2,
        random_next_window=window,
    )


def test_a_random_next_segment_comes_from_the_block_of_its_document() -> None:
    docs = _docs_naming_themselves(230)
    window = 50  # blocks 0-49, 50-99, 100-149, 150-229 (the last takes the remainder)
    out = _nsp_instances(docs, window)
    blocks = set()
    for ids, a_len, label in zip(out["input_ids"], out["a_len"], out["nsp_label"]):
        doc_a, doc_b = ids[1] - 10_000, ids[a_len] - 10_000
        block_a, block_b = min(doc_a // window, 3), min(doc_b // window, 3)
        assert doc_b == doc_a if label == 0 else (doc_b != doc_a and block_b == block_a)
        if label == 1:
            blocks.add(block_a)
    assert blocks == {0, 1, 2, 3}
    # without a window a random B may come from anywhere, and does
    anywhere = _nsp_instances(docs, None)
    assert any(
        min((ids[1] - 10_000) // window, 3) != min((ids[a_len] - 10_000) // window, 3)
        for ids, a_len in zip(anywhere["input_ids"], anywhere["a_len"])
    )


def test_a_window_over_half_the_corpus_changes_nothing() -> None:
    docs = _docs_naming_themselves(120)
    # 120 documents with a window of 61: one block (the last block takes the remainder)
    assert _nsp_instances(docs, 61) == _nsp_instances(docs, None) == _nsp_instances(docs, 1000)
    assert _nsp_instances(docs, 60) != _nsp_instances(docs, None)


def test_a_split_written_by_a_map_equals_select_of_its_indices(tmp_path: Path) -> None:
    # The splits are written by a map that keeps their rows (no index mapping held in memory); the
    # rows and their order must be those of select(sorted indices), as before.
    docs = datasets.Dataset.from_dict(
        {"segments": [[[i, i + 1]] for i in range(2_345)], "source": ["x"] * 2_345}
    )
    keep = np.zeros(len(docs), dtype=bool)
    keep[np.random.default_rng(3).permutation(len(docs))[:117]] = True
    for mask in (keep, ~keep):
        written = docs.map(
            keep_rows,
            batched=True,
            batch_size=1000,
            with_indices=True,
            fn_kwargs={"keep": mask},
            cache_file_name=str(tmp_path / f"split{int(mask[0])}.arrow"),
        )
        assert written.to_dict() == docs.select(np.flatnonzero(mask)).to_dict()
    assert len(written) == 2_345 - 117
