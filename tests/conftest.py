"""Shared fixtures: compose the real Hydra config, shrink it, and run it in-process."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from bertlab.cli.train import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small enough that every model size runs one step in seconds.
_MISSING = object()

SHRINK = [
    "data.stride=8",
    "data.generated_documents=60",
    "data.max_seq_length=32",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "tokenizer.vocab_size=400",
    "hardware.num_workers=0",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="session")
def bertlab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root for the whole session, so the tokenizer and data caches are shared by tests."""
    root = tmp_path_factory.mktemp("bertlab_root")
    os.environ["BERTLAB_ROOT"] = str(root)
    return root


@pytest.fixture
def compose_cfg(bertlab_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """compose_cfg(overrides) -> the real train.yaml, composed, with the run dir ``tmp_path/<run>``."""

    def _compose(overrides: list[str] | None = None, shrink: bool = True, run: str = "run") -> DictConfig:
        overrides = list(overrides or [])
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides)
        with open_dict(cfg):
            if shrink:
                # Shrink what this config has, unless the test set it itself.
                given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
                for item in SHRINK:
                    key, value = item.split("=", 1)
                    if key not in given and OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
                        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
            cfg.paths.root_dir = str(bertlab_root)
            cfg.paths.output_dir = str(tmp_path / run)
            cfg.hydra.runtime.output_dir = str(tmp_path / run)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_in_process(cfg: DictConfig, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a composed config through the command's job wrapper in this process, as bertlab-train
    would: (exit status, what it printed on stderr)."""
    from bertlab.cli.train import task_wrapper

    capsys.readouterr()
    try:
        task_wrapper(cfg)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def words_tokenizer(
    out_dir: Path, words: list[str], vocab_size: int, texts: int = 300, longest: int = 12
) -> Path:
    """A WordPiece vocabulary trained on ``texts`` seeded random sentences of 2..``longest`` of
    ``words``: the small tokenizer of the tests that build models from random weights."""
    from bertlab.data.tokenizer import train_wordpiece

    rng = random.Random(0)
    sample = [" ".join(rng.choice(words) for _ in range(rng.randint(2, longest))) for _ in range(texts)]
    return train_wordpiece(sample, out_dir, vocab_size=vocab_size, min_frequency=1)


def run_cli(
    args: list[str], root: Path, timeout: int = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``bertlab-train`` as a user would, in a subprocess."""
    env = {**os.environ, "BERTLAB_ROOT": str(root), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "bertlab.cli.train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd or REPO)
