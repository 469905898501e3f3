"""A batched, length-masked linear-chain CRF, written by hand in torch.

The score of a tag path y for a sentence S with image I is eq. 12 of the paper:

    P(y | S, I) = exp( sum_i E[i, y_i] + sum_{i=0..n} T[y_i, y_{i+1}] ) / Z

where E are the per-token emission scores (B, T, K) from the fusion model, T is
the (K, K) transition matrix and the i=0 / i=n terms are the start and end
transitions (y_0 = <start>, y_{n+1} = <end>).

Conventions:
- ``mask`` (B, T) marks real tokens and must be a prefix (left-aligned); a row
  may be all False (a sequence of length 0: log-likelihood 0, log Z 0, empty path).
- All arithmetic is float32 whatever the emissions' dtype (half/bf16 are cast
  inside), so mixed-precision training is safe.
- Optional BIO constraints are *penalties*: every disallowed start / transition
  / end gets ``NEG`` (-1e4) added to its score, in training (numerator and
  partition alike) and in decoding, marginals and span probabilities. The
  model therefore stays a proper distribution over all paths, in which
  disallowed paths carry probability ~exp(-1e4) = 0. Constraints given at
  construction are the model's own (used in training); ``constrained=True`` at
  call time adds BIO constraints from the label list (see :meth:`CRF.set_labels`),
  ``constrained=False`` drops every penalty.
- ``open_start`` / ``open_end`` (B,) mark windows that begin / end inside a
  post: their start / end transition (and its penalty) is left out of the path
  score and of log Z alike.

Why it is fast (``benchmarks/bench_crf.py``; method in docs/PERFORMANCE.md):
- log Z and the marginals use the *scaled* forward-backward algorithm in
  probability space: per time step one (B, K) x (K, K) product and a multiply
  (renormalised every ``_RENORM`` steps), where a log-space step needs a dozen
  kernels. The gradient of log Z is the marginals, so :class:`_LogPartition`
  computes it by one backward pass by hand instead of letting autograd replay
  every step.
- Every normaliser is checked: if any falls below ``_TINY`` (the mass shrinking
  that much between renormalisations: emission gaps of tens of nats at every
  step, or a restriction no path satisfies) or anything is non-finite, the call
  is redone in exact log space, so extreme inputs cost time, never accuracy.
- Viterbi precomputes every step's transition + emission scores, pads with
  the max-plus identity (so no masking inside the loop), alternates the layout
  of the score vector so each step is one add and one max, and backtracks in numpy.
- One sequence on a CPU (a post predicted alone) decodes and scores its spans in
  numpy (:func:`_viterbi_one`, :func:`_span_log_probs_one`): the same float32
  Viterbi arithmetic, and float64 log-space forward-backward, where a sequence of
  twenty tokens would otherwise cost some hundred small torch kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

NEG = -1e4  # score added to anything disallowed; exp(NEG) underflows to 0 in float32
_TINY = 1e-25  # a scaled normaliser below this sends the call to the exact log-space path
_RENORM = 4  # the scaled forward pass renormalises every this many steps

Span = tuple[int, int, Sequence[int], Sequence[int]]


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


def _fp32(device: torch.device):
    """Autocast off: the CRF's matrix products stay float32 inside a mixed-precision region."""
    return torch.autocast(device_type=device.type, enabled=False)


