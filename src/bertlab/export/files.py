"""The names of the files an export writes beside the HF files, and their info readers. Plain Python
(no torch, no onnx): the server's HTTP processes read them without loading either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertlab.io import read_json

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INFO_FILE = "onnx.json"
PT2_FILE = "model.pt2"
PT2_INFO_FILE = "pt2.json"

__all__ = ["INFO_FILE", "INT8_FILE", "ONNX_FILE", "PT2_FILE", "PT2_INFO_FILE", "read_info", "read_pt2_info"]


def read_info(export_dir: str | Path) -> dict[str, Any]:
    """``onnx.json`` of an export directory ({} when absent)."""
    path = Path(export_dir) / INFO_FILE
    return read_json(path) if path.is_file() else {}


def read_pt2_info(export_dir: str | Path) -> dict[str, Any]:
    """``pt2.json`` of an export directory ({} when absent)."""
    path = Path(export_dir) / PT2_INFO_FILE
    return read_json(path) if path.is_file() else {}
