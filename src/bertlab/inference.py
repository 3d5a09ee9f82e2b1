"""Answering with a trained model: the backends that run it and the base of every task's predictor.

A backend takes a batch of the three model inputs (numpy int64 ``[B, T]``) and returns the task's
outputs as numpy arrays, in the task's ``output_names`` order. :class:`TorchBackend` calls the
plain-torch model; :class:`OnnxBackend` runs the graph that ``bertlab-export`` made from that same
model. A :class:`Predictor` (one per task, in the task's module) parses inputs, encodes them, runs
the backend in length-sorted batches and decodes the outputs; ``bertlab-predict`` and
``bertlab-serve`` only call it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bertlab.data.sampler import FixedBatchSampler
from bertlab.errors import BertlabError
from bertlab.export.onnx import INPUT_NAMES, ONNX_FILE, OnnxGraph, make_session, read_info, run_session
from bertlab.io import directory_digest
from bertlab.pretrained import Pretrained

__all__ = ["Backend", "OnnxBackend", "Predictor", "TorchBackend", "length_batches"]

Backend = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class TorchBackend:
    """The plain-torch model, exactly as the ONNX graph of it is exported (:class:`OnnxGraph`)."""

    name = "torch"

    def __init__(self, model: nn.Module, output_names: Sequence[str]) -> None:
        self.graph = OnnxGraph(model.eval(), output_names)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.graph(
            *(torch.from_numpy(np.ascontiguousarray(batch[n], dtype=np.int64)) for n in INPUT_NAMES)
        )
        return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


class OnnxBackend:
    """onnxruntime on ``model.onnx`` (or another graph file) beside a model's HF files."""

    name = "onnx"

    def __init__(self, path: Path, output_names: Sequence[str], threads: int | None = None) -> None:
        if not path.is_file():
            raise BertlabError(f"{path} not found; write it with: bertlab-export {path.parent} --format onnx")
        self.path = path
        self.session = make_session(path, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUT_NAMES):
            raise BertlabError(f"{path}: the graph's inputs are {names}, expected {list(INPUT_NAMES)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != list(output_names):
            raise BertlabError(
                f"{path}: the graph's outputs are {outputs}, the model's are {list(output_names)}"
            )

    @classmethod
    def beside(
        cls, pretrained: Pretrained, onnx_file: str | None, output_names: Sequence[str], threads: int | None
    ) -> OnnxBackend:
        """The graph in a model's export directory, refused when ``onnx.json`` says it was exported
        from other weights than the ones there now."""
        export_dir = Path(pretrained.directory or pretrained.source)
        if pretrained.directory is None:
            raise BertlabError(
                f"{pretrained.source}: --backend onnx needs a run or export directory, not a .ckpt"
            )
        path = export_dir / (onnx_file or ONNX_FILE)
        digest = read_info(export_dir).get("weights_digest")
        if digest and digest != directory_digest(export_dir, ["model.safetensors"]):
            raise BertlabError(
                f"{path} was exported from other weights than {export_dir / 'model.safetensors'}; "
                f"re-run bertlab-export {export_dir} --format onnx"
            )
        return cls(path, output_names, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_session(self.session, batch)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length (the evaluation batching: longest first), so little
    padding is computed; answers go back in input order by index."""
    return FixedBatchSampler(lengths, batch_size).batches


@dataclass
class Predictor(ABC):
    """Inputs in, answers out, for one task. Subclasses implement :meth:`parse` (one input, from a
    line of text or a JSON value) and :meth:`predict` (a list of parsed inputs -> one JSON-ready
    dict each, in order)."""

    task: Any
    model: nn.Module
    tokenizer: Any
    backend: Backend
    max_seq_length: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BertlabError(f"batch size {self.batch_size} must be at least 1")

    @abstractmethod
    def parse(self, item: Any, where: str = "input") -> Any:
        """One input, checked: a line of text, or a JSON value (a server request's item, a JSONL
        line). Raises :class:`BertlabError` saying what is wrong with it, prefixed by ``where``."""

    @abstractmethod
    def predict(self, inputs: Sequence[Any]) -> list[dict[str, Any]]: ...

    def stream(self, items: Iterable[tuple[str, Any]], chunk_size: int = 1024) -> Iterator[dict[str, Any]]:
        """Answers for ``(where, item)`` pairs in order, ``chunk_size`` inputs at a time: memory stays
        bounded on an input of any size, and each answer is out as soon as its chunk is done."""
        chunk: list[Any] = []
        for where, item in items:
            chunk.append(self.parse(item, where))
            if len(chunk) >= chunk_size:
                yield from self.predict(chunk)
                chunk = []
        if chunk:
            yield from self.predict(chunk)
