"""NER with a CRF head (``task.head=crf``): gold-path repair, packing of window words, training,
decoding of whole sentences across windows (always valid for the scheme), the predictor, the
checkpoint and the HF export with its documented loader.

The CRF itself against brute force is tests/test_crf.py; both predict backends with the CRF are in
tests/test_onnx.py; exact resume and 1 == 2 processes with the CRF in tests/test_exact_resume.py and
tests/test_distributed.py.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seqeval import metrics as sm

from bertlab.data.ner import NerDataModule
from bertlab.data.tokenizer import load_tokenizer, train_wordpiece
from bertlab.encoder import BertConfig
from bertlab.encoder.crf import viterbi_decode_numpy
from bertlab.errors import BertlabError
from bertlab.inference import TorchBackend
from bertlab.tagging import SCHEMES, allowed_transitions, check_tag, spans_from_tags
from bertlab.tasks.base import load_model, load_predictor, task_from_metadata
from bertlab.tasks.ner import (
    CRF_FILE,
    NerModule,
    NerTask,
    WordPredictionAssembler,
    crf_decoder,
    pack_words,
    repair_tags,
    word_predictions,
)
from tests.test_ner import WEIBO, make_sentences, minilm_dir, tiny_model_config, write_conll

TYPES = ["PER", "LOC"]


def scheme_tags(scheme: str, types: list[str] = TYPES) -> list[str]:
    """Every tag of ``scheme`` over ``types``, ``O`` first."""
    return ["O"] + [f"{p}-{t}" for t in types for p in "BIMELSU" if check_tag(f"{p}-{t}", scheme)]


def is_allowed(ids: list[int], masks: tuple, open_start: bool = False, open_end: bool = False) -> bool:
    """A path walks the masks; an open end only needs the label to have a neighbour there."""
    start, allowed, end = masks
    if not ids:
        return True
    first = any(row[ids[0]] for row in allowed) if open_start else start[ids[0]]
    last = any(allowed[ids[-1]]) if open_end else end[ids[-1]]
    return bool(first and last and all(allowed[i][j] for i, j in zip(ids, ids[1:])))


# ------------------------------------------------------------------------------- repair


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SCHEMES), st.data(), st.booleans(), st.booleans())
def test_repair_gives_an_allowed_path_with_the_lenient_entities(scheme, data, open_start, open_end) -> None:
    labels = scheme_tags(scheme)
    tags = data.draw(st.lists(st.sampled_from(labels), min_size=0, max_size=8))
    masks = allowed_transitions(labels, scheme)
    fixed = repair_tags(tags, scheme, open_start, open_end)
    assert len(fixed) == len(tags)
    assert is_allowed([labels.index(t) for t in fixed], masks, open_start, open_end)
    if is_allowed([labels.index(t) for t in tags], masks, open_start, open_end):
        assert fixed == tags  # an allowed path is never touched
    if not (open_start or open_end):
        # the same entities as the lenient reading prediction uses
        assert spans_from_tags(fixed, scheme) == spans_from_tags(tags, scheme)


def test_repair_examples() -> None:
    assert repair_tags(["O", "I-PER", "I-PER", "O"], "IOB2") == ["O", "B-PER", "I-PER", "O"]
    assert repair_tags(["B-LOC", "I-PER"], "IOB2") == ["B-LOC", "B-PER"]
    # a window that starts inside an entity keeps its I- tag; a sentence start does not
    assert repair_tags(["I-PER", "O"], "IOB2", open_start=True) == ["I-PER", "O"]
    assert repair_tags(["I-PER", "O"], "IOB2") == ["B-PER", "O"]
    # IOBES: an entity left open at the end of a window may go on in the next one
    assert repair_tags(["O", "B-PER"], "IOBES", open_end=True) == ["O", "B-PER"]
    assert repair_tags(["O", "B-PER"], "IOBES") == ["O", "S-PER"]
    assert repair_tags(["O", "M-LOC", "E-LOC"], "BMES") == ["O", "B-LOC", "E-LOC"]


@pytest.mark.skipif(not WEIBO.exists(), reason="shared Weibo NER data not present")
def test_weibo_training_windows_are_all_trainable() -> None:
    """Weibo's training file has orphan I- tags, and windows that start inside entities: after the
    repair every window's gold path is allowed and inside the label set (no +inf loss)."""
    dm = NerDataModule(
        tokenizer_dir=minilm_dir(),
        train_file=str(WEIBO / "train.txt"),
        delimiter="\t",
        max_seq_length=64,
        stride=16,
    )
    labels = dm.labels
    masks = allowed_transitions(labels, dm.scheme)
    orphans = sum(
        1
        for words, tags in dm.sentences("train")
        for prev, tag in zip(["O", *tags], tags)
        if tag.startswith("I-") and prev[2:] != tag[2:]
    )
    assert orphans > 0
    windows = dm.windows("train")
    forbidden = repaired_open = 0
    for w in windows:
        where = w.word_index >= 0
        ids = w.labels[where].tolist()
        words = w.word_index[where]
        if not ids:
            continue
        open_start, open_end = bool(words[0] != 0), bool(words[-1] != w.num_words - 1)
        if is_allowed(ids, masks, open_start, open_end):
            continue
        forbidden += 1
        fixed = repair_tags([labels[i] for i in ids], dm.scheme, open_start, open_end)
        assert all(t in labels for t in fixed)
        assert is_allowed([labels.index(t) for t in fixed], masks, open_start, open_end)
        repaired_open += open_start
    assert 0 < forbidden < len(windows) // 20
    assert any(
        labels[int(w.labels[w.word_index >= 0][0])].startswith("I-")
        for w in windows
        if (w.word_index >= 0).any() and w.word_index[w.word_index >= 0][0] != 0
    )  # some windows do start inside an entity


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    texts = [" ".join(w for w, _ in s) for s in make_sentences(200, 0)] * 3
    return train_wordpiece(texts, tmp_path_factory.mktemp("tok") / "wp", vocab_size=80, min_frequency=1)


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    train = make_sentences(40, 1, long_every=5)
    train[1][0] = (train[1][0][0], "I-LOC")  # an orphan I- tag: the loss must stay finite
    return write_conll(d / "train.txt", train), write_conll(
        d / "dev.txt", make_sentences(25, 2, long_every=3)
    )


