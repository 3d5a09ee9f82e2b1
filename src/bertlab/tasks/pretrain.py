"""Masked language modelling + next-sentence prediction: the whole task.

- model: :class:`~bertlab.encoder.BertForPretraining` (MLM logits at the masked positions when
  training, at every position for prediction and export; NSP logits);
- data: :class:`~bertlab.data.pretrain.PretrainDataModule` (``data=generated|text_files|hub``): it
  trains or loads the tokenizer and builds the NSP instances, cached;
- training and metrics: :class:`PretrainModule` (``val/mlm_loss``, ``val/mlm_acc``, ``val/perplexity``,
  ``val/nsp_loss``, ``val/nsp_acc``);
- decoding: :class:`FillMaskPredictor` (the likeliest tokens at each ``[MASK]``; for a pair, the
  probability that the second text follows the first);
- export: transformers' ``BertForPreTraining``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from bertlab.data.classify import PairEncoder
from bertlab.data.pretrain import PretrainDataModule
from bertlab.encoder import BertConfig, BertForPretraining, pretraining_heads_to_hf
from bertlab.encoder.heads import pretraining_loss
from bertlab.encoder.hf_mapping import pretraining_heads_from_hf
from bertlab.errors import BertlabError
from bertlab.inference import Predictor, length_batches
from bertlab.pretrained import Pretrained
from bertlab.tasks.base import (
    Job,
    RunContext,
    Task,
    TaskModule,
    datamodule,
    model_config,
    plain,
    split_pair,
    write_export,
)

__all__ = ["FillMaskPredictor", "PretrainModule", "PretrainTask"]


class PretrainModule(TaskModule):
    """Trains a :class:`BertForPretraining` on MLM + NSP."""

    def __init__(
        self, model: BertForPretraining, task: PretrainTask, optimizer: dict[str, Any], compile: bool = False
    ) -> None:
        super().__init__(model, task, optimizer, compile)
        self.val_mlm_loss = MeanMetric()
        self.val_mlm_acc = MeanMetric()
        self.val_nsp_loss = MeanMetric()
        self.val_nsp_acc = MeanMetric()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            mlm_labels=batch["mlm_labels"],
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        mlm_loss, nsp_loss = pretraining_loss(out, batch["nsp_labels"])
        loss = mlm_loss + nsp_loss
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/mlm_loss", mlm_loss, batch_size=bs)
        self.log("train/nsp_loss", nsp_loss, batch_size=bs)
        self.log("train/tokens", batch["attention_mask"].sum().float(), reduce_fx="sum", batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        mlm_loss, nsp_loss = pretraining_loss(out, batch["nsp_labels"])
        num_masked = out["mlm_targets"].numel()
        if num_masked:
            correct = (out["mlm_logits"].argmax(-1) == out["mlm_targets"]).float().mean()
            # Weighted by the number of masked tokens: the epoch value is per token, not per batch.
            self.val_mlm_loss.update(mlm_loss.detach(), num_masked)
            self.val_mlm_acc.update(correct, num_masked)
        bs = batch["nsp_labels"].numel()
        nsp_correct = (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).float().mean()
        self.val_nsp_loss.update(nsp_loss.detach(), bs)
        self.val_nsp_acc.update(nsp_correct, bs)

    def on_validation_epoch_end(self) -> None:
        mlm_loss = self.val_mlm_loss.compute()
        nsp_loss = self.val_nsp_loss.compute()
        metrics = {
            "val/mlm_loss": mlm_loss,
            "val/mlm_acc": self.val_mlm_acc.compute(),
            "val/perplexity": torch.exp(torch.clamp(mlm_loss, max=math.log(1e9))),
            "val/nsp_loss": nsp_loss,
            "val/nsp_acc": self.val_nsp_acc.compute(),
            "val/loss": mlm_loss + nsp_loss,
        }
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        self.log("val/mlm_acc_bar", metrics["val/mlm_acc"], prog_bar=True, logger=False)
        for m in (self.val_mlm_loss, self.val_mlm_acc, self.val_nsp_loss, self.val_nsp_acc):
            m.reset()


class PretrainTask(Task):
    """Settings (``conf/task/pretrain.yaml``): ``phases`` (BERT's length schedule, run by the job);
    from the data when training: ``max_seq_length``."""

    name = "pretrain"
    datamodule_class = PretrainDataModule
    output_names = ("mlm_logits", "nsp_logits")
    data_choices = "generated|text_files|hub"
    needs_tokenizer = False  # it trains one on the corpus

    def __init__(self, phases: Any = None, max_seq_length: int | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.settings.update(phases=plain(phases), max_seq_length=max_seq_length)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.pop("phases", None)  # a schedule of the run, not of the model
        return meta

    # ------------------------------------------------------------------------------- training

    def default_monitor(self, cfg: DictConfig) -> tuple[str, str]:
        return "val/mlm_loss", "min"

    def build(self, cfg: DictConfig, pretrained: Pretrained | None, run: RunContext) -> Job:
        tokenizer = plain(cfg.tokenizer)
        if pretrained is not None and not tokenizer.get("path"):
            if pretrained.tokenizer_dir is None:
                raise BertlabError(
                    f"{pretrained.source}: no tokenizer (tokenizer.json or vocab.txt) beside the model"
                )
            tokenizer["path"] = str(pretrained.tokenizer_dir)
        data = datamodule(cfg, run.micro_batch, tokenizer=tokenizer, cache_dir=run.cache_dir)
        tokenizer_dir = data.prepare_tokenizer()
        model = self.build_model(model_config(cfg, tokenizer_dir, pretrained))
        if pretrained is not None:
            # Continuing pretraining: the MLM and NSP heads come along with the encoder when the
            # source has them; from a plain encoder the heads start fresh.
            state = pretrained.model_state
            if state is None:
                state = {f"encoder.{k}": v for k, v in pretrained.encoder_state.items()}
                if any(k.startswith("cls.") for k in pretrained.hf_state):
                    state.update(pretraining_heads_from_hf(pretrained.hf_state, pretrained.config))
            result = model.load_state_dict(state, strict=False)
            optional = {f"encoder.{k}" for k in pretrained.missing_optional}
            missing = [
                k
                for k in result.missing_keys
                if k not in optional and not k.startswith(("mlm_head.", "nsp_head."))
            ]
            if result.unexpected_keys or missing:
                raise BertlabError(
                    f"{pretrained.source}: weights do not fit the model ({(missing + result.unexpected_keys)[:3]})"
                )
        data.prepare_data()
        self.settings["max_seq_length"] = data.max_seq_length
        return Job(data, PretrainModule(model, self, run.optimizer, run.compile), tokenizer_dir)

    def summary(self, job: Job) -> dict[str, Any]:
        return {"data": job.datamodule.stats()}

    # ------------------------------------------------------------------------------ the model

    def build_model(self, config: BertConfig) -> BertForPretraining:
        return BertForPretraining(config)

    def head_from_hf(self, pretrained: Pretrained) -> dict[str, torch.Tensor]:
        return pretraining_heads_from_hf(pretrained.hf_state, pretrained.config)

    def export_hf(
        self, model: BertForPretraining, tokenizer_dir: Path, out_dir: Path, metadata: dict[str, Any]
    ) -> Path:
        state = pretraining_heads_to_hf(model.state_dict(), model.config)
        config = {"architectures": ["BertForPreTraining"], "tie_word_embeddings": True}
        return write_export(model, out_dir, state, config, tokenizer_dir, metadata)

    def check_batches(
        self, tokenizer: Any, texts: Sequence[str], max_seq_length: int
    ) -> list[dict[str, np.ndarray]]:
        encode = PairEncoder(tokenizer, max_seq_length)
        rows = encode([split_pair(t) for t in texts])
        return [encode.collate(rows), encode.collate(rows[:1])]

    # ----------------------------------------------------------------------------- prediction

    def predictor(
        self, model: Any, tokenizer: Any, backend: Any, max_seq_length: int, batch_size: int
    ) -> Predictor:
        return FillMaskPredictor(self, model, tokenizer, backend, max_seq_length, batch_size)


class FillMaskPredictor(Predictor):
    """Inputs: a text with ``[MASK]`` tokens, or a pair (``[a, b]``, ``{"text", "text_pair"}``, or
    ``a<TAB>b`` on a line). Answers: for each ``[MASK]``, its token position and the ``top_k``
    likeliest tokens with their probabilities; for a pair, ``is_next``: the NSP probability that the
    second text follows the first."""

    top_k = 5

    def parse(self, item: Any, where: str = "input") -> tuple[str, str | None]:
        if isinstance(item, str):
            return split_pair(item)
        if (
            isinstance(item, dict)
            and isinstance(item.get("text"), str)
            and set(item) <= {"text", "text_pair"}
        ):
            pair = item.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise BertlabError(f"{where}: text_pair must be a string")
            return item["text"], pair
        if isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            return item[0], item[1]
        raise BertlabError(
            f'{where}: expected a text with [MASK] tokens, a [text, text_pair] pair or {{"text": ..., "text_pair": ...}}, '
            f"got {json.dumps(item, ensure_ascii=False)[:80]}"
        )

    def predict(self, inputs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        encode = PairEncoder(self.tokenizer, self.max_seq_length)
        rows = encode(inputs)
        mask_id = encode.ids["mask"]
        out: list[dict[str, Any]] = [{} for _ in inputs]
        for chunk in length_batches([len(r["input_ids"]) for r in rows], self.batch_size):
            batch = encode.collate([rows[i] for i in chunk])
            mlm_logits, nsp_logits = self.backend(batch)
            nsp = torch.from_numpy(nsp_logits).float().softmax(-1)
            for row, i in enumerate(chunk):
                text, pair = inputs[i]
                positions = np.flatnonzero(batch["input_ids"][row] == mask_id)
                masks = []
                for pos in positions:
                    probs = torch.from_numpy(mlm_logits[row, pos]).float().softmax(-1)
                    top = probs.topk(min(self.top_k, probs.numel()))
                    masks.append(
                        {
                            "position": int(pos),
                            "candidates": [
                                {"token": self.tokenizer.id_to_token(int(t)), "score": round(float(p), 6)}
                                for p, t in zip(top.values, top.indices)
                            ],
                        }
                    )
                item: dict[str, Any] = {"text": text, "masks": masks}
                if pair is not None:
                    item["text_pair"] = pair
                    item["is_next"] = round(float(nsp[row, 0]), 6)  # label 0: B follows A (BERT's convention)
                out[i] = item
        return out
