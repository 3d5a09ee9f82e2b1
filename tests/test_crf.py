"""LinearChainCRF against brute force over all K**T paths; scheme constraints against tagging's writer."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertlab.encoder.crf import LinearChainCRF, viterbi_decode_numpy
from bertlab.tagging import (
    SCHEMES,
    allowed_transitions,
    check_tag,
    get_entities_strict,
    spans_from_tags,
    tags_from_spans,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = ["PER", "ORG.NAM-X"]
NEG_INF = float("-inf")
# Every prefix any scheme knows, so a label set may hold tags foreign to its scheme, and a non-tag.
ALL_LABELS = ["O", *(f"{p}-{t}" for p in "BIESLUM" for t in TYPES), "[PAD]"]


def scheme_labels(scheme: str) -> list[str]:
    return [label for label in ALL_LABELS if check_tag(label, scheme)]


# ----------------------------------------------------------------------------- brute force


def all_paths(num_labels: int, length: int) -> np.ndarray:
    """[K**L, L] every path of ``length`` (one empty path for length 0)."""
    paths = list(itertools.product(range(num_labels), repeat=length))
    return np.array(paths, dtype=np.int64).reshape(len(paths), length)


def brute_scores(emissions: np.ndarray, start: np.ndarray, trans: np.ndarray, end: np.ndarray) -> tuple:
    """(paths [N, L], scores [N]) of every path over ``emissions [L, K]``, by the CRF's definition."""
    length, num_labels = emissions.shape
    paths = all_paths(num_labels, length)
    if length == 0:
        return paths, np.zeros(1)
    scores = start[paths[:, 0]] + emissions[np.arange(length), paths].sum(axis=1) + end[paths[:, -1]]
    if length > 1:
        scores = scores + trans[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    return paths, scores


def logsumexp(values: np.ndarray) -> float:
    top = values.max()
    if top == NEG_INF:
        return NEG_INF
    return float(top + np.log(np.exp(values - top).sum()))


def is_allowed(path: list[int], masks: tuple) -> bool:
    """Walks the rules: first label may start, each step is allowed, last label may end."""
    allowed_start, allowed, allowed_end = masks
    if not path:
        return True
    steps_ok = all(allowed[i][j] for i, j in zip(path, path[1:]))
    return allowed_start[path[0]] and steps_ok and allowed_end[path[-1]]


def is_well_formed(tags: list[str], scheme: str) -> bool:
    """Independent of the masks: the tags are exactly what tagging writes for the entities they hold."""
    return tags_from_spans(spans_from_tags(tags, scheme), len(tags), scheme) == tags


# ------------------------------------------------------------------------------ random cases


@dataclass
class Case:
    scheme: str
    labels: list[str]
    constrained: bool
    lengths: list[int]
    seq_len: int
    seed: int

    def crf(self, dtype: torch.dtype = torch.float64) -> LinearChainCRF:
        if self.constrained:
            crf = LinearChainCRF.from_labels(self.labels, self.scheme)
        else:
            crf = LinearChainCRF(len(self.labels))
        rng = np.random.default_rng(self.seed)
        k = len(self.labels)
        with torch.no_grad():
            crf.start_transitions.copy_(torch.from_numpy(rng.normal(size=k)))
            crf.transitions.copy_(torch.from_numpy(rng.normal(size=(k, k))))
            crf.end_transitions.copy_(torch.from_numpy(rng.normal(size=k)))
        return crf.to(dtype)

    def emissions(self, dtype: torch.dtype = torch.float64, integer: bool = False) -> torch.Tensor:
        rng = np.random.default_rng(self.seed + 1)
        shape = (len(self.lengths), self.seq_len, len(self.labels))
        values = rng.integers(-1, 2, size=shape) if integer else rng.normal(size=shape) * 2
        return torch.tensor(values, dtype=dtype)

    def mask(self) -> torch.Tensor:
        return torch.arange(self.seq_len)[None, :] < torch.tensor(self.lengths)[:, None]


@st.composite
def cases(draw: st.DrawFn, constrained: bool | None = None, max_len: int = 5) -> Case:
    scheme = draw(st.sampled_from(SCHEMES))
    own = scheme_labels(scheme)
    labels = draw(st.lists(st.sampled_from(own), min_size=1, max_size=4, unique=True))
    if len(labels) < 4 and draw(st.booleans()):
        labels.append(draw(st.sampled_from([x for x in ALL_LABELS if x not in own])))
    labels = list(draw(st.permutations(labels)))
    seq_len = draw(st.integers(0, max_len))
    lengths = draw(st.lists(st.integers(0, seq_len), min_size=1, max_size=3))
    if constrained is None:
        constrained = draw(st.booleans())
    return Case(scheme, labels, constrained, lengths, seq_len, draw(st.integers(0, 2**31)))


def params_numpy(crf: LinearChainCRF) -> list[np.ndarray]:
    return [x.detach().numpy() for x in crf.constrained_transitions()]


def gold_tags(case: Case, crf: LinearChainCRF, emissions: torch.Tensor, pick_valid: bool) -> torch.Tensor:
    """[B, T] gold paths (an allowed one where possible if ``pick_valid``), -100 at masked positions."""
    rng = np.random.default_rng(case.seed + 2)
    tags = torch.full((len(case.lengths), case.seq_len), -100, dtype=torch.long)
    for row, length in enumerate(case.lengths):
        paths, scores = brute_scores(emissions[row, :length].numpy(), *params_numpy(crf))
        candidates = paths[scores > NEG_INF] if pick_valid and (scores > NEG_INF).any() else paths
        tags[row, :length] = torch.from_numpy(candidates[rng.integers(len(candidates))])
    return tags


# ------------------------------------------------------------------------- CRF vs brute force


@FAST
@given(cases())
def test_log_partition_is_logsumexp_over_allowed_paths(case: Case) -> None:
    crf, emissions = case.crf(), case.emissions()
    log_z = crf.log_partition(emissions, case.mask())
    assert log_z.shape == (len(case.lengths),) and log_z.dtype == torch.float64
    for row, length in enumerate(case.lengths):
        _, scores = brute_scores(emissions[row, :length].numpy(), *params_numpy(crf))
        expected = logsumexp(scores)
        if expected == NEG_INF:
            assert log_z[row].item() == NEG_INF
        else:
            assert log_z[row].item() == pytest.approx(expected, abs=1e-5, rel=1e-9)


@FAST
@given(cases(), st.booleans())
def test_log_likelihood_is_score_minus_log_partition(case: Case, pick_valid: bool) -> None:
    crf, emissions, mask = case.crf(), case.emissions(), case.mask()
    tags = gold_tags(case, crf, emissions, pick_valid)
    ll = crf.log_likelihood(emissions, tags, mask)
    assert not ll.isnan().any()
    for row, length in enumerate(case.lengths):
        paths, scores = brute_scores(emissions[row, :length].numpy(), *params_numpy(crf))
        gold = tags[row, :length].tolist()
        score = scores[paths.tolist().index(gold)]
        assert crf.path_score(emissions, tags, mask)[row].item() == pytest.approx(score, abs=1e-9)
        if score == NEG_INF:
            assert ll[row].item() == NEG_INF
        else:
            assert ll[row].item() == pytest.approx(score - logsumexp(scores), abs=1e-5, rel=1e-9)
    torch.testing.assert_close(crf(emissions, tags, mask), -ll.mean())  # the default reduction


@FAST
@given(cases())
def test_decode_finds_the_best_path(case: Case) -> None:
    crf, emissions = case.crf(), case.emissions()
    decoded = crf.decode(emissions, case.mask())
    assert [len(p) for p in decoded] == case.lengths
    for row, length in enumerate(case.lengths):
        paths, scores = brute_scores(emissions[row, :length].numpy(), *params_numpy(crf))
        best = scores.max()
        if best == NEG_INF:
            continue  # no allowed path of this length: any path is as good
        got = scores[paths.tolist().index(decoded[row])]
        assert got == pytest.approx(best, abs=1e-9)


@FAST
@given(cases(max_len=8), st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_numpy_viterbi_equals_torch_decode(case: Case, integer: bool, dtype: torch.dtype) -> None:
    # Integer-valued scores make ties frequent: both sides must break them the same way (lowest index).
    crf, emissions = case.crf(dtype), case.emissions(dtype, integer=integer)
    if integer:
        with torch.no_grad():
            for p in crf.parameters():
                p.copy_(p.round())
    decoded = crf.decode(emissions, case.mask())
    start, trans, end = params_numpy(crf)
    for row, length in enumerate(case.lengths):
        np_emissions = emissions[row, :length].numpy()
        assert np_emissions.dtype == start.dtype
        assert viterbi_decode_numpy(np_emissions, start, trans, end) == decoded[row]


@FAST
@given(cases(constrained=True))
def test_constrained_decode_is_well_formed(case: Case) -> None:
    crf, emissions = case.crf(), case.emissions()
    masks = allowed_transitions(case.labels, case.scheme)
    for row, path in enumerate(crf.decode(emissions, case.mask())):
        _, scores = brute_scores(emissions[row, : len(path)].numpy(), *params_numpy(crf))
        if scores.max() == NEG_INF:
            continue
        assert is_allowed(path, masks)
        assert is_well_formed([case.labels[k] for k in path], case.scheme)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SCHEMES), st.integers(0, 2**31), st.integers(1, 4), st.integers(0, 16))
