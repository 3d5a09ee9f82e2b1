"""The HF-format export is exact for every head bertlab trains, or it refuses: loaded by its documented
loader (transformers' BertFor* classes; sentence-transformers for mean pooling), the export gives
bertlab's own outputs to 1e-4 on a padded batch with a sentence pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab.data.tokenizer import load_tokenizer
from bertlab.encoder import BertConfig
from bertlab.tasks.base import Task, load_model
from bertlab.tasks.classify import ClassifyTask
from bertlab.tasks.ner import NerTask
from bertlab.tasks.pretrain import PretrainTask
from tests.conftest import words_tokenizer

transformers = pytest.importorskip("transformers")

WORDS = (
    "the film was good bad great movie anna moved from paris to apple office plot thin actors lovely".split()
)
TEXTS = ["the film was good", "anna moved from paris to the apple office\tthe plot was thin", "lovely"]
PROBLEMS = {"single_label": ["neg", "pos"], "multi_label": ["a", "b", "c"], "regression": ["score"]}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return words_tokenizer(
        tmp_path_factory.mktemp("tok") / "wp", WORDS, vocab_size=100, texts=200, longest=10
    )


def _export(task: Task, tok_dir: Path, out: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A random model of ``task`` (eval mode), exported to ``out``; and the check batch."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=load_tokenizer(tok_dir).get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    model = task.build_model(config).eval()
    task.export_hf(model, tok_dir, out, {"task": task.metadata()})
    batch = task.check_batches(load_tokenizer(tok_dir), TEXTS, 32)[0]
    assert batch["attention_mask"].min() == 0  # a padded batch
    assert batch["token_type_ids"].max() == int(
        not isinstance(task, NerTask)
    )  # and a pair where the task has them
    return model, {k: torch.from_numpy(v) for k, v in batch.items()}


def _inputs(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_cls_pooling_exports_as_bert_for_sequence_classification(tok_dir, tmp_path, problem) -> None:
    task = ClassifyTask(pooling="cls", labels=PROBLEMS[problem], problem_type=problem, max_seq_length=32)
    model, batch = _export(task, tok_dir, tmp_path / "export")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert hf.config.problem_type == {"single_label": "single_label_classification",
                                      "multi_label": "multi_label_classification",
                                      "regression": "regression"}[problem]  # fmt: skip
    assert list(hf.config.id2label.values()) == PROBLEMS[problem]
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits, model(*_inputs(batch)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_mean_pooling_exports_as_sentence_transformers(tok_dir, tmp_path, problem) -> None:
    """Mean pooling has no transformers class: the export is a sentence-transformers directory whose
    output (BertModel -> mean pooling -> Dense) is bertlab's logits; read back, it is the same model."""
    st = pytest.importorskip("sentence_transformers")
    task = ClassifyTask(pooling="mean", labels=PROBLEMS[problem], problem_type=problem, max_seq_length=32)
    model, batch = _export(task, tok_dir, tmp_path / "export")
    loaded = st.SentenceTransformer(str(tmp_path / "export"), device="cpu")
    inputs = [tuple(t.split("\t")) if "\t" in t else t for t in TEXTS]
    with torch.no_grad():
        ours = model(*_inputs(batch))
        theirs = loaded.encode(inputs, convert_to_tensor=True, batch_size=len(inputs))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # a transformers classifier class would silently compute something else: the directory says BertModel
    assert transformers.AutoConfig.from_pretrained(tmp_path / "export").architectures == ["BertModel"]
    _, again, _ = load_model(tmp_path / "export")
    with torch.no_grad():
        torch.testing.assert_close(again(*_inputs(batch)), ours)


def test_ner_exports_as_bert_for_token_classification(tok_dir, tmp_path) -> None:
    task = NerTask(labels=["O", "B-person", "I-person"], max_seq_length=32)
    model, batch = _export(task, tok_dir, tmp_path / "export")
    hf, info = transformers.BertForTokenClassification.from_pretrained(
        tmp_path / "export", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(**batch).logits, model(*_inputs(batch)), atol=1e-4, rtol=0)


def test_pretraining_exports_as_bert_for_pretraining(tok_dir, tmp_path) -> None:
    task = PretrainTask(max_seq_length=32)
    model, batch = _export(task, tok_dir, tmp_path / "export")
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        theirs, ours = hf.eval()(**batch), model(*_inputs(batch))
    torch.testing.assert_close(theirs.prediction_logits, ours["mlm_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs.seq_relationship_logits, ours["nsp_logits"], atol=1e-4, rtol=0)
    assert np.isfinite(ours["mlm_logits"].numpy()).all()
