"""What a task is, to the commands: the one interface ``bertlab-train``, ``bertlab-predict``,
``bertlab-export`` and ``bertlab-serve`` use, so that none of them names a task.

A task is one module plus one config. ``conf/task/<name>.yaml`` names a :class:`Task` subclass in
``_target_``; its other keys are the subclass's settings. The subclass declares, in one place:

- its plain-torch model (:meth:`Task.build_model`), the outputs that model gives
  (:attr:`Task.output_names`) and how it is read back from disk (:meth:`Task.load_model`);
- its LightningModule and DataModule (:meth:`Task.build`), the metric its checkpoints monitor
  (:meth:`Task.default_monitor`) and what it adds to ``summary.json`` (:meth:`Task.summary`);
- how its outputs are decoded into answers (:meth:`Task.predictor`);
- its exports: the HF-format directory (:meth:`Task.export_hf`) and the inputs that check the ONNX
  graph (:meth:`Task.check_batches`).

What a trained model needs to be rebuilt is its task's :meth:`Task.metadata` (the ``_target_`` and
every setting, labels included), saved beside the weights (``config.json`` under ``bertlab.task``,
and the checkpoint's hyperparameters). :func:`load_model` instantiates the task from it, so a task
defined outside bertlab works everywhere as long as its module can be imported.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import hydra
import hydra.errors
import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bertlab import runs
from bertlab.data.tokenizer import TOKENIZER_FILES, load_tokenizer, special_token_ids
from bertlab.encoder import BertConfig
from bertlab.errors import BertlabError
from bertlab.export.hf import write_hf_dir
from bertlab.export.onnx import (
    CHECK_TEXTS,
    FP32_ATOL,
    INT8_MIN_AGREEMENT,
    OnnxGraph,
    export_onnx,
)
from bertlab.export.pt2 import export_pt2
from bertlab.inference import Backend, OnnxBackend, Predictor, TorchBackend
from bertlab.io import directory_digest
from bertlab.pretrained import Pretrained, load_encoder_weights, load_pretrained
from bertlab.training import optim

log = logging.getLogger("bertlab")

__all__ = [
    "Job",
    "RunContext",
    "Task",
    "TaskModule",
    "export_onnx_beside",
    "export_pt2_beside",
    "load_model",
    "load_predictor",
    "model_config",
    "plain",
    "task_from_metadata",
    "tokenizer_files",
]

# The model fields of conf/model/*.yaml, as BertConfig takes them.
MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_dropout",
    "attention_dropout",
    "layer_norm_eps",
    "initializer_range",
)

# transformers' architecture names -> the task that reads such a model (HF directories that bertlab
# did not write carry no task of their own).
ARCHITECTURES = {
    "BertForPreTraining": "bertlab.tasks.pretrain.PretrainTask",
    "BertForMaskedLM": "bertlab.tasks.pretrain.PretrainTask",
    "BertForSequenceClassification": "bertlab.tasks.classify.ClassifyTask",
    "BertForTokenClassification": "bertlab.tasks.ner.NerTask",
}


def plain(value: Any) -> Any:
    """Mappings to dicts and sequences to lists, recursively (e.g. an omegaconf DictConfig): what a
    checkpoint can hold and still load with ``torch.load(weights_only=True)``."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass
class RunContext:
    """What the run decides for every task: one device's micro-batch of the global batch, the
    optimizer settings (with the hardware's fused-kernel choice), compilation, the cache folder."""

    micro_batch: int
    optimizer: dict[str, Any]
    compile: bool = False
    cache_dir: str = ".cache"


@dataclass
class Job:
    """What a task builds for training: the data, the module, and the tokenizer they share."""

    datamodule: L.LightningDataModule
    module: L.LightningModule
    tokenizer_dir: Path


class TaskModule(L.LightningModule):
    """The LightningModule base of every task: it trains the task's plain-torch model (``.model``)
    and saves, as plain values, what rebuilds it (``model_config``, ``task``: the task's metadata)
    and the optimizer settings, so a checkpoint loads with ``torch.load(weights_only=True)`` and is
    enough to predict with."""

    def __init__(
        self, model: nn.Module, task: Task, optimizer: dict[str, Any], compile: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"model_config": model.config.to_dict(), "task": task.metadata(), "optimizer": plain(optimizer)}
        )
        self.model = model
        self.task = task
        self.compile_model = compile

    def configure_model(self) -> None:
        if self.compile_model:
            # In place (nn.Module.compile): the module and its state_dict keys stay as they are, so
            # checkpoints and exports are the same with and without compilation.
            self.model.compile(dynamic=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return optim.configure(self.model, self.hparams["optimizer"], self.planned_steps())

    def planned_steps(self) -> int:
        """The run's optimizer steps (what the schedule spans), counted as Lightning's
        ``Trainer.estimated_stepping_batches`` counts them but from a loader of the DataModule's own.
        That property builds the trainer's training loader, and when it does so before a resumed run
        restores the loader's position (configure_optimizers runs before the restore), the position is
        never applied and the run starts its epoch again (Lightning #20550)."""
        trainer = self.trainer
        if trainer.max_epochs in (None, -1):  # counted in steps: no data needed
            return int(trainer.estimated_stepping_batches)
        batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * float(limit or 1.0))
        steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(1, int(trainer.max_epochs))
        return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps


class Task(ABC):
    """The interface the commands use (see the module docstring). Subclasses set the class attributes
    and implement its abstract methods."""

    name: ClassVar[str] = ""
    # the DataModule class this task reads: the data config's _target_ must be it or a subclass
    datamodule_class: ClassVar[type[L.LightningDataModule]]
    # the model's outputs, in the order an ONNX graph returns them
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    # which data config groups fit (for the error message when another is chosen)
    data_choices: ClassVar[str] = ""
    # False for a task that trains its own tokenizer on its data (pretraining)
    needs_tokenizer: ClassVar[bool] = True

    def __init__(
        self,
        name: str | None = None,
        monitor: str | None = None,
        monitor_mode: str | None = None,
        **settings: Any,
    ) -> None:
        self.monitor_key = monitor
        self.monitor_mode = monitor_mode
        self.settings: dict[str, Any] = plain(settings)

    @classmethod
    def from_hf(cls, pretrained: Pretrained, **settings: Any) -> Task:
        """The task of an HF directory that bertlab did not write (its architecture names this class)."""
        return cls(**settings)

    # ------------------------------------------------------------------------- configuration

    def check_config(self, cfg: DictConfig) -> None:
        """Checks of the composed config that need no data (one-line errors before any work)."""
        target = cfg.data.get("_target_")
        try:
            data_class = get_class(str(target)) if target else None
        except Exception:
            data_class = None
        if data_class is None or not issubclass(data_class, self.datamodule_class):
            raise BertlabError(
                f"task={self.name} reads data={self.data_choices}, but the data config is "
                f"{target or 'not a DataModule (no _target_)'}"
            )
        if self.needs_tokenizer and not cfg.model.get("init_from") and not cfg.tokenizer.get("path"):
            raise BertlabError(
                f"task={self.name} needs a pretrained model (model.init_from=<run dir | .ckpt | HF dir | hub id>) "
                "or, to start from random weights, a tokenizer (tokenizer.path=<dir>)"
            )

    @abstractmethod
    def default_monitor(self, cfg: DictConfig) -> tuple[str, str]:
        """The validation metric that picks the best checkpoint, and ``min`` or ``max``."""

    @property
    def labels(self) -> list[str]:
        """The label names in the order of the model's outputs (``settings["labels"]``)."""
        if not self.settings.get("labels"):
            raise BertlabError(f"the {self.name} model has no label names")
        return list(self.settings["labels"])

    def monitor(self, cfg: DictConfig) -> tuple[str, str]:
        """``task.monitor`` / ``task.monitor_mode`` when set, else :meth:`default_monitor`."""
        key, mode = self.default_monitor(cfg)
        return self.monitor_key or key, self.monitor_mode or mode

    # ------------------------------------------------------------------------------- training

    @abstractmethod
    def build(self, cfg: DictConfig, pretrained: Pretrained | None, run: RunContext) -> Job:
        """The DataModule and LightningModule for ``cfg``, the model initialised from ``pretrained``.
        Also completes this task's settings from the data (labels, scheme, ...)."""

    def summary(self, job: Job) -> dict[str, Any]:
        """What the task adds to ``summary.json`` (data statistics, labels, reports)."""
        return {}

    # ------------------------------------------------------------------------------ the model

    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild this task's model and use it: the ``_target_`` and settings."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "name": self.name,
            **self.settings,
        }

    @abstractmethod
    def build_model(self, config: BertConfig) -> nn.Module:
        """The plain-torch model (fresh weights) for an encoder of shape ``config``."""

    def load_model(self, pretrained: Pretrained) -> nn.Module:
        """The model with the weights of ``pretrained``, in eval mode. A bertlab checkpoint holds the
        model's whole state; an HF directory the encoder plus :meth:`head_from_hf`."""
        model = self.build_model(pretrained.config)
        if pretrained.model_state is not None:
            state = pretrained.model_state
        else:
            state = {f"encoder.{k}": v for k, v in pretrained.encoder_state.items()}
            state.update(self.head_from_hf(pretrained))
        result = model.load_state_dict(state, strict=False)
        optional = {f"encoder.{k}" for k in pretrained.missing_optional}
        missing = [k for k in result.missing_keys if k not in optional]
        if missing or result.unexpected_keys:
            raise BertlabError(
                f"{pretrained.source}: the weights do not fit a {self.name} model "
                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
        return model.eval()

    @abstractmethod
    def head_from_hf(self, pretrained: Pretrained) -> dict[str, torch.Tensor]:
        """The head's weights (our names) from an HF directory's non-encoder weights."""

    @abstractmethod
    def export_hf(
        self, model: nn.Module, tokenizer_dir: Path, out_dir: Path, metadata: dict[str, Any]
    ) -> Path:
        """Write ``model`` as an HF-format directory that a standard loader reproduces exactly, or
        raise :class:`BertlabError` naming the alternatives when no such layout exists."""

    @abstractmethod
    def check_batches(
        self, tokenizer: Any, texts: Sequence[str], max_seq_length: int
    ) -> list[dict[str, np.ndarray]]:
        """Model inputs encoded from ``texts`` for the ONNX check: all texts padded into one batch,
        then the first alone (a second batch shape)."""

    # ----------------------------------------------------------------------------- prediction

    @abstractmethod
    def predictor(
        self, model: nn.Module, tokenizer: Any, backend: Backend, max_seq_length: int, batch_size: int
    ) -> Predictor: ...


# ------------------------------------------------------------------------ shared by tasks


def split_pair(text: str) -> tuple[str, str | None]:
    """A line of text as a model input: ``a<TAB>b`` is the pair (a, b), anything else a single text."""
    first, tab, second = text.partition("\t")
    return (first, second) if tab else (text, None)


def tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    """The tokenizer's files that an export copies."""
    return [Path(tokenizer_dir) / n for n in TOKENIZER_FILES if (Path(tokenizer_dir) / n).is_file()]


def write_export(
    model: nn.Module,
    out_dir: Path,
    state: dict[str, torch.Tensor],
    hf_config: dict[str, Any],
    tokenizer_dir: Path,
    metadata: dict[str, Any],
    extra: Any = None,
) -> Path:
    """An HF directory of ``state``, ``hf_config`` (the encoder's config plus the task's keys) and the
    tokenizer, with ``metadata`` under ``bertlab``."""
    config = {**model.config.to_hf_dict(), **hf_config}
    return write_hf_dir(out_dir, state, config, tokenizer_files(tokenizer_dir), metadata, extra)


def model_config(cfg: DictConfig, tokenizer_dir: Path, pretrained: Pretrained | None) -> BertConfig:
    """The encoder's shape: the pretrained model's when there is one, else ``cfg.model`` with the
    tokenizer's vocabulary. Either way the vocabulary must match the tokenizer."""
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab_size = tokenizer.get_vocab_size()
    if pretrained is not None:
        fields = dict(vars(pretrained.config))
        if fields["vocab_size"] != vocab_size:
            raise BertlabError(
                f"the tokenizer in {tokenizer_dir} has {vocab_size} tokens but the model "
                f"{pretrained.source} has a vocabulary of {fields['vocab_size']}"
            )
        max_len = int(cfg.data.max_seq_length)
        if max_len > fields["max_position_embeddings"]:
            raise BertlabError(
                f"data.max_seq_length={max_len} is more than the pretrained model's "
                f"max_position_embeddings={fields['max_position_embeddings']} ({pretrained.source})"
            )
        return BertConfig(**fields)
    wanted = cfg.model.get("vocab_size")
    if wanted is not None and int(wanted) != vocab_size:
        raise BertlabError(
            f"model.vocab_size={wanted} does not match the tokenizer's vocabulary of {vocab_size} "
            f"tokens ({tokenizer_dir}); set model.vocab_size=null to follow the tokenizer"
        )
    fields = {k: cfg.model[k] for k in MODEL_FIELDS}
    return BertConfig(**fields, vocab_size=vocab_size, pad_token_id=special_token_ids(tokenizer)["pad"])


def tokenizer_for(cfg: DictConfig, pretrained: Pretrained | None) -> Path:
    """``tokenizer.path`` when set, else the tokenizer that came with the pretrained model."""
    if cfg.tokenizer.get("path"):
        return Path(cfg.tokenizer.path)
    if pretrained is not None:
        if pretrained.tokenizer_dir is None:
            raise BertlabError(
                f"{pretrained.source}: no tokenizer (tokenizer.json or vocab.txt) beside the model"
            )
        return pretrained.tokenizer_dir
    raise BertlabError("no tokenizer: set tokenizer.path or model.init_from")


def datamodule(cfg: DictConfig, micro_batch: int, **run_settings: Any) -> L.LightningDataModule:
    """The data config's DataModule, with what the run decides: one device's micro-batch of the
    global batch, the loader workers, the seed, and ``run_settings`` (tokenizer, cache)."""
    data = plain(cfg.data)
    data["batch_size"] = micro_batch
    try:
        return hydra.utils.instantiate(
            data,
            num_workers=int(cfg.hardware.num_workers),
            pin_memory=bool(cfg.hardware.pin_memory),
            seed=int(cfg.seed),
            **run_settings,
            _convert_="all",
        )
    except hydra.errors.InstantiationException as e:  # a bad setting the DataModule reported: one line
        if isinstance(e.__cause__, BertlabError):
            raise e.__cause__ from None
        raise


def build_finetune(
    task: Task,
    cfg: DictConfig,
    pretrained: Pretrained | None,
    run: RunContext,
    module_class: type[TaskModule],
    from_data: Sequence[str],
    **run_settings: Any,
) -> Job:
    """:meth:`Task.build` of a fine-tuning task: the tokenizer (loaded once first, so that a broken
    tokenizer fails before any data is read), the DataModule set up for fitting, the task's settings
    named in ``from_data`` read from it (labels, scheme, lengths), then the model, its encoder
    started from ``pretrained``, in a ``module_class``."""
    tokenizer_dir = tokenizer_for(cfg, pretrained)
    load_tokenizer(tokenizer_dir)
    config = model_config(cfg, tokenizer_dir, pretrained)
    data = datamodule(cfg, run.micro_batch, tokenizer_dir=str(tokenizer_dir), **run_settings)
    data.prepare_data()
    data.setup("fit")
    for name in from_data:
        value = getattr(data, name)
        task.settings[name] = list(value) if isinstance(value, list) else value  # a copy: the task's own
    model = task.build_model(config)
    init_encoder(model, pretrained)
    return Job(data, module_class(model, task, run.optimizer), tokenizer_dir)


def validation_split_summary(data: Any) -> dict[str, Any]:
    """``summary.json``'s record of where the validation rows came from, when the DataModule held
    them out of the training data (no validation file); empty otherwise."""
    rows = getattr(data, "held_out_rows", None)
    return {"validation_split": {"size": len(rows), "rows": rows}} if rows else {}


def init_encoder(model: nn.Module, pretrained: Pretrained | None) -> None:
    """Start ``model.encoder`` from the pretrained weights, when there are any."""
    if pretrained is not None:
        load_encoder_weights(model.encoder, pretrained)


# ------------------------------------------------------------------------ reading models


def task_from_metadata(pretrained: Pretrained) -> Task:
    """The task a saved model was trained for: its own ``task`` metadata, else (an HF directory
    bertlab did not write) the task of its transformers architecture."""
    meta = pretrained.metadata.get("task")
    if isinstance(meta, dict) and meta.get("_target_"):
        try:
            return hydra.utils.instantiate(meta, _convert_="all")
        except Exception as e:  # the task's module is not importable, or its settings changed
            raise BertlabError(
                f"{pretrained.source}: cannot rebuild its task {meta['_target_']}: {e}"
            ) from None
    for arch in pretrained.metadata.get("architectures", []):
        if arch in ARCHITECTURES:
            settings: dict[str, Any] = {}
            if pretrained.metadata.get("labels"):
                settings["labels"] = pretrained.metadata["labels"]
            return get_class(ARCHITECTURES[arch]).from_hf(pretrained, **settings)
    raise BertlabError(
        f"{pretrained.source}: not a model bertlab can use for prediction (no bertlab task, and "
        f"architectures {pretrained.metadata.get('architectures') or 'unknown'})"
    )


def load_model(path: str | Path, what: str = "") -> tuple[Task, nn.Module, Pretrained]:
    """(task, plain-torch model in eval mode, what was read) of a run directory, export or .ckpt."""
    pretrained = load_pretrained(path, what)
    task = task_from_metadata(pretrained)
    return task, task.load_model(pretrained), pretrained


def load_predictor(
    path: str | Path,
    backend: str = "torch",
    onnx_file: str | None = None,
    threads: int | None = None,
    max_seq_length: int | None = None,
    batch_size: int = 64,
) -> Predictor:
    """A ready :class:`Predictor` for a trained model: PyTorch, or the ONNX graph exported beside it."""
    if not Path(path).exists():
        raise BertlabError(f"no run directory, export directory or .ckpt at {path}")
    task, model, pretrained = load_model(path)
    if pretrained.tokenizer_dir is None:
        raise BertlabError(f"{pretrained.source}: no tokenizer beside the model")
    tokenizer = load_tokenizer(pretrained.tokenizer_dir)
    if backend == "onnx":
        runner: Backend = OnnxBackend.beside(pretrained, onnx_file, task.output_names, threads)
    elif backend == "torch":
        runner = TorchBackend(model, task.output_names)
    else:
        raise BertlabError(f"backend={backend!r} is not one of torch, onnx")
    trained_length = int(task.settings.get("max_seq_length") or pretrained.config.max_position_embeddings)
    length = min(max_seq_length or trained_length, pretrained.config.max_position_embeddings)
    return task.predictor(model, tokenizer, runner, length, batch_size)


def _export_inputs(
    path: str | Path, check_texts: Sequence[str] | None, max_seq_length: int, what: str
) -> tuple[Path, Task, nn.Module, Pretrained, list[dict[str, np.ndarray]], dict[str, Any]]:
    """What every checked export of a run or export directory needs: (export dir, task, model, what
    was read, the check batches the task encodes from ``check_texts``, metadata for the info json)."""
    path = Path(path).expanduser()
    export_dir = runs.export_of(path)
    if export_dir is None:
        raise BertlabError(f"{path}: the run has no export/ (it was trained with export=false?)")
    if not (export_dir / "config.json").is_file():
        raise BertlabError(
            f"{path}: not a run directory (summary.json) nor an HF export directory (config.json)"
        )
    task, model, pretrained = load_model(export_dir)
    if pretrained.tokenizer_dir is None:
        raise BertlabError(f"{export_dir}: no tokenizer beside the model")
    tokenizer = load_tokenizer(pretrained.tokenizer_dir)
    length = min(int(max_seq_length), pretrained.config.max_position_embeddings)
    texts = list(check_texts or CHECK_TEXTS)
    if len(texts) < 2:
        raise BertlabError(f"{what}: the check needs at least two texts (a padded batch)")
    metadata = {
        "task": task.metadata(),
        "weights_digest": directory_digest(export_dir, ["model.safetensors"]),
    }
    return export_dir, task, model, pretrained, task.check_batches(tokenizer, texts, length), metadata


def _export_beside(
    write: Callable[..., dict[str, Any]],
    path: str | Path,
    check_texts: Sequence[str] | None,
    max_seq_length: int,
    what: str,
    **options: Any,
) -> tuple[Path, dict[str, Any]]:
    """``write`` (an exporter of :mod:`bertlab.export`) the model of a run or export directory into its
    export directory, checked on the task's encoding of ``check_texts``; (export dir, its info json)."""
    export_dir, task, model, pretrained, batches, metadata = _export_inputs(
        path, check_texts, max_seq_length, what
    )
    graph = OnnxGraph(model, task.output_names)
    max_positions = pretrained.config.max_position_embeddings
    info = write(graph, export_dir, batches, max_positions=max_positions, metadata=metadata, **options)
    return export_dir, info


def export_onnx_beside(
    path: str | Path,
    quantize: str | None = None,
    opset: int | None = None,
    threads: int | None = 1,
    check_texts: Sequence[str] | None = None,
    max_seq_length: int = 128,
    atol: float = FP32_ATOL,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
    optimize: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Export the model of a run or export directory to ``<export dir>/model.onnx``, checked against
    PyTorch on ``check_texts`` encoded as the task encodes them; returns (export dir, onnx.json).
    ``optimize``: the fully fused graph (onnxruntime's BERT fusions) instead of the dynamo export."""
    options = {"opset": opset, "quantize": quantize, "optimize": optimize, "threads": threads}
    return _export_beside(
        export_onnx, path, check_texts, max_seq_length, "ONNX export",
        atol=atol, int8_min_agreement=int8_min_agreement, **options,
    )  # fmt: skip


def export_pt2_beside(
    path: str | Path,
    check_texts: Sequence[str] | None = None,
    max_seq_length: int = 128,
    atol: float = FP32_ATOL,
) -> tuple[Path, dict[str, Any]]:
    """Export the model of a run or export directory to ``<export dir>/model.pt2`` (a ``torch.export``
    ExportedProgram), checked against eager PyTorch like the ONNX file; returns (export dir, pt2.json)."""
    return _export_beside(export_pt2, path, check_texts, max_seq_length, "torch.export", atol=atol)
