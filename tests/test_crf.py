"""The hand-written CRF against brute-force enumeration of all K^T paths, and against pytorch-crf."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bfcl.model.crf import CRF, NEG, bio_constraints

LABELS = {3: ["O", "B-X", "I-X"], 5: ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}
LENGTHS = [4, 1, 3, 0, 2]  # one batch: different lengths, incl. 1 and an empty sequence
T_MAX = max(LENGTHS)


def make_crf(K: int, constrained: bool) -> CRF:
    crf = CRF(K, constraints=bio_constraints(LABELS[K]) if constrained else None)
    with torch.no_grad():  # larger than the init so that transitions matter
        for p in crf.parameters():
            p.normal_(0, 1.0)
    return crf


def make_batch(K: int, lengths=LENGTHS, pad_value: float = 0.0):
    B = len(lengths)
    mask = torch.arange(T_MAX)[None] < torch.tensor(lengths)[:, None]
    emissions = torch.randn(B, T_MAX, K) * 2
    emissions = emissions.masked_fill(~mask[..., None], pad_value)
    return emissions, mask


# ---------------------------------------------------------------- brute force


def allowed_paths(K: int, n: int, constrained: bool):
    """All tag paths of length n (only the BIO-legal ones when constrained)."""
    s, t, e = bio_constraints(LABELS[K])
    for path in itertools.product(range(K), repeat=n):
        if constrained and n and not (
            s[path[0]] and e[path[-1]] and all(t[a, b] for a, b in zip(path, path[1:]))
        ):
            continue
        yield path


def path_score(crf: CRF, em: torch.Tensor, path) -> float:
    """Eq. 12's exponent from the raw parameters, in float64 (no penalties)."""
    if not path:
        return 0.0
    st, tr, en = (p.detach().double() for p in (crf.start_transitions, crf.transitions, crf.end_transitions))
    em = em.double()
    s = st[path[0]] + en[path[-1]] + sum(em[i, y] for i, y in enumerate(path))
    s = s + sum(tr[a, b] for a, b in zip(path, path[1:]))
    return float(s)


def brute(crf: CRF, em: torch.Tensor, n: int, constrained: bool, keep=lambda path: True):
    """{path: score} over the (legal) paths of length n that ``keep`` accepts."""
    K = em.size(-1)
    return {p: path_score(crf, em, p) for p in allowed_paths(K, n, constrained) if keep(p)}


def logsumexp(xs) -> float:
    xs = list(xs)
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


CASES = [(K, c) for K in (3, 5) for c in (False, True)]


# ---------------------------------------------------------------- against brute force


