"""Tag schemes, entity extraction and entity-level scores for sequence labelling (NER).

Pure python (no torch, no numpy), shared by the data and task modules.

Two ways to read entities out of a tag sequence:

* **seqeval-exact** (:func:`get_entities`, :func:`get_entities_strict`, :class:`EntityCounts`): the
  entities that ``seqeval`` 1.2.2 finds, in its default mode (conlleval-compatible, scheme-agnostic:
  ``B- I- E- S-`` prefixes and ``O``) and in its strict mode (``mode="strict", scheme=IOB1 | IOB2 |
  IOE1 | IOE2 | IOBES | BILOU``). The algorithms are ports of ``seqeval.metrics.sequence_labeling``
  and ``seqeval.scheme``, quirks included, so that scores equal seqeval's exactly. Scores are
  computed from per-type counts only, so evaluation streams sentence by sentence.
* **lenient decoding** (:func:`spans_from_tags`), used by the conversions and for prediction output:
  an orphan ``I-X`` (after ``O``, after an entity of another type, or after an entity that was
  closed by ``E-``/``S-``) starts a new entity, i.e. reads as ``B-X``; likewise an orphan ``M-X`` or
  ``E-X`` in BMES/IOBES/IOE.

Schemes: ``IOB1``, ``IOB2`` (alias ``BIO``), ``IOE1``, ``IOE2`` (alias ``IOE``), ``IOBES`` (alias
``BIOES``), ``BILOU`` and ``BMES`` (Chinese word-segmentation style: ``B M E S O``). seqeval has no
BMES: BMES tags are mapped to IOBES (``M-`` -> ``I-``) and scored as IOBES; for the default mode,
BILOU tags are likewise mapped to IOBES (``U-`` -> ``S-``, ``L-`` -> ``E-``), since seqeval's default
mode does not know ``U``/``L``. Types may contain ``-`` or ``.`` (``B-PER.NAM``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMES",
    "EntityCounts",
    "allowed_transitions",
    "bio_to_bioes",
    "bio_to_bmes",
    "bioes_to_bio",
    "bmes_to_bio",
    "canonical_scheme",
    "check_tag",
    "convert_tags",
    "entity_spans_with_offsets",
    "get_entities",
    "get_entities_strict",
    "spans_from_tags",
    "tags_from_spans",
    "word_char_offsets",
]

_ALIASES = {
    "IOB1": "IOB1",
    "IOB2": "IOB2",
    "BIO": "IOB2",
    "IOE1": "IOE1",
    "IOE2": "IOE2",
    "IOE": "IOE2",
    "IOBES": "IOBES",
    "BIOES": "IOBES",
    "BILOU": "BILOU",
    "BMES": "BMES",
}
SCHEMES: tuple[str, ...] = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU", "BMES")
# Prefixes each scheme allows (besides the bare "O").
_PREFIXES = {
    "IOB1": frozenset("IB"),
    "IOB2": frozenset("IB"),
    "IOE1": frozenset("IE"),
    "IOE2": frozenset("IE"),
    "IOBES": frozenset("IBES"),
    "BILOU": frozenset("BILU"),
    "BMES": frozenset("BMES"),
}
_TO_IOBES = {"BMES": {"M": "I"}, "BILOU": {"U": "S", "L": "E"}}

Span = tuple[str, int, int]  # (type, start, end) with end INCLUSIVE, as seqeval


def canonical_scheme(scheme: str) -> str:
    """``"bio"`` -> ``"IOB2"`` etc.; ValueError for an unknown scheme."""
    name = _ALIASES.get(str(scheme).upper())
    if name is None:
        raise ValueError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(_ALIASES)}")
    return name


def _split(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``. The type keeps any inner ``-``."""
    if tag == "O":
        return "O", ""
    prefix, sep, type_ = tag.partition("-")
    if not sep or len(prefix) != 1 or not type_:
        return tag, ""
    return prefix, type_


