"""The Chinese path: BERT-Chinese tokenization (Traditional, Simplified, mixed English), whole-word
masking from jieba words and ``##`` pieces, character-per-line NER in BIO and BMES, the recipes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import hydra
import jieba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertlab.constants import IGNORE_INDEX
from bertlab.data.conll import read_conll
from bertlab.data.masking import MaskingConfig, PretrainingCollator, word_groups
from bertlab.data.pretrain import PretrainDataModule
from bertlab.data.tokenizer import (
    load_tokenizer,
    special_token_ids,
    train_wordpiece,
    word_continuation_flags,
)
from bertlab.data.words import is_cjk_char, split_words
from bertlab.tagging import (
    bio_to_bmes,
    bmes_to_bio,
    check_tag,
    entity_spans_with_offsets,
    spans_from_tags,
    tags_from_spans,
)

from .conftest import SHARED_DATA

SIMPLIFIED = [
    "我们在北京大学学习自然语言处理。",
    "今天天气很好，我们去公园散步吧！",
    "中华人民共和国成立于一九四九年。",
    "研究生命的起源是一个重要的科学问题。",
    "他喜欢用Python编程，也喜欢机器学习。",
    "苹果公司发布了新的iPhone手机。",
    "这家酒店的服务非常好，房间也很干净。",
    "上海是中国最大的经济中心之一。",
]
TRADITIONAL = [
    "臺灣的資訊工程學系很有名。",
    "數學是研究數量、結構以及空間等概念的學科。",
    "我們在圖書館裡讀書，準備考試。",
    "香港的經濟發展非常迅速。",
]
ENGLISH = [
    "Unbelievably, the transformers library tokenizes everything.",
    "Machine learning models need training data.",
]
CORPUS = SIMPLIFIED + TRADITIONAL + ENGLISH


@pytest.fixture(scope="module")
def zh_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # English words repeat with variations, so WordPiece learns both whole words and ## pieces.
    english = [f"{w} {w}s {w}ing" for w in ("token", "train", "learn", "model", "believe")]
    return train_wordpiece(CORPUS * 3 + english * 3, tmp_path_factory.mktemp("zhtok") / "wp", vocab_size=600)


# ----------------------------------------------------------------------------- tokenizer


def test_every_cjk_character_is_one_token_traditional_and_simplified(zh_tokenizer: Path) -> None:
    tok = load_tokenizer(zh_tokenizer)
    for text in SIMPLIFIED + TRADITIONAL:
        enc = tok.encode(text, add_special_tokens=False)
        cjk = [c for c in text if is_cjk_char(c)]
        # one token per ideograph, none unknown (all were in the training text), nothing converted
        assert [t for t in enc.tokens if len(t) == 1 and is_cjk_char(t)] == cjk
        assert "[UNK]" not in enc.tokens
        for token, (s, e) in zip(enc.tokens, enc.offsets):
            if is_cjk_char(token[0]):
                assert (e - s, text[s]) == (1, token)
    # Traditional and Simplified forms stay distinct tokens (no conversion)
    for traditional, simplified in [("們", "们"), ("經", "经"), ("濟", "济")]:
        a, b = tok.token_to_id(traditional), tok.token_to_id(simplified)
        assert a is not None and b is not None and a != b


def test_mixed_chinese_english_tokenization(zh_tokenizer: Path) -> None:
    tok = load_tokenizer(zh_tokenizer)
    text = "他喜欢用Python编程，Retrainings models在臺灣。"
    enc = tok.encode(text, add_special_tokens=False)
    words = []  # rebuild words from ## pieces: English is lowercased WordPiece, CJK one per char
    for t in enc.tokens:
        if t.startswith("##"):
            words[-1] += t[2:]
        else:
            words.append(t)
    expected = "他 喜 欢 用 python 编 程 ， retrainings models 在 臺 灣 。".split()
    assert words == expected
    assert any(t.startswith("##") for t in enc.tokens)  # an unseen word comes in pieces
    # offsets point back into the original (cased, full-width punctuation) text
    for token, (s, e) in zip(enc.tokens, enc.offsets):
        assert text[s:e].lower() == token.removeprefix("##")


def test_transformers_loads_the_chinese_tokenizer_with_same_ids(zh_tokenizer: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(zh_tokenizer))
    tok = load_tokenizer(zh_tokenizer)
    for text in ["臺灣的數學與北京的数学", "他喜欢用Python编程"]:
        assert hf(text)["input_ids"] == tok.encode(text).ids


# ----------------------------------------------------------------------- whole words


def _flags(tok, text: str) -> tuple[list[str], list[tuple[int, int]], list[int]]:
    enc = tok.encode(text, add_special_tokens=False)
    return enc.tokens, enc.offsets, word_continuation_flags(text, enc.tokens, enc.offsets)


def test_chinese_words_come_from_jieba(zh_tokenizer: Path) -> None:
    tok = load_tokenizer(zh_tokenizer)
    for text in SIMPLIFIED + TRADITIONAL:
        tokens, offsets, flags = _flags(tok, text)
        grouped = []
        for (s, e), f in zip(offsets, flags):
            grouped.append(grouped.pop() + text[s:e] if f else text[s:e])
        # Every CJK run groups exactly as jieba segments the sentence; punctuation stands alone.
        expected = [w for w in jieba.lcut(text) if not all(c.isascii() for c in w)]
        assert [g for g in grouped if not all(c.isascii() for c in g)] == expected
        assert flags[0] == 0


def test_english_pieces_join_their_word_and_never_cross_scripts(zh_tokenizer: Path) -> None:
    tok = load_tokenizer(zh_tokenizer)
    text = "Retrainings models在臺灣学习"
    tokens, offsets, flags = _flags(tok, text)
    grouped = []
    for (s, e), f in zip(offsets, flags):
        grouped.append(grouped.pop() + text[s:e] if f else text[s:e])
    assert grouped[:3] == ["Retrainings", "models", "在"]
    assert any(t.startswith("##") for t in tokens)
    assert all(f == int(t.startswith("##")) for t, f in zip(tokens, flags) if not is_cjk_char(t[0]))


def _masking_setup(tok):
    return MaskingConfig.from_tokenizer(tok, max_predictions_per_seq=20), special_token_ids(tok)


def test_whole_word_masking_keeps_words_and_rates(zh_tokenizer: Path) -> None:
    tok = load_tokenizer(zh_tokenizer)
    cfg, ids = _masking_setup(tok)
    collator = PretrainingCollator(cfg, seed=3, whole_word_masking=True)
    special = set(cfg.special_token_ids)
    rng = random.Random(0)
    sentences = [_flags(tok, t) for t in CORPUS]
    enc_ids = [tok.encode(t, add_special_tokens=False).ids for t in CORPUS]
    chosen = candidates = budget = to_mask = to_random = kept = 0
    for index in range(1500):
        picks = rng.sample(range(len(CORPUS)), 4)
        input_ids, cont, words = [ids["cls"]], [0], []
        for k in picks:
            _, _, flags = sentences[k]
            for t, f in zip(enc_ids[k], flags):
                if not f:
                    words.append([])
                words[-1].append(len(input_ids))
                input_ids.append(t)
                cont.append(f)
        input_ids.append(ids["sep"])
        cont.append(0)
        feature = {"input_ids": input_ids, "a_len": len(input_ids), "nsp_label": 0, "index": index}
        batch = collator([{**feature, "word_cont": cont}])
        labels = batch["mlm_labels"][0].numpy()
        masked = batch["input_ids"][0].numpy()
        sel = labels != IGNORE_INDEX
        for w in words:
            assert sel[w].all() or not sel[w].any(), "a word was split"
        assert not any(input_ids[i] in special for i in np.flatnonzero(sel))
        n_cand = len(input_ids) - 2
        n_budget = min(20, max(1, round(0.15 * n_cand)))  # BERT's per-sequence budget
        assert 1 <= sel.sum() <= n_budget
        chosen += sel.sum()
        candidates += n_cand
        budget += n_budget
        orig = np.asarray(input_ids)
        to_mask += (masked[sel] == ids["mask"]).sum()
        kept += (masked[sel] == orig[sel]).sum()
        to_random += ((masked[sel] != ids["mask"]) & (masked[sel] != orig[sel])).sum()
    # 15% of the tokens; skipping a word that would overshoot the budget loses a little of it.
    assert abs(chosen / candidates - 0.15) < 0.005 and chosen / budget > 0.97
    assert abs(to_mask / chosen - 0.8) < 0.02
    # a random replacement may draw the original token (1/vocab), so "kept" gains a hair
    assert abs(to_random / chosen - 0.1) < 0.015 and abs(kept / chosen - 0.1) < 0.015


def test_word_groups_never_cross_special_tokens() -> None:
    # [CLS] a ##b [SEP] ##c d [SEP]: a continuation right after [SEP] does not join the word before
    groups = word_groups([0, 0, 1, 0, 1, 0, 0])
    assert groups[1] == groups[2] and groups[4] != groups[2] and groups[4] == groups[3]


# ---------------------------------------------------------------------- data building


def _write_zh_corpus(path: Path) -> Path:
    rng = random.Random(1)
    docs = []
    for _ in range(24):
        docs.append("".join(rng.choice(CORPUS) for _ in range(rng.randint(3, 6))))
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_pretraining_data_stores_word_flags_and_keys_cache(tmp_path: Path, zh_tokenizer: Path) -> None:
    corpus = _write_zh_corpus(tmp_path / "zh.txt")

    def module(wwm: bool) -> PretrainDataModule:
        return PretrainDataModule(
            source="text_files",
            files=[str(corpus)],
            doc_per_line=True,
            tokenizer={"path": str(zh_tokenizer)},
            max_seq_length=48,
            whole_word_masking=wwm,
            val_fraction=0.1,
            batch_size=4,
            cache_dir=str(tmp_path / "cache"),
        )

    on, off = module(True), module(False)
    assert on.data_dir() != off.data_dir()  # the switch is part of the cache key
    on.setup()
    off.setup()
    assert on.train_set is not None and off.train_set is not None
    table_on, table_off = on.train_set.table, off.train_set.table
    assert "word_cont" in table_on.column_names and "word_cont" not in table_off.column_names
    # the same NSP instances either way: only the masking differs
    assert table_on["input_ids"] == table_off["input_ids"]
    tok = load_tokenizer(zh_tokenizer)
    special = set(special_token_ids(tok).values())
    text_of = {tok.token_to_id(t): t for t in tok.get_vocab()}
    for ids, cont in zip(table_on["input_ids"], table_on["word_cont"]):
        assert len(ids) == len(cont)
        assert all(c == 0 for t, c in zip(ids, cont) if t in special)
        # a ## piece always continues; a flagged CJK character follows another CJK character
        for i, (t, c) in enumerate(zip(ids, cont)):
            token = text_of[t]
            if token.startswith("##"):
                assert c == 1
            elif c:
                prev = text_of[ids[i - 1]]
                assert len(token) == len(prev) == 1 and is_cjk_char(token) and is_cjk_char(prev)
    assert sum(map(sum, table_on["word_cont"])) > 0
    batch = next(iter(on.train_dataloader()))
    assert (batch["mlm_labels"] != IGNORE_INDEX).any()


# ------------------------------------------------------------------------------- NER


def _char_file(path: Path, sentences: list[tuple[str, list[str]]]) -> Path:
    path.write_text(
        "\n\n".join("\n".join(f"{c}\t{t}" for c, t in zip(text, tags)) for text, tags in sentences) + "\n",
        encoding="utf-8",
    )
    return path


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["PER.NAM", "GPE.NAM", "ORG.NOM"]), st.integers(1, 5), st.integers(0, 3)),
        max_size=6,
    )
)
def test_bmes_bio_round_trip_on_chinese_entities(layout) -> None:
    spans, pos = [], 0
    for type_, length, gap in layout:
        pos += gap
        spans.append((type_, pos, pos + length - 1))
        pos += length
    n = pos + 1
    bio = tags_from_spans(spans, n, "IOB2")
    bmes = bio_to_bmes(bio)
    assert all(check_tag(t, "BMES") for t in bmes)
    assert bmes_to_bio(bmes) == bio
    assert spans_from_tags(bmes, "BMES") == spans_from_tags(bio, "IOB2") == spans
    # a one-character entity is S-, longer ones B- M...M E-
    for type_, s, e in spans:
        expect = [f"S-{type_}"] if s == e else [f"B-{type_}", *[f"M-{type_}"] * (e - s - 1), f"E-{type_}"]
        assert bmes[s : e + 1] == expect


def test_char_per_line_ner_spans_map_to_original_text(tmp_path: Path) -> None:
    text = "我在北京大學读书，喜欢Apple公司和周杰伦。"
    entities = [("GPE.NAM", "北京"), ("ORG.NAM", "北京大學"), ("ORG.NAM", "Apple公司"), ("PER.NAM", "周杰伦")]
    # character-per-line: "Apple" is five lines, as in Weibo NER
    chars = list(text)
    spans = []
    for type_, surface in entities[1:]:
        s = text.index(surface)
        spans.append((type_, s, s + len(surface) - 1))
    bio = tags_from_spans(spans, len(chars), "IOB2")
    bio_file = _char_file(tmp_path / "bio.txt", [(text, bio)])
    bmes_file = _char_file(tmp_path / "bmes.txt", [(text, bio_to_bmes(bio))])
    got = {}
    for scheme, path in (("IOB2", bio_file), ("BMES", bmes_file)):
        (sent,) = read_conll(path, delimiter="\t")
        assert "".join(sent.words) == text
        offsets = [(i, i + 1) for i in range(len(sent.words))]
        ents = entity_spans_with_offsets(sent.words, offsets, sent.tags, scheme, text=text)
        got[scheme] = [(e["type"], e["text"], e["start"], e["end"]) for e in ents]
    expected = [(t, s, text.index(s), text.index(s) + len(s)) for t, s in entities[1:]]
    assert got["IOB2"] == got["BMES"] == expected
    # predict splits raw text the same way: one word per CJK character, Latin runs whole
    words, offsets = split_words(text, "whitespace")
    assert words[words.index("Apple") - 1 : words.index("Apple") + 2] == ["欢", "Apple", "公"]
    assert [text[s:e] for s, e in offsets] == words


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("experiment", ["weibo_ner", "chnsenticorp"])
def test_chinese_recipes_read_their_files(compose_cfg, experiment: str) -> None:
    """The recipe's data settings (delimiter, scheme, columns) fit the files it names."""
    cfg = compose_cfg([f"experiment={experiment}", f"paths.data_dir={SHARED_DATA}"], shrink=False)
    if not Path(cfg.data.train_file).exists():
        pytest.skip(f"{cfg.data.train_file} not present")
    data = hydra.utils.instantiate(cfg.data, tokenizer_dir="unused", _convert_="all")
    if experiment == "weibo_ner":
        assert data.labels[0] == "O" and {"B-PER.NAM", "I-GPE.NOM"} <= set(data.labels)
        assert len(data.sentences("train")) == 1350 and len(data.sentences("test")) == 270
    else:
        assert data.prepare_labels() == ["0", "1"]


ZHWIKI = SHARED_DATA / "zhwiki_sample" / "zhwiki_wiki_00.txt"


@pytest.mark.skipif(not ZHWIKI.exists(), reason="shared zhwiki sample not present")
def test_zhwiki_tokenizer_covers_traditional_and_simplified(tmp_path: Path) -> None:
    lines = [ln for ln in ZHWIKI.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = train_wordpiece(lines, tmp_path / "wp", vocab_size=8000, limit_alphabet=6000)
    tok = load_tokenizer(out)
    enc = [tok.encode(ln, add_special_tokens=False) for ln in lines[:300]]
    tokens = [t for e in enc for t in e.tokens]
    assert sum(t == "[UNK]" for t in tokens) / len(tokens) < 0.001
    for a, b in [("數", "数"), ("學", "学"), ("與", "与")]:  # both scripts are in the vocabulary
        assert tok.token_to_id(a) is not None and tok.token_to_id(b) is not None
    info = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert info["tokenize_chinese_chars"] is True
