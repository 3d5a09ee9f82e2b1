"""``bertlab-train``: the Hydra app over ``conf/train.yaml``.

It composes the config, prepares the data (tokenizer and cached instances), trains the task's
LightningModule, and leaves a run directory with ``summary.json``, ``checkpoints/``, ``.hydra/``,
``resolved_config.yaml`` and ``export/`` (HF format).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TextIO

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from bertlab.errors import BertlabError

log = logging.getLogger("bertlab")

# The configs ship inside the package (bertlab/conf is the repository's conf/), so an installed
# bertlab finds them; users add their own with --config-dir (docs/experiments.md).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _root() -> str:
    return os.environ.get("BERTLAB_ROOT") or os.getcwd()


_RUN_SUFFIX = f"{os.getpid() % 10000:04d}"


if not OmegaConf.has_resolver("bertlab_root"):
    OmegaConf.register_new_resolver("bertlab_root", _root)
if not OmegaConf.has_resolver("bertlab_wandb_offline"):
    # W&B stays offline (no network, no account) unless the user asks for it.
    OmegaConf.register_new_resolver(
        "bertlab_wandb_offline", lambda: os.environ.get("WANDB_MODE", "offline").lower() != "online"
    )
if not OmegaConf.has_resolver("bertlab_pid"):
    # Two runs started in the same second must not share a run directory.
    OmegaConf.register_new_resolver("bertlab_pid", lambda: _RUN_SUFFIX)


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


class _ComposeErrors(io.TextIOBase):
    """Stands in for stderr while Hydra composes the config, so that a composition error (a typo
    in an override, an unknown group option) can be reported as one line. Everything written
    after the job starts goes straight to the real stderr."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.buffer_text: list[str] = []
        self.passthrough = False

    def write(self, text: str) -> int:
        if self.passthrough:
            return self.real.write(text)
        self.buffer_text.append(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def release(self) -> None:
        """The job has started: show what was held back and pass everything through from now on."""
        if not self.passthrough:
            self.passthrough = True
            self.real.write("".join(self.buffer_text))
            self.buffer_text = []

    def one_line(self) -> str:
        lines = [ln.strip() for ln in "".join(self.buffer_text).splitlines()]
        if "Config search path:" in lines:
            lines = lines[: lines.index("Config search path:")]
        lines = [ln for ln in lines if ln and "HYDRA_FULL_ERROR" not in ln]
        return " ".join(lines)


_STDERR: _ComposeErrors | None = None


def task_wrapper(cfg: DictConfig) -> float | None:
    """Run one job. A :class:`BertlabError` becomes one line on stderr and exit status 2 (in a
    sweep, the job is recorded as failed and the sweep goes on); loggers are always closed."""
    if _STDERR is not None:
        _STDERR.release()
    try:
        from bertlab.job import run

        return run(cfg)
    except BertlabError as e:
        return _fail(str(e), status=2)
    except SIGTERMException:
        out = HydraConfig.get().runtime.output_dir
        return _fail(
            f"received SIGTERM; last checkpoint in {out}/checkpoints; resume with: bertlab-train resume={out}",
            143,
        )
    except Exception as e:  # a bug, not bad input: keep the traceback in the run's log
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = _save_traceback()
        return _fail(
            f"{type(e).__name__}: {e} (traceback in {where}; HYDRA_FULL_ERROR=1 prints it)", status=1
        )
    finally:
        _close_loggers()
        from bertlab.training.distributed import end_of_job

        end_of_job()  # a DDP job's processes are done before the next job of a sweep starts


def _save_traceback() -> str:
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        out = Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "traceback.txt"
    path.write_text(traceback.format_exc())
    return str(path)


def _fail(message: str, status: int) -> float:
    """Report a failed job: one line on stderr and exit; inside a sweep, record it and go on."""
    message = " ".join(message.split())
    if _in_multirun():
        out = Path(HydraConfig.get().runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"status": "failed", "error": message}, indent=2))
        log.error("job failed: %s", message)
        return float("nan")  # a failed trial, for sweepers that read the value (Optuna)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return task_wrapper(cfg)


def resume_arguments(argv: list[str]) -> list[str]:
    """``resume=<run dir>``: the run's own overrides, its directory, and its last checkpoint, plus
    whatever else is on the command line (e.g. a larger ``trainer.max_steps``)."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise BertlabError(f"resume={run_dir}: not a bertlab run directory (no .hydra/overrides.yaml)")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise BertlabError(f"resume={run_dir}: the run has no checkpoints/last.ckpt to resume from")
    original = yaml.safe_load(overrides_file.read_text()) or []
    rest = [a for a in argv if not a.startswith("resume=")]
    keys = {a.split("=", 1)[0] for a in rest}
    kept = [
        o for o in original if o.split("=", 1)[0] not in keys and not o.startswith(("ckpt_path=", "resume="))
    ]
    return [*kept, *rest, f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def main() -> None:
    """The console script: composition errors become one line, like every other input error."""
    global _STDERR
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
    except BertlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        _hydra_main()
        return
    _STDERR = _ComposeErrors(sys.stderr)
    sys.stderr = _STDERR
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code not in (0, None) and not _STDERR.passthrough:
            message = _STDERR.one_line() or "the configuration could not be composed"
            _STDERR.buffer_text = []
            sys.stderr = _STDERR.real
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        sys.stderr = _STDERR.real
        _STDERR.release()


if __name__ == "__main__":
    main()