def _penalties(constraints, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, t, e = (torch.as_tensor(c, dtype=torch.bool) for c in constraints)
    if s.shape != (K,) or t.shape != (K, K) or e.shape != (K,):
        raise ValueError(f"constraints must have shapes ({K},), ({K}, {K}), ({K},)")
    return tuple(NEG * (~c).float() for c in (s, t, e))


# ---------------------------------------------------------------------- scaled forward-backward


@dataclass
class _Scaled:
    """The scaled forward pass (Rabiner's alpha-hat): every quantity is O(1).

    Step t (t >= 1) maps alpha-hat_{t-1} to ``(alpha-hat_{t-1} @ expT) * E[t] / s[t]`` with
    ``expT = exp(trans - tau)`` and ``E[t] = exp(em[t] - mu[t])``, so no entry exceeds 1;
    ``s[b, t]`` is the normaliser (1 between renormalisations and at padding). Past an
    item's length alpha-hat is set to 0.
    """

    alpha: torch.Tensor  # (B, T, K)
    s: torch.Tensor  # (B, T)
    E: torch.Tensor  # (B, T, K)
    mu: torch.Tensor  # (B, T) per-step emission maxima
    nu: torch.Tensor  # (B,) the start vector's maximum
    tau: torch.Tensor  # () the transition maximum
    expT: torch.Tensor  # (K, K)
    beta_last: torch.Tensor  # (B, K) beta-hat at each item's last token
    log_z: torch.Tensor  # (B,), 0 for empty rows
    mask: torch.Tensor
    last: torch.Tensor  # (B,) index of each item's last token (0 for empty rows)
    ok: bool  # every normaliser >= _TINY and log Z finite

    def offset(self) -> torch.Tensor:
        """(B, T): what step t adds to log Z, so log alpha_t = log alpha-hat_t + cumsum(offset)_t."""
        off = (self.s.log() + self.tau + self.mu) * self.mask
        off[:, 0] = (self.nu + self.s[:, 0].log()) * self.mask[:, 0]
        return off


def _scaled_forward(start, trans, end, em, mask, lengths, every: int = 0) -> _Scaled:
    """start/end (B, K), trans (K, K), em (B, T, K) float32 with padding zeroed; no autograd.

    The vector is renormalised every ``every`` (default ``_RENORM``) steps rather than
    every step: a step's entries are <= 1, so in between it can only grow K-fold or
    shrink, and ``ok`` turns False if it ever shrinks too far.
    """
    with _fp32(em.device):
        return _scaled_forward_fp32(start, trans, end, em, mask, lengths, every or _RENORM)


def _scaled_forward_fp32(start, trans, end, em, mask, lengths, every: int) -> _Scaled:
    B, T, K = em.shape
    tau = trans.max()
    expT = (trans - tau).exp()
    mu = em.amax(2)  # (B, T); 0 at padding, where em is 0
    E = (em - mu[..., None]).exp()
    u0 = start + em[:, 0]
    nu = u0.amax(1)
    a = (u0 - nu[:, None]).exp()
    s0 = a.sum(1, keepdim=True)
    a = a / s0
    ones = torch.ones_like(s0)
    alphas, norms = [a], [s0]
    for t, E_t in enumerate(E.unbind(1)[1:], start=1):
        a = torch.mm(a, expT).mul_(E_t)
        if t % every == 0 or t == T - 1:
            s_t = a.sum(1, keepdim=True)
            a = a / s_t
            norms.append(s_t)
        else:
            norms.append(ones)
        alphas.append(a)
    alpha = torch.stack(alphas, 1)
    s = torch.where(mask, torch.cat(norms, 1), 1.0)  # padding adds nothing to log Z
    last = (lengths - 1).clamp(min=0)
    eps = end.amax(1)
    s_end = (alpha[torch.arange(B, device=em.device), last] * (end - eps[:, None]).exp()).sum(1)
    alpha = alpha.masked_fill(~mask[..., None], 0.0)  # what ran past an item's end may be anything, even NaN
    # log Z = nu + sum_t log s_t + sum_{t>=1} (tau + mu_t) + log s_end + eps, summed in float64
    terms = s.log() + (mu + tau) * mask
    terms[:, 0] += nu - (mu[:, 0] + tau) * mask[:, 0] + s_end.log() + eps
    log_z = terms.double().sum(1).float().masked_fill(lengths == 0, 0.0)
    ok = bool(((torch.minimum(s.amin(), s_end.amin()) >= _TINY) & torch.isfinite(log_z).all()).item())
    beta_last = (end - eps[:, None]).exp() / s_end[:, None]
    return _Scaled(alpha, s, E, mu, nu, tau, expT, beta_last, log_z, mask, last, ok)


def _scaled_backward(sc: _Scaled) -> tuple[torch.Tensor, torch.Tensor]:
    """beta-hat (B, T, K): beta-hat_{t-1} = expT @ (E[t] * beta-hat_t) / s[t], beta-hat_{len-1} = w / s_end.

    alpha-hat * beta-hat are the marginals. Each item's recursion starts at its own last
    token by adding ``beta_last`` there, while steps past its length are zeroed: also
    returns that ``Ehat = E * mask / s`` (B, T, K).
    """
    with _fp32(sc.E.device):
        return _scaled_backward_fp32(sc)


def _scaled_backward_fp32(sc: _Scaled) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, K = sc.alpha.shape
    Ehat = sc.E * (sc.mask / sc.s)[..., None]
    inject = torch.zeros_like(sc.alpha)
    inject[torch.arange(B, device=inject.device), sc.last] = sc.beta_last
    inject = inject.unbind(1)
    expT_t = sc.expT.T
    b = inject[T - 1]
    betas = [b]
    Ehat_t = Ehat.unbind(1)
    for t in range(T - 1, 0, -1):
        b = torch.addmm(inject[t - 1], b * Ehat_t[t], expT_t)
        betas.append(b)
    return torch.stack(betas[::-1], 1), Ehat


@dataclass
class _Gold:
    """The gold paths' indicators: their score's gradient is these counts."""

    tags: torch.Tensor  # (B, T), 0 at padding
    maskf: torch.Tensor  # (B, T) float
    pairs: torch.Tensor  # (B, K*K) how often each (from, to) transition occurs
    first: torch.Tensor  # (B, 1) first tag
    last: torch.Tensor  # (B, 1) last tag
    nonempty: torch.Tensor  # (B,) float


def _gold_score(em, tags, mask, lengths, start, trans, end) -> tuple[torch.Tensor, _Gold]:
    """Score of the gold paths (B,): emissions and edges gathered, transitions as pair counts @ trans."""
    K = em.size(-1)
    tags = tags.to(em.device).long().masked_fill(~mask, 0)  # padded tags may be anything (-100)
    maskf = mask.float()
    s = em.gather(2, tags[..., None]).sum((1, 2))  # emissions are 0 at padding
    pairs = torch.zeros(tags.size(0), K * K, device=em.device)
    pairs.scatter_add_(1, tags[:, :-1] * K + tags[:, 1:], maskf[:, 1:])
    first, last = tags[:, :1], tags.gather(1, (lengths - 1).clamp(min=0)[:, None])
    nonempty = (lengths > 0).float()
    with _fp32(em.device):
        s = s + pairs @ trans.reshape(-1) + (start.gather(1, first) + end.gather(1, last)).squeeze(1) * nonempty
    return s, _Gold(tags, maskf, pairs, first, last, nonempty)


def _partition_grads(sc: _Scaled, g: torch.Tensor, needs) -> tuple | None:
    """g-weighted gradients of log Z: (d_start (B, K), d_trans, d_end (B, K), d_em), or None on overflow.

    d logZ / d em[t, j] = P(y_t = j); d / d start, end = the first / last token's
    marginals; d / d trans[i, j] = sum_t P(y_{t-1} = i, y_t = j).
    """
    B, T, K = sc.alpha.shape
    beta, Ehat = _scaled_backward(sc)
    if not bool(torch.isfinite(beta).all()):
        return None
    g3 = g[:, None, None]
    gamma = sc.alpha * beta * sc.mask[..., None] * g3  # g-weighted marginals
    d_start = gamma[:, 0] if needs[0] else None
    d_end = gamma[torch.arange(B, device=g.device), sc.last] if needs[2] else None
    d_trans = None
    if needs[1]:
        # P(y_{t-1}=i, y_t=j) = alpha_{t-1}(i) expT(i,j) E_t(j) beta_t(j) / s_t, summed over b, t
        right = (beta[:, 1:] * Ehat[:, 1:] * g3).reshape(-1, K)
        with _fp32(g.device):
            d_trans = (sc.alpha[:, :-1].reshape(-1, K).T @ right) * sc.expT
    return d_start, d_trans, d_end, gamma if needs[3] else None


def _exact_grads(inputs, g, mask, tags=None):
    """Gradients of log Z (or, with gold ``tags``, of the NLL) by autograd through exact log space."""
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_() for x in inputs]
        lengths = mask.sum(1)
        out = _log_z_exact(*inputs, mask, lengths)
        if tags is not None:
            start, trans, end, em = inputs
            out = out - _gold_score(em, tags, mask, lengths, start, trans, end)[0]
        return torch.autograd.grad(out, inputs, g)


