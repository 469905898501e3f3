"""A batched, length-masked linear-chain CRF, written by hand in torch.

The score of a tag path y for a sentence S with image I is eq. 12 of the paper:

    P(y | S, I) = exp( sum_i E[i, y_i] + sum_{i=0..n} T[y_i, y_{i+1}] ) / Z

where E are the per-token emission scores (B, T, K) from the fusion model, T is
the (K, K) transition matrix and the i=0 / i=n terms are the start and end
transitions (y_0 = <start>, y_{n+1} = <end>). Everything here is log-space and
vectorised over the batch; only time is looped over.

Conventions:
- ``mask`` (B, T) marks real tokens and must be a prefix (left-aligned); a row
  may be all False (a sequence of length 0: log-likelihood 0, log Z 0, empty path).
- All arithmetic is float32 whatever the emissions' dtype (half/bf16 are cast
  inside), so mixed-precision training is safe.
- Optional BIO constraints are *penalties*: every disallowed start / transition
  / end gets ``NEG`` (-1e4) added to its score, in training (numerator and
  partition alike) and in decoding, marginals and span probabilities. The
  model therefore stays a proper distribution over all paths, in which
  disallowed paths carry probability ~exp(-1e4) = 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

NEG = -1e4  # score added to anything disallowed; exp(NEG) underflows to 0 in float32


def bio_constraints(labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which starts / transitions / ends are legal under BIO2 for ``labels``.

    I-X may only follow B-X or I-X, and a sentence cannot start with I-X; any tag
    may end a sentence. Labels without a B-/I- prefix (O, padding symbols) behave
    like O. Returns bool tensors (start_allowed (K,), transitions_allowed (K, K)
    indexed [from, to], end_allowed (K,)).
    """
    K = len(labels)
    prefix = [lab[:2] if lab[:2] in ("B-", "I-") else "" for lab in labels]
    kind = [lab[2:] if p else None for lab, p in zip(labels, prefix)]
    start = torch.tensor([p != "I-" for p in prefix], dtype=torch.bool)
    trans = torch.ones(K, K, dtype=torch.bool)
    for j in range(K):
        if prefix[j] == "I-":
            for i in range(K):
                trans[i, j] = prefix[i] in ("B-", "I-") and kind[i] == kind[j]
    end = torch.ones(K, dtype=torch.bool)
    return start, trans, end


def _unless(open_: torch.Tensor | None, scores: torch.Tensor, B: int) -> torch.Tensor:
    """(B, K) start or end scores, zero on the rows where ``open_`` is True."""
    rows = scores.expand(B, -1)
    if open_ is None:
        return rows
    return rows.masked_fill(open_.to(device=scores.device, dtype=torch.bool)[:, None], 0.0)


