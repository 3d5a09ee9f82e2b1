"""A task defined outside bertlab's source, as a user would write one: a classifier that pools the
encoder's states by their element-wise maximum. The commands find it through the ``_target_`` of
``conf/task/maxpool.yaml`` (``bertlab-train --config-dir tests/plugin/conf task=maxpool``).

It reuses bertlab's classification data and encoder and brings its own model, LightningModule,
decoding and export layout (the encoder as a BERT directory plus ``maxpool_head.safetensors``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from bertlab.data.classify import ClassifyDataModule, PairEncoder
from bertlab.encoder import BertConfig, BertEncoder, encoder_to_hf
from bertlab.errors import BertlabError
from bertlab.export.hf import save_safetensors
from bertlab.inference import Predictor, length_batches
from bertlab.pretrained import Pretrained, read_safetensors
from bertlab.tasks.base import (
    Job,
    RunContext,
    Task,
    TaskModule,
    build_finetune,
    write_export,
)

HEAD_FILE = "maxpool_head.safetensors"


class MaxPoolClassifier(nn.Module):
    """Encoder, then the maximum over the real positions of each hidden unit, then a linear layer."""

    def __init__(self, config: BertConfig, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        states, _ = self.encoder(input_ids, attention_mask, token_type_ids)
        padded = attention_mask[..., None] == 0
        return self.classifier(states.masked_fill(padded, torch.finfo(states.dtype).min).amax(dim=1))


class MaxPoolModule(TaskModule):
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch), batch["labels"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        correct = (self(batch).argmax(-1) == batch["labels"]).float().mean()
        self.log("val/acc", correct, batch_size=batch["labels"].numel())


class MaxPoolTask(Task):
    name = "maxpool"
    datamodule_class = ClassifyDataModule
    data_choices = "csv"

    def __init__(
        self, labels: Sequence[str] | None = None, max_seq_length: int | None = None, **settings: Any
    ) -> None:
        super().__init__(**settings)
        self.settings.update(labels=list(labels) if labels else None, max_seq_length=max_seq_length)

    def default_monitor(self, cfg: DictConfig) -> tuple[str, str]:
        return "val/acc", "max"

    def build(self, cfg: DictConfig, pretrained: Pretrained | None, run: RunContext) -> Job:
        from_data = ("labels", "max_seq_length")
        return build_finetune(self, cfg, pretrained, run, MaxPoolModule, from_data, cache_dir=run.cache_dir)

    def summary(self, job: Job) -> dict[str, Any]:
        return {"labels": self.labels}

    def build_model(self, config: BertConfig) -> MaxPoolClassifier:
        return MaxPoolClassifier(config, len(self.labels))

    def head_from_hf(self, pretrained: Pretrained) -> dict[str, Tensor]:
        head = read_safetensors(Path(pretrained.directory) / HEAD_FILE)
        return {f"classifier.{k}": v for k, v in head.items()}

    def export_hf(
        self, model: MaxPoolClassifier, tokenizer_dir: Path, out_dir: Path, metadata: dict[str, Any]
    ) -> Path:
        encoder = {k[len("encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}

        def head(tmp: Path) -> None:
            save_safetensors(dict(model.classifier.state_dict()), tmp / HEAD_FILE)

        state = encoder_to_hf(encoder, model.config, prefix="")
        return write_export(
            model, out_dir, state, {"architectures": ["BertModel"]}, tokenizer_dir, metadata, head
        )

    def check_batches(
        self, tokenizer: Any, texts: Sequence[str], max_seq_length: int
    ) -> list[dict[str, np.ndarray]]:
        encode = PairEncoder(tokenizer, max_seq_length)
        rows = encode([(t, None) for t in texts])
        return [encode.collate(rows), encode.collate(rows[:1])]

    def predictor(
        self, model: Any, tokenizer: Any, backend: Any, max_seq_length: int, batch_size: int
    ) -> Predictor:
        return MaxPoolPredictor(self, model, tokenizer, backend, max_seq_length, batch_size)


class MaxPoolPredictor(Predictor):
    def parse(self, item: Any, where: str = "input") -> str:
        if not isinstance(item, str):
            raise BertlabError(f"{where}: expected a text, got {json.dumps(item)[:40]}")
        return item

    def predict(self, inputs: Sequence[str]) -> list[dict[str, Any]]:
        encode = PairEncoder(self.tokenizer, self.max_seq_length)
        rows = encode([(t, None) for t in inputs])
        out: list[dict[str, Any]] = [{} for _ in inputs]
        for chunk in length_batches([len(r["input_ids"]) for r in rows], self.batch_size):
            (logits,) = self.backend(encode.collate([rows[i] for i in chunk]))
            for row, i in enumerate(chunk):
                k = int(logits[row].argmax())
                out[i] = {
                    "text": inputs[i],
                    "label": self.task.labels[k],
                    "logits": [float(x) for x in logits[row]],
                }
        return out