def _datamodule(tokenizer_dir: Path, ner_files) -> NerDataModule:
    train, dev = ner_files
    dm = NerDataModule(
        tokenizer_dir=str(tokenizer_dir),
        train_file=str(train),
        validation_file=str(dev),
        max_seq_length=16,
        stride=4,
        batch_size=8,
        eval_batch_size=4,  # windows of one sentence land in different batches
    )
    dm.setup("fit")
    return dm


def _randomize(model: torch.nn.Module, seed: int, scale: float = 3.0) -> None:
    """Random classifier and CRF scores: emissions and transitions that often favour forbidden paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        classifier = model.head.classifier
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=g) * scale)
        for p in model.crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ------------------------------------------------------------------------------ packing


def test_pack_words_gathers_each_windows_words_in_order(tokenizer_dir, ner_files) -> None:
    dm = _datamodule(tokenizer_dir, ner_files)
    seen_open = 0
    for batch in dm.iter_batches("validation"):
        logits = torch.randn(*batch["input_ids"].shape, 5)
        packed = pack_words(logits, batch)
        for row in range(len(batch["input_ids"])):
            positions = torch.nonzero(batch["word_index"][row] >= 0).flatten()
            n = len(positions)
            assert packed.mask[row].tolist() == [True] * n + [False] * (packed.mask.shape[1] - n)
            torch.testing.assert_close(packed.emissions[row, :n], logits[row, positions])
            assert packed.tags[row, :n].tolist() == batch["labels"][row, positions].tolist()
            words = batch["word_index"][row, positions].tolist()
            assert words == list(range(words[0], words[0] + n))  # a contiguous run, in order
            assert bool(packed.open_start[row]) == (words[0] != 0)
            assert bool(packed.open_end[row]) == (words[-1] != int(batch["sentence_num_words"][row]) - 1)
            seen_open += bool(packed.open_start[row])
    assert seen_open > 0


# ------------------------------------------------------------------------------ training


def test_crf_head_trains_and_decodes_whole_sentences(tmp_path, tokenizer_dir, ner_files) -> None:
    L.seed_everything(0, workers=True)
    dm = _datamodule(tokenizer_dir, ner_files)
    task = NerTask(head="crf", labels=dm.labels, scheme=dm.scheme, max_seq_length=16, stride=4)
    config = BertConfig(**tiny_model_config(load_tokenizer(tokenizer_dir).get_vocab_size()))
    module = NerModule(task.build_model(config), task, {"lr": 5e-3, "warmup_steps": 1})
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=6,
        check_val_every_n_epoch=None,
        callbacks=[Losses()],
    )
    trainer.fit(module, datamodule=dm)
    assert len(losses) == 6 and all(np.isfinite(losses))  # the orphan I-LOC was repaired, not +inf
    crf = module.model.crf
    # the transition scores learn (at crf_lr_scale x the rate); the forbidden ones never move
    assert crf.transitions[crf.allowed_transitions].abs().max() > 0.1
    assert not crf.transitions[~crf.allowed_transitions].any()
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 3 and groups[2]["weight_decay"] == 0.0
    assert groups[2]["initial_lr"] == pytest.approx(100 * 5e-3)

    # Random scores, so that decoding has forbidden paths to avoid; then the validation decodes.
    _randomize(module.model, seed=1)
    trainer.validate(module, datamodule=dm, verbose=False)
    report = module.last_entity_report
    assert report["sentences"] == len(dm.sentences("validation")) and report["predicted"] > 5

    # By hand: each sentence's words' emissions from the windows that predict them, one Viterbi per
    # sentence; the same tags as the assembler's, all allowed; the F1 is seqeval's on them.
    module.eval()
    masks = allowed_transitions(task.labels, task.scheme)
    emissions: dict[int, dict[int, np.ndarray]] = {}
    decode = crf_decoder(module.model)
    assembler, decoded = WordPredictionAssembler(decode), {}
    argmax_invalid = 0
    with torch.no_grad():
        for batch in dm.iter_batches("validation"):
            logits = module(batch).numpy()
            for si, pred, _ in assembler.add(word_predictions(batch, logits, keep_emissions=True)):
                decoded[si] = pred.tolist()
            for row, (si, positions) in enumerate(zip(batch["sentence_index"], batch["word_index"])):
                for pos, wi in enumerate(positions.tolist()):
                    if wi >= 0:
                        emissions.setdefault(int(si), {})[wi] = logits[row, pos]
    start, trans, end = (t.detach().numpy() for t in crf.constrained_transitions())
    windowed = 0
    for si, (_, gold) in enumerate(dm.sentences("validation")):
        sentence = np.stack([emissions[si][w] for w in range(len(gold))])
        assert decoded[si] == viterbi_decode_numpy(sentence, start, trans, end)
        assert decoded[si] == crf.decode(torch.from_numpy(sentence)[None])[0]  # torch's Viterbi agrees
        assert is_allowed(decoded[si], masks)
        argmax_invalid += not is_allowed(sentence.argmax(-1).tolist(), masks)
        windowed += len(gold) > 14
    assert windowed > 3 and argmax_invalid > 3  # long sentences; argmax would have broken the scheme
    y_true = [tags for _, tags in dm.sentences("validation")]
    y_pred = [task.tags(decoded[i]) for i in range(len(y_true))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report["f1"] == sm.f1_score(y_true, y_pred)

    # The checkpoint: plain tensors and settings; the model comes back with its CRF.
    ckpt = tmp_path / "crf.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert saved["hyper_parameters"]["task"]["head"] == "crf"
    assert "model.crf.transitions" in saved["state_dict"]
    restored_task, restored, _ = load_model(ckpt)
    assert restored_task.head == "crf"
    for a, b in zip(restored.crf.constrained_transitions(), crf.constrained_transitions()):
        torch.testing.assert_close(a, b)


def test_task_settings() -> None:
    with pytest.raises(BertlabError, match=r"task.head='hmm' is not one of softmax, crf"):
        NerTask(head="hmm")
    with pytest.raises(BertlabError, match="crf_lr_scale"):
        NerTask(head="crf", crf_lr_scale=0)
    task = NerTask(head="crf", labels=["O", "B-X", "I-X"])
    assert task.metadata()["head"] == "crf" and task.metadata()["crf_lr_scale"] == 100.0
    model = task.build_model(BertConfig(**tiny_model_config(50)))
    assert model.crf is not None and model.crf.allowed_start.tolist() == [True, True, False]
    softmax = NerTask(labels=["O", "B-X", "I-X"]).build_model(BertConfig(**tiny_model_config(50)))
    assert softmax.crf is None and not any(k.startswith("crf.") for k in softmax.state_dict())

    # models saved before the CRF existed have no head setting: softmax
    class Saved:
        metadata = {"task": {"_target_": "bertlab.tasks.ner.NerTask", "name": "ner", "labels": ["O"]}}
        source = "old"

    assert task_from_metadata(Saved()).head == "softmax"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ prediction


LONG = [
    " ".join(["Anna", "Paris", "met", "Oslo", "friends", "Berta", "the", "Lima"] * 4),
    "Anna met Carl in Berlin today",
    " ".join(["old", "city", "Quito", "Dora", "Emilson", "and"] * 5),
    "Oslo",
]


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES", "BMES", "IOE1"])
def test_predictor_tags_are_valid_on_windows_of_long_sentences(scheme: str, tokenizer_dir) -> None:
    labels = scheme_tags(scheme)
    task = NerTask(head="crf", labels=labels, scheme=scheme, word_split="whitespace", stride=4)
    torch.manual_seed(0)
    model = task.build_model(BertConfig(**tiny_model_config(load_tokenizer(tokenizer_dir).get_vocab_size())))
    _randomize(model.eval(), seed=2)
    tokenizer = load_tokenizer(tokenizer_dir)
    masks = allowed_transitions(labels, scheme)
    predictor = task.predictor(model, tokenizer, TorchBackend(model, task.output_names), 16, 3)
    answers = predictor.predict([predictor.parse(line) for line in LONG])
    assert [len(a["tags"]) for a in answers] == [len(line.split()) for line in LONG]
    assert len(predictor.predict([predictor.parse(LONG[0])])[0]["tags"]) > 14  # several windows
    for answer in answers:
        assert is_allowed([labels.index(t) for t in answer["tags"]], masks), answer["tags"]
    # the same weights decoded by argmax break the scheme: the check above is not vacuous
    plain = NerTask(labels=labels, scheme=scheme, word_split="whitespace", stride=4)
    argmax = plain.predictor(model, tokenizer, TorchBackend(model, plain.output_names), 16, 3)
    argmax.decoder = None
    broken = [a["tags"] for a in argmax.predict([argmax.parse(line) for line in LONG])]
    assert any(not is_allowed([labels.index(t) for t in tags], masks) for tags in broken)


# ------------------------------------------------------------------------------ HF export


def test_hf_export_with_crf_and_its_loader(tmp_path, tokenizer_dir) -> None:
    labels = scheme_tags("IOB2")
    task = NerTask(head="crf", labels=labels, scheme="IOB2", word_split="whitespace", max_seq_length=32)
    torch.manual_seed(0)
    model = task.build_model(BertConfig(**tiny_model_config(load_tokenizer(tokenizer_dir).get_vocab_size())))
    _randomize(model.eval(), seed=3)
    out = task.export_hf(model, tokenizer_dir, tmp_path / "export", {"task": task.metadata()})
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {str(i): x for i, x in enumerate(labels)}
    assert config["bertlab"]["task"]["head"] == "crf" and config["bertlab"]["decoding"]["file"] == CRF_FILE
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "Decode with the CRF, not with argmax" in readme

    # bertlab reads it back: the same scores, the same answers
    restored_task, restored, _ = load_model(out)
    assert restored_task.head == "crf"
    for a, b in zip(restored.crf.constrained_transitions(), model.crf.constrained_transitions()):
        torch.testing.assert_close(a, b)
    words = ["Anna", "moved", "to", "Paris"]
    predictor = load_predictor(out)
    (answer,) = predictor.predict([predictor.parse({"tokens": words})])

    # the README's loader, with transformers alone, gives the same tags
    pytest.importorskip("transformers")
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    scope: dict = {}
    exec(code.replace('path = "."', f"path = {str(out)!r}"), scope)
    assert scope["words"] == words and scope["tags"] == answer["tags"]

    (out / CRF_FILE).unlink()
    with pytest.raises(BertlabError, match=f"needs its {CRF_FILE} beside model.safetensors"):
        load_model(out)
