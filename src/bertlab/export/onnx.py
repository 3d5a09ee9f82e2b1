"""Export to ONNX beside the HF files, checked by onnxruntime before anything is written.

The graph is a task's plain-torch model (:mod:`bertlab.encoder.models`) as it is: it takes
``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, ``[batch, seq]``, both axes dynamic)
and returns the outputs its task names (``logits`` for classification and NER; ``mlm_logits`` at
every position and ``nsp_logits`` for pretraining). It is exported with torch's dynamo exporter
(``torch.export`` then onnxscript), which keeps the padding mask of ``scaled_dot_product_attention``
exact. This module knows no task and reads no data: the task encodes the check batches.

The export is checked, not trusted: batches the task encoded from real texts with the saved
tokenizer (several lengths padded into one batch, a sentence pair, and a single unpadded text as a
second batch shape) go through onnxruntime and through PyTorch, and every output must agree to
``atol``. Only then are the file and ``onnx.json`` (opset, versions, the check's figures) renamed
into place; on any failure nothing is left behind. ``quantize="int8"`` also writes
``model.int8.onnx`` (onnxruntime's dynamic quantization), checked by how often its argmax agrees
with PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertlab.errors import BertlabError
from bertlab.io import read_json, temporary_name

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INFO_FILE = "onnx.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 18
FP32_ATOL = 1e-4
INT8_MIN_AGREEMENT = 0.9
QUANTIZE_CHOICES = ("int8",)

# Texts for the check when the caller gives none: different lengths (padding inside the batch), a
# pair (token type 1), CJK characters.
CHECK_TEXTS = (
    "the film was good",
    "An unexpectedly moving story, told with great care and a fine cast; the ending, though, drags "
    "on for far too long and the music is dull.",
    "Anna moved from Paris to the Apple office in Cupertino last year.",
    "ok",
    "the plot is thin\tbut the actors are lovely",
    "北京是中国的首都",
    "It rained. It rained again, and again, and then for a whole week it did nothing but rain.",
)


class OnnxGraph(nn.Module):
    """A task model as an export graph: the three inputs in, the named outputs out.

    The model's own forward runs unchanged; from a model that returns a dict (pretraining) the named
    entries are picked out, in order."""

    def __init__(self, model: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.output_names = tuple(output_names)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Any:
        out = self.model(input_ids, attention_mask, token_type_ids)
        if isinstance(out, dict):
            return tuple(out[name] for name in self.output_names)
        return out


def make_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``; ``threads`` intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BertlabError(
            f"{path}: onnxruntime cannot load the model: {str(e).splitlines()[0][:200]}"
        ) from None


def run_session(session: Any, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The session's outputs for a batch of the three int64 inputs."""
    feed = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in INPUT_NAMES}
    return session.run(None, feed)