def test_constrained_decode_on_full_label_sets(scheme: str, seed: int, batch: int, seq_len: int) -> None:
    """Longer sentences, every label of the scheme, emissions that favour ill-formed paths."""
    labels = scheme_labels(scheme)
    rng = np.random.default_rng(seed)
    crf = LinearChainCRF.from_labels(labels, scheme)
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(rng.normal(size=crf.transitions.shape) * 3))
    emissions = torch.from_numpy(rng.normal(size=(batch, seq_len, len(labels))).astype(np.float32) * 5)
    lengths = torch.from_numpy(rng.integers(0, seq_len + 1, size=batch))
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    masks = allowed_transitions(labels, scheme)
    start, trans, end = params_numpy(crf)
    for row, path in enumerate(crf.decode(emissions, mask)):
        tags = [labels[k] for k in path]
        assert len(path) == lengths[row]
        assert is_allowed(path, masks) and is_well_formed(tags, scheme)
        if scheme != "IOE1":  # seqeval's strict IOE1 misses a one-token E-X entity after O (a quirk)
            assert get_entities_strict(tags, scheme) == spans_from_tags(tags, scheme)
        assert viterbi_decode_numpy(emissions[row, : len(path)].numpy(), start, trans, end) == path


@FAST
@given(cases(), st.booleans(), st.sampled_from(["mean", "token_mean", "sum"]))
def test_gradients_are_finite(case: Case, pick_valid: bool, reduction: str) -> None:
    crf, emissions, mask = case.crf(), case.emissions().requires_grad_(True), case.mask()
    tags = gold_tags(case, crf, emissions.detach(), pick_valid)
    crf(emissions, tags, mask, reduction=reduction).backward()
    for grad in (emissions.grad, *(p.grad for p in crf.parameters())):
        assert grad is not None and torch.isfinite(grad).all()
    # Masked positions and disallowed entries get no gradient at all.
    assert (emissions.grad[~mask] == 0).all()
    assert (crf.transitions.grad[~crf.allowed_transitions] == 0).all()
    assert (crf.start_transitions.grad[~crf.allowed_start] == 0).all()
    assert (crf.end_transitions.grad[~crf.allowed_end] == 0).all()