@pytest.mark.parametrize("K,constrained", CASES)
def test_log_partition(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    log_z = crf.log_partition(em, mask)
    assert log_z.shape == (len(LENGTHS),) and log_z.dtype == torch.float32
    for b, n in enumerate(LENGTHS):
        ref = 0.0 if n == 0 else logsumexp(brute(crf, em[b], n, constrained).values())
        assert log_z[b].item() == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("K,constrained", CASES)
def test_log_likelihood(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    g = torch.Generator().manual_seed(1)
    tags = torch.full((len(LENGTHS), T_MAX), -100, dtype=torch.long)  # padding tags are ignored
    for b, n in enumerate(LENGTHS):
        legal = list(allowed_paths(K, n, constrained))
        tags[b, :n] = torch.tensor(legal[torch.randint(len(legal), (1,), generator=g).item()])
    ll = crf.log_likelihood(em, tags, mask)
    for b, n in enumerate(LENGTHS):
        paths = brute(crf, em[b], n, constrained)
        ref = 0.0 if n == 0 else paths[tuple(tags[b, :n].tolist())] - logsumexp(paths.values())
        assert ll[b].item() == pytest.approx(ref, abs=1e-4)
    nll = crf.neg_log_likelihood(em, tags, mask, reduction="none")
    torch.testing.assert_close(nll, -ll)
    torch.testing.assert_close(crf.neg_log_likelihood(em, tags, mask, reduction="sum"), -ll.sum())
    torch.testing.assert_close(crf.neg_log_likelihood(em, tags, mask), -ll.mean())
    torch.testing.assert_close(crf(em, tags, mask), -ll.mean())
    torch.testing.assert_close(
        crf.neg_log_likelihood(em, tags, mask, reduction="token_mean"), -ll.sum() / sum(LENGTHS)
    )


def test_illegal_gold_path_is_penalised():
    crf = make_crf(3, constrained=True)
    em, mask = make_batch(3, lengths=[2])
    ll = crf.log_likelihood(em, torch.tensor([[2, 2, 0, 0]]), mask)  # starts with I-X
    assert ll.item() < NEG / 2


@pytest.mark.parametrize("K,constrained", CASES)
def test_viterbi(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    paths, scores = crf.viterbi(em, mask)
    assert crf.decode(em, mask) == paths
    for b, n in enumerate(LENGTHS):
        assert len(paths[b]) == n
        ref = brute(crf, em[b], n, constrained)
        best = max(ref, key=ref.get) if n else ()
        assert tuple(paths[b]) == best
        assert scores[b].item() == pytest.approx(ref[best] if n else 0.0, abs=1e-4)


@pytest.mark.parametrize("K,constrained", CASES)
def test_marginals(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    marg = crf.marginals(em, mask)
    assert marg.shape == (len(LENGTHS), T_MAX, K)
    for b, n in enumerate(LENGTHS):
        paths = brute(crf, em[b], n, constrained)
        log_z = logsumexp(paths.values()) if n else 0.0
        ref = torch.zeros(T_MAX, K, dtype=torch.float64)
        for p, s in paths.items():
            for t, y in enumerate(p):
                ref[t, y] += math.exp(s - log_z)
        torch.testing.assert_close(marg[b].double(), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("K,constrained", CASES)
def test_constrained_log_partition(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    allowed = torch.rand(len(LENGTHS), T_MAX, K) < 0.6
    allowed[..., 0] = True  # "O" always allowed, so some legal path exists
    got = crf.constrained_log_partition(em, mask, allowed)
    for b, n in enumerate(LENGTHS):
        keep = lambda p, b=b: all(allowed[b, t, y] for t, y in enumerate(p))  # noqa: E731
        ref = 0.0 if n == 0 else logsumexp(brute(crf, em[b], n, constrained, keep).values())
        assert got[b].item() == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("K,constrained", CASES)
def test_span_probability(K, constrained):
    crf = make_crf(K, constrained)
    em, _ = make_batch(K, lengths=[4])
    B, I = 1, 2  # B-X / I-X (B-PER / I-PER for K=5)
    paths = brute(crf, em[0], 4, constrained)
    log_z = logsumexp(paths.values())

    def ref(start, end, tags, forbid):
        def keep(p):
            return tuple(p[start:end]) == tuple(tags) and (end >= len(p) or p[end] not in forbid)
        return sum(math.exp(s - log_z) for p, s in paths.items() if keep(p))

    spans = [(0, 1, [B], [I]), (1, 3, [B, I], [I]), (2, 4, [B, I], [I]), (3, 4, [B], [I]), (1, 2, [B], [])]
    got = crf.span_probabilities(em[0], None, spans)
    for (s, e, tags, forbid), p in zip(spans, got):
        assert p == pytest.approx(ref(s, e, tags, forbid), abs=1e-5)
        assert crf.span_probability(em, None, s, e, tags, forbid) == pytest.approx(p, abs=1e-6)
    # one sentence in a padded batch row: the mask confines the span to the real tokens
    em_pad = torch.cat([em[0], torch.randn(3, K) * 50])
    mask_pad = torch.arange(7) < 4
    got_pad = crf.span_probabilities(em_pad, mask_pad, spans)
    assert got_pad == pytest.approx(got, abs=1e-5)
    with pytest.raises(ValueError):
        crf.span_probability(em_pad, mask_pad, 3, 5, [B, I], [I])  # runs into the padding


# ---------------------------------------------------------------- batching, padding, edge cases


@pytest.mark.parametrize("constrained", [False, True])
def test_padding_invariance(constrained):
    K = 5
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    tags = torch.randint(K, (len(LENGTHS), T_MAX))
    garbage = em.clone()
    garbage[~mask] = torch.tensor([1e6, -1e6, float("inf"), float("nan"), 3.0])
    garbage_tags = tags.masked_fill(~mask, -100)
    for e, tg in ((em, tags), (garbage, garbage_tags)):
        ll = crf.log_likelihood(e, tg, mask)
        log_z = crf.log_partition(e, mask)
        paths, scores = crf.viterbi(e, mask)
        marg = crf.marginals(e, mask)
        for b, n in enumerate(LENGTHS):  # each item alone, unpadded
            one_e, one_t = em[b : b + 1, :n], tags[b : b + 1, :n]
            assert ll[b].item() == pytest.approx(crf.log_likelihood(one_e, one_t).item(), abs=1e-4)
            assert log_z[b].item() == pytest.approx(crf.log_partition(one_e).item(), abs=1e-4)
            one_paths, one_scores = crf.viterbi(one_e)
            assert paths[b] == one_paths[0]
            assert scores[b].item() == pytest.approx(one_scores.item(), abs=1e-4)
            torch.testing.assert_close(marg[b, :n], crf.marginals(one_e)[0], atol=1e-5, rtol=1e-5)
            assert (marg[b, n:] == 0).all()
    # garbage in padding never leaks into gradients either
    g = garbage.clone().requires_grad_()
    crf.neg_log_likelihood(g, garbage_tags, mask).backward()
    assert torch.isfinite(g.grad).all() and (g.grad[~mask] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in crf.parameters())


def test_empty_and_single_token():
    crf = make_crf(3, constrained=False)
    em = torch.randn(2, 3, 3)
    mask = torch.tensor([[False] * 3, [True, False, False]])
    tags = torch.tensor([[0, 0, 0], [1, 0, 0]])
    ll = crf.log_likelihood(em, tags, mask)
    assert ll[0].item() == 0.0
    st, en = crf.start_transitions.detach(), crf.end_transitions.detach()
    one = st + em[1, 0] + en
    assert ll[1].item() == pytest.approx((one[1] - torch.logsumexp(one, 0)).item(), abs=1e-5)
    assert crf.log_partition(em, mask)[0].item() == 0.0
    assert crf.decode(em, mask) == [[], [int(one.argmax())]]
    torch.testing.assert_close(crf.marginals(em, mask)[1, 0], one.softmax(0))
    # a batch with no time steps at all
    empty = torch.zeros(2, 0, 3)
    assert crf.log_partition(empty).tolist() == [0.0, 0.0]
    assert crf.log_likelihood(empty, torch.zeros(2, 0, dtype=torch.long)).tolist() == [0.0, 0.0]
    assert crf.decode(empty) == [[], []]
    assert crf.marginals(empty).shape == (2, 0, 3)


def test_rejects_non_prefix_mask_and_bad_shapes():
    crf = CRF(3)
    with pytest.raises(ValueError):
        crf.log_partition(torch.randn(1, 3, 3), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError):
        crf.log_partition(torch.randn(1, 3, 4))
    with pytest.raises(ValueError):
        CRF(3, constraints=bio_constraints(LABELS[5]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_emissions_computed_in_float32(dtype):
    crf = make_crf(5, constrained=True)
    em, mask = make_batch(5)
    em_low = em.to(dtype).requires_grad_()
    tags = torch.zeros(len(LENGTHS), T_MAX, dtype=torch.long)
    ll = crf.log_likelihood(em_low, tags, mask)
    assert ll.dtype == torch.float32
    torch.testing.assert_close(ll, crf.log_likelihood(em_low.detach().float(), tags, mask))
    ll.sum().backward()
    assert em_low.grad.dtype == dtype and torch.isfinite(em_low.grad.float()).all()
    assert crf.marginals(em_low, mask).dtype == torch.float32
    assert crf.decode(em_low, mask) == crf.decode(em_low.detach().float(), mask)


def test_bio_constraints():
    start, trans, end = bio_constraints(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "<pad>"])
    assert start.tolist() == [True, True, False, True, False, True]
    assert end.all()
    to_i_per = trans[:, 2].tolist()
    assert to_i_per == [False, True, True, False, False, False]
    assert trans[:, 4].tolist() == [False, False, False, True, True, False]
    assert trans[:, [0, 1, 3, 5]].all()
    crf = CRF(6, constraints=(start, trans, end))
    assert "constrained=True" in repr(crf)
    assert set(crf.state_dict()) >= {"start_penalty", "transitions_penalty", "end_penalty"}


def test_constrained_decode_is_legal():
    """Even emissions that strongly favour I-X first never yield an illegal path."""
    crf = CRF(5, constraints=bio_constraints(LABELS[5]))
    em = torch.zeros(1, 4, 5)
    em[0, :, 4] = 10.0  # I-LOC everywhere
    assert crf.decode(em) == [[3, 4, 4, 4]]


def test_training_raises_gold_likelihood():
    """Gradients reach the parameters: a tiny emission model + CRF fits a fixed dataset."""
    K, D = 5, 8
    feats = torch.randn(6, T_MAX, D)
    tags = torch.randint(K, (6, T_MAX))
    mask = torch.arange(T_MAX)[None] < torch.tensor([4, 3, 2, 1, 4, 3])[:, None]
    proj, crf = torch.nn.Linear(D, K), CRF(K)
    opt = torch.optim.Adam([*proj.parameters(), *crf.parameters()], lr=0.1)
    before = crf.log_likelihood(proj(feats), tags, mask).exp()
    for _ in range(150):
        opt.zero_grad()
        loss = crf(proj(feats), tags, mask)
        loss.backward()
        opt.step()
    after = crf.log_likelihood(proj(feats), tags, mask).exp()
    assert (after > 0.9).all(), (before, after)
    assert crf.transitions.grad is not None and crf.transitions.grad.abs().sum() > 0


# ---------------------------------------------------------------- against pytorch-crf


@pytest.mark.parametrize("K", [3, 9])
def test_matches_pytorch_crf(K):
    torchcrf = pytest.importorskip("torchcrf")
    ours = make_crf(K, constrained=False)
    ref = torchcrf.CRF(K, batch_first=True)
    with torch.no_grad():
        for name in ("start_transitions", "end_transitions", "transitions"):
            getattr(ref, name).copy_(getattr(ours, name))
    lengths = [7, 1, 5, 3, 7, 2]  # pytorch-crf needs length >= 1
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    em = torch.randn(len(lengths), 7, K) * 3
    tags = torch.randint(K, (len(lengths), 7))
    torch.testing.assert_close(
        ours.log_likelihood(em, tags, mask), ref(em, tags, mask, reduction="none"), atol=1e-4, rtol=1e-5
    )
    assert ours.decode(em, mask) == ref.decode(em, mask)


# ---------------------------------------------------------------- penalised brute force (any penalty set, open edges)


def penalised(crf: CRF, em: torch.Tensor, n: int, constrained=None, open_start=False, open_end=False):
    """{path: score} over ALL K^n paths, penalties included as the CRF applies them, in float64."""
    K = em.size(-1)
    pen = crf._penalty_set(constrained)
    st, tr, en = (p.detach().double() for p in (crf.start_transitions, crf.transitions, crf.end_transitions))
    if pen is not None:
        st, tr, en = st + pen[0].double(), tr + pen[1].double(), en + pen[2].double()
    em = em.double()
    out = {}
    for p in itertools.product(range(K), repeat=n):
        s = sum(em[i, y] for i, y in enumerate(p)) + sum(tr[a, b] for a, b in zip(p, p[1:]))
        s = s + (0.0 if open_start else st[p[0]]) + (0.0 if open_end else en[p[-1]])
        out[p] = float(s)
    return out


def exact_grads(crf: CRF, em, mask, open_start=None, open_end=None):
    """Gradients of sum(log Z) by autograd through the exact log-space forward algorithm."""
    from bfcl.model.crf import _log_z_exact

    crf.zero_grad()
    e = em.clone().requires_grad_()
    ep, m, lengths = crf._prepare(e, mask)
    start, trans, end = crf._scores()
    start, end = crf._edges(start, end, e.size(0), e.device, open_start, open_end)
    _log_z_exact(start, trans, end, ep, m, lengths).sum().backward()
    out = [e.grad.clone()] + [p.grad.clone() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)]
    crf.zero_grad()
    return out


def fast_grads(crf: CRF, em, mask, open_start=None, open_end=None):
    crf.zero_grad()
    e = em.clone().requires_grad_()
    crf.log_partition(e, mask, open_start, open_end).sum().backward()
    out = [e.grad.clone()] + [p.grad.clone() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)]
    crf.zero_grad()
    return out


OPEN_START = torch.tensor([True, False, True, False, True])
OPEN_END = torch.tensor([False, True, True, False, True])


@pytest.mark.parametrize("K,constrained", CASES)
def test_open_edges_against_brute_force(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    tags = torch.randint(K, (len(LENGTHS), T_MAX))
    tags[0, 0] = K - 1  # an I- tag first: illegal at a closed start, fine at an open one
    log_z = crf.log_partition(em, mask, OPEN_START, OPEN_END)
    ll = crf.log_likelihood(em, tags, mask, OPEN_START, OPEN_END)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            assert log_z[b].item() == 0.0 and ll[b].item() == 0.0
            continue
        paths = penalised(crf, em[b], n, None, bool(OPEN_START[b]), bool(OPEN_END[b]))
        ref_z = logsumexp(paths.values())
        assert log_z[b].item() == pytest.approx(ref_z, abs=1e-4)
        # (an illegal gold path scores ~2 NEG, where float32 resolves ~1e-3)
        assert ll[b].item() == pytest.approx(paths[tuple(tags[b, :n].tolist())] - ref_z, abs=1e-4, rel=1e-6)
    nll = crf.neg_log_likelihood(em, tags, mask, reduction="none", open_start=OPEN_START, open_end=OPEN_END)
    torch.testing.assert_close(nll, -ll)
    # closed edges are the default, and a scalar flag applies to every item
    torch.testing.assert_close(crf.log_partition(em, mask, torch.zeros(5, dtype=torch.bool)), crf.log_partition(em, mask))
    torch.testing.assert_close(crf.log_partition(em, mask, True), crf.log_partition(em, mask, torch.ones(5, dtype=torch.bool)))
    with pytest.raises(ValueError, match="open_start"):
        crf.log_partition(em, mask, torch.ones(3, dtype=torch.bool))


def test_window_starting_inside_an_entity_is_not_penalised_when_open():
    """Issue 8: a window whose gold starts with I-X under BIO constraints, with and without an open start."""
    crf = make_crf(5, constrained=True)
    em, mask = make_batch(5, lengths=[4])
    gold = torch.tensor([[2, 2, 0, 1]])  # I-PER I-PER O B-PER
    closed = crf.neg_log_likelihood(em, gold, mask)
    opened = crf.neg_log_likelihood(em, gold, mask, open_start=torch.tensor([True]))
    assert closed.item() > -NEG / 2 and 0 < opened.item() < 50
    g = em.clone().requires_grad_()
    crf.neg_log_likelihood(g, gold, mask, open_start=torch.tensor([True]), open_end=torch.tensor([True])).backward()
    assert torch.isfinite(g.grad).all()


@pytest.mark.parametrize("K,constrained", CASES)
def test_hand_written_gradient_matches_autograd_of_exact_forward(K, constrained):
    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    for edges in ((None, None), (OPEN_START, OPEN_END)):
        for got, ref in zip(fast_grads(crf, em, mask, *edges), exact_grads(crf, em, mask, *edges)):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_large_batch_gradients_and_renormalisation():
    """Benchmark-sized input: gradients as autograd's, and log Z independent of how often the pass renormalises."""
    from bfcl.model.crf import _scaled_forward

    torch.manual_seed(3)
    K, B, T = 9, 6, 64
    crf = CRF(K)
    lengths = torch.tensor([64, 1, 33, 17, 63, 0])
    mask = torch.arange(T)[None] < lengths[:, None]
    em = torch.randn(B, T, K) * 3
    for got, ref in zip(fast_grads(crf, em, mask), exact_grads(crf, em, mask)):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    ep, m, n = crf._prepare(em, mask)
    s, t, e = (x.detach() for x in crf._scores())
    s, e = crf._edges(s, e, B, em.device)
    every = [_scaled_forward(s, t, e, ep, m, n, every=k).log_z for k in (1, 2, 4, 7)]
    for z in every[1:]:
        torch.testing.assert_close(z, every[0], atol=1e-4, rtol=1e-6)


# ---------------------------------------------------------------- call-time constraints


@pytest.mark.parametrize("K", [3, 5])
def test_call_time_constraints_against_brute_force(K):
    """A CRF trained without constraints, decoded and scored with BIO constraints from its labels."""
    crf = make_crf(K, constrained=False)
    crf.set_labels(LABELS[K])
    em, mask = make_batch(K)
    paths = crf.decode(em, mask, constrained=True)
    marg = crf.marginals(em, mask, constrained=True)
    for b, n in enumerate(LENGTHS):
        legal = brute(crf, em[b], n, constrained=True)  # legal paths only, raw scores
        assert tuple(paths[b]) == (max(legal, key=legal.get) if n else ())
        log_z = logsumexp(legal.values()) if n else 0.0
        ref = torch.zeros(T_MAX, K, dtype=torch.float64)
        for p, s in legal.items():
            for t, y in enumerate(p):
                ref[t, y] += math.exp(s - log_z)
        torch.testing.assert_close(marg[b].double(), ref, atol=1e-5, rtol=1e-4)
    # the default and constrained=False are the model's own (here: none)
    plain = crf.decode(em, mask)
    assert crf.decode(em, mask, constrained=False) == plain
    torch.testing.assert_close(crf.marginals(em, mask, constrained=False), crf.marginals(em, mask))


def test_constrained_false_drops_a_models_own_constraints():
    constrained, free = make_crf(5, True), CRF(5)
    free.load_state_dict({k: v for k, v in constrained.state_dict().items() if "penalty" not in k}, strict=False)
    em, mask = make_batch(5)
    assert constrained.decode(em, mask, constrained=False) == free.decode(em, mask)
    torch.testing.assert_close(constrained.marginals(em, mask, constrained=False), free.marginals(em, mask))
    # constrained=True on a model with its own constraints and no labels: its own
    assert constrained.decode(em, mask, constrained=True) == constrained.decode(em, mask)


def test_call_time_constraints_need_labels():
    crf = CRF(5)
    em, mask = make_batch(5)
    with pytest.raises(ValueError, match="set_labels"):
        crf.decode(em, mask, constrained=True)
    with pytest.raises(ValueError, match="5 tags but 3 labels"):
        crf.set_labels(LABELS[3])
    # the label-derived penalties are not saved: old checkpoints load, new ones keep their keys
    with_labels = CRF(5, labels=LABELS[5])
    assert set(with_labels.state_dict()) == set(crf.state_dict())
    with_labels.load_state_dict(crf.state_dict())
    assert with_labels.labels == LABELS[5]


# ---------------------------------------------------------------- span marginals


def span_ref(paths: dict, start, end, tags, forbid) -> float:
    log_z = logsumexp(paths.values())

    def keep(p):
        return tuple(p[start:end]) == tuple(tags) and (end >= len(p) or p[end] not in forbid)

    return sum(math.exp(s - log_z) for p, s in paths.items() if keep(p))


@pytest.mark.parametrize("K,constrained", CASES)
@pytest.mark.parametrize("call_time", [None, True])
def test_span_marginals_batched_against_brute_force(K, constrained, call_time):
    crf = make_crf(K, constrained)
    crf.set_labels(LABELS[K])
    em, mask = make_batch(K)
    B_, I_ = 1, 2
    spans = [
        [(0, 1, [B_], [I_]), (1, 3, [B_, I_], [I_]), (2, 4, [B_, I_], [I_]), (3, 4, [B_], [I_]), (0, 4, [B_, I_, I_, I_], [])],
        [(0, 1, [B_], [I_])],
        [(0, 2, [B_, I_], [I_]), (2, 3, [I_], []), (1, 2, [0], [I_, B_])],
        [],
        [(1, 2, [B_], [I_]), (0, 2, [0, B_], [I_])],
    ]
    got = crf.span_marginals(em, mask, spans, constrained=call_time)
    assert [len(g) for g in got] == [len(s) for s in spans]
    for b, n in enumerate(LENGTHS):
        if not spans[b]:
            continue
        paths = penalised(crf, em[b], n, call_time)
        for (s, e, tags, forbid), p in zip(spans[b], got[b]):
            assert p == pytest.approx(span_ref(paths, s, e, tags, forbid), abs=1e-5)
        one = crf.span_probabilities(em[b], mask[b], spans[b], constrained=call_time)
        assert one == pytest.approx(got[b], abs=1e-6)


def test_span_marginals_reject_bad_spans():
    crf = make_crf(5, False)
    em, mask = make_batch(5)
    with pytest.raises(ValueError, match="item 2: bad span"):
        crf.span_marginals(em, mask, [[], [], [(2, 4, [1, 2], [2])], [], []])  # item 2 has 3 tokens
    with pytest.raises(ValueError, match="outside 0..4"):
        crf.span_marginals(em, mask, [[(0, 1, [7], [])], [], [], [], []])
    with pytest.raises(ValueError, match="each of the 5 items"):
        crf.span_marginals(em, mask, [[]])


# ---------------------------------------------------------------- the exact log-space fallback


def test_extreme_emissions_take_the_exact_path():
    """Emission gaps of hundreds of nats underflow the scaled pass: results come from exact log space."""
    from bfcl.model.crf import _scaled_forward

    torch.manual_seed(4)
    crf = make_crf(5, constrained=True)
    crf.set_labels(LABELS[5])
    em, mask = make_batch(5)
    em = em * 150
    ep, m, n = crf._prepare(em, mask)
    s, t, e = (x.detach() for x in crf._scores())
    s, e = crf._edges(s, e, len(LENGTHS), em.device)
    assert not _scaled_forward(s, t, e, ep, m, n).ok
    assert _scaled_forward(s, t, e, ep / 150, m, n).ok
    log_z = crf.log_partition(em, mask)
    marg = crf.marginals(em, mask)
    for b, n_ in enumerate(LENGTHS):
        ref = 0.0 if n_ == 0 else logsumexp(penalised(crf, em[b], n_).values())
        assert log_z[b].item() == pytest.approx(ref, rel=1e-6, abs=1e-3)
    # log alpha, log beta are ~1e3 here, where float32 resolves ~1e-4
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-3, rtol=0)
    for got, ref in zip(fast_grads(crf, em, mask), exact_grads(crf, em, mask)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    p = crf.span_marginals(em, mask, [[(0, 2, [1, 2], [2])], [], [], [], []])[0][0]
    assert 0.0 <= p <= 1.0


def test_impossible_restriction_is_finite():
    crf = make_crf(5, constrained=True)
    em, mask = make_batch(5, lengths=[3])
    allowed = torch.zeros(1, T_MAX, 5, dtype=torch.bool)
    allowed[0, 0, 0] = True  # O, then only I-PER: every path breaks a constraint
    allowed[0, 1:, 2] = True
    g = em.clone().requires_grad_()
    z = crf.constrained_log_partition(g, mask, allowed)
    assert torch.isfinite(z).all() and z.item() < NEG / 2
    z.sum().backward()
    assert torch.isfinite(g.grad).all()


def test_autocast_keeps_float32():
    crf = make_crf(5, constrained=True)
    em, mask = make_batch(5)
    tags = torch.randint(5, (len(LENGTHS), T_MAX))
    ref = crf.neg_log_likelihood(em, tags, mask, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crf.neg_log_likelihood(em, tags, mask, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("B,T", [(16, 40), (32, 64)])
def test_matches_pytorch_crf_at_benchmark_sizes(B, T):
    """The benchmark's sizes: NLL against pytorch-crf in float64 (its float32 result is off by ~1e-4 itself)."""
    torchcrf = pytest.importorskip("torchcrf")
    torch.manual_seed(5)
    K = 9
    ours, ref = CRF(K), torchcrf.CRF(K, batch_first=True).double()
    with torch.no_grad():
        for name in ("start_transitions", "end_transitions", "transitions"):
            getattr(ref, name).copy_(getattr(ours, name).double())
    lengths = torch.randint(1, T + 1, (B,))
    mask = torch.arange(T)[None] < lengths[:, None]
    em = (torch.randn(B, T, K) * 3).requires_grad_()
    tags = torch.randint(K, (B, T))
    nll = ours.neg_log_likelihood(em, tags, mask, reduction="none")
    e64 = em.detach().double().requires_grad_()
    ref_nll = -ref(e64, tags, mask, reduction="none")
    torch.testing.assert_close(nll.double(), ref_nll.detach(), atol=1e-4, rtol=0)
    nll.sum().backward()
    ref_nll.sum().backward()
    torch.testing.assert_close(em.grad.double(), e64.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.transitions.grad.double(), ref.transitions.grad, atol=1e-4, rtol=1e-4)
    assert ours.decode(em.detach(), mask) == ref.decode(e64.detach(), mask)


def test_backward_overflow_takes_the_exact_path(monkeypatch):
    """If the scaled backward pass ever overflows, gradients and marginals come from exact log space."""
    import bfcl.model.crf as crf_module

    crf = make_crf(5, constrained=True)
    em, mask = make_batch(5)
    ref_grads, ref_marg = exact_grads(crf, em, mask), crf.marginals(em, mask)
    real = crf_module._scaled_backward

    def overflowing(sc):
        beta, ehat = real(sc)
        return beta * float("inf"), ehat

    monkeypatch.setattr(crf_module, "_scaled_backward", overflowing)
    for got, ref in zip(fast_grads(crf, em, mask), ref_grads):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(crf.marginals(em, mask), ref_marg, atol=1e-5, rtol=1e-4)


def test_dead_end_state_in_the_padding_leaves_no_nan():
    """Custom constraints where a tag has no allowed successor: what runs past an item's end stays harmless."""
    K = 3
    start, trans, end = torch.ones(K, dtype=torch.bool), torch.ones(K, K, dtype=torch.bool), torch.ones(K, dtype=torch.bool)
    trans[2] = False  # tag 2 can only end a sentence
    crf = CRF(K, constraints=(start, trans, end))
    em, mask = make_batch(K)
    for b, n in enumerate(LENGTHS):  # every item's mass sits on tag 2 at its last token
        em[b, max(n - 1, 0), 2] += 120.0
    for got, ref in zip(fast_grads(crf, em, mask), exact_grads(crf, em, mask)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    marg = crf.marginals(em, mask)
    assert torch.isfinite(marg).all()
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-5, rtol=0)


def nll_grads(crf: CRF, em, tags, mask, open_start=None, open_end=None, exact=False):
    """Gradients of sum(NLL): the hand-written backward, or autograd through exact log space."""
    from bfcl.model.crf import _gold_score, _log_z_exact

    crf.zero_grad()
    e = em.clone().requires_grad_()
    if exact:
        ep, m, lengths = crf._prepare(e, mask)
        start, trans, end = crf._scores()
        start, end = crf._edges(start, end, e.size(0), e.device, open_start, open_end)
        nll = _log_z_exact(start, trans, end, ep, m, lengths) - _gold_score(ep, tags, m, lengths, start, trans, end)[0]
    else:
        nll = crf.neg_log_likelihood(e, tags, mask, reduction="none", open_start=open_start, open_end=open_end)
    (nll * torch.linspace(0.5, 1.5, len(nll))).sum().backward()  # unequal weights per item
    out = [e.grad.clone()] + [p.grad.clone() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)]
    crf.zero_grad()
    return out


@pytest.mark.parametrize("K,constrained", CASES)
def test_nll_gradient_matches_autograd_of_exact_path(K, constrained, monkeypatch):
    import bfcl.model.crf as crf_module

    crf = make_crf(K, constrained)
    em, mask = make_batch(K)
    tags = torch.randint(K, (len(LENGTHS), T_MAX)).masked_fill(~mask, -100)
    for edges in ((None, None), (OPEN_START, OPEN_END)):
        ref = nll_grads(crf, em, tags, mask, *edges, exact=True)
        for got, want in zip(nll_grads(crf, em, tags, mask, *edges), ref):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # and when the scaled backward overflows, the same gradients from exact log space
    real = crf_module._scaled_backward
    monkeypatch.setattr(crf_module, "_scaled_backward", lambda sc: (real(sc)[0] * float("inf"), real(sc)[1]))
    for got, want in zip(nll_grads(crf, em, tags, mask, OPEN_START, OPEN_END), nll_grads(crf, em, tags, mask, OPEN_START, OPEN_END, exact=True)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("K,constrained", CASES)
@pytest.mark.parametrize("scale", [0.0, 2.0, 60.0])  # all tied; ordinary; extreme (the exact log-space path)
def test_one_sequence_alone_decodes_and_scores_as_in_a_batch(K, constrained, scale):
    """A post predicted alone takes the numpy path; in a batch it takes the torch one: same
    path and Viterbi score (the same float32 sums), span probabilities within 1e-5 (1e-4 at
    extreme emissions, where the batched float32 log-space pass is the less exact of the two)."""
    torch.manual_seed(11)
    crf = make_crf(K, constrained)
    crf.set_labels(LABELS[K])
    lengths = [5, 1, 3, 0, 6]
    T = max(lengths)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    em = (torch.randn(len(lengths), T, K) * scale).masked_fill(~mask[..., None], 0.0)
    for call_time in (None, True, False):
        paths, scores = crf.viterbi(em, mask, constrained=call_time)
        spans = [[(s, s + 1, [p[s]], []) for s in range(len(p))] + ([(0, len(p), p, [])] if p else []) for p in paths]
        probs = crf.span_marginals(em, mask, spans, constrained=call_time)
        for b, n in enumerate(lengths):
            one_path, one_score = crf.viterbi(em[b : b + 1, :n], None, constrained=call_time)
            assert one_path == [paths[b]] and one_score.item() == scores[b].item()
            if n:
                alone = crf.span_marginals(em[b : b + 1, :n], None, [spans[b]], constrained=call_time)[0]
                assert alone == pytest.approx(probs[b], abs=1e-5 if scale <= 2 else 1e-4)
    # the first-best rule on ties is the batched one's: all-tied emissions and transitions
    flat = CRF(K)
    with torch.no_grad():
        for p_ in flat.parameters():
            p_.zero_()
    tied = torch.zeros(2, 4, K)
    assert flat.decode(tied[:1]) == [flat.decode(tied)[0]]


def test_one_sequence_span_scores_with_transitions_past_exp_range():
    """Transition scores past exp's range take the log-sum-exp steps, and agree with a batch."""
    torch.manual_seed(5)
    crf = make_crf(3, False)
    with torch.no_grad():
        crf.transitions[0, 1] = 800.0
    em = torch.randn(2, 4, 3)
    spans = [[(0, 1, [0], []), (1, 3, [1, 2], [2])]] * 2
    alone = crf.span_marginals(em[:1], None, spans[:1])[0]
    batched = crf.span_marginals(em, None, spans)[0]
    assert all(math.isfinite(p) for p in alone) and alone == pytest.approx(batched, abs=1e-5)
