"""An installed bertlab (a wheel, in a fresh environment) finds its own configs: from a directory that
has nothing to do with the repository, with a user's config directory, it trains, predicts and
exports."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bertlab.data.tokenizer import train_wordpiece
from tests.conftest import REPO


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BERTLAB_ROOT")}
    env["WANDB_MODE"] = "offline"
    res = subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert res.returncode == 0, (args, res.stderr[-3000:])
    return res


@pytest.mark.slow  # builds a wheel and a virtual environment: minutes (make test-slow)
def test_wheel_installed_elsewhere_trains_predicts_and_exports_with_a_user_config_dir(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("bertlab-*.whl")
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = env_dir / "bin" / "python"
    # Dependencies come from this environment's site-packages (a .pth file, not an install), bertlab
    # itself only from the wheel: the editable install's finder here is not loaded by a .pth path.
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        cwd=tmp_path,
    )
    where = _run([str(python), "-c", "import bertlab; print(bertlab.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(env_dir)), where

    work = tmp_path / "somewhere"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    rows = [f"the film was {'good' if i % 2 else 'bad'} number {i}\t{i % 2}" for i in range(16)]
    (work / "reviews.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    tok = train_wordpiece([r.split("\t")[0] for r in rows] * 3, work / "tok", vocab_size=60, min_frequency=1)
    (work / "my_conf" / "experiment" / "reviews.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /task: classify\n  - override /data: csv\n"
        f"data:\n  train_file: {work / 'reviews.tsv'}\n  validation_file: {work / 'reviews.tsv'}\n"
        "  max_seq_length: 32\n  batch_size: 4\n"
        f"tokenizer:\n  path: {tok}\n"
        "trainer:\n  max_steps: 2\n  val_check_interval: 2\n  enable_progress_bar: false\n"
    )
    bin_dir = env_dir / "bin"
    _run(
        [
            str(bin_dir / "bertlab-train"),
            "--config-dir",
            "my_conf",
            "experiment=reviews",
            "hydra.run.dir=run",
        ],
        cwd=work,
    )
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["labels"] == ["0", "1"]
    answers = _run([str(bin_dir / "bertlab-predict"), "run"], cwd=work, stdin="a good film\n").stdout
    assert json.loads(answers)["label"] in ("0", "1")
    _run([str(bin_dir / "bertlab-export"), "run"], cwd=work)
    assert (work / "run" / "export" / "model.onnx").is_file()