def test_empty_rows_single_label_and_empty_time() -> None:
    crf = LinearChainCRF(1)
    emissions = torch.randn(3, 4, 1, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False]])
    tags = torch.tensor([[0, 0, 0, 0], [-100] * 4, [0, -100, -100, -100]])
    # One label: one path per row, so p(path) = 1.
    assert torch.allclose(crf.log_likelihood(emissions, tags, mask), torch.zeros(3), atol=1e-6)
    assert crf.decode(emissions, mask) == [[0, 0, 0, 0], [], [0]]
    crf(emissions, tags, mask).backward()
    assert torch.isfinite(emissions.grad).all()

    crf = LinearChainCRF.from_labels(["O", "B-X", "I-X"], "IOB2")
    empty = torch.zeros(2, 0, 3)
    assert crf.log_partition(empty, torch.zeros(2, 0, dtype=torch.bool)).tolist() == [0.0, 0.0]
    assert crf.decode(empty) == [[], []]
    assert crf(empty, torch.zeros(2, 0, dtype=torch.long)).item() == 0.0
    assert viterbi_decode_numpy(np.zeros((0, 3), np.float32), *params_numpy(crf)) == []


def test_constraints_are_buffers_and_not_learned() -> None:
    labels = ["O", "B-PER", "I-PER"]
    crf = LinearChainCRF.from_labels(labels, "bio")
    state = crf.state_dict()
    assert {"allowed_start", "allowed_transitions", "allowed_end"} <= set(state)
    assert state["allowed_start"].tolist() == [True, True, False]
    fresh = LinearChainCRF(3)  # unconstrained: all-True buffers, the same keys
    assert fresh.allowed_transitions.all()
    fresh.load_state_dict(state)
    assert fresh.allowed_transitions.tolist() == crf.allowed_transitions.tolist()
    doubled = crf.to(torch.float64)
    assert doubled.allowed_transitions.dtype == torch.bool and doubled.transitions.dtype == torch.float64
    # Zero init; disallowed scores are -inf however large the learned value.
    assert not any(p.abs().sum() for p in crf.parameters())
    with torch.no_grad():
        crf.transitions.fill_(100.0)
    start, trans, end = crf.constrained_transitions()
    assert start[2] == NEG_INF and trans[0, 2] == NEG_INF and torch.isfinite(end).all()
    assert crf.decode(torch.tensor([[[0.0, 0.0, 9.0]] * 3])) == [[1, 2, 2]]


