"""The pretraining corpus as a LightningDataModule: raw text to masked NSP batches.

``prepare_data`` does the one-time work and caches it on disk: it trains (or loads) the WordPiece
tokenizer, tokenizes every line with ``datasets`` (Arrow files, ``num_proc`` processes), holds out
validation documents, and builds NSP instances the way BERT's ``create_pretraining_data`` does. The
cache directory is named by a hash of the resolved data and tokenizer settings and the corpus
files, so a changed setting or file builds a new cache and an unchanged one is reused.

Masking happens when batches are collated, anew every epoch (see :mod:`bertlab.data.masking`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bertlab.data.cache import cache_key, local_rank, same_on_every_rank, wait_for_ready
from bertlab.data.corpus import Document, check_corpus, iter_documents, iter_hub_documents
from bertlab.data.default_corpus import write_default_corpus
from bertlab.data.masking import MaskingConfig, PretrainingCollator
from bertlab.data.nsp import create_instances_from_document, document_rng
from bertlab.data.sampler import ResumableDataLoader, ResumableSampler, rank_world
from bertlab.data.sentences import split_sentences
from bertlab.data.tokenizer import (
    TOKENIZER_FILES,
    load_tokenizer,
    special_token_ids,
    train_wordpiece,
    word_continuation_flags,
)
from bertlab.errors import BertlabError
from bertlab.io import atomic_directory, directory_digest, read_json

log = logging.getLogger(__name__)

SOURCES = ("generated", "text_files", "hub")
# Documents per datasets.map batch. Each batch becomes one Arrow record batch of the output, and a
# memory-mapped table keeps native bookkeeping per record batch: with batches of 16 documents a
# 3.4M-document corpus held ~500 MB of it at the end of the map, enough to break a 1 GiB cap.
MAP_BATCH_DOCS = 1000


class InstanceDataset(TorchDataset):
    """Arrow-backed NSP instances; each item also carries its index, which seeds its masking."""

    def __init__(self, table: datasets.Dataset) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table[int(index)]
        row["index"] = int(index)
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read per batch instead of one per row.
        cols = self.table[[int(i) for i in indices]]
        rows = [
            {"input_ids": ids, "a_len": a, "nsp_label": n, "index": int(i)}
            for ids, a, n, i in zip(cols["input_ids"], cols["a_len"], cols["nsp_label"], indices)
        ]
        if "word_cont" in cols:  # built with whole-word masking: 1 where a token continues a word
            for row, cont in zip(rows, cols["word_cont"]):
                row["word_cont"] = cont
        return rows


def _tokenize_lines(
    batch: dict[str, list], tokenizer: Any, split: bool, whole_words: bool = False
) -> dict[str, list]:
    segments = []
    word_cont = []  # with whole_words: per token, 1 if it continues the previous token's word
    for lines in batch["lines"]:
        if split:
            lines = [s for line in lines for s in split_sentences(line)]
        encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
        segments.append([e.ids for e in encodings])
        if whole_words:
            word_cont.append(
                [word_continuation_flags(t, e.tokens, e.offsets) for t, e in zip(lines, encodings)]
            )
    return {"segments": segments, "word_cont": word_cont} if whole_words else {"segments": segments}


def keep_rows(batch: dict[str, list], indices: list[int], keep: np.ndarray) -> dict[str, list]:
    """The rows of a map batch whose document index is marked in ``keep``, in corpus order."""
    rows = keep[indices]
    return {name: [value for value, kept in zip(column, rows) if kept] for name, column in batch.items()}


def build_instances(
    batch: dict[str, list],
    indices: list[int],
    docs: datasets.Dataset,
    max_seq_length: int,
    short_seq_prob: float,
    dupe_factor: int,
    seed: int,
    cls_id: int,
    sep_id: int,
    random_next_window: int | None = None,
) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "a_len": [], "nsp_label": []}
    num_docs = len(docs)

    whole_words = "word_cont" in docs.column_names
    if whole_words:
        out["word_cont"] = []
        # NSP treats tokens as opaque items: (id, continues-word) pairs go through the same
        # random choices as plain ids, so the instances are the same with whole words on or off.
        cls_id, sep_id = (cls_id, 0), (sep_id, 0)  # type: ignore[assignment]

    def get_document(i: int) -> list[list[Any]]:
        row = docs[i]
        if whole_words:
            return [list(zip(ids, cont)) for ids, cont in zip(row["segments"], row["word_cont"])]
        return row["segments"]

    # A random B comes from the block of documents that holds A: consecutive blocks of
    # random_next_window documents, the last one taking the remainder (so none has fewer).
    # Within a block the reads stay in one region of the Arrow file; reads spread over a
    # corpus larger than memory made the page cache thrash.
    window = random_next_window or num_docs
    num_blocks = max(1, num_docs // window)
    for dupe in range(dupe_factor):
        for doc_index in indices:
            block = min(doc_index // window, num_blocks - 1)
            start = block * window
            end = num_docs if block == num_blocks - 1 else start + window
            instances = create_instances_from_document(
                lambda i, start=start: get_document(start + i),
                end - start,
                doc_index - start,
                max_seq_length,
                short_seq_prob,
                document_rng(seed, dupe, doc_index),
                cls_id,
                sep_id,
            )
            for inst in instances:
                if whole_words:
                    cont = [c for _, c in inst.input_ids]
                    # truncation may cut a word: its remaining tokens start a word of their own
                    cont[1] = cont[inst.a_len] = 0
                    out["word_cont"].append(cont)
                    out["input_ids"].append([t for t, _ in inst.input_ids])
                else:
                    out["input_ids"].append(inst.input_ids)
                out["a_len"].append(inst.a_len)
                out["nsp_label"].append(inst.nsp_label)
    return out


class PretrainDataModule(L.LightningDataModule):
    """Corpus to batches for MLM + NSP. See the module docstring for what is cached."""

    def __init__(
        self,
        *,
        source: str = "generated",
        files: list[str] | None = None,
        hub: dict[str, Any] | None = None,
        generated_documents: int = 1500,
        doc_per_line: bool = False,
        split_sentences: bool = True,
        max_line_chars: int = 100_000,
        tokenizer: dict[str, Any] | None = None,
        max_seq_length: int = 128,
        short_seq_prob: float = 0.1,
        dupe_factor: int = 1,
        random_next_window: int | None = 100_000,
        mlm_probability: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word_masking: bool = False,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        num_proc: int | None = None,
        pad_to_multiple_of: int | None = None,
        cache_dir: str = ".cache",
        seed: int = 1234,
        prepare_timeout_s: float = 7200.0,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise BertlabError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
        if source == "text_files" and not files:
            raise BertlabError("data.files is empty: give the corpus files, e.g. data.files=[a.txt,b.txt]")
        if source == "hub" and not (hub and hub.get("name")):
            raise BertlabError(
                "data.hub.name is not set: name a datasets dataset, e.g. data.hub.name=wikitext"
            )
        if max_seq_length < 8:
            raise BertlabError(f"data.max_seq_length={max_seq_length} is too short (at least 8)")
        if not 0.0 < val_fraction < 1.0:
            raise BertlabError(f"data.val_fraction={val_fraction} must lie between 0 and 1")
        self.source = source
        self.files = [str(f) for f in (files or [])]
        self.hub = dict(hub or {})
        self.generated_documents = generated_documents
        self.doc_per_line = doc_per_line
        self.split_sentences = split_sentences
        self.max_line_chars = max_line_chars
        self.tokenizer_cfg = dict(tokenizer or {})
        self.max_seq_length = max_seq_length
        self.short_seq_prob = short_seq_prob
        self.dupe_factor = dupe_factor
        if random_next_window is not None and random_next_window < 2:
            raise BertlabError(
                f"data.random_next_window={random_next_window} must be at least 2 documents (or null)"
            )
        self.random_next_window = random_next_window
        self.mlm_probability = mlm_probability
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_masking = whole_word_masking
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.num_proc = num_proc
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        # Ranks other than local rank 0 wait this long for the tokenizer and instances it builds.
        self.prepare_timeout_s = prepare_timeout_s
        self.train_set: InstanceDataset | None = None
        self.val_set: InstanceDataset | None = None
        self._tokenizer_dir: Path | None = None
        self._data_dir: Path | None = None

    # ----------------------------------------------------------------------------- corpus

    def corpus_files(self) -> list[Path]:
        """The text files to read (the generated corpus is written on first use)."""
        if self.source == "generated":
            path = self.cache_dir / "generated" / f"corpus-{self.generated_documents}-{self.seed}.txt"
            if not path.exists():
                write_default_corpus(path, num_documents=self.generated_documents, seed=self.seed)
            return [path]
        if self.source == "text_files":
            paths = [Path(f) for f in self.files]
            for p in paths:
                if not p.exists():
                    raise BertlabError(f"corpus file not found: {p} (data.files)")
                if p.is_dir():
                    raise BertlabError(f"{p}: is a directory, not a corpus file (data.files)")
            return paths
        return []

    def corpus_spec(self) -> dict[str, Any]:
        """Plain settings that say where the documents come from (picklable, for worker processes)."""
        return {**self._corpus_settings(), "files": [str(f) for f in self.corpus_files()]}

    def iter_documents(self) -> Iterator[Document]:
        return documents_from_spec(self.corpus_spec())

    def _check_corpus(self) -> int | None:
        """Check every file of the corpus (one line naming file and line on a problem); returns its
        number of lines (None for a hub dataset, which is read as it streams)."""
        if self.source == "hub":
            return None
        stats = check_corpus(
            self.corpus_files(), max_line_chars=self.max_line_chars, doc_per_line=self.doc_per_line
        )
        return sum(f.lines for f in stats.files)

    def _corpus_settings(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "hub": self.hub if self.source == "hub" else None,
            "generated_documents": self.generated_documents if self.source == "generated" else None,
            "doc_per_line": self.doc_per_line,
            "max_line_chars": self.max_line_chars,
        }

    # -------------------------------------------------------------------------- tokenizer

    def prepare_tokenizer(self) -> Path:
        """Load the configured tokenizer directory, or train one (cached by corpus and settings)."""
        if self._tokenizer_dir is not None:
            return self._tokenizer_dir
        cfg = self.tokenizer_cfg
        if cfg.get("path"):
            path = Path(cfg["path"])
            load_tokenizer(path)  # validates, with a clear error
            self._tokenizer_dir = path
            return path
        settings = {
            "vocab_size": int(cfg.get("vocab_size", 30522)),
            "lowercase": bool(cfg.get("lowercase", True)),
            "strip_accents": cfg.get("strip_accents"),
            "handle_chinese_chars": bool(cfg.get("handle_chinese_chars", True)),
            "min_frequency": int(cfg.get("min_frequency", 2)),
            "limit_alphabet": int(cfg.get("limit_alphabet", 1000)),
            "corpus": self._corpus_settings(),
        }
        out = self.cache_dir / "tokenizers" / f"wordpiece-{cache_key(settings, self.corpus_files())}"
        if not (out / "tokenizer.json").exists() and local_rank() != 0:
            wait_for_ready(out / "tokenizer.json", self.prepare_timeout_s, "the tokenizer")
        if not (out / "tokenizer.json").exists():
            lines = self._check_corpus()
            log.info("training a WordPiece tokenizer (vocab %d) -> %s", settings["vocab_size"], out)

            def texts() -> Iterator[str]:
                for doc in self.iter_documents():
                    yield from doc.lines

            train_wordpiece(
                texts(),
                out,
                vocab_size=settings["vocab_size"],
                lowercase=settings["lowercase"],
                strip_accents=settings["strip_accents"],
                handle_chinese_chars=settings["handle_chinese_chars"],
                min_frequency=settings["min_frequency"],
                limit_alphabet=settings["limit_alphabet"],
                length=lines,
                show_progress=True,  # minutes on a large corpus: counts and an ETA
            )
        self._tokenizer_dir = out
        return out

    @property
    def tokenizer_dir(self) -> Path:
        return self.prepare_tokenizer()

    @property
    def vocab_size(self) -> int:
        return load_tokenizer(self.tokenizer_dir).get_vocab_size()

    # ------------------------------------------------------------------------ instances

    def data_dir(self) -> Path:
        if self._data_dir is None:
            tok_dir = self.prepare_tokenizer()
            settings = {
                "corpus": self._corpus_settings(),
                "tokenizer": directory_digest(tok_dir, TOKENIZER_FILES),
                "max_seq_length": self.max_seq_length,
                "short_seq_prob": self.short_seq_prob,
                "split_sentences": self.split_sentences,
                "dupe_factor": self.dupe_factor,
                "random_next_window": self.random_next_window,
                "whole_word_masking": self.whole_word_masking,  # stores word-continuation flags
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "format": 1,
            }
            key = cache_key(settings, self.corpus_files())
            self._data_dir = self.cache_dir / "pretrain" / f"nsp-{key}"
        return self._data_dir

    def prepare_data(self) -> None:
        out = self.data_dir()
        if (out / "stats.json").exists():
            return
        if local_rank() != 0:
            # Local rank 0 builds the instances; the directory appears whole when it is done.
            wait_for_ready(out / "stats.json", self.prepare_timeout_s, "the pretraining instances")
            return
        self._check_corpus()
        tokenizer = load_tokenizer(self.prepare_tokenizer())
        ids = special_token_ids(tokenizer)
        with atomic_directory(out, keep_existing=True) as tmp:
            docs = datasets.Dataset.from_generator(
                _generate_docs,
                gen_kwargs={"spec": self.corpus_spec()},
                cache_dir=str(tmp / "work"),
                features=datasets.Features(
                    {"source": datasets.Value("string"), "lines": datasets.Sequence(datasets.Value("string"))}
                ),
            )
            num_docs = len(docs)
            num_val = max(2, math.ceil(num_docs * self.val_fraction))
            if num_docs - num_val < 2:
                raise BertlabError(
                    f"the corpus has {num_docs} documents: too few to hold out {num_val} for validation "
                    "and keep 2 for training (NSP draws random segments from other documents)"
                )
            tokenized = docs.map(
                _tokenize_lines,
                batched=True,
                batch_size=MAP_BATCH_DOCS,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "split": self.split_sentences,
                    "whole_words": self.whole_word_masking,
                },
                remove_columns=["lines"],
                num_proc=self.num_proc,
                desc="tokenizing",
            )
            in_validation = np.zeros(num_docs, dtype=bool)
            in_validation[np.random.default_rng(self.seed).permutation(num_docs)[:num_val]] = True
            # Each split is written by a map that keeps its rows: the rows (and order) of
            # select(sorted indices).flatten_indices(), whose index mapping held ~73 bytes a
            # document at its peak (scripts/map_memory_probe.py --split); the mask is 1 byte.
            splits = {
                name: tokenized.map(
                    keep_rows,
                    batched=True,
                    batch_size=MAP_BATCH_DOCS,
                    with_indices=True,
                    fn_kwargs={"keep": keep},
                    features=tokenized.features,
                    num_proc=self.num_proc,
                    desc=f"writing the {name} split",
                )
                for name, keep in (("validation", in_validation), ("train", ~in_validation))
            }
            stats: dict[str, Any] = {"documents": num_docs, "vocab_size": tokenizer.get_vocab_size()}
            for name, split_docs in splits.items():
                instances = split_docs.map(
                    build_instances,
                    batched=True,
                    batch_size=MAP_BATCH_DOCS,
                    with_indices=True,
                    fn_kwargs={
                        "docs": split_docs,
                        "max_seq_length": self.max_seq_length,
                        "short_seq_prob": self.short_seq_prob,
                        "dupe_factor": self.dupe_factor,
                        "random_next_window": self.random_next_window,
                        "seed": self.seed + (0 if name == "train" else 1),
                        "cls_id": ids["cls"],
                        "sep_id": ids["sep"],
                    },
                    remove_columns=split_docs.column_names,
                    num_proc=self.num_proc,
                    features=datasets.Features(
                        {
                            "input_ids": datasets.Sequence(datasets.Value("int32")),
                            "a_len": datasets.Value("int32"),
                            "nsp_label": datasets.Value("int8"),
                            **(
                                {"word_cont": datasets.Sequence(datasets.Value("int8"))}
                                if self.whole_word_masking
                                else {}
                            ),
                        }
                    ),
                    desc=f"building {name} instances",
                )
                if len(instances) == 0:
                    raise BertlabError(f"the {name} split produced no NSP instances: is the corpus empty?")
                instances.save_to_disk(str(tmp / name))
                labels = instances.data.column("nsp_label").to_numpy()  # no Python list
                stats[name] = {
                    "documents": len(split_docs),
                    "instances": len(instances),
                    "random_next_fraction": float(labels.mean()),
                }
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
            shutil.rmtree(tmp / "work", ignore_errors=True)
        log.info("pretraining data ready in %s", out)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        out = self.data_dir()
        if not (out / "stats.json").exists():
            self.prepare_data()
        # Nodes with their own caches must have built the same vocabulary and instances.
        stats = self.stats()
        same_on_every_rank(
            f"vocabulary {directory_digest(self.tokenizer_dir, TOKENIZER_FILES)}, "
            f"{stats['train']['instances']} training and {stats['validation']['instances']} validation instances",
            "the pretraining data",
        )
        self.train_set = InstanceDataset(datasets.load_from_disk(str(out / "train")))
        self.val_set = InstanceDataset(datasets.load_from_disk(str(out / "validation")))

    def stats(self) -> dict[str, Any]:
        return read_json(self.data_dir() / "stats.json")

    # ----------------------------------------------------------------------- loaders

    def _collator(self) -> PretrainingCollator:
        cfg = MaskingConfig.from_tokenizer(
            load_tokenizer(self.prepare_tokenizer()),
            mlm_probability=self.mlm_probability,
            max_predictions_per_seq=self.max_predictions_per_seq,
        )
        # With whole-word masking the instances carry their word-continuation flags ("word_cont").
        return PretrainingCollator(
            cfg,
            seed=self.seed,
            whole_word_masking=self.whole_word_masking,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_set is not None, "call setup() first"
        rank, world = rank_world(self.trainer)
        # Micro-batch blocks: the same batches per optimizer step on any number of processes.
        sampler = ResumableSampler(
            len(self.train_set),
            seed=self.seed,
            shuffle=True,
            rank=rank,
            world_size=world,
            block_size=self.batch_size,
        )
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        rank, world = rank_world(self.trainer)
        # Every instance exactly once over all ranks (shares may differ by one; the metrics sum
        # over ranks), so validation gives the same figures on any number of processes.
        shard = range(rank, len(self.val_set), world)
        # Validation masks the same positions every time (the collator's epoch stays 0), so
        # successive checks are comparable.
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            sampler=shard,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )


def documents_from_spec(spec: dict[str, Any]) -> Iterator[Document]:
    """Documents of a corpus described by :meth:`PretrainDataModule.corpus_spec`."""
    if spec["source"] == "hub":
        h = spec["hub"]
        yield from iter_hub_documents(
            h["name"],
            h.get("config_name"),
            split=h.get("split", "train"),
            text_column=h.get("text_column", "text"),
            doc_column=h.get("doc_column"),
            streaming=bool(h.get("streaming", False)),
            data_files=h.get("data_files"),
        )
    else:
        yield from iter_documents(spec["files"], spec["max_line_chars"], spec["doc_per_line"])


def _generate_docs(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for doc in documents_from_spec(spec):
        yield {"source": f"{doc.source}:{doc.first_line}", "lines": doc.lines}
