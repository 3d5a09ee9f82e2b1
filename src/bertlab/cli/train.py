"""``bertlab-train``: the Hydra app over ``conf/train.yaml``.

It composes the config, prepares the data (tokenizer and cached instances), trains the task's
LightningModule, and leaves a run directory with ``summary.json``, ``checkpoints/``, ``.hydra/``,
``resolved_config.yaml`` and ``export/`` (HF format).
"""

from __future__ import annotations

import io
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
from omegaconf import DictConfig, OmegaConf

from bertlab import runs
from bertlab.cli.console import quiet_third_party
from bertlab.errors import BertlabError
from bertlab.schema import check_config

log = logging.getLogger("bertlab")

# The configs ship inside the package (bertlab/conf is the repository's conf/), so an installed
# bertlab finds them; users add their own with --config-dir (docs/experiments.md).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _root() -> str:
    return os.environ.get("BERTLAB_ROOT") or os.getcwd()


def _data_dir() -> str:
    """Where the recipes' datasets are: ``BERTLAB_DATA``; else, in a source checkout, the
    ``shared/data`` folder beside the repository; else ``~/.cache/bertlab/data``. Never the working
    directory: a recipe reads the same files wherever it is started."""
    if os.environ.get("BERTLAB_DATA"):
        return os.environ["BERTLAB_DATA"]
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "bertlab").is_dir():
        return str(repo.parent / "shared" / "data")
    return str(Path.home() / ".cache" / "bertlab" / "data")


_RUN_SUFFIX = f"{os.getpid() % 10000:04d}"


if not OmegaConf.has_resolver("bertlab_root"):
    OmegaConf.register_new_resolver("bertlab_root", _root)
if not OmegaConf.has_resolver("bertlab_data"):
    OmegaConf.register_new_resolver("bertlab_data", _data_dir)
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
        check_config(cfg)  # a wrong value fails here, before torch and Lightning are even imported
    except BertlabError as e:
        return _fail(str(e), status=2)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from bertlab.training.distributed import end_of_job

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
    """Report a failed job: ``summary.json`` says so (a failed run never looks finished), one line
    on stderr and exit; inside a sweep, the job is recorded and the sweep goes on."""
    message = " ".join(message.split())
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # no Hydra run: nothing to record
        out = None
    if out is not None and os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        out.mkdir(parents=True, exist_ok=True)
        runs.write_summary(out, {"status": "failed", "error": message, "exit_status": status})
    if _in_multirun():
        log.error("job failed: %s", message)
        return float("nan")  # a failed trial, for sweepers that read the value (Optuna)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return task_wrapper(cfg)


def _run_overrides(run_dir: Path, what: str) -> list[str]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise BertlabError(f"{what}={run_dir}: not a bertlab run directory (no .hydra/overrides.yaml)")
    return yaml.safe_load(overrides_file.read_text()) or []


def _merged(original: list[str], rest: list[str], dropped: tuple[str, ...]) -> list[str]:
    """The run's own overrides, less those given again on the command line and ``dropped`` keys."""
    keys = {a.split("=", 1)[0] for a in rest}
    return [o for o in original if o.split("=", 1)[0] not in keys and not o.startswith(dropped)] + rest


def resume_arguments(argv: list[str]) -> list[str]:
    """``resume=<run dir>``: the run's own overrides, its directory, and its last checkpoint, plus
    whatever else is on the command line (e.g. a larger ``trainer.max_steps``)."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    original = _run_overrides(run_dir, "resume")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise BertlabError(f"resume={run_dir}: the run has no checkpoints/last.ckpt to resume from")
    rest = [a for a in argv if not a.startswith("resume=")]
    return [*_merged(original, rest, ("ckpt_path=", "resume=")), f"hydra.run.dir={run_dir}", "ckpt_path=last"]


def evaluate_arguments(argv: list[str]) -> list[str]:
    """``evaluate=<run dir>``: no training; the run's model, scored on the run's own data settings
    (and on whatever the command line changes, e.g. ``data.test_file=<labelled file>``), in a new
    run directory."""
    given = [a for a in argv if a.startswith("evaluate=")]
    if not given:
        return argv
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    original = _run_overrides(run_dir, "evaluate")
    rest = [a for a in argv if not a.startswith("evaluate=")]
    dropped = ("ckpt_path=", "resume=", "model.init_from=", "hydra.run.dir=", "train=")
    return [*_merged(original, rest, dropped), f"model.init_from={run_dir}", "train=false"]


# Config groups that are parts of other configs, not choices: left out of --help.
_INTERNAL_GROUPS = ("hydra", "schedule")


def help_text(argv: list[str]) -> str:
    """``bertlab-train --help``: every config group with its options (the package's and those of
    the ``--config-dir`` directories), the defaults, and how to override. Options whose name starts
    with ``_`` are shared bases of the others, not choices."""
    dirs = [CONF_DIR] + [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")]
    defaults = {}
    for entry in yaml.safe_load((CONF_DIR / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            defaults.update(entry)
    groups: dict[str, set[str]] = {}
    for folder in dirs:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _INTERNAL_GROUPS):
            groups.setdefault(sub.name, set()).update(
                f.stem for f in sub.glob("*.yaml") if not f.stem.startswith("_")
            )
    width = max(len(g) for g in groups)
    lines = [
        "bertlab-train: train a WordPiece tokenizer, pretrain BERT (MLM + NSP), fine-tune it (classify, ner).",
        "Arguments are Hydra overrides: group=option, key=value, +new_key=value; -m runs a sweep.",
        "",
        "Config groups (the default in brackets):",
    ]
    for group in sorted(groups):
        default = defaults.get(group)
        options = ", ".join(f"[{o}]" if o == default else o for o in sorted(groups[group]))
        lines.append(f"  {group:<{width}}  {options}")
    lines += [
        "",
        "Examples:",
        "  bertlab-train model=mini data=text_files data.files=[a.txt,b.txt] trainer.max_steps=2000",
        "  bertlab-train task=classify data=csv data.train_file=train.csv model.init_from=<run dir | HF dir | hub id>",
        "  bertlab-train experiment=sst2 model.init_from=<model>      (recipes: experiment=...)",
        "  bertlab-train resume=<run dir>        bertlab-train evaluate=<run dir> [data.test_file=<file>]",
        "  bertlab-train --config-dir my_conf experiment=mine         (your own configs: docs/experiments.md)",
        "",
        "print_config=true shows the composed config; --cfg job prints it and exits; --hydra-help: Hydra's options.",
    ]
    return "\n".join(lines)


def main() -> None:
    """The console script: composition errors become one line, like every other input error."""
    global _STDERR
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print(help_text(sys.argv[1:]))
        return
    quiet_third_party()
    try:
        sys.argv[1:] = evaluate_arguments(resume_arguments(sys.argv[1:]))
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