def test_input_checks_and_half_precision() -> None:
    crf = LinearChainCRF(2)
    with pytest.raises(ValueError, match="prefix"):
        crf.log_partition(torch.zeros(1, 3, 2), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="emissions"):
        crf.decode(torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="allowed_transitions"):
        LinearChainCRF(2, allowed_transitions=[[True]])
    with pytest.raises(ValueError, match="reduction"):
        crf(torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), reduction="avg")
    # Half-precision emissions are scored in float32.
    assert crf.log_partition(torch.zeros(1, 3, 2, dtype=torch.bfloat16)).dtype == torch.float32
    assert crf.log_partition(torch.zeros(1, 3, 2)).item() == pytest.approx(3 * math.log(2))


# ------------------------------------------------------------------- open rows (window pieces)


def open_params(crf: LinearChainCRF, open_start: bool, open_end: bool) -> list[np.ndarray]:
    """The scores of an open row, by the definition: start (end) 0 for a label that some label may
    precede (follow), -inf for one that can be nowhere."""
    start, trans, end = params_numpy(crf)
    allowed = crf.allowed_transitions.numpy()
    if open_start:
        start = np.where(allowed.any(axis=0), 0.0, NEG_INF)
    if open_end:
        end = np.where(allowed.any(axis=1), 0.0, NEG_INF)
    return [start, trans, end]