class CRF(nn.Module):
    """Linear-chain CRF over K tags with start/end transitions (eq. 12).

    ``constraints`` is an optional (start_allowed, transitions_allowed, end_allowed)
    triple of bool tensors, e.g. from :func:`bio_constraints`; disallowed entries
    get ``NEG`` added to their score everywhere (see module docstring).
    ``forward`` returns the mean negative log-likelihood, i.e. the training loss.
    """

    def __init__(
        self,
        num_tags: int,
        constraints: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if num_tags <= 0:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = K = num_tags
        self.start_transitions = nn.Parameter(torch.empty(K))
        self.end_transitions = nn.Parameter(torch.empty(K))
        self.transitions = nn.Parameter(torch.empty(K, K))  # [from, to]
        self.reset_parameters()
        # penalties are buffers: they follow .to(device) and live in the state dict
        start_pen, trans_pen, end_pen = torch.zeros(K), torch.zeros(K, K), torch.zeros(K)
        if constraints is not None:
            s, t, e = (torch.as_tensor(c, dtype=torch.bool) for c in constraints)
            if s.shape != (K,) or t.shape != (K, K) or e.shape != (K,):
                raise ValueError(f"constraints must have shapes ({K},), ({K}, {K}), ({K},)")
            start_pen, trans_pen, end_pen = (NEG * (~c).float() for c in (s, t, e))
        self.register_buffer("start_penalty", start_pen)
        self.register_buffer("transitions_penalty", trans_pen)
        self.register_buffer("end_penalty", end_pen)

    def reset_parameters(self) -> None:
        for p in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        constrained = bool((self.transitions_penalty != 0).any() or (self.start_penalty != 0).any()
                           or (self.end_penalty != 0).any())
        return f"num_tags={self.num_tags}, constrained={constrained}"

    # ------------------------------------------------------------------ helpers

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Effective float32 (start, transitions, end) scores, penalties included."""
        return (
            self.start_transitions.float() + self.start_penalty,
            self.transitions.float() + self.transitions_penalty,
            self.end_transitions.float() + self.end_penalty,
        )

    def _prepare(self, emissions: torch.Tensor, mask: torch.Tensor | None):
        """Cast to float32, check shapes and the prefix mask, zero padded emissions.

        Zeroing (rather than trusting) padded positions makes results and
        gradients independent of whatever (even inf/nan) sits there.
        """
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=emissions.device)
        mask = mask.to(device=emissions.device, dtype=torch.bool)
        if mask.shape != (B, T):
            raise ValueError(f"mask must be ({B}, {T}), got {tuple(mask.shape)}")
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(T, device=mask.device) < lengths[:, None]):
            raise ValueError("mask must be a left-aligned prefix mask (True then False per row)")
        emissions = emissions.float().masked_fill(~mask[..., None], 0.0)
        return emissions, mask, lengths

    def _alphas(self, emissions: torch.Tensor, mask: torch.Tensor, open_start: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Forward algorithm: alphas[t][b, k] = log-sum of scores of prefixes ending in k at t.

        Past an item's length alpha is carried unchanged, so alphas[-1] is each
        item's alpha at its own last token. Rows with ``open_start`` get no start score.
        """
        start, trans, _ = self._scores()
        alpha = _unless(open_start, start, emissions.size(0)) + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, emissions.size(1)):
            nxt = torch.logsumexp(alpha[:, :, None] + trans + emissions[:, t, None, :], dim=1)
            alpha = torch.where(mask[:, t, None], nxt, alpha)
            alphas.append(alpha)
        return alphas

    # ------------------------------------------------------------------ training

    def score(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
        open_start: torch.Tensor | None = None, open_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised log-score of the given paths (the exponent of eq. 12), (B,).

        ``open_start`` / ``open_end`` (B,) bool: rows that begin / end inside a longer
        sequence (a window of a long post) get no start / end transition score."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, _ = emissions.shape
        if T == 0:
            return emissions.new_zeros(B)
        start, trans, end = self._scores()
        tags = tags.to(emissions.device).long().masked_fill(~mask, 0)  # padded tags may be anything (-100)
        maskf = mask.float()
        s = (emissions.gather(2, tags[..., None]).squeeze(-1) * maskf).sum(1)
        s = s + (trans[tags[:, :-1], tags[:, 1:]] * maskf[:, 1:]).sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        edges = _unless(open_start, start, B).gather(1, tags[:, :1]).squeeze(1)
        edges = edges + _unless(open_end, end, B).gather(1, last[:, None]).squeeze(1)
        return s + edges * (lengths > 0).float()

    def log_partition(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
        open_start: torch.Tensor | None = None, open_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log Z of eq. 12 by the forward algorithm, (B,); 0 for empty sequences."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        B = emissions.size(0)
        if emissions.size(1) == 0:
            return emissions.new_zeros(B)
        _, _, end = self._scores()
        log_z = torch.logsumexp(self._alphas(emissions, mask, open_start)[-1] + _unless(open_end, end, B), dim=1)
        return log_z.masked_fill(lengths == 0, 0.0)

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
        open_start: torch.Tensor | None = None, open_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sequence log P(y | x), (B,)."""
        return self.score(emissions, tags, mask, open_start, open_end) - self.log_partition(
            emissions, mask, open_start, open_end
        )

    def neg_log_likelihood(
        self,
        emissions: torch.Tensor,
        tags: torch.Tensor,
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
        open_start: torch.Tensor | None = None,
        open_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-log P(y | x) reduced over the batch: "mean" / "sum" / "none" / "token_mean".

        ``open_start`` / ``open_end`` (B,) bool, True where a row starts / ends inside a
        longer sequence: its start / end transition score is left out of both the gold
        score and log Z (a window's first word may be I-X without breaking BIO)."""
        nll = -self.log_likelihood(emissions, tags, mask, open_start, open_end)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean()
        if reduction == "token_mean":
            n_tok = emissions.size(0) * emissions.size(1) if mask is None else mask.sum()
            return nll.sum() / max(int(n_tok), 1)
        raise ValueError(f"unknown reduction {reduction!r}")

    def forward(self, emissions, tags, mask=None, reduction: str = "mean") -> torch.Tensor:
        """The training loss: negative log-likelihood (see :meth:`neg_log_likelihood`)."""
        return self.neg_log_likelihood(emissions, tags, mask, reduction)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[list[list[int]], torch.Tensor]:
        """Best path per item (each of its own length) and its eq. 12 score, (B,)."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return [[] for _ in range(B)], emissions.new_zeros(B)
        start, trans, end = self._scores()
        keep = torch.arange(K, device=emissions.device).expand(B, K)
        score = start + emissions[:, 0]
        history = []  # history[t-1][b, j] = best previous tag for tag j at t
        for t in range(1, T):
            best, idx = (score[:, :, None] + trans + emissions[:, t, None, :]).max(dim=1)
            score = torch.where(mask[:, t, None], best, score)
            history.append(torch.where(mask[:, t, None], idx, keep))  # padding: point to itself
        best_score, tag = (score + end).max(dim=1)
        # backtrack: identity pointers in the padding carry each item's last tag back to its end
        path = [tag]
        for idx in reversed(history):
            tag = idx.gather(1, tag[:, None]).squeeze(1)
            path.append(tag)
        path = torch.stack(path[::-1], dim=1).tolist()
        paths = [p[:n] for p, n in zip(path, lengths.tolist())]
        return paths, best_score.masked_fill(lengths == 0, 0.0)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Viterbi best tag ids per item, each list as long as its sequence."""
        return self.viterbi(emissions, mask)[0]

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior P(y_t = k | x) by forward-backward, (B, T, K); zero at padding."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return emissions.new_zeros(B, T, K)
        _, trans, end = self._scores()
        alphas = self._alphas(emissions, mask)
        # betas[t][b, i] = log-sum of scores of suffixes after t, given y_t = i (emission at t excluded)
        beta = end.expand(B, K)
        betas = [beta]
        for t in range(T - 2, -1, -1):
            nxt = torch.logsumexp(trans + (emissions[:, t + 1] + beta)[:, None, :], dim=2)
            beta = torch.where(mask[:, t + 1, None], nxt, end.expand(B, K))  # t = last token: just end
            betas.append(beta)
        betas = betas[::-1]
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)
        log_m = torch.stack(alphas, 1) + torch.stack(betas, 1) - log_z[:, None, None]
        return log_m.exp() * mask[..., None].float()

    def constrained_log_partition(
        self, emissions: torch.Tensor, mask: torch.Tensor | None, allowed: torch.Tensor
    ) -> torch.Tensor:
        """log Z over only the paths using allowed tags at every position, (B,).

        ``allowed`` (B, T, K) bool; disallowed tags get NEG added to their emission,
        so an impossible restriction gives ~NEG rather than -inf (no NaN gradients).
        """
        penalty = (~allowed.to(device=emissions.device, dtype=torch.bool)).float() * NEG
        return self.log_partition(emissions.float() + penalty, mask)

    @torch.no_grad()
    def span_probabilities(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor | None,
        spans: Sequence[tuple[int, int, Sequence[int], Sequence[int]]],
    ) -> list[float]:
        """P(entity span) for several spans of one sentence in one batched pass.

        ``emissions`` (T, K) or (1, T, K); each span is (start, end, tag_ids, forbid_after)
        with ``end`` exclusive, ``tag_ids`` the tag at each of positions start..end-1
        (e.g. [B-PER, I-PER]) and ``forbid_after`` tags the token at ``end`` may not
        take (e.g. [I-PER], so the entity really ends there; ignored at sentence end).
        P = exp(constrained_log_partition - log_partition).
        """
        if emissions.dim() == 3:
            if emissions.size(0) != 1:
                raise ValueError("span_probabilities takes one sentence: (T, K) or (1, T, K)")
            emissions = emissions[0]
            mask = None if mask is None else mask.reshape(-1)
        T, K = emissions.shape
        if not spans:
            return []
        if mask is None:
            mask = torch.ones(T, dtype=torch.bool, device=emissions.device)
        mask = mask.to(device=emissions.device, dtype=torch.bool)
        length = int(mask.sum())
        allowed = torch.ones(len(spans), T, K, dtype=torch.bool, device=emissions.device)
        for n, (start, end, tag_ids, forbid_after) in enumerate(spans):
            if not (0 <= start < end <= length) or len(tag_ids) != end - start:
                raise ValueError(f"bad span ({start}, {end}) with {len(tag_ids)} tags for length {length}")
            allowed[n, start:end] = False
            allowed[n, torch.arange(start, end), torch.as_tensor(list(tag_ids))] = True
            if end < length and len(forbid_after):
                allowed[n, end, torch.as_tensor(list(forbid_after))] = False
        em = emissions[None].expand(len(spans), T, K)
        mk = mask[None].expand(len(spans), T)
        log_z = self.log_partition(emissions[None], mask[None])
        log_p = self.constrained_log_partition(em, mk, allowed) - log_z
        return log_p.exp().clamp(max=1.0).tolist()

    def span_probability(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor | None,
        start: int,
        end: int,
        tag_ids: Sequence[int],
        forbid_after: Sequence[int] = (),
    ) -> float:
        """P(y[start:end] == tag_ids and y[end] not in forbid_after | x) for one sentence."""
        return self.span_probabilities(emissions, mask, [(start, end, tag_ids, forbid_after)])[0]
