"""Named-entity recognition data: CoNLL files to padded windows of word pieces.

Words are tokenized with the ``tokenizers`` tokenizer (pre-tokenized input, so word boundaries are
the file's). A word's FIRST piece carries its label; its other pieces get ``-100`` (ignored by the
loss) unless ``label_all_subtokens``. A word that tokenizes to nothing (a control character,
``U+FE0F``, ``U+FFFD`` ...) becomes ``[UNK]``, so that every word is predicted.

A sentence longer than ``max_seq_length - 2`` pieces is cut, at word boundaries, into overlapping
windows (about ``stride`` pieces of overlap). Every word is predicted by exactly ONE window: among the
windows that hold it, the one where it has the most context on its worse side (the sentence edge
counts as full context). Only those positions are labelled and carry a ``word_index``.

A batch holds ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels`` ``[B, T]``,
``word_index`` ``[B, T]`` (the word predicted at a position, -1 elsewhere), ``sentence_index`` ``[B]``
and ``sentence_num_words`` ``[B]`` -- enough for the task to rebuild word-level predictions of a
sentence whose windows land in different batches, without access to this object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bertlab.constants import IGNORE_INDEX
from bertlab.data.conll import Sentence, read_conll
from bertlab.data.sampler import FixedBatchSampler, LengthGroupedSampler, ResumableDataLoader, rank_world
from bertlab.data.splits import hold_out
from bertlab.data.tables import read_table
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError
from bertlab.tagging import canonical_scheme, check_tag

log = logging.getLogger(__name__)

__all__ = [
    "NerCollator",
    "NerDataModule",
    "Window",
    "build_windows",
    "plan_windows",
    "word_pieces",
]

SPLITS = ("train", "validation", "test")


@dataclass
class Window:
    """One model input: a span of a sentence's words, as pieces between [CLS] and [SEP].

    ``word_index[i]`` is the word predicted at position ``i`` (-1 where none is); ``labels[i]`` the
    label id trained at position ``i`` (-100 where none is)."""

    sentence_index: int
    num_words: int  # words in the whole sentence
    input_ids: np.ndarray
    labels: np.ndarray
    word_index: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def plan_windows(
    piece_counts: Sequence[int], capacity: int, stride: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut a sentence whose word ``w`` has ``piece_counts[w]`` pieces (each ``<= capacity``) into
    windows ``[start, end)`` of words with at most ``capacity`` pieces, overlapping by at most
    ``stride`` pieces. Returns the windows and, per word, the index of the window that predicts it.
    """
    n = len(piece_counts)
    if n == 0:
        return [], []
    cum = [0]
    for c in piece_counts:
        cum.append(cum[-1] + c)

    def pieces(a: int, b: int) -> int:
        return cum[b] - cum[a]

    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + 1
        while end < n and pieces(start, end + 1) <= capacity:
            end += 1
        windows.append((start, end))
        if end >= n:
            break
        # Next start: the earliest word after `start` that leaves at most `stride` pieces of overlap
        # and still lets word `end` (the first one not yet covered) fit.
        nxt = end
        for s in range(start + 1, end + 1):
            if pieces(s, end) <= stride and pieces(s, end + 1) <= capacity:
                nxt = s
                break
        start = nxt

    owner = [-1] * n
    best = [-1.0] * n
    for k, (s, e) in enumerate(windows):
        for w in range(s, e):
            left = float("inf") if s == 0 else pieces(s, w)
            right = float("inf") if e == n else pieces(w + 1, e)
            score = min(left, right)
            if score > best[w]:
                best[w], owner[w] = score, k
    return windows, owner


def build_windows(
    sentence_index: int,
    word_pieces: Sequence[Sequence[int]],
    label_ids: Sequence[int] | None,
    max_seq_length: int,
    stride: int,
    cls_id: int,
    sep_id: int,
    label_all_subtokens: bool = False,
) -> list[Window]:
    """The windows of one sentence (``word_pieces[w]``: the non-empty piece ids of word ``w``)."""
    capacity = max_seq_length - 2
    pieces = [list(p[:capacity]) for p in word_pieces]  # a giant word keeps its first pieces
    spans, owner = plan_windows([len(p) for p in pieces], capacity, stride)
    n = len(pieces)
    out = []
    for k, (s, e) in enumerate(spans):
        ids, labels, words = [cls_id], [IGNORE_INDEX], [-1]
        for w in range(s, e):
            mine = owner[w] == k
            label = label_ids[w] if (mine and label_ids is not None) else IGNORE_INDEX
            for j, piece in enumerate(pieces[w]):
                ids.append(piece)
                labels.append(label if (j == 0 or label_all_subtokens) else IGNORE_INDEX)
                words.append(w if (mine and j == 0) else -1)
        ids.append(sep_id)
        labels.append(IGNORE_INDEX)
        words.append(-1)
        out.append(
            Window(
                sentence_index,
                n,
                np.asarray(ids, dtype=np.int32),
                np.asarray(labels, dtype=np.int32),
                np.asarray(words, dtype=np.int32),
            )
        )
    return out


