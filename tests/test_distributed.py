"""Data parallelism on CPU (gloo): the global batch, rank sharding, one run directory, prepare once.

The process-spawning tests keep to a tiny model and a few steps; dropout is off so that a step
gives the same update however its batch is split over processes and micro-batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab.data import pretrain as pretrain_data
from bertlab.data.cache import same_on_every_rank, wait_for_ready
from bertlab.data.pretrain import PretrainDataModule
from bertlab.data.sampler import ResumableDataLoader, ResumableSampler
from bertlab.errors import BertlabError
from bertlab.io import atomic_directory
from bertlab.job import validate_config
from bertlab.training.distributed import DistributedLayout, batch_layout, step_layout, trainer_settings
from tests.conftest import run_cli

COMMON = [
    "data.generated_documents=60",
    "data.max_seq_length=32",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "tokenizer.vocab_size=300",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "print_config=false",
    "export=false",
    "model.hidden_dropout=0",
    "model.attention_dropout=0",
    "hardware.threads=1",
]
# Global batch 4: two processes of 2, or one process of 2 accumulating twice.
TWO = [
    "hardware=ddp",
    "hardware.accelerator=cpu",
    "hardware.devices=2",
    "hardware.precision=32-true",
    "hardware.num_workers=0",
    "hardware.pin_memory=false",
]
ONE = ["hardware=cpu", "hardware.micro_batch_size=2"]


def _train(root: Path, run_dir: Path, *args: str) -> dict:
    proc = run_cli([*COMMON, *args, f"hydra.run.dir={run_dir}"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------ no processes


def test_batch_layout() -> None:
    assert batch_layout(32, 1, None) == (32, 1)
    assert batch_layout(32, 4, None) == (8, 1)
    assert batch_layout(32, 4, 2) == (2, 4)
    assert batch_layout(32, 1, None, accumulate=4) == (32, 4)  # the single-device meaning, as before
    with pytest.raises(BertlabError, match="does not divide among 3 processes"):
        batch_layout(32, 3, None)
    with pytest.raises(BertlabError, match="micro_batch_size=3"):
        batch_layout(32, 2, 3)
    with pytest.raises(BertlabError, match="accumulate_grad_batches=2"):
        batch_layout(32, 2, None, accumulate=2)


def test_block_sharding_gives_each_step_the_same_batches() -> None:
    # One process, micro-batches of 2: steps of 2 micro-batches. Two processes, micro-batches of 2:
    # a step is rank 0's and rank 1's micro-batch. Same micro-batches, step for step.
    one = list(ResumableSampler(23, seed=5, block_size=2))
    ranks = [list(ResumableSampler(23, seed=5, rank=r, world_size=2, block_size=2)) for r in (0, 1)]
    micro_one = [one[i : i + 2] for i in range(0, len(one), 2)]
    micro_two = [
        m for pair in zip(*[[r[i : i + 2] for i in range(0, len(r), 2)] for r in ranks]) for m in pair
    ]
    assert micro_one[: len(micro_two)] == micro_two
    assert len(micro_two) == 10  # 11 micro-batches of 2 in 23; the odd one out is dropped
    # block_size=1 is the plain rank::world split
    plain = ResumableSampler(23, seed=5, rank=1, world_size=2)
    order = np.random.default_rng([5, 0]).permutation(23)
    assert list(plain) == order[:22][1::2].tolist()


def test_checkpoint_position_counts_all_ranks() -> None:
    data = list(range(40))

    def loader(rank: int, world: int) -> ResumableDataLoader:
        sampler = ResumableSampler(40, seed=1, rank=rank, world_size=world, block_size=2)
        return ResumableDataLoader(data, batch_size=2, sampler=sampler, drop_last=True)

    two = loader(0, 2)
    it = iter(two)
    for _ in range(3):
        next(it)
    state = two.state_dict()
    assert state["consumed"] == 12  # 3 micro-batches of 2 on each of 2 ranks
    one = loader(0, 1)
    one.load_state_dict(state)
    rest = [b.tolist() for b in one]
    full = [b.tolist() for b in loader(0, 1)]
    assert rest == full[6:]
    odd = loader(0, 4)
    odd.load_state_dict({**state, "consumed": 12})
    with pytest.raises(BertlabError, match="does not divide among 4 processes"):
        next(iter(odd))


def test_layout_change_rescales_lightning_counters() -> None:
    ckpt = {
        "bertlab_layout": {"world_size": 2, "micro_batch_size": 2, "accumulate": 1},
        "loops": {
            "fit_loop": {"epoch_loop.batch_progress": {"total": {"ready": 3}, "current": {"ready": 3}}}
        },
    }
    DistributedLayout(1, 2, 2).on_load_checkpoint(None, None, ckpt)  # type: ignore[arg-type]
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 6


def test_waiting_rank_times_out_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BertlabError, match="waited 0.2 s for the thing"):
        wait_for_ready(tmp_path / "never", 0.2, "the thing", poll_s=0.05)
    # A rank other than local rank 0 never builds the cache: it waits for rank 0's directory.
    monkeypatch.setenv("LOCAL_RANK", "1")
    dm = PretrainDataModule(
        source="generated",
        generated_documents=20,
        tokenizer={"vocab_size": 200},
        cache_dir=str(tmp_path / "cache"),
        prepare_timeout_s=0.2,
    )
    with pytest.raises(BertlabError, match="waited 0.2 s for the tokenizer"):
        dm.prepare_tokenizer()
    assert not (tmp_path / "cache" / "tokenizers").exists()


def test_validation_covers_every_instance_once_on_any_number_of_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An odd number of validation instances on 2 processes: the sharding once dropped the last one
    # (the 2-process validation loss then differed from 1 process whenever the count was odd).
    dm = PretrainDataModule(
        source="generated",
        generated_documents=60,
        max_seq_length=32,
        tokenizer={"vocab_size": 300},
        cache_dir=str(tmp_path / "cache"),
        eval_batch_size=4,
    )
    dm.setup()
    n = len(dm.val_set)
    for world in (1, 2, 3, n + 1):
        shares = []
        for rank in range(world):
            monkeypatch.setattr(pretrain_data, "rank_world", lambda trainer, r=rank, w=world: (r, w))
            shares.append([i for batch in dm.val_dataloader().batch_sampler for i in batch])
        assert sorted(i for share in shares for i in share) == list(range(n)), world


def _check_on_rank(rank: int, world: int, port: int, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = []
    try:
        for value in ("vocab a", f"vocab {'ab'[rank]}"):  # the same on both ranks, then not
            try:
                same_on_every_rank(value, "the pretraining data")
                results.append("ok")
            except BertlabError as err:
                results.append(str(err))
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow  # two processes that build their data: half a minute (make test-slow)
def test_ranks_that_built_different_data_stop_with_a_clear_error(tmp_path: Path) -> None:
    # Nodes with their own caches can train different WordPiece vocabularies (not reproducible
    # upstream); every rank must find out, not train one model on two sets of ids.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_check_on_rank, args=(2, port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        same, different = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert same == "ok"
        assert (
            "the pretraining data differs between ranks (ranks [0]: vocab a; ranks [1]: vocab b)" in different
        )
        assert "tokenizer.path" in different
    same_on_every_rank("anything", "outside a process group")  # a no-op


def test_atomic_directory_keeps_a_finished_copy(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with atomic_directory(final, keep_existing=True) as tmp:
        (tmp / "a").write_text("first")
        final.mkdir()
        (final / "a").write_text("other")
    assert (final / "a").read_text() == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


# Composition reads no file, but the config check wants the files to exist: empty ones will do
# (``placeholder_files``).
TASK_DATA = {
    "pretrain": [],
    "classify": ["data=csv", "data.train_file=t.tsv", "tokenizer.path=tok"],
    "ner": ["data=conll", "data.train_file=t.txt", "data.validation_file=t.txt", "tokenizer.path=tok"],
}


@pytest.fixture
def placeholder_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files TASK_DATA names, empty, in a working directory of the test's own."""
    monkeypatch.chdir(tmp_path)
    for name in ("t.tsv", "t.txt"):
        (tmp_path / name).touch()
    (tmp_path / "tok").mkdir()


