"""The composed config checked before any work: required values, types, ranges, data files.

A wrong value must fail in seconds with one line naming the setting, not after the tokenizer is
trained and the data is built. The types are not written down twice: each section is checked
against the signature of what consumes it — ``trainer`` against Lightning's ``Trainer``, ``data``
against its DataModule, ``task`` against its Task class, ``model`` against ``BertConfig``,
``optimizer`` against ``OptimizerSettings`` (which the optimizer itself reads) — and ``hardware``
against :class:`HardwareSettings` below.

The signatures are read from the source files, not imported: importing Lightning, torch and
datasets takes longer than the whole check may (``bertlab-train trainer.max_steps=abc`` answers
before any of them is loaded). Annotations are read as far as a config value can match them
(numbers, text, booleans, None, unions, literals, lists, mappings); anything else is not checked.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from bertlab.errors import BertlabError

__all__ = ["HardwareSettings", "check_config", "missing_values"]

# Where the sections' consumers are, as "module:Class".
TRAINER = "lightning.pytorch.trainer.trainer:Trainer"
BERT_CONFIG = "bertlab.encoder.bert:BertConfig"
OPTIMIZER = "bertlab.training.optim:OptimizerSettings"


@dataclass
class HardwareSettings:
    """``conf/hardware/*.yaml``: settings that change speed, never the result."""

    name: str = "cpu"
    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    micro_batch_size: int | None = None
    precision: str = "32-true"
    num_workers: int = 0
    pin_memory: bool = False
    compile: bool = False
    fused_optimizer: bool | None = None
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    threads: int | None = None
    find_unused_parameters: bool = False
    sharding_strategy: str = "FULL_SHARD"


# (section, key) -> (limit, included?) for numbers with a floor or a ceiling.
_FLOORS: dict[str, dict[str, tuple[float, bool]]] = {
    "trainer": {"max_steps": (-1, True), "max_epochs": (-1, True), "log_every_n_steps": (1, True),
                "accumulate_grad_batches": (1, True)},
    "optimizer": {"lr": (0.0, False), "weight_decay": (0.0, True), "eps": (0.0, False),
                  "warmup_steps": (0, True), "warmup_ratio": (0.0, True)},
    "data": {"batch_size": (1, True), "eval_batch_size": (1, True), "max_seq_length": (3, True)},
    "hardware": {"threads": (1, True), "num_workers": (0, True), "micro_batch_size": (1, True)},
}  # fmt: skip
MINIMUM = {(section, key): limit for section, keys in _FLOORS.items() for key, limit in keys.items()}
MAXIMUM = {("optimizer", "warmup_ratio"): (1.0, False), ("optimizer", "final_lr_fraction"): (1.0, True)}

# ------------------------------------------------------------------ annotations from source

_NAMES: dict[str, Any] = {
    "int": int, "float": float, "str": str, "bool": bool, "None": type(None), "NoneType": type(None),
    "Any": Any, "Optional": typing.Optional, "Union": typing.Union, "Literal": Literal,
    "list": list, "List": list, "tuple": tuple, "Tuple": tuple, "Sequence": Sequence,
    "dict": dict, "Dict": dict, "Mapping": Mapping,
}  # fmt: skip


def _to_type(node: ast.expr) -> Any:
    """An annotation's AST as the typing object a config value is checked against (Any for what a
    config cannot hold, e.g. a class of objects)."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return type(None)
        if isinstance(node.value, str):  # a string annotation
            return _to_type(ast.parse(node.value, mode="eval").body)
        return Any
    if isinstance(node, ast.Name):
        return _NAMES.get(node.id, Any)
    if isinstance(node, ast.Attribute):  # typing.Optional, datetime.timedelta, ...
        return _NAMES.get(node.attr, Any)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_to_type(node.left), _to_type(node.right)]  # noqa: UP007
    if isinstance(node, ast.Subscript):
        base = _to_type(node.value)
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base is Literal:
            return Literal[tuple(ast.literal_eval(e) for e in elts)]
        args = tuple(_to_type(e) for e in elts)
        if base is typing.Optional:
            return typing.Optional[args[0]]  # noqa: UP045
        if base is typing.Union:
            return typing.Union[args]  # noqa: UP007
        if base in (list, tuple, Sequence):
            return list[args[0]]
        if base in (dict, Mapping):
            return dict
    return Any


def _source_file(module: str) -> Path | None:
    """The file of ``module``, found without importing it or its packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return Path(spec.origin) if spec and spec.origin and not rest else None
    base = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (base.joinpath(*rest).with_suffix(".py"), base.joinpath(*rest, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _annotations(target: str) -> dict[str, Any]:
    """Parameter name -> type of a class's ``__init__`` (or a dataclass's fields), from its source.
    ``target``: ``module:Class`` or a dotted ``module.Class``. {} when the source cannot be read."""
    module, _, name = target.partition(":") if ":" in target else target.rpartition(".")
    path = _source_file(module)
    if path is None:
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    params = [*item.args.posonlyargs, *item.args.args, *item.args.kwonlyargs]
                    return {a.arg: _to_type(a.annotation) for a in params if a.annotation is not None}
            return {  # a dataclass: its annotated fields
                item.target.id: _to_type(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    return {}


# ----------------------------------------------------------------------------- checking


def _conforms(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a type."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list | tuple | ListConfig) and all(_conforms(v, args[0]) for v in value)
    if annotation is dict:
        return isinstance(value, dict | DictConfig)
    return True


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    return text.replace("<class '", "").replace("'>", "")


def _check_range(section: str, key: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if (section, key) in MINIMUM:
        low, included = MINIMUM[section, key]
        if value < low or (value == low and not included):
            raise BertlabError(f"{section}.{key}={value} must be {'at least' if included else 'above'} {low}")
    if (section, key) in MAXIMUM:
        high, included = MAXIMUM[section, key]
        if value > high or (value == high and not included):
            raise BertlabError(f"{section}.{key}={value} must be {'at most' if included else 'below'} {high}")


def _check_section(section: str, values: DictConfig, hints: dict[str, Any]) -> None:
    for key in values:
        if key.startswith("_") or key not in hints:
            continue
        value = values[key]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not _conforms(value, hints[key]):
            raise BertlabError(f"{section}.{key}={value!r} is not a valid {_describe(hints[key])}")
        _check_range(section, key, value)


def missing_values(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` (outside ``hydra``) still set to ``???``."""
    missing = []
    for key in cfg:
        if key == "hydra" and not prefix:
            continue
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            missing.append(name)
        elif isinstance(cfg[key], DictConfig):
            missing.extend(missing_values(cfg[key], f"{name}."))
    return missing


def _check_data_files(cfg: DictConfig) -> None:
    """Every data file the config names exists (a hub dataset names splits instead). The error names
    the setting, and where the path came from when it is under ``paths.data_dir``."""
    if cfg.data.get("hub"):
        return
    data_dir = str(cfg.paths.get("data_dir") or "")
    named = [(f"data.{k}", v) for k, v in cfg.data.items() if k.endswith("_file") and v]
    named += [(f"data.files[{i}]", v) for i, v in enumerate(cfg.data.get("files") or [])]
    for setting, value in named:
        if not Path(str(value)).exists():
            hint = ""
            if data_dir and str(value).startswith(data_dir):
                hint = (
                    f" (under paths.data_dir={data_dir}: set BERTLAB_DATA, or paths.data_dir=<the folder "
                    f"holding the datasets>, or {setting}=<file>)"
                )
            raise BertlabError(f"{setting}: file not found: {value}{hint}")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`BertlabError` (one line) for a required value left unset, the first value of the
    wrong type or out of range, or a data file that does not exist."""
    missing = missing_values(cfg)
    if missing:
        raise BertlabError(
            f"missing required value(s): {', '.join(missing)} (set them on the command line, e.g. {missing[0]}=...)"
        )
    _check_section(
        "trainer", cfg.trainer, {k: v for k, v in _annotations(TRAINER).items() if k != "profiler"}
    )
    _check_section("optimizer", cfg.optimizer, _annotations(OPTIMIZER))
    _check_section("hardware", cfg.hardware, typing.get_type_hints(HardwareSettings))
    model = {**_annotations(BERT_CONFIG), "name": str, "init_from": str | None, "vocab_size": int | None}
    _check_section("model", cfg.model, model)
    for section in ("data", "task"):
        target = cfg[section].get("_target_")
        if target:
            _check_section(section, cfg[section], _annotations(str(target)))
    for key, annotation in (
        ("seed", int),
        ("train", bool),
        ("export", bool),
        ("nonfinite", Literal["skip", "stop"]),
    ):
        if key in cfg and not _conforms(cfg[key], annotation):
            raise BertlabError(f"{key}={cfg[key]!r} is not a valid {_describe(annotation)}")
    if cfg.get("export_onnx") not in (None, False, True, "int8"):
        raise BertlabError(f"export_onnx={cfg.get('export_onnx')!r} is not one of false, true, int8")
    _check_data_files(cfg)