@FAST
@given(cases(), st.data())
def test_open_rows_against_brute_force(case: Case, data: st.DataObject) -> None:
    rows = len(case.lengths)
    open_start = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    open_end = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    crf, mask = case.crf(), case.mask()
    emissions = case.emissions().requires_grad_(True)
    log_z = crf.log_partition(emissions, mask, open_start, open_end)
    decoded = crf.decode(emissions, mask, open_start, open_end)
    rng = np.random.default_rng(case.seed + 3)
    tags = torch.full((rows, case.seq_len), -100, dtype=torch.long)
    brute = []
    for row, length in enumerate(case.lengths):
        params = open_params(crf, bool(open_start[row]), bool(open_end[row]))
        paths, scores = brute_scores(emissions[row, :length].detach().numpy(), *params)
        brute.append((paths.tolist(), scores))
        expected = logsumexp(scores)
        if expected == NEG_INF:
            assert log_z[row].item() == NEG_INF
        else:
            assert log_z[row].item() == pytest.approx(expected, abs=1e-5, rel=1e-9)
            got = scores[paths.tolist().index(decoded[row])]
            assert got == pytest.approx(scores.max(), abs=1e-9)
        tags[row, :length] = torch.from_numpy(paths[rng.integers(len(paths))])
    allowed = crf.allowed_paths(tags, mask, open_start, open_end)
    likelihood = crf.log_likelihood(emissions, tags, mask, open_start, open_end)
    for row, (length, (paths, scores)) in enumerate(zip(case.lengths, brute)):
        score = scores[paths.index(tags[row, :length].tolist())]
        expected = logsumexp(scores)
        assert bool(allowed[row]) == (score > NEG_INF)
        ll = likelihood[row].item()
        if score == NEG_INF:
            assert ll == NEG_INF
        else:
            assert ll == pytest.approx(score - expected, abs=1e-5, rel=1e-9)
    # a training loss over allowed paths only: finite gradients everywhere
    ok = crf.allowed_paths(tags, mask, open_start, open_end)
    loss = crf(emissions, tags, mask & ok.unsqueeze(1), "token_mean", open_start, open_end)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emissions.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in crf.parameters())


def test_open_start_lets_a_window_begin_inside_an_entity() -> None:
    labels = ["O", "B-X", "I-X", "E-X", "S-X"]
    crf = LinearChainCRF.from_labels(labels, "IOBES")
    inside = torch.tensor([[2, 3, 0]])  # I-X E-X O: the window starts inside an entity
    assert crf.allowed_paths(inside).tolist() == [False]
    assert crf.allowed_paths(inside, open_start=torch.tensor([True])).tolist() == [True]
    open_ = torch.tensor([[0, 1]])  # O B-X: the entity goes on after the window
    assert crf.allowed_paths(open_).tolist() == [False]
    assert crf.allowed_paths(open_, open_end=torch.tensor([True])).tolist() == [True]
    # A label that can be nowhere stays forbidden in an open row too.
    foreign = LinearChainCRF.from_labels(["O", "B-X", "E-Y"], "IOB2")
    flags = torch.tensor([True])
    assert foreign.allowed_paths(torch.tensor([[2]]), None, flags, flags).tolist() == [False]
    with pytest.raises(ValueError, match="open_start"):
        crf.log_partition(torch.zeros(2, 3, 5), open_start=torch.tensor([True]))


# ------------------------------------------------------------------------ allowed_transitions

T, F = True, False


