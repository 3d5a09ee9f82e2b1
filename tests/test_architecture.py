"""The layering of docs/architecture.md, checked on the source: imports point one way, the encoder is
plain torch, and the commands never name a task."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bertlab"

# package (or module) -> bertlab modules it must not import
FORBIDDEN = {
    "encoder": ("bertlab.data", "bertlab.tasks", "bertlab.training", "bertlab.export", "bertlab.inference",
                "bertlab.pretrained", "bertlab.job", "bertlab.cli", "bertlab.runs"),
    "data": ("bertlab.encoder", "bertlab.tasks", "bertlab.training", "bertlab.export", "bertlab.inference",
             "bertlab.pretrained", "bertlab.job", "bertlab.cli"),
    "export": ("bertlab.data", "bertlab.tasks", "bertlab.training", "bertlab.inference", "bertlab.job", "bertlab.cli"),
    "training": ("bertlab.tasks", "bertlab.job", "bertlab.cli", "bertlab.inference"),
    "tasks": ("bertlab.job", "bertlab.cli"),
    "inference.py": ("bertlab.tasks", "bertlab.job", "bertlab.cli"),
    "pretrained.py": ("bertlab.tasks", "bertlab.training", "bertlab.job", "bertlab.cli", "bertlab.inference"),
    "job.py": ("bertlab.cli",),
}  # fmt: skip
# what the plain-torch encoder may import at all
# (tagging is pure Python: the CRF reads a scheme's allowed transitions from it)
ENCODER_ALLOWED = (
    "torch",
    "numpy",
    "bertlab.encoder",
    "bertlab.errors",
    "bertlab.constants",
    "bertlab.tagging",
)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files(part: str) -> list[Path]:
    target = SRC / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part: str) -> None:
    wrong = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in _files(part)
        for name in _imports(path)
        if name.startswith(FORBIDDEN[part])
    ]
    assert not wrong, wrong


def test_encoder_is_plain_torch() -> None:
    stdlib = {"__future__", "dataclasses", "typing", "math", "re", "collections", "collections.abc"}
    wrong = [
        f"{path.name} imports {name}"
        for path in _files("encoder")
        for name in _imports(path)
        if name not in stdlib and not name.startswith(ENCODER_ALLOWED)
    ]
    assert not wrong, wrong


def test_no_mock_patching_in_the_source() -> None:
    assert not [p for p in SRC.rglob("*.py") if "unittest" in " ".join(_imports(p))]


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_commands_never_name_a_task() -> None:
    tasks = {"pretrain", "classify", "ner"}
    named = {
        f"{path.relative_to(SRC)}: {value!r}"
        for path in [*_files("cli"), SRC / "job.py", SRC / "inference.py"]
        for value in _string_constants(path)
        if value in tasks
    }
    assert not named, named
