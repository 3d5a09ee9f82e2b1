"""A task defined entirely under tests/ (tests/plugin: its module and its config) is trained, used for
prediction and exported through the real commands, with no edit in src/: the commands find a task
by its config's ``_target_`` and never by its name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bertlab.data.tokenizer import train_wordpiece
from tests.conftest import REPO

PLUGIN_CONF = REPO / "tests" / "plugin" / "conf"


def _command(module: str, *args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    # The working directory is not the repository; only the task's package is put on the path.
    env = {**os.environ, "PYTHONPATH": str(REPO), "BERTLAB_ROOT": str(cwd), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True, env=env, cwd=cwd,
        timeout=600,
    )  # fmt: skip


def test_plugin_task_trains_predicts_and_exports_through_the_commands(tmp_path: Path) -> None:
    assert "maxpool" not in "".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    words = {"1": ["good", "great", "fine"], "0": ["bad", "awful", "dull"]}
    rows = [
        f"the film was {words[str(i % 2)][i % 3]} and {words[str(i % 2)][(i + 1) % 3]}\t{i % 2}"
        for i in range(24)
    ]
    table = tmp_path / "train.tsv"
    table.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    tok = train_wordpiece(
        [r.split("\t")[0] for r in rows] * 3, tmp_path / "tok", vocab_size=60, min_frequency=1
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    run_dir = work / "run"
    train = _command(
        "bertlab.cli.train", "--config-dir", str(PLUGIN_CONF), "task=maxpool", "data=csv",
        f"data.train_file={table}", f"data.validation_file={table}", f"tokenizer.path={tok}", "model=tiny",
        "data.max_seq_length=32", "data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false", "print_config=false", f"hydra.run.dir={run_dir}", cwd=work,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["task"] == "maxpool" and summary["monitor"] == "val/acc" and "val/acc" in summary["metrics"]
    )
    assert summary["labels"] == ["0", "1"]
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["bertlab"]["task"]["_target_"] == "tests.plugin.maxpool.MaxPoolTask"
    assert (run_dir / "export" / "maxpool_head.safetensors").is_file()

    texts = "the film was good\nthe film was awful and dull\n"
    torch_run = _command("bertlab.cli.predict", str(run_dir), cwd=work, stdin=texts)
    assert torch_run.returncode == 0, torch_run.stderr[-2000:]
    answers = [json.loads(line) for line in torch_run.stdout.splitlines()]
    assert [a["text"] for a in answers] == texts.splitlines() and all(
        a["label"] in ("0", "1") for a in answers
    )

    export = _command("bertlab.cli.export", str(run_dir), cwd=work)
    assert export.returncode == 0, export.stderr[-2000:]
    assert (run_dir / "export" / "model.onnx").is_file()
    onnx_run = _command("bertlab.cli.predict", str(run_dir), "--backend", "onnx", cwd=work, stdin=texts)
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    for ours, theirs in zip(answers, (json.loads(line) for line in onnx_run.stdout.splitlines())):
        assert ours["label"] == theirs["label"]
        assert max(abs(a - b) for a, b in zip(ours["logits"], theirs["logits"])) < 1e-4


def test_a_task_config_without_a_task_class_is_one_line_error(compose_cfg, capsys) -> None:
    from tests.conftest import run_in_process

    cfg = compose_cfg()
    cfg.task._target_ = "collections.OrderedDict"
    code, err = run_in_process(cfg, capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: task: collections.OrderedDict is not a bertlab.tasks.base.Task"
    )