@pytest.mark.parametrize(
    ("scheme", "labels", "start", "allowed", "end"),
    [
        (
            "IOB2",
            ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
            [T, T, F, T, F],
            [
                [T, T, F, T, F],  # O ->
                [T, T, T, T, F],  # B-PER ->
                [T, T, T, T, F],  # I-PER ->
                [T, T, F, T, T],  # B-LOC ->
                [T, T, F, T, T],  # I-LOC ->
            ],
            [T, T, T, T, T],
        ),
        (
            "IOB1",
            ["O", "I-X", "B-X", "I-Y"],
            [T, T, F, T],
            [[T, T, F, T], [T, T, T, T], [T, T, T, T], [T, T, F, T]],
            [T, T, T, T],
        ),
        (
            "IOE2",
            ["O", "I-X", "E-X", "E-Y"],
            [T, T, T, T],
            [[T, T, T, T], [F, T, T, F], [T, T, T, T], [T, T, T, T]],
            [T, F, T, T],
        ),
        (
            "IOE1",
            ["O", "I-X", "E-X", "I-Y"],
            [T, T, T, T],
            [[T, T, T, T], [T, T, T, T], [F, T, T, F], [T, T, T, T]],
            [T, T, F, T],
        ),
        (
            "BIOES",
            ["O", "B-X", "I-X", "E-X", "S-X", "B-Y"],
            [T, T, F, F, T, T],
            [
                [T, T, F, F, T, T],  # O ->
                [F, F, T, T, F, F],  # B-X ->
                [F, F, T, T, F, F],  # I-X ->
                [T, T, F, F, T, T],  # E-X ->
                [T, T, F, F, T, T],  # S-X ->
                [F, F, F, F, F, F],  # B-Y -> (no I-Y/E-Y in the set)
            ],
            [T, F, F, T, T, F],
        ),
        (
            "BMES",
            ["S-X", "M-X", "E-X", "B-X", "O"],
            [T, F, F, T, T],
            [
                [T, F, F, T, T],  # S-X ->
                [F, T, T, F, F],  # M-X ->
                [T, F, F, T, T],  # E-X ->
                [F, T, T, F, F],  # B-X ->
                [T, F, F, T, T],  # O ->
            ],
            [T, F, T, F, T],
        ),
        (
            "BILOU",
            ["O", "B-X", "I-X", "L-X", "U-X"],
            [T, T, F, F, T],
            [[T, T, F, F, T], [F, F, T, T, F], [F, F, T, T, F], [T, T, F, F, T], [T, T, F, F, T]],
            [T, F, F, T, T],
        ),
        (
            "IOB2",  # foreign prefixes and non-tags are never allowed
            ["O", "E-X", "B-X", "[PAD]"],
            [T, F, T, F],
            [[T, F, T, F], [F, F, F, F], [T, F, T, F], [F, F, F, F]],
            [T, F, T, F],
        ),
    ],
)
def test_allowed_transitions_by_hand(
    scheme: str, labels: list, start: list, allowed: list, end: list
) -> None:
    assert allowed_transitions(labels, scheme) == (start, allowed, end)


def test_allowed_transitions_aliases_and_unknown_scheme() -> None:
    labels = scheme_labels("IOBES")
    assert allowed_transitions(labels, "bioes") == allowed_transitions(labels, "IOBES")
    assert allowed_transitions(labels, "ioe") == allowed_transitions(labels, "IOE2")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        allowed_transitions(labels, "IOX")


@st.composite
def spans_and_length(draw: st.DrawFn) -> tuple[list, int]:
    """Non-overlapping spans: a run of segments, each ``O``s or one entity (adjacent ones included)."""
    spans, position = [], 0
    for type_, size in draw(st.lists(st.tuples(st.sampled_from([None, *TYPES]), st.integers(1, 3)))):
        if type_ is not None:
            spans.append((type_, position, position + size - 1))
        position += size
    return spans, position


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SCHEMES), spans_and_length(), st.randoms(use_true_random=False))
def test_every_written_sequence_is_allowed(scheme: str, spans_length: tuple, random) -> None:
    spans, length = spans_length
    labels = scheme_labels(scheme) + [x for x in ALL_LABELS if x not in scheme_labels(scheme)]
    random.shuffle(labels)
    masks = allowed_transitions(labels, scheme)
    tags = tags_from_spans(spans, length, scheme)
    assert is_allowed([labels.index(t) for t in tags], masks)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_allowed_paths_are_exactly_the_well_formed_ones(scheme: str) -> None:
    """Exhaustive up to length 3 over every label (foreign ones included): allowed <=> well-formed."""
    masks = allowed_transitions(ALL_LABELS, scheme)
    for length in range(1, 4):
        for path in itertools.product(range(len(ALL_LABELS)), repeat=length):
            tags = [ALL_LABELS[k] for k in path]
            assert is_allowed(list(path), masks) == is_well_formed(tags, scheme), tags
