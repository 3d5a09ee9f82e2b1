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
import traceback
from pathlib import Path

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
        _fail(str(e), status=2)
    except Exception as e:  # a bug, not bad input: keep the traceback in the run's log
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = _save_traceback()
        _fail(f"{type(e).__name__}: {e} (traceback in {where}; HYDRA_FULL_ERROR=1 prints it)", status=1)
    finally:
        _close_loggers()


def _save_traceback() -> str:
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        out = Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "traceback.txt"
    path.write_text(traceback.format_exc())
    return str(path)


def _fail(message: str, status: int) -> None:
    """Report a failed job: one line on stderr and exit; inside a sweep, record it and go on."""
    message = " ".join(message.split())
    if _in_multirun():
        out = Path(HydraConfig.get().runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"status": "failed", "error": message}, indent=2))
        log.error("job failed: %s", message)
        return None
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return task_wrapper(cfg)


def main() -> None:
    start = time.time()
    _hydra_main()
    log.debug("done in %.1fs", time.time() - start)


if __name__ == "__main__":
    main()
