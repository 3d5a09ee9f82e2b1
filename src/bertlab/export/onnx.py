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

``optimize=True`` writes, in place of the dynamo graph, the fully fused graph of
:mod:`bertlab.export.fused` (the same weights through the TorchScript exporter and onnxruntime's
BERT optimizer: Attention in every layer, EmbedLayerNormalization, SkipLayerNormalization, a fused
GELU). It is checked exactly as the plain graph is (``atol`` on the same batches), it must be fused
completely, and ``onnx.json`` records its operator counts; int8 then quantizes the fused graph
(QAttention, QEmbedLayerNormalization, MatMulInteger).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertlab.errors import BertlabError
from bertlab.export.files import INFO_FILE, INT8_FILE, ONNX_FILE, read_info
from bertlab.io import temporary_name

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 18
# the fused graph's exporter (TorchScript) and the optimizer's patterns were written against opset 14
OPTIMIZED_OPSET = 14
FP32_ATOL = 1e-4
INT8_MIN_AGREEMENT = 0.9
QUANTIZE_CHOICES = ("int8",)
# 7-bit weights: see docs/benchmarks.md (measured on SST-2 with and without)
INT8_REDUCE_RANGE = False

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
    # Idle pool threads sleep instead of spinning: on a busy machine (the shared benchmark machine, a
    # server between requests) spinning threads take the cores the work needs. SST-2 MiniLM, 2 threads,
    # load ~6: 25 vs 20 sentences/s in batches of 8, 27 vs 15 one at a time (docs/deployment.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def compare_outputs(
    run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
    graph: OnnxGraph,
    batches: Sequence[dict[str, np.ndarray]],
    what: str,
) -> dict[str, Any]:
    """Largest absolute difference per output and argmax agreement between ``run`` (an exported
    program: onnxruntime, a loaded ``model.pt2``) and eager PyTorch on ``batches``."""
    names = graph.output_names
    diff = dict.fromkeys(names, 0.0)
    agree = total = 0
    for batch in batches:
        for name, g, r in zip(names, run(batch), _torch_outputs(graph, batch)):
            if g.shape != r.shape:
                raise BertlabError(f"{what} check: {name} has shape {g.shape}, PyTorch gives {r.shape}")
            d = float(np.abs(g - r).max()) if g.size else 0.0
            diff[name] = max(diff[name], d if np.isfinite(d) else float("inf"))
            a, t = _agreement(g, r, batch["attention_mask"])
            agree, total = agree + a, total + t
    return {"max_abs_diff": diff, "argmax_agreement": agree / max(1, total), "decisions": total}


def check_onnx(
    session: Any,
    graph: OnnxGraph,
    batches: Sequence[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """:func:`compare_outputs` of an onnxruntime session."""
    return compare_outputs(lambda batch: run_session(session, batch), graph, batches, "ONNX")


def export_onnx(
    graph: OnnxGraph,
    out_dir: str | Path,
    batches: Sequence[dict[str, np.ndarray]],
    *,
    max_positions: int,
    opset: int | None = None,
    quantize: str | None = None,
    optimize: bool = False,
    threads: int | None = 1,
    atol: float = FP32_ATOL,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``quantize="int8"`` ``model.int8.onnx``) and ``onnx.json`` into
    ``out_dir``, an HF export directory that already holds the tokenizer and label maps.

    ``batches``: the check inputs, as the task encodes real texts (the first one padded, of several
    lengths). ``optimize``: the fully fused graph (:mod:`bertlab.export.fused`) instead of the dynamo
    export. ``opset``: default 18, or 14 with ``optimize``. The files are written only when the
    onnxruntime check passes; otherwise :class:`BertlabError` is raised and ``out_dir`` is unchanged.
    Returns what goes into ``onnx.json``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise BertlabError(f"ONNX export: {out_dir} is not a directory")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise BertlabError(f"ONNX export: quantize={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    opset = int(opset or (OPTIMIZED_OPSET if optimize else DEFAULT_OPSET))
    graph = graph.eval()
    if not batches or int(batches[0]["attention_mask"].min()) == 1 or batches[0]["input_ids"].shape[1] < 2:
        raise BertlabError("ONNX export: the check needs texts of different lengths (a padded batch)")
    started = time.time()
    tmp, tmp_int8, info_tmp = (temporary_name(out_dir / name) for name in (ONNX_FILE, INT8_FILE, INFO_FILE))
    try:
        fused_info = None
        if optimize:
            fused_info = _export_fused(graph, batches[0], tmp, opset, max_positions)
        else:
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
            "exporter": FUSED_EXPORTER if optimize else "torch.onnx.export(dynamo=True)",
            "optimized": fused_info,
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


FUSED_EXPORTER = "torch.onnx.export(dynamo=False) + onnxruntime.transformers.optimize_model(bert)"


def _export_fused(
    graph: OnnxGraph, sample: dict[str, np.ndarray], path: Path, opset: int, max_positions: int
) -> dict[str, Any]:
    """The fully fused graph at ``path``; returns what onnx.json says of the fusion. Not fused in every
    layer is an error: the caller asked for the optimized graph, and a partly fused one is slower
    without saying so."""
    from bertlab.export.fused import FUSED_OPS, encoder_config, export_optimized_onnx

    config = encoder_config(graph.model)
    counts = export_optimized_onnx(
        graph.model,
        sample,
        path,
        num_heads=config.num_heads,
        hidden_size=config.hidden_size,
        output_names=graph.output_names,
        opset=opset,
        max_positions=max_positions,
        atol=None,  # checked by the caller, on every batch, as the plain graph is
        require_full_fusion=True,
    )
    return {
        "layers": config.num_layers,
        "fused_ops": {op: counts[op] for op in FUSED_OPS if counts.get(op)},
        "op_counts": counts,
    }


def _quantize_int8(
    fp32: Path,
    out: Path,
    graph: OnnxGraph,
    batches: Sequence[dict[str, np.ndarray]],
    threads: int | None,
    min_agreement: float,
) -> dict[str, Any]:
    from bertlab.export.fused import quantize_int8

    try:
        # per-channel weight scales: on SST-2 (MiniLM) per-tensor lost 1.4 points of dev accuracy
        counts = quantize_int8(fp32, out, reduce_range=INT8_REDUCE_RANGE)
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
    method = (
        f"onnxruntime.quantization.quantize_dynamic(QInt8, per_channel, reduce_range={INT8_REDUCE_RANGE})"
    )
    quantized = {
        op: n for op, n in counts.items() if op.startswith(("Q", "MatMulInteger", "DynamicQuantize"))
    }
    return {"file": INT8_FILE, "method": method, "min_agreement": min_agreement,
            "quantized_ops": quantized, **check}  # fmt: skip


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


__all__ = [
    "CHECK_TEXTS",
    "DEFAULT_OPSET",
    "INFO_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "OPTIMIZED_OPSET",
    "OnnxGraph",
    "check_onnx",
    "compare_outputs",
    "export_onnx",
    "make_session",
    "read_info",
    "run_session",
]
