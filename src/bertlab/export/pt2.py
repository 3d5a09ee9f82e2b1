"""Export to a ``torch.export`` ExportedProgram (``model.pt2``) beside the HF files, checked first.

The program is the task's plain-torch model as :class:`~bertlab.export.onnx.OnnxGraph` sees it: the
three int64 inputs ``[batch, seq]`` (both axes dynamic, ``seq`` up to the model's positions) in, the
task's named outputs out. It is what ``torch.export`` gives PyTorch-native deployment: loaded with
``torch.export.load("model.pt2").module()`` with no bertlab code, compiled ahead of time with
AOTInductor, or lowered to ExecuTorch.

Checked like the ONNX export: the saved file is loaded back and run on the task's check batches
(real texts encoded by the saved tokenizer: a padded batch, a pair, one unpadded text), and every
output must equal the eager model's to ``atol``. Only then are ``model.pt2`` and ``pt2.json`` renamed
into place; on any failure nothing is left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertlab.errors import BertlabError
from bertlab.export.files import PT2_FILE, PT2_INFO_FILE, read_pt2_info
from bertlab.export.onnx import FP32_ATOL, INPUT_NAMES, OnnxGraph, _quiet, compare_outputs
from bertlab.io import temporary_name

__all__ = ["PT2_FILE", "PT2_INFO_FILE", "export_pt2", "load_pt2", "read_pt2_info"]


def _program(graph: OnnxGraph, sample: dict[str, np.ndarray], max_positions: int) -> Any:
    from torch.export import Dim

    batch, seq = Dim("batch", min=1), Dim("seq", min=1, max=max_positions)
    args = tuple(torch.from_numpy(sample[name]) for name in INPUT_NAMES)
    shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    try:
        with _quiet(), torch.no_grad():
            return torch.export.export(graph, args, dynamic_shapes=shapes)
    except Exception as e:  # torch.export raises many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(f"torch.export of the model failed: {type(e).__name__}: {first[:200]}") from None


def load_pt2(path: str | Path) -> torch.nn.Module:
    """The module of a saved ExportedProgram (inputs ``input_ids, attention_mask, token_type_ids``)."""
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(f"{path}: cannot load the ExportedProgram: {first[:200]}") from None


def _check(module: torch.nn.Module, graph: OnnxGraph, batches: Sequence[dict[str, np.ndarray]]) -> dict:
    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(batch[name]) for name in INPUT_NAMES))
        return [t.float().numpy() for t in (out if isinstance(out, tuple | list) else (out,))]

    return compare_outputs(run, graph, batches, "torch.export")


def export_pt2(
    graph: OnnxGraph,
    out_dir: str | Path,
    batches: Sequence[dict[str, np.ndarray]],
    *,
    max_positions: int,
    atol: float = FP32_ATOL,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.pt2`` and ``pt2.json`` into ``out_dir`` (an HF export directory) when the saved
    program, loaded back, gives the eager outputs to ``atol`` on ``batches``; otherwise raise
    :class:`BertlabError` and leave ``out_dir`` unchanged. Returns what goes into ``pt2.json``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise BertlabError(f"torch.export: {out_dir} is not a directory")
    graph = graph.eval()
    if not batches or int(batches[0]["attention_mask"].min()) == 1 or batches[0]["input_ids"].shape[1] < 2:
        raise BertlabError("torch.export: the check needs texts of different lengths (a padded batch)")
    started = time.time()
    # torch.export.save and load want the .pt2 suffix (else a warning and a fallback path)
    tmp = temporary_name(out_dir / PT2_FILE).with_suffix(".pt2")
    info_tmp = temporary_name(out_dir / PT2_INFO_FILE)
    try:
        program = _program(graph, batches[0], max_positions)
        torch.export.save(program, str(tmp))
        check = _check(load_pt2(tmp), graph, batches)  # the file as saved, not the program in memory
        worst = max(check["max_abs_diff"].values())
        if not worst <= atol:
            raise BertlabError(
                f"torch.export check failed for {out_dir}: the program and eager PyTorch differ by "
                f"{worst:.3g} (tolerance {atol:g}); nothing written"
            )
        info = {
            "file": PT2_FILE,
            "exporter": "torch.export.export (non-strict) + torch.export.save",
            "load": "torch.export.load(path).module()(input_ids, attention_mask, token_type_ids)",
            "inputs": {name: ["batch", "seq"] for name in INPUT_NAMES},
            "outputs": list(graph.output_names),
            "max_positions": max_positions,
            "versions": {"torch": torch.__version__},
            "check": {"atol": atol, "batch_shapes": [list(b["input_ids"].shape) for b in batches], **check},
            **(metadata or {}),
            "export_s": round(time.time() - started, 1),
        }
        info_tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
        os.replace(tmp, out_dir / PT2_FILE)
        os.replace(info_tmp, out_dir / PT2_INFO_FILE)
        return info
    finally:
        for leftover in (tmp, info_tmp):
            leftover.unlink(missing_ok=True)