class _LogPartition(torch.autograd.Function):
    """log Z whose gradient is the marginals, from one hand-written backward pass.

    The forward pass ran already (``sc``), outside autograd. No double backward.
    """

    @staticmethod
    def forward(ctx, start, trans, end, em, sc: _Scaled):  # noqa: D401
        ctx.sc = sc
        ctx.save_for_backward(start, trans, end, em)
        return sc.log_z.clone()

    @staticmethod
    def backward(ctx, g):
        grads = _partition_grads(ctx.sc, g, ctx.needs_input_grad)
        if grads is None:  # beyond the scaled range: exact log space by autograd
            grads = _exact_grads(ctx.saved_tensors, g, ctx.sc.mask)
        return (*grads, None)


class _NegLogLikelihood(torch.autograd.Function):
    """log Z - gold score, (B,): gradient = marginals - the gold path's indicators, all by hand."""

    @staticmethod
    def forward(ctx, start, trans, end, em, sc: _Scaled, gold_score, gold: _Gold):  # noqa: D401
        ctx.sc, ctx.gold = sc, gold
        ctx.save_for_backward(start, trans, end, em)
        return sc.log_z - gold_score

    @staticmethod
    def backward(ctx, g):
        sc, gold = ctx.sc, ctx.gold
        grads = _partition_grads(sc, g, ctx.needs_input_grad)
        if grads is None:
            return (*_exact_grads(ctx.saved_tensors, g, sc.mask, gold.tags), None, None, None)
        d_start, d_trans, d_end, d_em = grads
        w = g * gold.nonempty
        if d_start is not None:
            d_start = d_start.scatter_add(1, gold.first, -w[:, None])
        if d_end is not None:
            d_end = d_end.scatter_add(1, gold.last, -w[:, None])
        if d_trans is not None:
            K = d_trans.size(0)
            with _fp32(g.device):
                d_trans = d_trans - (g @ gold.pairs).view(K, K)
        if d_em is not None:
            d_em = d_em.scatter_add(2, gold.tags[..., None], -(g[:, None] * gold.maskf)[..., None])
        return d_start, d_trans, d_end, d_em, None, None, None


