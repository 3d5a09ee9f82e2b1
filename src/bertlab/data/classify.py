"""Sentence and sentence-pair classification data: labelled tables to padded batches.

``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` (token types 0 then 1), truncated to ``max_seq_length``
(longest first for pairs), padded to the longest row of each batch. Training batches hold rows of
similar length (:class:`~bertlab.data.sampler.LengthGroupedSampler`); their order is fixed by
``(seed, epoch)`` and the loader's position is saved in Lightning checkpoints, so training resumes
mid-epoch on the same batch. Evaluation batches are sorted by length; every batch carries ``index``
(the row number in its file), so outputs can be put back in file order.

Long texts (``long_text``): ``truncate`` keeps the first ``max_seq_length - 2`` pieces (as
transformers' ``run_glue`` does); ``windows`` keeps every piece, in overlapping windows of
``max_seq_length`` (:func:`window_spans` is the rule). A row is still one document with one label:
the sampler, the batch size (documents per optimizer step), the resumable position and the DDP
sharding all count documents, and a batch carries ``window_doc`` (the batch position of the document
each window belongs to) so that the task pools the windows' logits into one prediction per document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from bertlab.data.labels import PROBLEM_TYPES, parse_labels, shown_labels, sort_labels
from bertlab.data.sampler import (
    FixedBatchSampler,
    LengthGroupedSampler,
    ResumableDataLoader,
    ResumableSampler,
    rank_world,
)
from bertlab.data.splits import hold_out
from bertlab.data.tables import (
    QUOTING,
    RowLocator,
    quiet_datasets,
    read_table,
    require_columns,
)
from bertlab.data.tokenizer import load_tokenizer, special_token_ids
from bertlab.errors import BertlabError

log = logging.getLogger(__name__)

Locator = Callable[[int], str]  # row index -> "file:line" (or "file: row N")

__all__ = [
    "ClassifyCollator",
    "PairEncoder",
    "ClassifyDataModule",
    "EncodedDataset",
    "LONG_TEXT",
    "WindowBudgetBatchSampler",
    "encode_pairs",
    "truncate_pair",
    "window_spans",
]

# What happens to a text longer than max_seq_length - 2 pieces (data.long_text).
LONG_TEXT = ("truncate", "windows")


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation: drop the last token of the longer sequence (B on ties) until
    ``len_a + len_b <= budget``; returns the kept lengths (closed form of that loop)."""
    excess = len_a + len_b - budget
    if excess <= 0:
        return len_a, len_b
    if len_a != len_b:
        take = min(abs(len_a - len_b), excess)
        if len_a > len_b:
            len_a -= take
        else:
            len_b -= take
        excess -= take
    return len_a - excess // 2, len_b - (excess + 1) // 2