def _check_hardware(compose_cfg, hardware: str, task: str, model: str) -> None:
    cfg = compose_cfg(
        [f"task={task}", f"model={model}", f"hardware={hardware}", "hardware.devices=4", "data.batch_size=32"]
        + TASK_DATA[task]
    )
    validate_config(cfg)
    world, micro, acc = step_layout(cfg)
    assert world == (8 if hardware == "multinode" else 4) and micro * world * acc == 32
    strategy = type(trainer_settings(cfg)["strategy"]).__name__
    assert strategy == ("FSDPStrategy" if hardware == "fsdp" else "DDPStrategy")


@pytest.mark.parametrize("hardware", ["ddp", "fsdp", "multinode"])
def test_scale_out_hardware_composes(compose_cfg, placeholder_files: None, hardware: str) -> None:
    for task, model in (("pretrain", "tiny"), ("classify", "base"), ("ner", "large")):
        _check_hardware(compose_cfg, hardware, task, model)


def test_fsdp_on_cpu_is_refused_before_any_work(compose_cfg) -> None:
    # torch's FSDP raises only after the data is built and the processes are started
    cfg = compose_cfg(["hardware=fsdp", "hardware.accelerator=cpu", "hardware.devices=2"])
    with pytest.raises(BertlabError, match="hardware=fsdp needs GPUs"):
        validate_config(cfg)
    validate_config(compose_cfg(["hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2"]))


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["ddp", "fsdp", "multinode"])
def test_scale_out_hardware_composes_with_every_task_and_model(
    compose_cfg, placeholder_files: None, hardware: str
) -> None:
    for task in TASK_DATA:
        for model in ("tiny", "mini", "small", "medium", "base", "large"):
            _check_hardware(compose_cfg, hardware, task, model)


