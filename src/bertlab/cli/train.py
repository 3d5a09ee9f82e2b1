"""``bertlab-train``: the Hydra app over ``conf/train.yaml``.

It composes the config, prepares the data (tokenizer and cached instances), trains the task's
LightningModule, and leaves a run directory with ``summary.json``, ``checkpoints/``, ``.hydra/``,
``resolved_config.yaml`` and ``export/`` (HF format).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bertlab.errors import BertlabError

log = logging.getLogger("bertlab")

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def _root() -> str:
    return os.environ.get("BERTLAB_ROOT") or os.getcwd()


if not OmegaConf.has_resolver("bertlab_root"):
    OmegaConf.register_new_resolver("bertlab_root", _root)


def _close_loggers() -> None:
    """Finish a W&B run if one is open, so a failed job leaves the next job of a sweep a clean slate."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def task_wrapper(cfg: DictConfig) -> float | None:
    """Run one job. A :class:`BertlabError` becomes one line on stderr and exit status 2 (in a
    sweep, the job is recorded as failed and the sweep goes on); loggers are always closed."""
    try:
        from bertlab.cli.run import run

        return run(cfg)
    except BertlabError as e:
        if _in_multirun():
            out = Path(HydraConfig.get().runtime.output_dir)
            (out / "summary.json").write_text(json.dumps({"status": "failed", "error": str(e)}, indent=2))
            log.error("job failed: %s", e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        _close_loggers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return task_wrapper(cfg)


def main() -> None:
    start = time.time()
    _hydra_main()
    log.debug("done in %.1fs", time.time() - start)


def _json_default(o: Any) -> Any:
    return str(o)


if __name__ == "__main__":
    main()
