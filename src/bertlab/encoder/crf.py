"""A linear-chain CRF for sequence labelling (NER), with optional tag-scheme transition constraints.

Plain torch. Shapes: B rows, T positions, K labels. A tag path ``y`` of a row of length ``L`` scores

    score(y) = start[y_0] + sum_{t<L} emissions[t, y_t] + sum_{0<t<L} transitions[y_{t-1}, y_t] + end[y_{L-1}]

and the CRF's probability of it is ``exp(score(y)) / Z`` with ``Z`` the sum over all ``K**L`` paths. The
forward algorithm computes ``log Z`` and Viterbi the best path, both vectorised over the batch and looping
over time only. The constraint masks (:func:`bertlab.tagging.allowed_transitions`) set the disallowed
scores to ``-inf`` each time they are used, so a disallowed path has probability exactly 0 and is never
decoded, whatever the learned values.

``mask [B, T]`` marks the real positions of each row and must be a prefix (``True`` then ``False``); a row
may have no real position at all (``log Z = 0``, log-likelihood 0). Tags at masked positions are ignored
(they may be ``-100``, the ignore index of the token-classification loss).

**Open ends.** A row may be a piece cut out of a longer sequence (a window of a long sentence): then
its first position is not the sequence's start, nor its last the sequence's end. ``open_start [B]`` /
``open_end [B]`` (bool) mark such rows: their start (end) score is 0 for every label that may follow
(precede) some label, and ``-inf`` for a label that can be nowhere (a tag foreign to the scheme), in
place of the learned, constrained start (end) scores. So ``I-X`` may open a row that starts inside an
entity, and ``B-X`` may close one that ends inside one (IOBES), while ``score`` otherwise keeps its
definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bertlab.tagging import allowed_transitions

__all__ = ["LinearChainCRF", "viterbi_decode_numpy"]

NEG_INF = float("-inf")


def _safe_logsumexp(scores: Tensor, dim: int) -> Tensor:
    """``torch.logsumexp`` whose gradient is 0 (not NaN) where every term is ``-inf``.

    torch's backward is ``exp(x - result)``, which is ``exp(-inf + inf) = NaN`` when the result is
    ``-inf``; such a NaN survives even a zero upstream gradient. Those slices are computed on zeros
    instead, and the ``-inf`` is put back with ``where`` (whose gradient to the unused branch is 0).
    """
    all_neg_inf = torch.isneginf(scores).all(dim=dim)
    safe_scores = scores.masked_fill(all_neg_inf.unsqueeze(dim), 0.0)
    return torch.logsumexp(safe_scores, dim=dim).masked_fill(all_neg_inf, NEG_INF)


def _as_bool_mask(value: Tensor | Sequence | None, shape: tuple[int, ...], name: str) -> Tensor:
    if value is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(value, dtype=torch.bool).detach().clone()
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape}")
    return mask


class LinearChainCRF(nn.Module):
    """Linear-chain CRF over ``num_labels`` labels: learned start, transition (``transitions[i, j]``
    scores label ``i`` followed by label ``j``) and end scores on top of per-position emissions.

    The scores start at zero, so that at initialisation the CRF's per-position marginals are exactly the
    softmax of the emissions (the model starts as the plain token classifier), and so that building it
    draws nothing from the RNG. Zero is not a symmetric trap here: the gradient of the transition
    scores is (expected - observed) transition counts, non-zero from the first step.

    ``allowed_start [K]``, ``allowed_transitions [K, K]``, ``allowed_end [K]`` (bool, default all True)
    are persistent buffers: saved in ``state_dict`` and moved by ``.to()``, never trained. Entries that
    are False score ``-inf`` (see :meth:`constrained_transitions`); their parameters get zero gradient.
    """

    def __init__(
        self,
        num_labels: int,
        allowed_start: Tensor | Sequence[bool] | None = None,
        allowed_transitions: Tensor | Sequence[Sequence[bool]] | None = None,
        allowed_end: Tensor | Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.start_transitions = nn.Parameter(torch.empty(num_labels))
        self.transitions = nn.Parameter(torch.empty(num_labels, num_labels))
        self.end_transitions = nn.Parameter(torch.empty(num_labels))
        k = num_labels
        self.register_buffer("allowed_start", _as_bool_mask(allowed_start, (k,), "allowed_start"))
        self.register_buffer(
            "allowed_transitions", _as_bool_mask(allowed_transitions, (k, k), "allowed_transitions")
        )
        self.register_buffer("allowed_end", _as_bool_mask(allowed_end, (k,), "allowed_end"))
        self.reset_parameters()

    @classmethod
    def from_labels(cls, labels: Sequence[str], scheme: str) -> LinearChainCRF:
        """A CRF over ``labels`` (names in index order) constrained to well-formed ``scheme`` paths."""
        start, trans, end = allowed_transitions(labels, scheme)
        return cls(len(labels), allowed_start=start, allowed_transitions=trans, allowed_end=end)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.start_transitions)
        nn.init.zeros_(self.transitions)
        nn.init.zeros_(self.end_transitions)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"

    # ------------------------------------------------------------------------------ scores

    def constrained_transitions(self) -> tuple[Tensor, Tensor, Tensor]:
        """(start [K], transitions [K, K], end [K]) with the disallowed entries set to ``-inf``: the
        scores that training and decoding use, and what an exporter saves for decoding elsewhere."""
        return (
            self.start_transitions.masked_fill(~self.allowed_start, NEG_INF),
            self.transitions.masked_fill(~self.allowed_transitions, NEG_INF),
            self.end_transitions.masked_fill(~self.allowed_end, NEG_INF),
        )

    def _boundaries(
        self, emissions: Tensor, open_start: Tensor | None, open_end: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(start [B, K], transitions [K, K], end [B, K]) in the emissions' dtype: the constrained scores,
        with each open row's start (end) replaced by 0 where some label may precede (follow) the label
        and ``-inf`` elsewhere (see the module docstring)."""
        batch_size = emissions.shape[0]
        start, transitions, end = (s.to(emissions.dtype) for s in self.constrained_transitions())
        start, end = start.expand(batch_size, -1), end.expand(batch_size, -1)
        for flags, free_mask, which in (
            (open_start, self.allowed_transitions.any(dim=0), "open_start"),
            (open_end, self.allowed_transitions.any(dim=1), "open_end"),
        ):
            if flags is None:
                continue
            flags = torch.as_tensor(flags, device=emissions.device).to(torch.bool)
            if tuple(flags.shape) != (batch_size,):
                raise ValueError(f"{which} has shape {tuple(flags.shape)}, expected {(batch_size,)}")
            free = torch.zeros(self.num_labels, dtype=emissions.dtype, device=emissions.device)
            free = free.masked_fill(~free_mask.to(emissions.device), NEG_INF)
            if which == "open_start":
                start = torch.where(flags.unsqueeze(1), free, start)
            else:
                end = torch.where(flags.unsqueeze(1), free, end)
        return start, transitions, end

    def _prepare(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Checks shapes; returns emissions in the compute dtype (at least float32: the sums over time
        would lose too much in half precision), the bool mask and each row's length."""
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_labels:
            raise ValueError(f"emissions must be [B, T, {self.num_labels}], got {tuple(emissions.shape)}")
        batch_size, seq_len, _ = emissions.shape
        if mask is None:
            mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=emissions.device)
        mask = mask.to(device=emissions.device, dtype=torch.bool)
        if tuple(mask.shape) != (batch_size, seq_len):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(batch_size, seq_len)}")
        if seq_len > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be a prefix in every row (True positions, then False ones)")
        dtype = torch.promote_types(
            torch.promote_types(emissions.dtype, self.transitions.dtype), torch.float32
        )
        return emissions.to(dtype), mask, mask.sum(dim=1)

    def _graph_zero(self, emissions: Tensor) -> Tensor:
        """[B] zeros that depend on the emissions and on every parameter. Added to ``log Z`` so that a
        loss always has a gradient (0 where unused) for all of them: backward works for T = 0, and DDP
        sees every parameter used even when no row has two positions (``transitions`` unused)."""
        params = self.start_transitions.sum() + self.transitions.sum() + self.end_transitions.sum()
        return emissions[:, :1].sum(dim=(1, 2)) * 0.0 + params.to(emissions.dtype) * 0.0

    def log_partition(
        self,
        emissions: Tensor,
        mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """``log Z`` [B]: the log of the summed ``exp(score)`` of every allowed path of each row's length
        (forward algorithm). 0 for a row of length 0 (its one, empty, path scores 0); ``-inf`` for a row
        whose length no allowed path has."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        batch_size, seq_len, _ = emissions.shape
        start, transitions, end = self._boundaries(emissions, open_start, open_end)
        if seq_len == 0:
            return self._graph_zero(emissions)
        # log_alpha[b, j]: log of the summed exp(score) of all paths of positions 0..t ending in label j.
        log_alpha = start + emissions[:, 0]
        for t in range(1, seq_len):
            # [B, K_prev, 1] + [K_prev, K_next] -> sum out the previous label.
            step = _safe_logsumexp(log_alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]
            log_alpha = torch.where(mask[:, t].unsqueeze(1), step, log_alpha)  # ended rows keep their alpha
        log_z = _safe_logsumexp(log_alpha + end, dim=1)
        return torch.where(lengths > 0, log_z, torch.zeros_like(log_z)) + self._graph_zero(emissions)

    def path_score(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """score(tags) [B] of each row's path over its real positions (0 for an empty row; ``-inf`` if
        the path is disallowed). Tags at masked positions are ignored."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        batch_size, seq_len, _ = emissions.shape
        if tuple(tags.shape) != (batch_size, seq_len):
            raise ValueError(f"tags has shape {tuple(tags.shape)}, expected {(batch_size, seq_len)}")
        start, transitions, end = self._boundaries(emissions, open_start, open_end)
        if seq_len == 0:
            return emissions.new_zeros(batch_size)
        tags = tags.to(emissions.device).long().masked_fill(~mask, 0)  # e.g. -100 -> any valid index
        zero = emissions.new_zeros(())
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
        # where (not multiply by mask): a masked -inf must not become -inf * 0 = NaN.
        score = torch.where(mask[:, 0], start.gather(1, tags[:, :1]).squeeze(1), zero)
        score = score + torch.where(mask, emitted, zero).sum(dim=1)
        if seq_len > 1:
            stepped = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
            score = score + torch.where(mask[:, 1:], stepped, zero).sum(dim=1)
        last_tag = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1))
        return score + torch.where(lengths > 0, end.gather(1, last_tag).squeeze(1), zero)

    def allowed_paths(
        self,
        tags: Tensor,
        mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """[B] bool: whether each row's path (over its real positions) is allowed by the constraint
        masks, read from the masks alone (no scores): the check a caller makes on gold paths before the
        loss, which is ``+inf`` for a disallowed one."""
        tags = torch.as_tensor(tags)
        fake = torch.zeros(*tags.shape, self.num_labels, device=self.transitions.device)
        return torch.isfinite(self.path_score(fake, tags, mask, open_start, open_end))

    def log_likelihood(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """``log p(tags | emissions)`` [B] = score(tags) - log Z: 0 for an empty row, ``-inf`` for a
        disallowed path (never NaN, also when no path of that length is allowed)."""
        score = self.path_score(emissions, tags, mask, open_start, open_end)
        log_z = self.log_partition(emissions, mask, open_start, open_end)
        return torch.where(torch.isneginf(score), score, score - log_z)

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "mean",
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """Negative log-likelihood. ``reduction``: ``"mean"`` (default) over the B rows, empty rows
        included (they add 0); ``"token_mean"`` the sum over rows divided by the number of real
        positions (like a token-level cross-entropy; 0 for a batch without any); ``"sum"``; ``"none"``
        [B]."""
        nll = -self.log_likelihood(emissions, tags, mask, open_start, open_end)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean() if nll.numel() else nll.sum()
        if reduction == "token_mean":
            num_tokens = mask.sum() if mask is not None else emissions.shape[0] * emissions.shape[1]
            return nll.sum() / torch.as_tensor(num_tokens, device=nll.device).clamp(min=1)
        raise ValueError(f"reduction must be 'mean', 'token_mean', 'sum' or 'none', got {reduction!r}")

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "mean",
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> Tensor:
        """The training loss: :meth:`nll` (by default the mean over rows of ``-log p(tags)``)."""
        return self.nll(emissions, tags, mask, reduction, open_start, open_end)

    # ------------------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode(
        self,
        emissions: Tensor,
        mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
    ) -> list[list[int]]:
        """Viterbi: each row's highest-scoring allowed path, as a list of its own length's label ids.

        Ties go to the lowest label index (``max`` returns the first maximum), as in
        :func:`viterbi_decode_numpy`. A row whose length no allowed path has gets an arbitrary path.
        """
        emissions, mask, lengths = self._prepare(emissions, mask)
        batch_size, seq_len, _ = emissions.shape
        if seq_len == 0:
            return [[] for _ in range(batch_size)]
        start, transitions, end = self._boundaries(emissions, open_start, open_end)
        # best[b, j]: best score of a path of positions 0..t ending in label j; backpointers[t-1][b, j]
        # its label at t-1.
        best = start + emissions[:, 0]
        backpointers = []
        for t in range(1, seq_len):
            best_prev_score, best_prev = (best.unsqueeze(2) + transitions).max(dim=1)
            step = best_prev_score + emissions[:, t]
            best = torch.where(mask[:, t].unsqueeze(1), step, best)
            backpointers.append(best_prev)
        last = (best + end).argmax(dim=1).tolist()

        history = torch.stack(backpointers, dim=1).tolist() if backpointers else [[] for _ in lengths]
        paths = []
        for row, length in enumerate(lengths.tolist()):
            if length == 0:
                paths.append([])
                continue
            path = [last[row]]
            for t in range(length - 2, -1, -1):  # history[row][t] maps a label at t+1 to one at t
                path.append(history[row][t][path[-1]])
            paths.append(path[::-1])
        return paths


def viterbi_decode_numpy(
    emissions: np.ndarray, start: np.ndarray, transitions: np.ndarray, end: np.ndarray
) -> list[int]:
    """Viterbi outside torch (e.g. behind an ONNX model): the best path of ONE sentence.

    ``emissions [T, K]`` (its real positions only), ``start [K]``, ``transitions [K, K]``, ``end [K]``
    as :meth:`LinearChainCRF.constrained_transitions` gives them (``-inf`` entries allowed). The same
    float operations in the same order and the same tie-breaking (lowest index) as
    :meth:`LinearChainCRF.decode`, so in float32 the paths are identical.
    """
    emissions = np.asarray(emissions)
    if emissions.ndim != 2:
        raise ValueError(f"emissions must be [T, K], got shape {emissions.shape}")
    seq_len = emissions.shape[0]
    if seq_len == 0:
        return []
    dtype = np.result_type(emissions.dtype, np.float32)
    emissions = emissions.astype(dtype, copy=False)
    start, transitions, end = (np.asarray(a, dtype=dtype) for a in (start, transitions, end))
    best = start + emissions[0]
    backpointers = []
    for t in range(1, seq_len):
        candidates = best[:, None] + transitions  # [K_prev, K_next]
        best_prev = candidates.argmax(axis=0)
        best = candidates[best_prev, np.arange(candidates.shape[1])] + emissions[t]
        backpointers.append(best_prev)
    path = [int((best + end).argmax())]
    for best_prev in reversed(backpointers):
        path.append(int(best_prev[path[-1]]))
    return path[::-1]