def check_tag(tag: str, scheme: str) -> bool:
    """Whether ``tag`` is ``O`` or ``P-TYPE`` with a prefix ``P`` that ``scheme`` allows."""
    if tag == "O":
        return True
    prefix, type_ = _split(tag)
    return bool(type_) and prefix in _PREFIXES[canonical_scheme(scheme)]


def _to_iobes(tags: Sequence[str], scheme: str) -> list[str]:
    mapping = _TO_IOBES.get(scheme)
    if not mapping:
        return list(tags)
    out = []
    for tag in tags:
        if tag[:1] in mapping and tag[1:2] == "-":
            tag = mapping[tag[0]] + tag[1:]
        out.append(tag)
    return out


# ------------------------------------------------------------------ seqeval default mode


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # seqeval.metrics.sequence_labeling.end_of_chunk
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_tag != "." and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    # seqeval.metrics.sequence_labeling.start_of_chunk
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and tag != "." and prev_type != type_


def _default_parts(chunk: str, suffix: bool) -> tuple[str, str]:
    if suffix:
        return chunk[-1], chunk[:-1].rsplit("-", maxsplit=1)[0] or "_"
    return chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"


@dataclass
class _DefaultState:
    """seqeval's get_entities loop state, carried from one sentence to the next (seqeval flattens
    the sentences with an ``O`` after each, so a state can in odd cases run across sentences)."""

    prev_tag: str = "O"
    prev_type: str = ""
    begin: int = 0
    position: int = 0

    def feed(self, chunks: Iterable[str], suffix: bool, out: list[Span]) -> None:
        for chunk in chunks:
            tag, type_ = _default_parts(chunk, suffix)
            if _end_of_chunk(self.prev_tag, tag, self.prev_type, type_):
                out.append((self.prev_type, self.begin, self.position - 1))
            if _start_of_chunk(self.prev_tag, tag, self.prev_type, type_):
                self.begin = self.position
            self.prev_tag, self.prev_type = tag, type_
            self.position += 1


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]], suffix: bool = False) -> list[Span]:
    """seqeval's default-mode ``get_entities``: ``[(type, start, end_inclusive), ...]``.

    A list of sentences is flattened with an ``O`` after each sentence (offsets are then global),
    exactly as seqeval does. Tags are read by their first character (``B I E S O``, anything else
    only splits on type changes); ``suffix=True`` reads ``PER-B`` style tags.
    """
    seq: list[str]
    if any(isinstance(s, list | tuple) for s in tags):
        seq = [t for sentence in tags for t in [*sentence, "O"]]
    else:
        seq = list(tags)  # type: ignore[arg-type]
    out: list[Span] = []
    _DefaultState().feed([*seq, "O"], suffix, out)
    return out


# ------------------------------------------------------------------- seqeval strict mode

_ANY = "IOBESUL"
# (previous prefixes, current prefixes, type condition) as in seqeval.scheme; cond: same/diff/any.
_Pattern = tuple[str, str, str]
# seqeval.scheme's patterns, one word each: "P>C" (previous prefix, current prefix; * for any prefix),
# then "=" when the two types must be the same, "!" when they must differ, nothing for any types.
# Per scheme: (allowed prefixes, start patterns, inside patterns, end patterns).
_STRICT_TABLE: dict[str, tuple[str, str, str, str]] = {
    "IOB1": ("IOB", "O>I I>I! B>I I>B= B>B=", "B>I= I>I=", "I>I! I>O I>B B>O B>I! B>B="),
    "IOE1": ("IOE", "O>I I>I! E>I E>E=", "I>I= I>E=", "I>I! I>O I>E! E>I= E>E="),
    "IOB2": ("IOB", "*>B", "B>I= I>I=", "I>O I>I! I>B B>O B>I! B>B"),
    "IOE2": ("IOE", "O>I O>E E>I E>E I>I! I>E!", "I>E= I>I=", "E>*"),
    "IOBES": ("IOBES", "*>B *>S", "B>I= B>E= I>I= I>E=", "S>* E>*"),
    "BILOU": ("BILOU", "*>B *>U", "B>I= B>L= I>I= I>L=", "U>* L>*"),
}