# --------------------------------------------------------------------------------- processes


def _one_and_two_processes(bertlab_root: Path, tmp_path: Path) -> tuple[dict, dict, Path]:
    """2 processes x micro-batch 2 and 1 process x micro-batch 2 x accumulation 2, 2 steps each:
    (summary of one, summary of two, run directory of two), after checking they end with the same
    weights."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    s1 = _train(bertlab_root, one, *ONE, "trainer.max_steps=2")
    s2 = _train(bertlab_root, two, *TWO, "trainer.max_steps=2")
    assert s1["global_step"] == s2["global_step"] == 2
    _assert_same_weights(one, two)
    return s1, s2, two


@pytest.mark.slow
def test_two_processes_give_the_same_validation_metrics(bertlab_root: Path, tmp_path: Path) -> None:
    """Slow suite. It failed in about a third of the runs until the validation sharding stopped
    dropping the last instance of an odd count (tokenizer training is not deterministic upstream,
    so the count varied between 34 and 35 from one session to the next); the deterministic check is
    test_validation_covers_every_instance_once_on_any_number_of_processes."""
    s1, s2, _ = _one_and_two_processes(bertlab_root, tmp_path)
    for name in ("val/mlm_loss", "val/nsp_loss"):
        assert s1["metrics"][name] == pytest.approx(s2["metrics"][name], rel=1e-5)


def test_two_processes_match_one(bertlab_root: Path, tmp_path: Path) -> None:
    """2 processes x micro-batch 2 == 1 process x micro-batch 2 x accumulation 2: same weights, and
    all ranks share one run directory that rank 0 writes."""
    _, _, two = _one_and_two_processes(bertlab_root, tmp_path)
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [
            ".hydra",
            "checkpoints",
            "config_tree.log",
            "csv",
            "resolved_config.yaml",
            "summary.json",
            "train.log",
            "train_ddp_process_1.log",
        ]
    )
    assert not (bertlab_root / "logs").exists()  # the child made no run directory of its own


@pytest.mark.slow  # the plain two-process test stays in the default suite
def test_two_processes_match_one_with_the_crf_head(bertlab_root: Path, tmp_path: Path) -> None:
    """NER with task.head=crf (tagged sentences, some cut into windows, an orphan I- tag): 2 processes
    x micro-batch 2 == 1 process x micro-batch 2 x accumulation 2, the CRF's scores included (their
    own optimizer group, used by every rank every step). DDP runs with its defaults: the encoder's
    [CLS] pooler, which token classification does not use, is frozen."""
    from tests.test_exact_resume import _ner_crf_args

    (tmp_path / "data").mkdir()
    args = [*_ner_crf_args(tmp_path / "data"), "data.max_seq_length=32", "data.batch_size=4",
            "data.eval_batch_size=4", "trainer.val_check_interval=2", "trainer.max_steps=2",
            "trainer.enable_progress_bar=false", "print_config=false", "export=false", "hardware.threads=1",
            "model.hidden_dropout=0", "model.attention_dropout=0", "task.classifier_dropout=0"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, hardware in ((one, ONE), (two, TWO)):
        proc = run_cli([*args, *hardware, f"hydra.run.dir={run_dir}"], bertlab_root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 2
    _assert_same_weights(one, two)
    assert _weights(one)["model.crf.transitions"].abs().max() > 0  # the CRF did learn


@pytest.mark.slow
@pytest.mark.parametrize(("first", "then"), [(TWO, ONE), (ONE, TWO)], ids=["2to1", "1to2"])
def test_resume_on_another_number_of_processes(bertlab_root: Path, tmp_path: Path, first, then) -> None:
    straight = tmp_path / "straight"
    _train(bertlab_root, straight, *ONE, "trainer.max_steps=4")
    run = tmp_path / "run"
    # stopped after 2 of 4 steps, with the learning-rate schedule of 4 steps
    _train(bertlab_root, run, *first, "trainer.max_steps=2", "optimizer.total_steps=4")
    back = ["hardware.devices=2" if "hardware.devices=2" in then else "hardware.devices=1"]
    proc = run_cli([f"resume={run}", *then, *back, "trainer.max_steps=4"], bertlab_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["global_step"] == 4
    _assert_same_weights(straight, run)


@pytest.mark.slow
def test_multirun_of_ddp_jobs(bertlab_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *COMMON, *TWO, "trainer.max_steps=2", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, bertlab_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["global_step"] == 2
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "train_ddp_process_1.log").is_file()
    lrs = {json.loads((j / "summary.json").read_text())["metrics"]["val/mlm_loss"] for j in jobs}
    assert len(lrs) == 2  # two different jobs, not one job twice
    assert not (bertlab_root / "logs").exists()


def test_slurm_launcher_follows_the_hardware(compose_cfg) -> None:
    cfg = compose_cfg(["hydra/launcher=slurm_ddp", "hardware=multinode", "hardware.num_nodes=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)