def window_spans(num_pieces: int, capacity: int, stride: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` that cover a text of ``num_pieces`` pieces (``data.long_text=windows``).

    With ``C = capacity`` (``max_seq_length - 2``) and step ``s = C - stride``: window ``k`` is
    ``[k * s, min(k * s + C, n))`` for ``k = 0 .. K - 1``, where ``K = 1`` for ``n <= C`` and
    ``K = 1 + ceil((n - C) / s)`` otherwise: the first window that reaches the text's end is the last.
    So piece ``i`` reaches the model once for each ``k`` with ``k * s <= i < k * s + C``: every piece
    at least once, consecutive windows share exactly ``stride`` pieces, and with ``stride <= C / 2`` a
    piece is seen twice when it is in such an overlap and once otherwise (transformers' tokenizers'
    ``stride`` means the same overlap). Every window but the last has ``C`` pieces; the last has
    between ``stride + 1`` and ``C``, at least one of them new."""
    if not 0 <= stride < capacity:
        raise BertlabError(
            f"data.stride={stride} must be at least 0 and below max_seq_length - 2 = {capacity}"
        )
    if num_pieces <= capacity:
        return [(0, num_pieces)]
    step = capacity - stride
    count = 1 + -(-(num_pieces - capacity) // step)  # 1 + ceil((n - C) / s)
    return [(k * step, min(k * step + capacity, num_pieces)) for k in range(count)]


def encode_pairs(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    max_seq_length: int,
    cls_id: int,
    sep_id: int,
    long_text: str = "truncate",
    stride: int = 0,
) -> dict[str, list]:
    """``input_ids`` ([CLS] A [SEP] (B [SEP])) and ``a_len`` (length of [CLS] A [SEP]) per row, and its
    ``length``. With ``long_text="windows"`` (single texts only) each row's ``input_ids`` is a list of
    windows (:func:`window_spans`), ``a_len`` their lengths, ``length`` the longest and ``windows``
    their number."""
    enc_a = tokenizer.encode_batch(texts, add_special_tokens=False)
    input_ids: list[list[int]] = []
    a_lens: list[int] = []
    if long_text == "windows":
        if pairs is not None:
            raise BertlabError(
                "data.long_text=windows classifies single texts; with data.text_pair_column use truncate"
            )
        capacity = max_seq_length - 2
        docs: list[list[list[int]]] = []
        for e in enc_a:
            ids = e.ids
            docs.append([[cls_id, *ids[s:t], sep_id] for s, t in window_spans(len(ids), capacity, stride)])
        return {
            "input_ids": docs,
            "a_len": [[len(w) for w in doc] for doc in docs],
            "length": [max(len(w) for w in doc) for doc in docs],
            "windows": [len(doc) for doc in docs],
        }
    if pairs is None:
        budget = max_seq_length - 2
        for e in enc_a:
            ids = [cls_id, *e.ids[:budget], sep_id]
            input_ids.append(ids)
            a_lens.append(len(ids))
    else:
        enc_b = tokenizer.encode_batch(pairs, add_special_tokens=False)
        budget = max_seq_length - 3
        for ea, eb in zip(enc_a, enc_b):
            la, lb = truncate_pair(len(ea.ids), len(eb.ids), budget)
            ids = [cls_id, *ea.ids[:la], sep_id, *eb.ids[:lb], sep_id]
            input_ids.append(ids)
            a_lens.append(la + 2)
    return {"input_ids": input_ids, "a_len": a_lens, "length": [len(x) for x in input_ids]}


def _encode_batch(batch: dict[str, list], tokenizer: Any, **options: Any) -> dict[str, list]:
    """:func:`encode_pairs` of a ``datasets`` batch (its ``text`` and optional ``pair`` columns)."""
    return encode_pairs(tokenizer, batch["text"], batch.get("pair"), **options)


class EncodedDataset(TorchDataset):
    """Arrow-backed encoded rows; each item also carries its row index (``index``). ``lengths``: the
    longest input row of each (what its batch is padded to); ``windows``: its number of windows."""

    def __init__(self, table: datasets.Dataset) -> None:
        self.table = table
        self.lengths = np.asarray(table["length"], dtype=np.int64)
        names = table.column_names
        self.windows = (
            np.asarray(table["windows"], dtype=np.int64) if "windows" in names else np.ones_like(self.lengths)
        )

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # One Arrow read per batch instead of one per row.
        indices = [int(i) for i in indices]
        cols = self.table[indices]
        names = [n for n in ("input_ids", "a_len", "label") if n in cols]
        return [{"index": i, **{n: cols[n][j] for n in names}} for j, i in enumerate(indices)]


class ClassifyCollator:
    """Rows (documents) -> padded tensors: ``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``index`` and, when the rows have them, ``labels`` (long [B]; float multi-hot [B, K]; float [B] for
    regression). ``windowed``: each row holds a list of windows; the model inputs are then
    ``[W, T]`` (every window of the batch's documents, in document order) and ``window_doc`` ``[W]``
    says which document (0 .. B-1) each window belongs to; ``index`` and ``labels`` stay per document."""

    def __init__(self, pad_token_id: int, problem_type: str, num_labels: int, windowed: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.problem_type = problem_type
        self.num_labels = num_labels
        self.windowed = windowed

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch_size = len(rows)
        if self.windowed:
            inputs = [(w, a) for r in rows for w, a in zip(r["input_ids"], r["a_len"])]
            window_doc = [d for d, r in enumerate(rows) for _ in r["input_ids"]]
        else:
            inputs = [(r["input_ids"], r["a_len"]) for r in rows]
        width = max(len(w) for w, _ in inputs)
        ids = np.full((len(inputs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(inputs), width), dtype=np.int64)
        types = np.zeros((len(inputs), width), dtype=np.int64)
        for i, (w, a_len) in enumerate(inputs):
            n = len(w)
            ids[i, :n] = w
            mask[i, :n] = 1
            types[i, a_len:n] = 1
        out = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }
        if self.windowed:
            out["window_doc"] = torch.tensor(window_doc, dtype=torch.long)
        if "label" in rows[0]:
            if self.problem_type == "single_label":
                out["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
            elif self.problem_type == "regression":
                out["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
            else:
                hot = torch.zeros(batch_size, self.num_labels, dtype=torch.float32)
                for i, r in enumerate(rows):
                    hot[i, list(r["label"])] = 1.0
                out["labels"] = hot
        return out


class PairEncoder:
    """Texts or ``(text, text_pair)`` examples -> model input rows, and rows -> a padded batch (numpy),
    as prediction and the export check encode them: the same encoding as training, windows included
    (``long_text``, ``stride``)."""

    def __init__(
        self, tokenizer: Any, max_seq_length: int, long_text: str = "truncate", stride: int = 0
    ) -> None:
        if long_text not in LONG_TEXT:
            raise BertlabError(f"long_text={long_text!r} is not one of {', '.join(LONG_TEXT)}")
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.long_text = long_text
        self.stride = stride
        self.ids = special_token_ids(tokenizer)
        self.collator = ClassifyCollator(self.ids["pad"], "single_label", 2)

    def __call__(self, examples: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """One row per example; with windows, a row's ``input_ids`` and ``a_len`` are lists (one item
        per window)."""
        rows: list[dict[str, Any]] = [{} for _ in examples]
        for paired in (False, True):
            which = [i for i, (_, b) in enumerate(examples) if (b is not None) == paired]
            if not which:
                continue
            texts = [examples[i][0] for i in which]
            pairs = [str(examples[i][1]) for i in which] if paired else None
            enc = encode_pairs(
                self.tokenizer,
                texts,
                pairs,
                self.max_seq_length,
                self.ids["cls"],
                self.ids["sep"],
                self.long_text,
                self.stride,
            )
            for i, ids, a_len in zip(which, enc["input_ids"], enc["a_len"]):
                rows[i] = {"input_ids": ids, "a_len": a_len, "index": i}
        return rows

    def windows(self, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
        """(one row per model input, the position in ``rows`` of the document each belongs to): the
        windows of every row in order; without windows, the rows themselves."""
        if self.long_text != "windows":
            return list(rows), list(range(len(rows)))
        flat = [
            {"input_ids": w, "a_len": a, "index": d}
            for d, r in enumerate(rows)
            for w, a in zip(r["input_ids"], r["a_len"])
        ]
        return flat, [x["index"] for x in flat]

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The model inputs of ``rows`` (of every window of each, with windows) as one padded batch."""
        return self.pad(self.windows(rows)[0])

    def pad(self, inputs: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Model input rows (one input each, as :meth:`windows` gives them) as one padded batch."""
        batch = self.collator(list(inputs))
        return {k: batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}


class WindowBudgetBatchSampler(Sampler[list[int]]):
    """Evaluation batches of whole documents holding at most ``budget`` windows each (one document
    alone when it has more), documents sorted by length (longest first; stable): the same batches
    every time, and memory bounded by windows, not by documents."""

    def __init__(self, lengths: Sequence[int], windows: Sequence[int], budget: int) -> None:
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
        self.batches: list[list[int]] = []
        current: list[int] = []
        held = 0
        for i in order.tolist():
            if current and held + int(windows[i]) > budget:
                self.batches.append(current)
                current, held = [], 0
            current.append(i)
            held += int(windows[i])
        if current:
            self.batches.append(current)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class ClassifyDataModule(L.LightningDataModule):
    """Labelled tables -> batches for sentence / sentence-pair classification (see the module docstring).

    The label set comes from the training split (or ``labels``, when a model already has one): label
    values as text, sorted (numerically when all are integers), in :attr:`labels`; the label id of a
    row is its position there. ``problem_type="multi_label"`` reads a list of labels per row (a JSON
    list, or text split on ``label_separator``, "," by default); ``"regression"`` a number per row.

    Without a validation file, ``validation_split`` (a fraction or a number of rows) holds validation
    rows out of the training data, seeded and stratified by label (:mod:`bertlab.data.splits`);
    :attr:`held_out_rows` says where they came from.

    ``long_text="windows"`` (single texts): every piece of a text reaches the model, in windows of
    ``max_seq_length`` that overlap by ``stride`` pieces (:func:`window_spans`). ``batch_size`` still
    counts documents (rows) and the training order is still length-grouped, by each document's longest
    window (what its batch is padded to); a training batch runs all windows of its documents, so its
    memory grows with them (``hardware.micro_batch_size`` bounds it). Evaluation batches hold at most
    ``eval_batch_size`` windows (:class:`WindowBudgetBatchSampler`).
    """

    def __init__(
        self,
        *,
        tokenizer_dir: str | Path,
        train_file: str | Path | None,
        validation_file: str | Path | None = None,
        test_file: str | Path | None = None,
        format: str | None = None,
        delimiter: str | None = None,
        encoding: str = "utf-8",
        quoting: str = "minimal",
        text_column: str = "sentence",
        text_pair_column: str | None = None,
        label_column: str = "label",
        problem_type: str = "single_label",
        label_separator: str | None = None,
        max_seq_length: int = 128,
        long_text: str = "truncate",
        stride: int = 32,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        group_by_length: bool = True,
        limit_train_rows: int | None = None,
        validation_split: float | int | None = None,
        label_names: dict[str, str] | list[str] | None = None,
        seed: int = 1234,
        labels: list[str] | None = None,
        cache_dir: str | None = None,
        hub: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if problem_type not in PROBLEM_TYPES:
            raise BertlabError(f"data.problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if quoting not in QUOTING:
            raise BertlabError(f"data.quoting={quoting!r} is not one of {', '.join(QUOTING)}")
        if max_seq_length < 4:
            raise BertlabError(f"data.max_seq_length={max_seq_length} is too short (at least 4)")
        if long_text not in LONG_TEXT:
            raise BertlabError(f"data.long_text={long_text!r} is not one of {', '.join(LONG_TEXT)}")
        if long_text == "windows":
            if text_pair_column is not None:
                raise BertlabError(
                    "data.long_text=windows classifies single texts; with data.text_pair_column use truncate"
                )
            window_spans(0, max_seq_length - 2, stride)  # a stride that does not fit: one line, now
        if batch_size < 1 or eval_batch_size < 1:
            raise BertlabError(
                f"data.batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1"
            )
        if limit_train_rows is not None and limit_train_rows < 1:
            raise BertlabError(f"data.limit_train_rows={limit_train_rows} must be at least 1")
        self.hub = dict(hub) if hub else None
        if self.hub and not self.hub.get("name"):
            raise BertlabError("data.hub.name is not set: name a datasets dataset, e.g. data.hub.name=glue")
        if train_file is None and labels is None:
            raise BertlabError("data.train_file is not set: the label set comes from the training file")
        self.tokenizer_dir = Path(tokenizer_dir)
        self.files = {"train": train_file, "validation": validation_file, "test": test_file}
        self.read_options = {
            "format": format,
            "delimiter": delimiter,
            "encoding": encoding,
            "quoting": quoting,
        }
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.problem_type = problem_type
        self.label_separator = label_separator
        self.max_seq_length = max_seq_length
        self.long_text = long_text
        self.stride = int(stride)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.group_by_length = group_by_length
        self.limit_train_rows = limit_train_rows
        self.validation_split = validation_split
        if label_names is not None and self.problem_type == "regression":
            raise BertlabError("data.label_names names classes; a regression has none")
        self.label_names = (
            {str(k): v for k, v in label_names.items()} if isinstance(label_names, dict) else label_names
        )
        self.seed = seed
        self.cache_dir = cache_dir
        self.labels: list[str] | None = None
        if labels is not None:
            self._set_labels([str(x) for x in labels], given=True)
        self._labels_given = labels is not None
        self._tokenizer: Any = None
        self._raw: dict[str, tuple[list[str], list[str] | None, list[Any], Locator]] = {}
        # where the held-out validation rows come from ("file:line"), when validation_split is used
        self.held_out_rows: list[str] = []
        self._sets: dict[str, EncodedDataset] = {}

    # ------------------------------------------------------------------------- labels

    def _set_labels(self, labels: list[str], given: bool = False) -> None:
        if self.problem_type == "regression":
            self.labels = [self.label_column]
        else:
            if len(set(labels)) != len(labels):
                raise BertlabError(f"the label list {shown_labels(labels)} repeats a label")
            if self.problem_type == "single_label" and len(labels) < 2:
                what = (
                    "the given labels have"
                    if given
                    else f"{self.files['train']}: column {self.label_column!r} has"
                )
                raise BertlabError(
                    f"{what} only {len(labels)} distinct value(s) {shown_labels(labels)}; "
                    "single-label classification needs at least two"
                )
            if not labels:
                raise BertlabError(f"{self.files['train']}: no labels in column {self.label_column!r}")
            self.labels = list(labels)
        self.label_to_id = {x: i for i, x in enumerate(self.labels)}

    @property
    def num_labels(self) -> int:
        if self.labels is None:
            self.prepare_labels()
        assert self.labels is not None
        return len(self.labels)

    def prepare_labels(self) -> list[str]:
        """The label set (read from the training file on first use)."""
        if self.labels is None:
            _, _, values, _ = self._read("train")
            if self.problem_type == "multi_label":
                self._set_labels(sort_labels([x for row in values for x in row]))
            else:
                self._set_labels(sort_labels(values) if self.problem_type == "single_label" else [])
        assert self.labels is not None
        return self.labels

    # ------------------------------------------------------------------------ reading

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_dir)
        return self._tokenizer

    def _read(self, split: str) -> tuple[list[str], list[str] | None, list[Any], Locator]:
        """(texts, pair texts or None, parsed labels, locator) of a split, checked row by row."""
        if split not in self._raw:
            if split in ("train", "validation") and self.holds_out:
                self._hold_out()
            else:
                self._raw[split] = self._read_file(split)
        return self._raw[split]

    @property
    def holds_out(self) -> bool:
        """Whether validation rows are held out of the training data (no validation file given)."""
        return self.files["validation"] is None and self.validation_split is not None

    def _hold_out(self) -> None:
        texts, pairs, values, where = self._read_file("train")
        strata = values if self.problem_type == "single_label" else None
        split = hold_out(len(texts), self.validation_split, self.seed, strata)
        self.held_out_rows = [where(i) for i in split.validation]
        for name, rows in (("train", split.train), ("validation", split.validation)):
            self._raw[name] = (
                [texts[i] for i in rows],
                None if pairs is None else [pairs[i] for i in rows],
                [values[i] for i in rows],
                where.subset(rows),
            )

    def _read_file(self, split: str) -> tuple[list[str], list[str] | None, list[Any], RowLocator]:
        if self.hub:
            ds, where, path = self._read_hub(split)
        else:
            path = self.files[split]
            if path is None:
                raise BertlabError(f"data.{split}_file is not set")
            ds, where = read_table(path, cache_dir=self.cache_dir, **self.read_options)
        require_columns(
            ds,
            path,
            {
                "text_column": self.text_column,
                "text_pair_column": self.text_pair_column,
                "label_column": self.label_column,
            },
        )
        if split == "train" and self.limit_train_rows is not None:
            ds = ds.select(range(min(self.limit_train_rows, len(ds))))
        if len(ds) == 0:
            raise BertlabError(f"{path}: the table has no rows")
        texts = self._texts(ds[self.text_column], self.text_column, where)
        pairs = None
        if self.text_pair_column is not None:
            pairs = self._texts(ds[self.text_pair_column], self.text_pair_column, where)
        values = parse_labels(
            ds[self.label_column], self.problem_type, self.label_column, self.label_separator, where
        )
        if self.label_names is not None:
            values = self._named(values, where)
        return texts, pairs, values, where

    def _named(self, values: list[Any], where: Locator) -> list[Any]:
        """Label values (e.g. 0, 1) replaced by their names (``data.label_names``)."""
        names = self.label_names
        if isinstance(names, list):
            names = {str(i): name for i, name in enumerate(names)}

        def name(i: int, value: str) -> str:
            if value not in names:
                raise BertlabError(
                    f"{where(i)}: label {value!r} has no name in data.label_names {dict(names)}"
                )
            return str(names[value])

        if self.problem_type == "multi_label":
            return [[name(i, v) for v in row] for i, row in enumerate(values)]
        return [name(i, v) for i, v in enumerate(values)]

    def _read_hub(self, split: str) -> tuple[datasets.Dataset, RowLocator, str]:
        """A split of a ``datasets`` dataset by name (``data.hub``): the real loading code; offline
        it works on local builders (``csv``, ``json``, ``parquet`` with ``data_files``) and caches."""
        hub = self.hub
        split_name = self.files[split]  # with a hub dataset, the *_file keys name its splits
        if split_name is None:
            raise BertlabError(f"data.{split}_file is not set (the name of the hub dataset's {split} split)")
        name = f"{hub['name']}[{split_name}]"
        try:
            ds = datasets.load_dataset(
                hub["name"],
                hub.get("config_name"),
                split=split_name,
                data_files=hub.get("data_files"),
                cache_dir=self.cache_dir,
            )
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
            raise BertlabError(f"data.hub: cannot load {name}: {str(e).splitlines()[0][:300]}") from None
        # A ClassLabel column gives its label names, in id order.
        feature = ds.features.get(self.label_column)
        if isinstance(feature, datasets.ClassLabel):
            ds = ds.cast_column(self.label_column, datasets.Value("string"))
            names = feature.names
            ds = ds.map(lambda row: {self.label_column: names[int(row[self.label_column])]})
        return ds, RowLocator(name, first_line=None), name

    @staticmethod
    def _texts(values: list[Any], column: str, where: Locator) -> list[str]:
        out = []
        for i, value in enumerate(values):
            text = "" if value is None else value if isinstance(value, str) else str(value)
            if not text.strip():
                raise BertlabError(f"{where(i)}: empty text in column {column!r}")
            out.append(text)
        return out

    def _label_ids(self, split: str, values: list[Any], where: Locator) -> list[Any]:
        if self.problem_type == "regression":
            return values
        known = self.label_to_id
        source = "the model's labels" if self._labels_given else "the training labels"

        def lookup(i: int, label: str) -> int:
            if label not in known:
                raise BertlabError(
                    f"{where(i)}: label {label!r} is not in {source} {shown_labels(self.labels or [])}"
                )
            return known[label]

        if self.problem_type == "multi_label":
            return [[lookup(i, x) for x in row] for i, row in enumerate(values)]
        return [lookup(i, x) for i, x in enumerate(values)]

    def _encode(self, texts: list[str], pairs: list[str] | None, labels: list[Any] | None) -> EncodedDataset:
        columns: dict[str, list] = {"text": texts}
        if pairs is not None:
            columns["pair"] = pairs
        if labels is not None:
            columns["label"] = labels
        features = {"text": datasets.Value("string")}
        if pairs is not None:
            features["pair"] = datasets.Value("string")
        if labels is not None:
            features["label"] = {
                "single_label": datasets.Value("int64"),
                "multi_label": datasets.List(datasets.Value("int64")),
                "regression": datasets.Value("float32"),
            }[self.problem_type]
        table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        ids = special_token_ids(self.tokenizer)
        if self.long_text == "windows":  # a document: its windows and their lengths
            encoded_features = {
                "input_ids": datasets.List(datasets.List(datasets.Value("int32"))),
                "a_len": datasets.List(datasets.Value("int32")),
                "length": datasets.Value("int32"),
                "windows": datasets.Value("int32"),
            }
        else:
            encoded_features = {
                "input_ids": datasets.List(datasets.Value("int32")),
                "a_len": datasets.Value("int32"),
                "length": datasets.Value("int32"),
            }
        with quiet_datasets():
            encoded = table.map(
                _encode_batch,
                batched=True,
                batch_size=1000,
                fn_kwargs={
                    "tokenizer": self.tokenizer,
                    "max_seq_length": self.max_seq_length,
                    "cls_id": ids["cls"],
                    "sep_id": ids["sep"],
                    "long_text": self.long_text,
                    "stride": self.stride,
                },
                remove_columns=[c for c in ("text", "pair") if c in columns],
                features=datasets.Features(
                    {**({"label": features["label"]} if labels is not None else {}), **encoded_features}
                ),
            )
        dataset = EncodedDataset(encoded)
        if self.long_text == "windows" and len(dataset):
            log.info(
                "%d texts in %d windows of at most %d pieces (stride %d; at most %d windows a text)",
                len(dataset),
                int(dataset.windows.sum()),
                self.max_seq_length,
                self.stride,
                int(dataset.windows.max()),
            )
        return dataset

    def prepare_data(self) -> None:
        pass  # nothing to download; files are read in setup

    def setup(self, stage: str | None = None) -> None:
        """Read, check and encode the splits that ``stage`` needs (all given splits for None)."""
        wanted = {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["test"],
            "predict": [],
        }.get(stage or "", ["train", "validation", "test"])
        if self.files["train"] is not None:
            self.prepare_labels()  # the label set comes first: the other splits are checked against it
        for split in wanted:
            if split in self._sets or (
                self.files[split] is None and not (split == "validation" and self.holds_out)
            ):
                continue
            texts, pairs, values, where = self._read(split)
            self._sets[split] = self._encode(texts, pairs, self._label_ids(split, values, where))

    @property
    def train_set(self) -> EncodedDataset | None:
        return self._sets.get("train")

    @property
    def val_set(self) -> EncodedDataset | None:
        return self._sets.get("validation")

    @property
    def test_set(self) -> EncodedDataset | None:
        return self._sets.get("test")

    def collator(self) -> ClassifyCollator:
        return ClassifyCollator(
            special_token_ids(self.tokenizer)["pad"],
            self.problem_type,
            len(self.labels or [None]),
            windowed=self.long_text == "windows",
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        rank, world = rank_world(self.trainer)
        if self.group_by_length:
            sampler: ResumableSampler = LengthGroupedSampler(
                self.train_set.lengths, self.batch_size, seed=self.seed, rank=rank, world_size=world
            )
        else:
            sampler = ResumableSampler(len(self.train_set), seed=self.seed, rank=rank, world_size=world)
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _eval_loader(self, dataset: EncodedDataset) -> DataLoader:
        batches: Sampler[list[int]] = (
            WindowBudgetBatchSampler(dataset.lengths, dataset.windows, self.eval_batch_size)
            if self.long_text == "windows"
            else FixedBatchSampler(dataset.lengths, self.eval_batch_size, self.group_by_length)
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("validate", "val_set", "data.validation_file"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("test", "test_set", "data.test_file"))

    def _split(self, stage: str, attribute: str, setting: str) -> EncodedDataset:
        """The encoded split at ``attribute``, set up for ``stage`` if it is not yet."""
        if getattr(self, attribute) is None:
            self.setup(stage)
        if getattr(self, attribute) is None:
            raise BertlabError(f"{setting} is not set")
        return getattr(self, attribute)

    # ------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels) if self.labels is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("labels") is not None and self.labels is None:
            self._set_labels([str(x) for x in state["labels"]])