def _patterns(words: str) -> list[_Pattern]:
    conditions = {"=": "same", "!": "diff", "": "any"}
    return [
        (_ANY if w[0] == "*" else w[0], _ANY if w[2] == "*" else w[2], conditions[w[3:]])
        for w in words.split()
    ]


_STRICT: dict[str, dict[str, Any]] = {
    name: {"allowed": allowed, "start": _patterns(s), "inside": _patterns(i), "end": _patterns(e)}
    for name, (allowed, s, i, e) in _STRICT_TABLE.items()
}


def _strict_token(token: str, suffix: bool) -> tuple[str, str]:
    # seqeval.scheme.Token.__init__ (KeyError/IndexError there; ValueError here)
    if not token:
        raise ValueError("Invalid token is found: empty tag")
    prefix = token[-1] if suffix else token[0]
    if prefix not in _ANY:
        raise ValueError(f"Invalid token is found: {token}. Unknown prefix {prefix!r}.")
    rest = token[:-1] if suffix else token[1:]
    return prefix, rest.strip("-") or "_"


def _matches(patterns: list[_Pattern], prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    for prev_prefixes, cur_prefixes, cond in patterns:
        if prev[0] in prev_prefixes and cur[0] in cur_prefixes:
            if cond == "any" or (cond == "same") == (prev[1] == cur[1]):
                return True
    return False


def get_entities_strict(tags: Sequence[str], scheme: str, suffix: bool = False) -> list[Span]:
    """The entities of ONE sentence as seqeval's strict mode finds them (``seqeval.scheme.Tokens``),
    as ``(type, start, end_inclusive)``. Raises ValueError where seqeval raises (a prefix the scheme
    does not allow, met where seqeval checks it). BMES tags are read as IOBES."""
    name = canonical_scheme(scheme)
    if name == "BMES":
        name, tags = "IOBES", _to_iobes(tags, "BMES")
    spec = _STRICT[name]
    outside = ("O", "_")
    tokens = [_strict_token(t, suffix) for t in tags]
    ext = [*tokens, outside]
    n = len(tokens)
    entities: list[Span] = []
    i = 0
    prev = outside
    while i < len(ext):
        token = ext[i]
        if token[0] not in spec["allowed"]:
            raise ValueError(
                f"Invalid token is found: {tags[i]}. Allowed prefixes are: {'|'.join(spec['allowed'])}."
            )
        if _matches(spec["start"], prev, token):
            # Tokens._forward
            end = n - 1
            p = token
            for j in range(i + 1, len(ext)):
                if _matches(spec["inside"], p, ext[j]):
                    p = ext[j]
                else:
                    end = j
                    break
            # Tokens._is_end
            if _matches(spec["end"], ext[end - 1], ext[end]):
                entities.append((token[1], i, end - 1))
            i = end
        else:
            i += 1
        prev = ext[i - 1]
    return entities


# ---------------------------------------------------------------------- streaming scores


def _divide(num: int, den: int) -> float:
    return num / den if den else 0.0  # seqeval: zero division -> 0.0 (with a warning)


def _f1(p: float, r: float) -> float:
    denom = 1 * p + r  # seqeval: beta2 * precision + recall, 0 -> 1
    return 2 * p * r / (denom if denom != 0.0 else 1)


def _scores(tp: int, pred: int, gold: int) -> dict[str, Any]:
    """Precision, recall and F1 of ``tp`` true positives among ``pred`` predicted and ``gold`` gold
    entities, with the counts."""
    p, r = _divide(tp, pred), _divide(tp, gold)
    return {
        "precision": p,
        "recall": r,
        "f1": _f1(p, r),
        "true_positives": tp,
        "predicted": pred,
        "support": gold,
    }


@dataclass
class EntityCounts:
    """Entity-level precision / recall / F1, accumulated one sentence at a time.

    Keeps per-type counts of true positives, predicted and gold entities (and, in the default mode,
    seqeval's few-field loop state) -- never the sequences. ``compute()`` equals seqeval's
    ``precision_score`` / ``recall_score`` / ``f1_score`` (micro) and ``classification_report``
    (per type, macro and weighted averages) on all the sentences given to :meth:`update`:

    * ``mode="default"``: seqeval's default (conlleval-like) mode; ``scheme`` only matters for BMES
      and BILOU, which are mapped to IOBES first.
    * ``mode="strict"``: ``seqeval ... mode="strict", scheme=<scheme>`` (BMES scored as IOBES).
    """

    scheme: str = "IOB2"
    mode: str = "default"
    suffix: bool = False
    true_positives: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)
    gold: dict[str, int] = field(default_factory=dict)
    sentences: int = 0
    _gold_state: _DefaultState = field(default_factory=_DefaultState, repr=False)
    _pred_state: _DefaultState = field(default_factory=_DefaultState, repr=False)

    def __post_init__(self) -> None:
        self.scheme = canonical_scheme(self.scheme)
        if self.mode not in ("default", "strict"):
            raise ValueError(f"mode must be 'default' or 'strict', got {self.mode!r}")

    def reset(self) -> None:
        self.true_positives, self.predicted, self.gold = {}, {}, {}
        self.sentences = 0
        self._gold_state, self._pred_state = _DefaultState(), _DefaultState()

    def _count(self, gold: Iterable[Span], pred: Iterable[Span]) -> None:
        gold_set, pred_set = set(gold), set(pred)
        for type_, _, _ in gold_set:
            self.gold[type_] = self.gold.get(type_, 0) + 1
        for type_, _, _ in pred_set:
            self.predicted[type_] = self.predicted.get(type_, 0) + 1
        for type_, _, _ in gold_set & pred_set:
            self.true_positives[type_] = self.true_positives.get(type_, 0) + 1

    def update(self, gold_tags: Sequence[str], pred_tags: Sequence[str]) -> None:
        """Add one sentence: its gold and predicted tags (same length)."""
        if len(gold_tags) != len(pred_tags):
            raise ValueError(
                f"gold and predicted tags differ in length ({len(gold_tags)} != {len(pred_tags)})"
            )
        if self.mode == "strict":
            # Sentences are scored apart (seqeval keys strict entities by sentence id).
            self._count(
                get_entities_strict(gold_tags, self.scheme, self.suffix),
                get_entities_strict(pred_tags, self.scheme, self.suffix),
            )
        else:
            if not self.suffix:
                gold_tags = _to_iobes(gold_tags, self.scheme)
                pred_tags = _to_iobes(pred_tags, self.scheme)
            # One entity ends on the same step in both streams, so matching per sentence is exact.
            gold_spans: list[Span] = []
            pred_spans: list[Span] = []
            self._gold_state.feed([*gold_tags, "O"], self.suffix, gold_spans)
            self._pred_state.feed([*pred_tags, "O"], self.suffix, pred_spans)
            self._count(gold_spans, pred_spans)
        self.sentences += 1

    def merge(self, other: EntityCounts) -> None:
        """Add another accumulator's counts (e.g. another process's). Exact in strict mode; in the
        default mode exact unless a sentence ends inside an entity of an ill-formed tag."""
        for mine, theirs in (
            (self.true_positives, other.true_positives),
            (self.predicted, other.predicted),
            (self.gold, other.gold),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.sentences += other.sentences

    def compute(self) -> dict[str, Any]:
        """``{"precision", "recall", "f1", "true_positives", "predicted", "support", "sentences",
        "per_type": {type: {"precision", "recall", "f1", "true_positives", "predicted", "support"}},
        "macro": {...}, "weighted": {...}}`` -- overall figures are micro averages, like seqeval's
        ``*_score`` defaults; ``support`` counts gold entities."""
        types = sorted(set(self.gold) | set(self.predicted))
        per_type: dict[str, dict[str, Any]] = {}
        for t in types:
            per_type[t] = _scores(
                self.true_positives.get(t, 0), self.predicted.get(t, 0), self.gold.get(t, 0)
            )
        gold = sum(self.gold.values())
        out: dict[str, Any] = {
            **_scores(sum(self.true_positives.values()), sum(self.predicted.values()), gold),
            "sentences": self.sentences,
            "per_type": per_type,
        }
        rows = list(per_type.values())
        n = len(rows)
        out["macro"] = {
            key: (sum(row[key] for row in rows) / n if n else float("nan"))
            for key in ("precision", "recall", "f1")
        } | {"support": gold}
        if gold == 0:
            # seqeval: no gold entity -> weighted figures are the zero-division value (0.0).
            out["weighted"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        else:
            out["weighted"] = {
                key: sum(row[key] * row["support"] for row in rows) / gold
                for key in ("precision", "recall", "f1")
            } | {"support": gold}
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        """The figures shaped as ``seqeval.metrics.classification_report(..., output_dict=True)``."""
        c = self.compute()
        rep: dict[str, dict[str, Any]] = {}
        for t, row in c["per_type"].items():
            rep[t] = {
                "precision": row["precision"],
                "recall": row["recall"],
                "f1-score": row["f1"],
                "support": row["support"],
            }
        rep["micro avg"] = {
            "precision": c["precision"],
            "recall": c["recall"],
            "f1-score": c["f1"],
            "support": c["support"],
        }
        for name in ("macro", "weighted"):
            row = c[name]
            rep[f"{name} avg"] = {
                "precision": row["precision"],
                "recall": row["recall"],
                "f1-score": row["f1"],
                "support": row["support"],
            }
        return rep


# ------------------------------------------------------------ lenient decoding, conversion


def spans_from_tags(tags: Sequence[str], scheme: str = "IOB2") -> list[Span]:
    """Entities ``(type, start, end_inclusive)`` of one sentence, decoded leniently for ``scheme``.

    ``B-`` (``U-``/``S-`` single) starts an entity; ``I-``/``M-`` continue an open entity of the same
    type and otherwise start one (an orphan ``I-X`` reads as ``B-X``); ``E-``/``L-`` close an open
    entity of the same type, or make a one-token entity. In IOB1, ``B-X`` starts a new entity
    (it only appears right after an ``X`` entity). A tag that is not ``O`` and has no ``P-TYPE``
    form reads as ``O``.
    """
    canonical_scheme(scheme)
    spans: list[Span] = []
    open_type: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, type_ = _split(tag)
        if not type_:
            prefix = "O"
        continues = open_type is not None and open_type == type_
        if prefix in ("I", "M"):
            if not continues:
                if open_type is not None:
                    spans.append((open_type, start, i - 1))
                open_type, start = type_, i
        elif prefix in ("E", "L"):
            if not continues:
                if open_type is not None:
                    spans.append((open_type, start, i - 1))
                start = i
            spans.append((type_, start, i))
            open_type = None
        else:  # B, S, U, O and anything unknown
            if open_type is not None:
                spans.append((open_type, start, i - 1))
                open_type = None
            if prefix in ("S", "U"):
                spans.append((type_, i, i))
            elif prefix == "B":
                open_type, start = type_, i
    if open_type is not None:
        spans.append((open_type, start, len(tags) - 1))
    return spans


def tags_from_spans(spans: Iterable[Span], length: int, scheme: str = "IOB2") -> list[str]:
    """Tags of a sentence of ``length`` tokens holding the non-overlapping ``spans``, in ``scheme``."""
    name = canonical_scheme(scheme)
    tags = ["O"] * length
    ordered = sorted(spans, key=lambda s: s[1])
    for k, (type_, s, e) in enumerate(ordered):
        if not 0 <= s <= e < length:
            raise ValueError(f"span {(type_, s, e)} out of range for length {length}")
        if any(t != "O" for t in tags[s : e + 1]):
            raise ValueError(f"span {(type_, s, e)} overlaps another")
        single = s == e
        if name in ("IOB2", "IOB1"):
            tags[s : e + 1] = [f"B-{type_}"] + [f"I-{type_}"] * (e - s)
            if name == "IOB1":
                prev = ordered[k - 1] if k else None
                adjacent = prev is not None and prev[2] == s - 1 and prev[0] == type_
                if not adjacent:
                    tags[s] = f"I-{type_}"
        elif name in ("IOE2", "IOE1"):
            tags[s : e + 1] = [f"I-{type_}"] * (e - s) + [f"E-{type_}"]
            if name == "IOE1":
                nxt = ordered[k + 1] if k + 1 < len(ordered) else None
                adjacent = nxt is not None and nxt[1] == e + 1 and nxt[0] == type_
                if not adjacent:
                    tags[e] = f"I-{type_}"
        else:
            b, i, e_, s_ = {"IOBES": "BIES", "BMES": "BMES", "BILOU": "BILU"}[name]
            if single:
                tags[s] = f"{s_}-{type_}"
            else:
                tags[s : e + 1] = [f"{b}-{type_}"] + [f"{i}-{type_}"] * (e - s - 1) + [f"{e_}-{type_}"]
    return tags


def convert_tags(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Re-tag a sentence from one scheme to another through its (leniently decoded) entities.

    Round-trips on valid sequences; an ill-formed source (an orphan ``I-X``) is repaired, as
    :func:`spans_from_tags` decodes it.
    """
    return tags_from_spans(spans_from_tags(tags, source), len(tags), target)


def bmes_to_bio(tags: Sequence[str]) -> list[str]:
    return convert_tags(tags, "BMES", "IOB2")


def bio_to_bmes(tags: Sequence[str]) -> list[str]:
    return convert_tags(tags, "IOB2", "BMES")


def bioes_to_bio(tags: Sequence[str]) -> list[str]:
    return convert_tags(tags, "IOBES", "IOB2")


def bio_to_bioes(tags: Sequence[str]) -> list[str]:
    return convert_tags(tags, "IOB2", "IOBES")


# ------------------------------------------------------------------------ character offsets


def word_char_offsets(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of ``words`` found in order in ``text`` (each searched
    from the end of the previous one); ValueError when a word is not found."""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for w in words:
        at = text.find(w, pos)
        if at < 0:
            raise ValueError(f"word {w!r} not found in the text after offset {pos}")
        offsets.append((at, at + len(w)))
        pos = at + len(w)
    return offsets


def entity_spans_with_offsets(
    words: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    tags: Sequence[str],
    scheme: str = "IOB2",
    text: str | None = None,
) -> list[dict[str, Any]]:
    """Entities of a tagged sentence with their place in the original text.

    ``offsets[i]`` is ``(start, end)`` (end exclusive) of ``words[i]`` in the text. Returns, in order,
    ``{"type", "start", "end", "word_start", "word_end", "text"}`` where ``start``/``end`` are character
    offsets (end exclusive), ``word_start``/``word_end`` word indices (end exclusive) and ``text`` is
    ``text[start:end]`` when the text is given, else the words joined by spaces. Entities are decoded
    leniently (:func:`spans_from_tags`).
    """
    if not len(words) == len(offsets) == len(tags):
        raise ValueError(
            f"words, offsets and tags differ in length ({len(words)}, {len(offsets)}, {len(tags)})"
        )
    out = []
    for type_, s, e in spans_from_tags(tags, scheme):
        start, end = offsets[s][0], offsets[e][1]
        out.append(
            {
                "type": type_,
                "start": start,
                "end": end,
                "word_start": s,
                "word_end": e + 1,
                "text": text[start:end] if text is not None else " ".join(words[s : e + 1]),
            }
        )
    return out


# ------------------------------------------------------------------ transition constraints


def _start_allowed(scheme: str, prefix: str) -> bool:
    if scheme == "IOB1":
        return prefix != "B"  # B-X only separates two adjacent X entities
    if scheme == "IOB2":
        return prefix != "I"
    if scheme in ("IOE1", "IOE2"):
        return True
    return prefix in "BSUO"  # IOBES, BILOU, BMES: an entity opens with B- or is a single S-/U-


def _end_allowed(scheme: str, prefix: str) -> bool:
    if scheme in ("IOB1", "IOB2"):
        return True
    if scheme == "IOE1":
        return prefix != "E"  # E-X only closes an entity that an adjacent X entity follows
    if scheme == "IOE2":
        return prefix != "I"
    return prefix in "ELSUO"  # IOBES, BILOU, BMES: an entity closes with E-/L- or is a single S-/U-


def _step_allowed(scheme: str, prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    (prev_prefix, prev_type), (cur_prefix, cur_type) = prev, cur
    same_type = prev_type == cur_type
    if scheme == "IOB1":
        # I-X continues an X entity or opens one after anything; B-X opens an X entity right after one.
        return cur_prefix != "B" or (prev_prefix in "IB" and same_type)
    if scheme == "IOB2":
        return cur_prefix != "I" or (prev_prefix in "IB" and same_type)
    if scheme == "IOE1":
        # Time-reversed IOB1: after E-X comes the first token (I-X or E-X) of the adjacent X entity.
        return prev_prefix != "E" or (cur_prefix in "IE" and same_type)
    if scheme == "IOE2":
        # Time-reversed IOB2: an entity is I-X* E-X, so an I-X is followed by I-X or E-X.
        return prev_prefix != "I" or (cur_prefix in "IE" and same_type)
    # IOBES, BILOU, BMES: inside an entity (after B-X or I-/M-X) only I-/M-X or E-/L-X may follow;
    # outside one (after E-/L-, S-/U-, O) only B-, S-/U- or O.
    if prev_prefix in "BIM":
        return cur_prefix in "IMEL" and same_type
    return cur_prefix in "BSUO"


def allowed_transitions(
    labels: Sequence[str], scheme: str
) -> tuple[list[bool], list[list[bool]], list[bool]]:
    """Which tag sequences are well-formed in ``scheme``, as the masks a linear-chain CRF needs.

    ``labels`` are the label names in index order (any order, e.g. ``["O", "B-PER", "I-PER"]``).
    Returns ``(allowed_start, allowed, allowed_end)``: ``allowed_start[k]`` -- a sentence may begin
    with ``labels[k]``; ``allowed[i][j]`` -- ``labels[j]`` may directly follow ``labels[i]``;
    ``allowed_end[k]`` -- a sentence may end with ``labels[k]``. A sequence is well-formed iff its
    first tag, every step and its last tag are allowed; the well-formed sequences are exactly the
    ones :func:`tags_from_spans` writes (``X``, ``Y`` are entity types):

    * ``IOB2``: ``I-X`` only after ``B-X`` or ``I-X``; never first.
    * ``IOB1``: ``I-X`` anywhere (it continues an ``X`` entity or opens one); ``B-X`` only right after
      ``B-X`` or ``I-X`` (it opens an ``X`` entity adjacent to the previous one); never first.
    * ``IOE2``: an entity is ``I-X* E-X``, so after ``I-X`` only ``I-X`` or ``E-X``; never last.
    * ``IOE1``: IOB1 reversed in time: ``I-X`` anywhere; ``E-X`` closes an ``X`` entity that another
      ``X`` entity follows at once, so after ``E-X`` only ``I-X`` or ``E-X``; never last.
    * ``IOBES`` / ``BILOU`` / ``BMES``: after ``B-X`` or ``I-X`` (``M-X``) only ``I-X`` or ``E-X``
      (``L-X``); after ``E-``, ``S-`` (``U-``) or ``O`` only ``B-``, ``S-`` (``U-``) or ``O``; first
      tag ``B-``, ``S-``/``U-`` or ``O``; last tag ``E-``/``L-``, ``S-``/``U-`` or ``O``.

    A label the scheme does not have (a foreign prefix such as ``E-X`` in IOB2, or no ``P-TYPE`` form)
    is never allowed: not first, not last, not before nor after anything.
    """
    name = canonical_scheme(scheme)
    valid = [check_tag(label, name) for label in labels]
    parts = [_split(label) for label in labels]
    allowed_start = [ok and _start_allowed(name, p[0]) for ok, p in zip(valid, parts)]
    allowed_end = [ok and _end_allowed(name, p[0]) for ok, p in zip(valid, parts)]
    allowed = [
        [ok_i and ok_j and _step_allowed(name, p_i, p_j) for ok_j, p_j in zip(valid, parts)]
        for ok_i, p_i in zip(valid, parts)
    ]
    return allowed_start, allowed, allowed_end