# ---------------------------------------------------------------------- exact log-space fallback


def _log_alphas(start, trans, em, mask) -> torch.Tensor:
    """log alpha (B, T, K) in log space, carried unchanged past each item's length."""
    alpha = start + em[:, 0]
    alphas = [alpha]
    for t in range(1, em.size(1)):
        nxt = torch.logsumexp(alpha[:, :, None] + trans + em[:, t, None, :], dim=1)
        alpha = torch.where(mask[:, t, None], nxt, alpha)
        alphas.append(alpha)
    return torch.stack(alphas, 1)


def _log_z_exact(start, trans, end, em, mask, lengths) -> torch.Tensor:
    log_z = torch.logsumexp(_log_alphas(start, trans, em, mask)[:, -1] + end, dim=1)
    return log_z.masked_fill(lengths == 0, 0.0)


def _log_betas(trans, end, em, mask) -> torch.Tensor:
    """log beta (B, T, K): suffix scores after t given y_t (emission at t excluded), end included."""
    T = em.size(1)
    beta = end
    betas = [beta]
    for t in range(T - 2, -1, -1):
        nxt = torch.logsumexp(trans + (em[:, t + 1] + beta)[:, None, :], dim=2)
        beta = torch.where(mask[:, t + 1, None], nxt, end)  # t = last token: just end
        betas.append(beta)
    return torch.stack(betas[::-1], 1)


@torch.no_grad()
def _normalised_fb(start, trans, end, em, mask, lengths):
    """(la, lb, offset, log_z): log alpha and log beta, shifted so la + lb = log marginal.

    la_t = log alpha_t - C_t, lb_t = log beta_t + C_t - log Z with C = cumsum(offset),
    so a span's log-probability needs only O(1)-sized numbers (see ``span_marginals``).
    The scaled pass gives them directly; extreme inputs take exact log space.
    """
    sc = _scaled_forward(start, trans, end, em, mask, lengths)
    if sc.ok:
        beta, _ = _scaled_backward(sc)
        if bool(torch.isfinite(beta).all()):
            return sc.alpha.log(), beta.log(), sc.offset(), sc.log_z
    log_a = _log_alphas(start, trans, em, mask)
    log_b = _log_betas(trans, end, em, mask)
    log_z = torch.logsumexp(log_a[:, -1] + end, dim=1)
    C = torch.logsumexp(log_a, dim=2)  # (B, T)
    offset = torch.cat([C[:, :1], C[:, 1:] - C[:, :-1]], 1)
    return log_a - C[..., None], log_b + (C - log_z[:, None])[..., None], offset, log_z.masked_fill(lengths == 0, 0.0)


# ---------------------------------------------------------------------- one sequence, in numpy


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    """log-sum-exp over ``axis``; -inf where every entry is -inf (call under np.errstate(divide="ignore"))."""
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