def _torch_outputs(graph: OnnxGraph, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = graph(*(torch.from_numpy(batch[name]) for name in INPUT_NAMES))
    return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _agreement(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """(agreeing, total) argmax decisions; token-level outputs count real positions only."""
    same = ours.argmax(-1) == ref.argmax(-1)
    if same.ndim == 2:
        same = same[mask.astype(bool)]
    return int(same.sum()), int(same.size)


def _export_file(
    graph: nn.Module, sample: dict[str, np.ndarray], path: Path, opset: int, max_positions: int
) -> None:
    from torch.export import Dim

    batch, seq = Dim("batch", min=1), Dim("seq", min=1, max=max_positions)
    args = tuple(torch.from_numpy(sample[name]) for name in INPUT_NAMES)
    shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    try:
        with _quiet():
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(graph.output_names),
                dynamic_shapes=shapes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(
            f"ONNX export to {path.parent} failed: {type(e).__name__}: {first[:200]}"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress prints, warnings or log records from the exporter and the quantizer."""
    root, saved = logging.getLogger(), logging.getLogger().level
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)  # onnxruntime.quantization warns through the root logger
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        root.setLevel(saved)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_onnx(
    session: Any,
    graph: OnnxGraph,
    batches: Sequence[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Largest absolute difference per output and argmax agreement between onnxruntime and PyTorch."""
    names = graph.output_names
    diff = dict.fromkeys(names, 0.0)
    agree = total = 0
    for batch in batches:
        got, ref = run_session(session, batch), _torch_outputs(graph, batch)
        for name, g, r in zip(names, got, ref):
            if g.shape != r.shape:
                raise BertlabError(f"ONNX check: {name} has shape {g.shape}, PyTorch gives {r.shape}")
            d = float(np.abs(g - r).max()) if g.size else 0.0
            diff[name] = max(diff[name], d if np.isfinite(d) else float("inf"))
            a, t = _agreement(g, r, batch["attention_mask"])
            agree, total = agree + a, total + t
    return {"max_abs_diff": diff, "argmax_agreement": agree / max(1, total), "decisions": total}


def export_onnx(
    graph: OnnxGraph,
    out_dir: str | Path,
    batches: Sequence[dict[str, np.ndarray]],
    *,
    max_positions: int,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    threads: int | None = 1,
    atol: float = FP32_ATOL,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``quantize="int8"`` ``model.int8.onnx``) and ``onnx.json`` into
    ``out_dir``, an HF export directory that already holds the tokenizer and label maps.

    ``batches``: the check inputs, as the task encodes real texts (the first one padded, of several
    lengths). The files are written only when the onnxruntime check passes; otherwise
    :class:`BertlabError` is raised and ``out_dir`` is unchanged. Returns what goes into ``onnx.json``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise BertlabError(f"ONNX export: {out_dir} is not a directory")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise BertlabError(f"ONNX export: quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    graph = graph.eval()
    if not batches or int(batches[0]["attention_mask"].min()) == 1 or batches[0]["input_ids"].shape[1] < 2:
        raise BertlabError("ONNX export: the check needs texts of different lengths (a padded batch)")
    started = time.time()
    tmp, tmp_int8, info_tmp = (temporary_name(out_dir / name) for name in (ONNX_FILE, INT8_FILE, INFO_FILE))
    try:
        _export_file(graph, batches[0], tmp, opset, max_positions)
        check = check_onnx(make_session(tmp, threads), graph, batches)
        worst = max(check["max_abs_diff"].values())
        if not worst <= atol:
            raise BertlabError(
                f"ONNX check failed for {out_dir}: onnxruntime and PyTorch differ by {worst:.3g} "
                f"(tolerance {atol:g}); nothing written"
            )
        info: dict[str, Any] = {
            "file": ONNX_FILE,
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "inputs": {name: ["batch", "seq"] for name in INPUT_NAMES},
            "outputs": list(graph.output_names),
            "max_positions": max_positions,
            "versions": _versions(),
            "check": {"atol": atol, "batch_shapes": [list(b["input_ids"].shape) for b in batches], **check},
            **(metadata or {}),
        }
        if quantize == "int8":
            info["int8"] = _quantize_int8(tmp, tmp_int8, graph, batches, threads, int8_min_agreement)
        info["export_s"] = round(time.time() - started, 1)
        info_tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
        os.replace(tmp, out_dir / ONNX_FILE)
        if quantize == "int8":
            os.replace(tmp_int8, out_dir / INT8_FILE)
        else:
            (out_dir / INT8_FILE).unlink(missing_ok=True)  # it would belong to other weights
        os.replace(info_tmp, out_dir / INFO_FILE)
        return info
    finally:
        for leftover in (tmp, tmp_int8, info_tmp):
            leftover.unlink(missing_ok=True)


def _quantize_int8(
    fp32: Path,
    out: Path,
    graph: OnnxGraph,
    batches: Sequence[dict[str, np.ndarray]],
    threads: int | None,
    min_agreement: float,
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            # per-channel weight scales: on SST-2 (MiniLM) per-tensor lost 1.4 points of dev accuracy
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(f"int8 quantization of {fp32.parent} failed: {first[:200]}") from None
    check = check_onnx(make_session(out, threads), graph, batches)
    if check["argmax_agreement"] < min_agreement:
        raise BertlabError(
            f"int8 check failed for {fp32.parent}: argmax agrees with PyTorch on "
            f"{check['argmax_agreement']:.1%} of {check['decisions']} decisions (need {min_agreement:.0%}); "
            "nothing written"
        )
    return {"file": INT8_FILE, "method": "onnxruntime.quantization.quantize_dynamic(QInt8, per_channel)",
            "min_agreement": min_agreement, **check}  # fmt: skip


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def read_info(export_dir: str | Path) -> dict[str, Any]:
    """``onnx.json`` of an export directory ({} when absent)."""
    path = Path(export_dir) / INFO_FILE
    return read_json(path) if path.is_file() else {}


__all__ = [
    "CHECK_TEXTS",
    "INFO_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "OnnxGraph",
    "check_onnx",
    "export_onnx",
    "make_session",
    "read_info",
    "run_session",
]
