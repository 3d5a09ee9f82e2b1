"""Kill a run anywhere, resume it, and it continues as if nothing happened: every per-step loss
logged after the resume equals the uninterrupted run's, bitwise (CPU, one thread); after a SIGTERM
the whole metrics.csv does."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TRAINER = [
    "trainer.max_steps=24",
    "trainer.val_check_interval=8",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.periodic_checkpoint.every_n_train_steps=3",
    "data.max_seq_length=32",
    "data.batch_size=4",
    "hardware.threads=1",
    "print_config=false",
]


def _ner_crf_args(root: Path) -> list[str]:
    """NER with the CRF head from random weights: tagged sentences, a few cut into windows of 32
    pieces (windows that start inside an entity), and an orphan I- tag the loss must repair."""
    from bertlab.data.tokenizer import train_wordpiece

    words = ["anna", "carl", "paris", "oslo", "met", "in", "the", "old", "city", "today"]
    tags = {"anna": "PER", "carl": "PER", "paris": "LOC", "oslo": "LOC"}
    sentences = []
    for i in range(120):
        length = 4 + i % 5 + (30 if i % 10 == 0 else 0)
        sentence = []
        for k in range(length):
            word = words[(i * 7 + k * 3) % 10]
            sentence.append(f"{word}\t{'B-' + tags[word] if word in tags else 'O'}")
        sentences.append("\n".join(sentence))
    sentences[3] = "the\tO\ncarl\tI-PER\nmet\tO"
    (root / "ner.txt").write_text("\n\n".join(sentences) + "\n")
    if not (root / "tok_ner" / "vocab.txt").exists():
        train_wordpiece([" ".join(words)] * 4, root / "tok_ner", vocab_size=300)
    return ["task=ner", "task.head=crf", "data=conll", "data.stride=8", f"data.train_file={root / 'ner.txt'}",
            f"data.validation_file={root / 'ner.txt'}", f"tokenizer.path={root / 'tok_ner'}"]  # fmt: skip


def _task_args(task: str, root: Path) -> list[str]:
    if task == "pretrain":
        return [*TRAINER, "data.generated_documents=80", "tokenizer.vocab_size=300"]
    if task == "ner_crf":
        return [*TRAINER, *_ner_crf_args(root)]
    # Fine-tuning from random weights with a small tokenizer of our own, on a small table.
    from bertlab.data.tokenizer import train_wordpiece

    words = ["good", "bad", "film", "plot", "actor", "scene", "dull", "great", "long", "short"]
    rows = ["sentence\tlabel"] + [
        f"{words[i % 10]} {words[(i * 3) % 10]} {words[(i * 7) % 10]} {i}\t{i % 2}" for i in range(200)
    ]
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    if not (root / "tok" / "vocab.txt").exists():
        train_wordpiece([" ".join(words)] * 4 + [str(i) for i in range(200)], root / "tok", vocab_size=300)
    return [*TRAINER, "task=classify", "data=csv", f"data.train_file={root / 'train.tsv'}",
            f"data.validation_file={root / 'train.tsv'}", f"tokenizer.path={root / 'tok'}"]  # fmt: skip


def _losses(run_dir: Path) -> dict[int, str]:
    """step -> train/loss as written (text, so the comparison is bitwise)."""
    out: dict[int, str] = {}
    with (run_dir / "csv" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = row["train/loss"]
    return out


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "BERTLAB_ROOT": str(root), "PYTHONUNBUFFERED": "1"}


def _run(args: list[str], root: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "bertlab.cli.train", *args], env=_env(root), cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return root


# The default suite resumes the classifier after a SIGKILL (the job a regression broke: #20550, see
# TaskModule.planned_steps); pretraining, the CRF job, the other kill points and SIGTERM at a
# validation step run in the slow suite (make test-slow).
@pytest.fixture(
    scope="module",
    params=[
        pytest.param("pretrain", marks=pytest.mark.slow),
        "classify",
        pytest.param("ner_crf", marks=pytest.mark.slow),
    ],
)
def job(request, tmp_path_factory) -> tuple[Path, list[str]]:
    """(root, arguments) of a task: one root (one tokenizer and data cache) for its reference
    and killed runs."""
    root = tmp_path_factory.mktemp(f"resume_{request.param}")
    return root, _task_args(request.param, root)


def _runs(root: Path) -> set[Path]:
    return set(root.glob("logs/*/runs/*"))


@pytest.fixture(scope="module")
def reference_dir(job) -> Path:
    root, args = job
    before = _runs(root)
    _run(args, root)
    (run_dir,) = _runs(root) - before
    assert sorted(_losses(run_dir)) == list(range(24))
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_dir) -> dict[int, str]:
    return _losses(reference_dir)


def _cells(run_dir: Path) -> list[tuple[int, str, str]]:
    """Every (step, column, value) of metrics.csv, as written."""
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return sorted(
            (int(r["step"]), k, v) for r in csv.DictReader(f) for k, v in r.items() if v and k != "step"
        )


def _signal_at(root: Path, args: list[str], step: int, hook: str, sig: int) -> tuple[int, Path]:
    """Run the job and have it send itself ``sig`` at ``hook`` of step ``step`` (an exact point,
    not a timed one): (its exit status, its run directory)."""
    before = _runs(root)
    proc = subprocess.run([sys.executable, "-m", "bertlab.cli.train", *args,
                           "+callbacks.kill._target_=tests.signal_at.SignalAt", f"+callbacks.kill.step={step}",
                           f"+callbacks.kill.hook={hook}", f"+callbacks.kill.signum={int(sig)}"],
                          env=_env(root), cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    (run_dir,) = _runs(root) - before
    return proc.returncode, run_dir


def _resume(run_dir: Path, root: Path) -> None:
    _run([f"resume={run_dir}", "callbacks.kill.step=-1"], root)  # the resumed run keeps its overrides


def _kill_after_checkpoint_at(root: Path, args: list[str], step: int, sig: int) -> Path:
    """Killed when step ``step`` is done and its checkpoints are written (start of the next batch)."""
    status, run_dir = _signal_at(root, args, step, "train_batch_start", sig)
    assert status in (-int(sig), 128 + int(sig)), status
    return run_dir


# One kill point in the default suite, all three in the slow one (make test-slow).
KILLS = [
    pytest.param(3, signal.SIGKILL, marks=pytest.mark.slow),
    (9, signal.SIGKILL),
    pytest.param(12, signal.SIGTERM, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kill_step, sig", KILLS)
def test_killed_run_resumes_with_identical_losses(job, reference, kill_step, sig):
    root, args = job
    run_dir = _kill_after_checkpoint_at(root, args, kill_step, sig)
    _resume(run_dir, root)
    resumed = _losses(run_dir)
    assert max(resumed) == 23
    after = [s for s in resumed if s >= kill_step]
    assert after, resumed
    for s in after:
        assert resumed[s] == reference[s], (s, resumed[s], reference[s])


# Step 16 is a validation step (val_check_interval=8): SIGTERM right after its training batch, and
# right after its validation. Lightning's resume of such a checkpoint counted the step twice for
# the loggers (every later row one step late), and its CSV logger deleted the rows of the first
# part; the resumed run's metrics.csv must now equal the uninterrupted run's, cell for cell.
@pytest.mark.slow
@pytest.mark.parametrize("hook", ["train_batch_end", "validation_end"])
def test_sigterm_at_a_validation_step_resumes_with_the_same_log(job, reference_dir, hook):
    root, args = job
    status, run_dir = _signal_at(root, args, 16, hook, signal.SIGTERM)
    assert status == 143
    assert max(_losses(run_dir)) == 15
    _resume(run_dir, root)
    assert _cells(run_dir) == _cells(reference_dir)