def _viterbi_one(start: np.ndarray, trans: np.ndarray, end: np.ndarray, em: np.ndarray) -> tuple[list[int], float]:
    """Best path of one sequence, em (n >= 1, K) float32: the batched Viterbi's float32 sums in
    the same order (score + (T + E_t)), so both give the same path and score."""
    n, K = em.shape
    score = start + em[0]
    back = np.empty((n - 1, K), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + (trans + em[t][None, :])  # [from, to]
        back[t - 1] = cand.argmax(0)
        score = cand[back[t - 1], np.arange(K)]
    final = score + end
    tag = int(final.argmax())
    best = final[tag]
    path = [tag]
    for t in range(n - 2, -1, -1):
        tag = int(back[t, tag])
        path.append(tag)
    return path[::-1], float(best)


def _span_log_probs_one(
    start: np.ndarray, trans: np.ndarray, end: np.ndarray, em: np.ndarray, spans: Sequence[Span]
) -> list[float]:
    """log P(span) for spans of one sequence (em (n >= 1, K)) by log-space forward-backward in
    float64: the quantity of :meth:`CRF.span_marginals`, for one item."""
    em, trans = em.astype(np.float64), trans.astype(np.float64)
    n, K = em.shape
    la = np.empty((n, K))
    lb = np.empty((n, K))
    la[0] = start + em[0]
    lb[n - 1] = end
    with np.errstate(divide="ignore", over="ignore"):
        # a step is m + log(exp(x - m) @ exp(T)): one product instead of a (K, K) log-sum-exp;
        # exp(T) overflows only for transition scores past ~700, which take the log-sum-exp
        # (and where every path carries a penalty, exp(NEG) = 0 leaves no mass: those too)
        exp_t = np.exp(trans)
        log_z = -np.inf
        if np.isfinite(exp_t).all():
            for t in range(1, n):
                m = la[t - 1].max()
                m = m if np.isfinite(m) else 0.0
                la[t] = np.log(np.exp(la[t - 1] - m) @ exp_t) + m + em[t]
            for t in range(n - 2, -1, -1):
                w = em[t + 1] + lb[t + 1]
                m = w.max()
                m = m if np.isfinite(m) else 0.0
                lb[t] = np.log(exp_t @ np.exp(w - m)) + m
            log_z = float(_lse(la[n - 1] + end, 0))
        if not np.isfinite(log_z):
            for t in range(1, n):
                la[t] = _lse(la[t - 1][:, None] + trans, 0) + em[t]
            for t in range(n - 2, -1, -1):
                lb[t] = _lse(trans + (em[t + 1] + lb[t + 1])[None, :], 1)
            log_z = float(_lse(la[n - 1] + end, 0))
        return _span_terms(la, lb, log_z, trans, em, spans)


def _span_terms(la, lb, log_z, trans, em, spans: Sequence[Span]) -> list[float]:
    """log P(span) from log alphas and betas (see :meth:`CRF.span_marginals`)."""
    n = len(em)
    out = []
    for s, e, tag_ids, forbid_after in spans:
        tags = list(tag_ids)
        v = la[s, tags[0]]
        for j in range(1, len(tags)):
            v += trans[tags[j - 1], tags[j]] + em[s + j, tags[j]]
        if e >= n:
            v += lb[n - 1, tags[-1]]
        else:
            nxt = trans[tags[-1]] + em[e] + lb[e]
            nxt[list(forbid_after)] = -np.inf
            v += _lse(nxt, 0)
        out.append(v - log_z)
    return out


# ---------------------------------------------------------------------- the module


class CRF(nn.Module):
    """Linear-chain CRF over K tags with start/end transitions (eq. 12).

    ``constraints`` is an optional (start_allowed, transitions_allowed, end_allowed)
    triple of bool tensors, e.g. from :func:`bio_constraints`; disallowed entries
    get ``NEG`` added to their score everywhere (see module docstring). ``labels``
    (optional, K names) lets decoding and marginals apply BIO constraints at call
    time (``constrained=True``) even when the model was trained without them.
    ``forward`` returns the mean negative log-likelihood, i.e. the training loss.
    """

    def __init__(
        self,
        num_tags: int,
        constraints: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        labels: Sequence[str] | None = None,
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
            start_pen, trans_pen, end_pen = _penalties(constraints, K)
        self.register_buffer("start_penalty", start_pen)
        self.register_buffer("transitions_penalty", trans_pen)
        self.register_buffer("end_penalty", end_pen)
        # call-time BIO penalties, derived from the labels: not saved (old checkpoints load as before)
        for name in ("bio_start_penalty", "bio_transitions_penalty", "bio_end_penalty"):
            self.register_buffer(name, None, persistent=False)
        self.labels: list[str] | None = None
        if labels is not None:
            self.set_labels(labels)

    def set_labels(self, labels: Sequence[str]) -> None:
        """Name the K tags, so that ``constrained=True`` can build BIO constraints from them."""
        labels = list(labels)
        if len(labels) != self.num_tags:
            raise ValueError(f"CRF has {self.num_tags} tags but {len(labels)} labels were given: {labels}")
        dev = self.transitions.device
        s, t, e = (p.to(dev) for p in _penalties(bio_constraints(labels), self.num_tags))
        self.bio_start_penalty, self.bio_transitions_penalty, self.bio_end_penalty = s, t, e
        self.labels = labels

    def reset_parameters(self) -> None:
        for p in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    @property
    def is_constrained(self) -> bool:
        """Whether the model's own (training-time) constraints forbid anything."""
        return bool((self.transitions_penalty != 0).any() or (self.start_penalty != 0).any()
                    or (self.end_penalty != 0).any())

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, constrained={self.is_constrained}"

    # ------------------------------------------------------------------ helpers

    def _penalty_set(self, constrained: bool | None):
        """(start, trans, end) penalties: the model's own (None), none (False), or own + BIO (True)."""
        own = (self.start_penalty, self.transitions_penalty, self.end_penalty)
        if constrained is None:
            return own
        if not constrained:
            return None
        if self.bio_transitions_penalty is None:
            if self.is_constrained:
                return own
            raise ValueError(
                "constrained=True needs the tag names to build BIO constraints: "
                "pass CRF(..., labels=...) or call crf.set_labels(labels)"
            )
        bio = (self.bio_start_penalty, self.bio_transitions_penalty, self.bio_end_penalty)
        return tuple(torch.minimum(a, b) for a, b in zip(own, bio))

    def _scores(self, constrained: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Effective float32 (start, transitions, end) scores, penalties included."""
        raw = (self.start_transitions.float(), self.transitions.float(), self.end_transitions.float())
        pen = self._penalty_set(constrained)
        return raw if pen is None else tuple(r + p for r, p in zip(raw, pen))

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

    @staticmethod
    def _open(flags, B: int, name: str, device) -> torch.Tensor | None:
        if flags is None:
            return None
        flags = torch.as_tensor(flags, dtype=torch.bool, device=device)
        if flags.dim() == 0:
            flags = flags.expand(B)
        if flags.shape != (B,):
            raise ValueError(f"{name} must be a bool tensor of shape ({B},), got {tuple(flags.shape)}")
        return flags

    def _edges(self, start, end, B: int, device, open_start=None, open_end=None):
        """Per-item (B, K) start and end scores; 0 where a window is open at that edge."""
        K = self.num_tags
        start, end = start.expand(B, K), end.expand(B, K)
        os_, oe = self._open(open_start, B, "open_start", device), self._open(open_end, B, "open_end", device)
        if os_ is not None:
            start = start.masked_fill(os_[:, None], 0.0)
        if oe is not None:
            end = end.masked_fill(oe[:, None], 0.0)
        return start, end

    # ------------------------------------------------------------------ training

    def score(
        self,
        emissions: torch.Tensor,
        tags: torch.Tensor,
        mask: torch.Tensor | None = None,
        open_start: torch.Tensor | None = None,
        open_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised log-score of the given paths (the exponent of eq. 12), (B,)."""
        prepared = self._prepared(emissions, mask, open_start, open_end)
        if prepared is None:
            return emissions.new_zeros(emissions.size(0))
        emissions, mask, lengths, start, trans, end = prepared
        return _gold_score(emissions, tags, mask, lengths, start, trans, end)[0]

    def _prepared(self, emissions, mask, open_start, open_end):
        """Checked inputs and the edge-adjusted scores ``(emissions, mask, lengths, start, trans, end)``,
        or None for a batch of empty sequences (every quantity is then 0)."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        if emissions.size(1) == 0:
            return None
        start, trans, end = self._scores()
        start, end = self._edges(start, end, emissions.size(0), emissions.device, open_start, open_end)
        return emissions, mask, lengths, start, trans, end

    def _log_partition(self, emissions, mask, lengths, start, trans, end) -> torch.Tensor:
        """log Z from prepared inputs: the scaled pass with its hand-written gradient, or exact log space."""
        with torch.no_grad():
            sc = _scaled_forward(start.detach(), trans.detach(), end.detach(), emissions.detach(), mask, lengths)
        if not sc.ok:
            return _log_z_exact(start, trans, end, emissions, mask, lengths)
        if torch.is_grad_enabled() and any(x.requires_grad for x in (start, trans, end, emissions)):
            return _LogPartition.apply(start, trans, end, emissions, sc)
        return sc.log_z

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
                      open_start: torch.Tensor | None = None, open_end: torch.Tensor | None = None) -> torch.Tensor:
        """log Z of eq. 12 (forward algorithm), (B,); 0 for empty sequences."""
        prepared = self._prepared(emissions, mask, open_start, open_end)
        return emissions.new_zeros(emissions.size(0)) if prepared is None else self._log_partition(*prepared)

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
                       open_start: torch.Tensor | None = None, open_end: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sequence log P(y | x), (B,)."""
        return -self._nll(emissions, tags, mask, open_start, open_end)

    def _nll(self, emissions, tags, mask, open_start, open_end) -> torch.Tensor:
        """-log P(y | x), (B,): one scaled forward pass, one hand-written backward (or exact log space)."""
        prepared = self._prepared(emissions, mask, open_start, open_end)
        if prepared is None:
            return emissions.new_zeros(emissions.size(0))
        emissions, mask, lengths, start, trans, end = prepared
        inputs = (start, trans, end, emissions)
        with torch.no_grad():
            sc = _scaled_forward(*(x.detach() for x in inputs), mask, lengths)
            if sc.ok:
                gold_score, gold = _gold_score(*(x.detach() for x in (emissions, tags)), mask, lengths,
                                               *(x.detach() for x in (start, trans, end)))
        if not sc.ok:
            return _log_z_exact(*inputs, mask, lengths) - _gold_score(emissions, tags, mask, lengths, start, trans, end)[0]
        if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
            return _NegLogLikelihood.apply(*inputs, sc, gold_score, gold)
        return sc.log_z - gold_score

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

        ``open_start`` / ``open_end``: optional bool (B,); True drops that item's start /
        end transition (and its constraint) from both the path score and log Z, for a
        training window that begins / ends inside a post.
        """
        if reduction not in ("none", "sum", "mean", "token_mean"):
            raise ValueError(f"unknown reduction {reduction!r}")
        nll = self._nll(emissions, tags, mask, open_start, open_end)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean()
        n_tok = emissions.size(0) * emissions.size(1) if mask is None else mask.sum()
        return nll.sum() / max(int(n_tok), 1)

    def forward(self, emissions, tags, mask=None, reduction: str = "mean", open_start=None, open_end=None) -> torch.Tensor:
        """The training loss: negative log-likelihood (see :meth:`neg_log_likelihood`)."""
        return self.neg_log_likelihood(emissions, tags, mask, reduction, open_start, open_end)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def viterbi(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None, constrained: bool | None = None
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Best path per item (each of its own length) and its eq. 12 score, (B,).

        ``constrained``: None uses the model's own constraints, True adds BIO
        constraints from the labels, False uses none.
        """
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return [[] for _ in range(B)], emissions.new_zeros(B)
        start, trans, end = self._scores(constrained)
        if B == 1 and emissions.device.type == "cpu":
            n = int(lengths[0])
            if n == 0:
                return [[]], emissions.new_zeros(1)
            path, best = _viterbi_one(*(x.detach().numpy() for x in (start, trans, end, emissions[0, :n])))
            return [path], torch.tensor([best], dtype=torch.float32)
        with torch.inference_mode():
            # step t's scores, with the max-plus identity at padding: each item's best
            # score rides unchanged to the end and its backpointers point to themselves
            eye = torch.full((K, K), float("-inf"), device=emissions.device).fill_diagonal_(0.0)
            M = torch.where(mask[:, 1:, None, None], trans + emissions[:, 1:, None, :], eye)  # [b, t-1, from, to]
            # alternate layouts, so the max of one step is already shaped for the next:
            # even steps reduce "from" on dim 1 of (B, from, to), odd ones on dim 2 of (B, to, from)
            M_even, M_odd = M[:, 0::2].unbind(1), M[:, 1::2].transpose(2, 3).unbind(1)
            score = (start + emissions[:, 0])[:, :, None]
            even, odd = [], []  # backpointers (B, 1, K) and (B, K, 1)
            for t in range(T - 1):
                if t % 2 == 0:
                    score, idx = (score + M_even[t // 2]).max(1, keepdim=True)
                    even.append(idx)
                else:
                    score, idx = (score + M_odd[t // 2]).max(2, keepdim=True)
                    odd.append(idx)
            best_score, tag = (score.reshape(B, K) + end).max(1)
            history = torch.empty(B, T - 1, K, dtype=torch.long, device=emissions.device)
            if even:
                history[:, 0::2] = torch.cat(even, 1)
            if odd:
                history[:, 1::2] = torch.cat(odd, 2).transpose(1, 2)
            best_score = best_score.masked_fill(lengths == 0, 0.0)
        # backtrack in numpy: one flat lookup per step
        flat = history.cpu().numpy().reshape(-1)
        offsets = np.arange(B)[None, :] * ((T - 1) * K) + (np.arange(T - 1) * K)[:, None]  # [t, b]
        tag = tag.cpu().numpy()
        cols = [tag]
        for t in range(T - 2, -1, -1):
            tag = flat[offsets[t] + tag]
            cols.append(tag)
        path = np.stack(cols[::-1], 1)
        paths = [p[:n] for p, n in zip(path.tolist(), lengths.tolist())]
        return paths, best_score.clone()  # a normal tensor, usable outside inference mode

    def decode(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None, constrained: bool | None = None
    ) -> list[list[int]]:
        """Viterbi best tag ids per item, each list as long as its sequence (see :meth:`viterbi`)."""
        return self.viterbi(emissions, mask, constrained)[0]

    @torch.no_grad()
    def marginals(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None, constrained: bool | None = None
    ) -> torch.Tensor:
        """Posterior P(y_t = k | x) by forward-backward, (B, T, K); zero at padding."""
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, K = emissions.shape
        if T == 0:
            return emissions.new_zeros(B, T, K)
        start, trans, end = self._scores(constrained)
        start, end = self._edges(start, end, B, emissions.device)
        la, lb, _, _ = _normalised_fb(start, trans, end, emissions, mask, lengths)
        return (la + lb).exp() * mask[..., None].float()

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
    def span_marginals(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor | None,
        spans: Sequence[Sequence[Span]],
        constrained: bool | None = None,
    ) -> list[list[float]]:
        """P(entity span) for every span of every item, from one forward-backward pass.

        ``emissions`` (B, T, K); ``spans[b]`` lists item b's spans as (start, end, tag_ids,
        forbid_after): ``end`` exclusive, ``tag_ids`` the tag at each position start..end-1
        (e.g. [B-PER, I-PER]), ``forbid_after`` the tags the token at ``end`` may not take
        (e.g. [I-PER], so the entity really ends there; ignored at the item's end).

            P = alpha_s(y_s) * prod_{t=s+1}^{e-1} exp(T[y_{t-1}, y_t] + E[t, y_t])
                * sum_{f not forbidden} exp(T[y_{e-1}, f] + E[e, f]) beta_e(f) / Z

        (the last factor is beta_{e-1}(y_{e-1}) when e is the item's end).
        """
        emissions, mask, lengths = self._prepare(emissions, mask)
        B, T, K = emissions.shape
        if len(spans) != B:
            raise ValueError(f"spans must list the spans of each of the {B} items, got {len(spans)} lists")
        flat = [(b, *sp) for b, item in enumerate(spans) for sp in item]
        if not flat:
            return [[] for _ in range(B)]
        dev = emissions.device
        N = len(flat)
        lens = lengths.tolist()
        # the span tables as Python rows, then one tensor each (a few ops, not a few per span)
        tag_rows, forbid_rows = [], []
        for b, s, e, tag_ids, forbid_after in flat:
            tag_ids = list(tag_ids)
            if not (0 <= s < e <= lens[b]) or len(tag_ids) != e - s:
                raise ValueError(f"item {b}: bad span ({s}, {e}) with {len(tag_ids)} tags for length {lens[b]}")
            if any(not 0 <= y < K for y in [*tag_ids, *forbid_after]):
                raise ValueError(f"item {b}: span ({s}, {e}) has a tag id outside 0..{K - 1}")
            tag_rows.append([0] * s + tag_ids + [0] * (T - e))
            row = [False] * K
            for y in forbid_after:
                row[y] = True
            forbid_rows.append(row)
        if B == 1 and dev.type == "cpu":
            start, trans, end = (x.detach().numpy() for x in self._scores(constrained))
            logp = _span_log_probs_one(start, trans, end, emissions[0, : lens[0]].numpy(), spans[0])
            return [[min(float(np.exp(v)), 1.0) for v in logp]]
        bi, st, en = torch.tensor([sp[:3] for sp in flat], dtype=torch.long, device=dev).unbind(1)
        tags = torch.tensor(tag_rows, dtype=torch.long, device=dev)
        forbid = torch.tensor(forbid_rows, dtype=torch.bool, device=dev)
        start, trans, end = self._scores(constrained)
        start, end = self._edges(start, end, B, dev)
        la, lb, offset, _ = _normalised_fb(start, trans, end, emissions, mask, lengths)
        rows = torch.arange(N, device=dev)
        em = emissions[bi]  # (N, T, K)
        head = la[bi, st, tags[rows, st]]
        # chain: positions s+1..e-1, each its transition + emission, less the step's offset
        t_idx = torch.arange(T, device=dev)
        inside = (t_idx > st[:, None]) & (t_idx < en[:, None])
        prev = tags.roll(1, dims=1)
        step = trans[prev, tags] + em.gather(2, tags[..., None]).squeeze(-1) - offset[bi]
        chain = (step * inside).sum(1)
        # tail: leave the entity at e (e < length), or end the item there
        y_last = tags[rows, en - 1]
        e_c = en.clamp(max=T - 1)
        nxt = trans[y_last] + em[rows, e_c] - offset[bi, e_c][:, None] + lb[bi, e_c]
        leave = torch.logsumexp(nxt.masked_fill(forbid, float("-inf")), dim=1)
        at_end = en >= lengths[bi]
        tail = torch.where(at_end, lb[bi, en - 1, y_last], leave)
        p = (head + chain + tail).exp().clamp(max=1.0).tolist()
        out: list[list[float]] = [[] for _ in range(B)]
        for (b, *_), v in zip(flat, p):
            out[b].append(v)
        return out

    @torch.no_grad()
    def span_probabilities(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor | None,
        spans: Sequence[Span],
        constrained: bool | None = None,
    ) -> list[float]:
        """P(entity span) for several spans of one sentence: (T, K) or (1, T, K); see :meth:`span_marginals`."""
        if emissions.dim() == 3:
            if emissions.size(0) != 1:
                raise ValueError("span_probabilities takes one sentence: (T, K) or (1, T, K)")
            emissions = emissions[0]
        mask = None if mask is None else mask.reshape(1, -1)
        if not spans:
            return []
        return self.span_marginals(emissions[None], mask, [list(spans)], constrained)[0]

    def span_probability(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor | None,
        start: int,
        end: int,
        tag_ids: Sequence[int],
        forbid_after: Sequence[int] = (),
        constrained: bool | None = None,
    ) -> float:
        """P(y[start:end] == tag_ids and y[end] not in forbid_after | x) for one sentence."""
        return self.span_probabilities(emissions, mask, [(start, end, tag_ids, forbid_after)], constrained)[0]