def word_pieces(tokenizer: Any, sentences: Sequence[Sequence[str]], unk_id: int) -> list[list[list[int]]]:
    """Piece ids of every word of every sentence; a word that tokenizes to nothing (a control
    character, an odd space) becomes ``[UNK]`` so that it still gets a prediction."""
    encodings = tokenizer.encode_batch(
        [list(w) for w in sentences], is_pretokenized=True, add_special_tokens=False
    )
    out = []
    for words, enc in zip(sentences, encodings):
        pieces: list[list[int]] = [[] for _ in words]
        for piece, w in zip(enc.ids, enc.word_ids):
            if w is not None:
                pieces[w].append(piece)
        for p in pieces:
            if not p:
                p.append(unk_id)
        out.append(pieces)
    return out


class WindowDataset(Dataset):
    def __init__(self, windows: list[Window]) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Window:
        return self.windows[int(index)]


class NerCollator:
    """Pads a list of windows to the longest one (dynamic padding)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        b, t = len(windows), max(len(w) for w in windows)
        input_ids = np.full((b, t), self.pad_token_id, dtype=np.int64)
        labels = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
        word_index = np.full((b, t), -1, dtype=np.int64)
        mask = np.zeros((b, t), dtype=np.int64)
        for i, w in enumerate(windows):
            n = len(w)
            input_ids[i, :n] = w.input_ids
            labels[i, :n] = w.labels
            word_index[i, :n] = w.word_index
            mask[i, :n] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.zeros((b, t), dtype=torch.long),
            "labels": torch.from_numpy(labels),
            "word_index": torch.from_numpy(word_index),
            "sentence_index": torch.tensor([w.sentence_index for w in windows], dtype=torch.long),
            "sentence_num_words": torch.tensor([w.num_words for w in windows], dtype=torch.long),
        }


class NerDataModule(L.LightningDataModule):
    """Tagged train / validation / test sentences as batches of windows for token classification.

    The files are CoNLL (a token and its tag per line), or JSON / JSON lines with a list of tokens
    (``tokens_column``) and a list of tags (``tags_column``) per row; with ``hub`` the ``*_file``
    settings name the splits of a ``datasets`` dataset (tags as text or ``ClassLabel`` ids).
    The label set is the training file's tags, sorted with ``O`` first, unless ``labels`` is given
    (fine-tuning a model that already has one). A validation or test tag outside it is an error.
    ``scheme`` (IOB1, IOB2/BIO, IOE1, IOE2, IOBES/BIOES, BILOU, BMES) is checked on every tag.
    Without a validation file, ``validation_split`` (a fraction or a number of sentences) holds
    sentences out of the training data, seeded (:mod:`bertlab.data.splits`).
    """

    def __init__(
        self,
        *,
        tokenizer_dir: str,
        train_file: str,
        validation_file: str | None = None,
        test_file: str | None = None,
        token_column: int = 0,
        tag_column: int = -1,
        delimiter: str | None = None,
        scheme: str = "IOB2",
        label_all_subtokens: bool = False,
        max_seq_length: int = 128,
        stride: int = 32,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 1234,
        labels: list[str] | None = None,
        validation_split: float | int | None = None,
        tokens_column: str = "tokens",
        tags_column: str = "tags",
        hub: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            self.scheme = canonical_scheme(scheme)
        except ValueError as exc:
            raise BertlabError(f"data.scheme: {exc}") from None
        if max_seq_length < 3:
            raise BertlabError(f"data.max_seq_length={max_seq_length} is too short (at least 3)")
        if not 0 <= stride < max_seq_length - 2:
            raise BertlabError(
                f"data.stride={stride} must be at least 0 and below max_seq_length - 2 = {max_seq_length - 2}"
            )
        if batch_size < 1 or eval_batch_size < 1:
            raise BertlabError(
                f"data.batch_size={batch_size} / eval_batch_size={eval_batch_size} must be >= 1"
            )
        self.tokenizer_dir = str(tokenizer_dir)
        self.files = {"train": train_file, "validation": validation_file, "test": test_file}
        self.token_column = token_column
        self.tag_column = tag_column
        self.delimiter = delimiter
        self.label_all_subtokens = label_all_subtokens
        self.max_seq_length = max_seq_length
        self.stride = stride
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.validation_split = validation_split
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.hub = dict(hub) if hub else None
        if self.hub and not self.hub.get("name"):
            raise BertlabError(
                "data.hub.name is not set: name a datasets dataset, e.g. data.hub.name=wnut_17"
            )
        # where the held-out validation sentences come from, when validation_split is used
        self.held_out_rows: list[str] = []
        self._given_labels = list(labels) if labels is not None else None
        self._labels: list[str] | None = None
        self._sentences: dict[str, list[Sentence]] = {}
        self._windows: dict[str, list[Window]] = {}
        self._pad_id: int | None = None

    # ------------------------------------------------------------------------- reading

    def _read(self, split: str) -> list[Sentence]:
        if split not in self._sentences:
            if split in ("train", "validation") and self.holds_out:
                sentences = self._read_file("train")
                held = hold_out(len(sentences), self.validation_split, self.seed)
                self._sentences["train"] = [sentences[i] for i in held.train]
                self._sentences["validation"] = [sentences[i] for i in held.validation]
                self.held_out_rows = [sentences[i].origin for i in held.validation]
            else:
                self._sentences[split] = self._read_file(split)
        return self._sentences[split]

    @property
    def holds_out(self) -> bool:
        """Whether validation sentences are held out of the training data (no validation file given)."""
        return not self.files.get("validation") and self.validation_split is not None

    def _read_file(self, split: str) -> list[Sentence]:
        name = self.files.get(split)
        if not name:
            raise BertlabError(f"data.{split}_file is not set")
        if self.hub:
            sentences = self._read_hub(split, str(name))
        elif Path(name).suffix.lower() in (".json", ".jsonl"):
            sentences = self._read_table(Path(name))
        else:
            sentences = read_conll(name, self.token_column, self.tag_column, self.delimiter)
        for s in sentences:
            for i, tag in enumerate(s.tags):
                if not check_tag(tag, self.scheme):
                    raise BertlabError(
                        f"{s.where(i)}: tag {tag!r} is not a {self.scheme} tag "
                        "(expected O or PREFIX-TYPE); set data.scheme to match the file"
                    )
        return sentences

    def _sentences_of(
        self, rows: Any, where: Any, source: str, tag_names: list[str] | None
    ) -> list[Sentence]:
        """Sentences from the token and tag columns of a table's rows (tags as text, or as ids)."""
        for column, option in ((self.tokens_column, "tokens_column"), (self.tags_column, "tags_column")):
            if column not in rows.column_names:
                raise BertlabError(
                    f"{source}: no column {column!r} (set by data.{option}); the columns are {rows.column_names}"
                )
        out = []
        for i, (words, tags) in enumerate(zip(rows[self.tokens_column], rows[self.tags_column])):
            row = where(i)
            if not isinstance(words, list) or not isinstance(tags, list):
                raise BertlabError(f"{row}: {self.tokens_column!r} and {self.tags_column!r} must be lists")
            if len(words) != len(tags):
                raise BertlabError(f"{row}: {len(words)} tokens but {len(tags)} tags")
            if tag_names is not None:
                tags = [tag_names[int(t)] for t in tags]
            words, tags = [str(w) for w in words], [str(t).strip() for t in tags]
            for j, (word, tag) in enumerate(zip(words, tags)):
                if word == "" or tag == "":
                    raise BertlabError(f"{row}, word {j + 1}: empty {'token' if word == '' else 'tag'}")
            if words:
                out.append(Sentence(words, tags, 0, source, row))
        if not out:
            raise BertlabError(f"{source}: no sentences")
        return out

    def _read_table(self, path: Path) -> list[Sentence]:
        """JSON lines (or a JSON array) with a list of tokens and a list of tags per row."""
        rows, where = read_table(path)
        return self._sentences_of(rows, where, str(path), None)

    def _read_hub(self, split: str, split_name: str) -> list[Sentence]:
        """A split of a ``datasets`` dataset (``data.hub``): the real loading code; tags given as
        ``ClassLabel`` ids are read by their names."""
        import datasets

        hub = self.hub
        name = f"{hub['name']}[{split_name}]"
        try:
            rows = datasets.load_dataset(
                hub["name"], hub.get("config_name"), split=split_name, data_files=hub.get("data_files")
            )
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
            raise BertlabError(f"data.hub: cannot load {name}: {str(e).splitlines()[0][:300]}") from None
        feature = rows.features.get(self.tags_column)
        inner = getattr(feature, "feature", None)
        tag_names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
        return self._sentences_of(rows, lambda i: f"{name}: row {i + 1}", name, tag_names)

    @property
    def labels(self) -> list[str]:
        """Label names by id: the training tags (sorted, ``O`` first) or the given ``labels``."""
        if self._labels is None:
            if self._given_labels is not None:
                labels = self._given_labels
                if len(set(labels)) != len(labels):
                    raise BertlabError(f"data.labels repeats a label: {labels}")
                for tag in labels:
                    if not check_tag(tag, self.scheme):
                        raise BertlabError(f"data.labels: {tag!r} is not a {self.scheme} tag")
            else:
                tags = {t for s in self._read("train") for t in s.tags}
                labels = (["O"] if "O" in tags else []) + sorted(tags - {"O"})
            self._labels = list(labels)
        return self._labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def label_to_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.labels)}

    def sentences(self, split: str) -> list[tuple[list[str], list[str]]]:
        """``(words, tags)`` of every sentence of ``split`` ("train", "validation", "test")."""
        return [(s.words, s.tags) for s in self._read(split)]

    # ---------------------------------------------------------------------- windowing

    def windows(self, split: str) -> list[Window]:
        """The windows of ``split``; ``Window.sentence_index`` / ``word_index`` map them to words."""
        if split not in self._windows:
            self._windows[split] = self._build(split)
        return self._windows[split]

    def _build(self, split: str) -> list[Window]:
        sentences = self._read(split)
        label_to_id = self.label_to_id
        tok = load_tokenizer(self.tokenizer_dir)
        ids = special_token_ids(tok)
        self._pad_id = ids["pad"]
        all_pieces = word_pieces(tok, [s.words for s in sentences], ids["unk"])
        windows: list[Window] = []
        for si, (s, pieces) in enumerate(zip(sentences, all_pieces)):
            label_ids = []
            for i, tag in enumerate(s.tags):
                if tag not in label_to_id:
                    where = "the training file" if self._given_labels is None else "data.labels"
                    raise BertlabError(
                        f"{s.where(i)}: tag {tag!r} is not in the label set of {where} "
                        f"({', '.join(self.labels)})"
                    )
                label_ids.append(label_to_id[tag])
            windows.extend(
                build_windows(
                    si,
                    pieces,
                    label_ids,
                    self.max_seq_length,
                    self.stride,
                    ids["cls"],
                    ids["sep"],
                    self.label_all_subtokens,
                )
            )
        if len(windows) > len(sentences):
            log.info(
                "%s: %d sentences in %d windows of at most %d pieces",
                split,
                len(sentences),
                len(windows),
                self.max_seq_length,
            )
        return windows

    # -------------------------------------------------------------------------- loaders

    def prepare_data(self) -> None:
        load_tokenizer(self.tokenizer_dir)  # a clear error early

    def setup(self, stage: str | None = None) -> None:
        _ = self.labels
        wanted = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"]}.get(
            stage or "", list(SPLITS)
        )
        for split in wanted:
            if self.files.get(split) or (split == "validation" and self.holds_out):
                self.windows(split)

    def _collator(self) -> NerCollator:
        if self._pad_id is None:
            self._pad_id = special_token_ids(load_tokenizer(self.tokenizer_dir))["pad"]
        return NerCollator(self._pad_id)

    def train_dataloader(self) -> ResumableDataLoader:
        windows = self.windows("train")
        rank, world = rank_world(self.trainer)
        sampler = LengthGroupedSampler(
            [len(w) for w in windows], self.batch_size, seed=self.seed, rank=rank, world_size=world
        )
        return ResumableDataLoader(
            WindowDataset(windows),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            WindowDataset(self.windows(split)),
            batch_sampler=FixedBatchSampler([len(w) for w in self.windows(split)], self.eval_batch_size),
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.files.get("validation") and not self.holds_out:
            return []
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def iter_batches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        """The evaluation batches of ``split``, outside a Trainer."""
        yield from self._eval_loader(split)

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._labels is None and state.get("labels"):
            self._given_labels = list(state["labels"])
