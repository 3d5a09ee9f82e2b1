"""BERT-style WordPiece tokenizer, trained and loaded with the ``tokenizers`` library.

A trained tokenizer directory holds ``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json`` and
``special_tokens_map.json``, so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it too and
gives the same ids. The special tokens come first, with ids 0..4: ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from bertlab.data.words import is_cjk_char
from bertlab.errors import BertlabError
from bertlab.io import atomic_directory, read_json

__all__ = [
    "SPECIAL_TOKENS",
    "TOKENIZER_FILES",
    "load_tokenizer",
    "special_token_ids",
    "train_wordpiece",
    "word_continuation_flags",
    "wordpiece_cache_key",
]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
_SPECIAL_NAMES = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
_CACHE_KEY_VERSION = "bertlab-wordpiece-1"


def _bert_pipeline(
    tok: Tokenizer, lowercase: bool, strip_accents: bool | None, handle_chinese_chars: bool
) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _set_post_processor(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_tokenizer_dir(
    tok: Tokenizer,
    directory: Path,
    lowercase: bool,
    strip_accents: bool,
    handle_chinese_chars: bool,
    model_max_length: int,
) -> None:
    tok.save(str(directory / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise RuntimeError("trained vocabulary ids are not contiguous")  # a bug, not user input
    with open(directory / "vocab.txt", "w", encoding="utf-8", newline="\n") as f:
        for token, _ in by_id:
            f.write(token + "\n")
    specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    _write_json(directory / "special_tokens_map.json", specials)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": lowercase,
            "strip_accents": strip_accents,
            "tokenize_chinese_chars": handle_chinese_chars,
            "do_basic_tokenize": True,
            "never_split": None,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )


def _canonical_order(tok: Tokenizer, lowercase: bool, strip: bool, handle_chinese_chars: bool) -> Tokenizer:
    """The same vocabulary with ids in a fixed order: special tokens, then whole-word pieces, then
    ``##`` pieces, each sorted. The trainer breaks ties between equally frequent tokens in hash
    order, which changes from one process to the next; WordPiece splits text by the *set* of
    tokens, so sorting changes no tokenization and makes the same corpus give the same ids."""
    vocab = tok.get_vocab(with_added_tokens=False)
    rest = sorted((t for t in vocab if t not in SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), t))
    ordered = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *rest])}
    out = Tokenizer(WordPiece(ordered, unk_token=UNK, continuing_subword_prefix="##"))
    out = _bert_pipeline(out, lowercase, strip, handle_chinese_chars)
    out.add_special_tokens(list(SPECIAL_TOKENS))
    return out


def train_wordpiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 30522,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    handle_chinese_chars: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    model_max_length: int = 512,
    length: int | None = None,
    show_progress: bool = False,
) -> Path:
    """Train a BERT WordPiece tokenizer on ``texts`` (streamed) and save it to ``out_dir``; return the dir.

    ``strip_accents=None`` follows ``lowercase``, as in BERT. ``length`` (the number of texts, when known;
    taken from ``len(texts)`` otherwise where possible) only feeds the progress bar. The directory is
    built next to ``out_dir`` and renamed into place, so a half-written tokenizer is never left behind;
    an existing tokenizer directory there is replaced.
    """
    out_dir = Path(out_dir)
    if vocab_size <= len(SPECIAL_TOKENS):
        raise BertlabError(f"tokenizer.vocab_size={vocab_size} must be larger than {len(SPECIAL_TOKENS)}")
    if min_frequency < 1:
        raise BertlabError(f"tokenizer.min_frequency={min_frequency} must be at least 1")
    if model_max_length < 2:
        raise BertlabError(f"tokenizer.model_max_length={model_max_length} must be at least 2")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BertlabError(f"tokenizer output path exists and is not a directory: {out_dir}")
        others = sorted(p.name for p in out_dir.iterdir() if p.name not in TOKENIZER_FILES)
        if others:
            raise BertlabError(
                f"tokenizer output directory {out_dir} holds other files ({', '.join(others[:5])}); "
                "choose an empty or new directory"
            )
    strip = lowercase if strip_accents is None else bool(strip_accents)
    if length is None and hasattr(texts, "__len__"):
        length = len(texts)  # type: ignore[arg-type]

    counter = {"texts": 0}

    def counted() -> Iterator[str]:
        for text in texts:
            if text and not text.isspace():
                counter["texts"] += 1
                yield text

    tok = _bert_pipeline(
        Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix="##")),
        lowercase,
        strip,
        handle_chinese_chars,
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator(counted(), trainer=trainer, length=length)
    if counter["texts"] == 0:
        raise BertlabError(f"no text to train the tokenizer on (output {out_dir})")
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise BertlabError(
            f"the corpus alphabet alone gives {size} tokens, more than tokenizer.vocab_size={vocab_size}; "
            "raise vocab_size or lower limit_alphabet"
        )
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special token ids are {ids}, expected 0..4")  # a bug, not user input
    tok = _canonical_order(tok, lowercase, strip, handle_chinese_chars)
    _set_post_processor(tok)

    with atomic_directory(out_dir) as tmp:
        _save_tokenizer_dir(tok, tmp, lowercase, strip, handle_chinese_chars, model_max_length)
    return out_dir


def _from_json_file(path: Path) -> Tokenizer:
    data = read_json(path)
    if not isinstance(data, dict) or "model" not in data:
        raise BertlabError(f"{path}: not a tokenizers tokenizer.json (no 'model' field)")
    try:
        return Tokenizer.from_str(json.dumps(data))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise BertlabError(f"{path}: cannot load tokenizer: {detail}") from exc


def _from_vocab_file(vocab_path: Path, config: dict[str, Any]) -> Tokenizer:
    vocab: dict[str, int] = {}
    try:
        with open(vocab_path, encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                token = line.rstrip("\r\n")
                if token in vocab:
                    raise BertlabError(
                        f"{vocab_path}:{lineno}: token {token!r} repeats line {vocab[token] + 1}"
                    )
                vocab[token] = lineno - 1
    except UnicodeDecodeError:
        raise BertlabError(f"{vocab_path}: not valid UTF-8") from None
    except OSError as exc:
        raise BertlabError(f"cannot read {vocab_path}: {exc.strerror or exc}") from exc
    if not vocab:
        raise BertlabError(f"{vocab_path}: vocabulary file is empty")
    lowercase = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    chinese = bool(config.get("tokenize_chinese_chars", True))
    tok = Tokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##"))
    tok = _bert_pipeline(tok, lowercase, None if strip is None else bool(strip), chinese)
    present = [t for t in SPECIAL_TOKENS if t in vocab]
    tok.add_special_tokens(present)
    if CLS in vocab and SEP in vocab:
        _set_post_processor(tok)
    return tok


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a BERT tokenizer from a directory (``tokenizer.json``, else ``vocab.txt``) or a ``.json`` file.

    For a directory with only ``vocab.txt``, lowercasing (and accent stripping, Chinese characters)
    follow ``tokenizer_config.json`` when present (``do_lower_case`` defaults to true). Padding and
    truncation stored in the file are turned off. Every problem raises :class:`BertlabError`.
    """
    path = Path(path)
    if not path.exists():
        raise BertlabError(f"tokenizer path not found: {path}")
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            where = path / "tokenizer.json"
            tok = _from_json_file(where)
        elif (path / "vocab.txt").is_file():
            where = path / "vocab.txt"
            config: dict[str, Any] = {}
            if (path / "tokenizer_config.json").is_file():
                loaded = read_json(path / "tokenizer_config.json")
                if not isinstance(loaded, dict):
                    raise BertlabError(f"{path / 'tokenizer_config.json'}: expected a JSON object")
                config = loaded
            tok = _from_vocab_file(where, config)
        else:
            raise BertlabError(f"tokenizer directory {path} has neither tokenizer.json nor vocab.txt")
    elif path.name.endswith(".txt"):
        where = path
        tok = _from_vocab_file(path, {})
    else:
        where = path
        tok = _from_json_file(path)
    for token in SPECIAL_TOKENS:
        if tok.token_to_id(token) is None:
            raise BertlabError(
                f"{where}: tokenizer has no {token} token; BERT needs {' '.join(SPECIAL_TOKENS)}"
            )
    tok.no_padding()
    tok.no_truncation()
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens: ``{"pad", "unk", "cls", "sep", "mask"}`` -> id."""
    out: dict[str, int] = {}
    for name, token in _SPECIAL_NAMES.items():
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise BertlabError(f"tokenizer has no {token} token")
        out[name] = token_id
    return out


def wordpiece_cache_key(corpus_paths: Sequence[str | os.PathLike[str]], settings: dict[str, Any]) -> str:
    """Short hex key of the tokenizer ``settings`` and each corpus file's absolute path, size and mtime.

    Cheap for huge corpora: file contents are not read. Also covers the ``tokenizers`` version.
    """
    h = hashlib.sha256()
    h.update(_CACHE_KEY_VERSION.encode())
    h.update(tokenizers.__version__.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for p in corpus_paths:
        path = Path(p).absolute()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BertlabError(f"corpus file not found: {p}") from None
        except OSError as exc:
            raise BertlabError(f"cannot read corpus file {p}: {exc.strerror or exc}") from exc
        h.update(json.dumps([str(path), st.st_size, st.st_mtime_ns]).encode("utf-8"))
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------- whole words

_jieba: Any = None


def _segmenter() -> Any:
    global _jieba
    if _jieba is None:
        import jieba  # imported on first use: loading its dictionary takes about a second

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return _jieba


def word_continuation_flags(
    text: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int]]
) -> list[int]:
    """For each token of ``text``, 1 when it continues the word of the token before it, else 0.

    Whole-word masking groups tokens by these flags. A ``##`` piece continues its word (English and
    any other language WordPiece splits). CJK characters are one token each, so their words come
    from a segmenter: two adjacent CJK tokens continue one word when jieba puts both characters in
    the same word of ``text`` (``offsets`` are the tokens' character offsets in ``text``, as the
    ``tokenizers`` encoding gives them). No reference file is needed: this runs while the corpus is
    tokenized.
    """
    flags = [0] * len(tokens)
    word_of: list[int] | None = None
    for i, token in enumerate(tokens):
        if token.startswith("##"):
            flags[i] = 1
            continue
        if i == 0:
            continue
        (s0, e0), (s1, e1) = offsets[i - 1], offsets[i]
        if not (e0 - s0 == 1 and e1 - s1 == 1 and is_cjk_char(text[s0]) and is_cjk_char(text[s1])):
            continue
        if word_of is None:
            word_of = [0] * len(text)
            for w, (_, start, end) in enumerate(_segmenter().tokenize(text)):
                word_of[start:end] = [w] * (end - start)
        flags[i] = int(word_of[s0] == word_of[s1])
    return flags
