"""Long posts in training: each word's loss counts once, and a window cut inside a post
gets no sentence-edge transitions (with BIO constraints a cut inside an entity used
to cost ~1e4)."""

from __future__ import annotations

import copy

import pytest
import torch

from bfcl.data.alignment import WordAligner
from bfcl.data.batching import collate, make_items
from bfcl.data.labels import LabelSet
from bfcl.data.types import Sample
from bfcl.model.crf import CRF, bio_constraints
from helpers import LABELS, tiny_model, tokenizer


def test_open_edges_leave_out_start_and_end_scores():
    torch.manual_seed(0)
    crf = CRF(len(LABELS), constraints=bio_constraints(LABELS))
    em = torch.randn(3, 5, len(LABELS))
    tags = torch.randint(0, len(LABELS), (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    open_start = torch.tensor([True, False, True])
    open_end = torch.tensor([False, True, True])
    got = crf.neg_log_likelihood(em, tags, mask, reduction="none", open_start=open_start, open_end=open_end)
    for b in range(3):
        ref = copy.deepcopy(crf)
        with torch.no_grad():
            if open_start[b]:
                ref.start_transitions.zero_()
                ref.start_penalty.zero_()
            if open_end[b]:
                ref.end_transitions.zero_()
                ref.end_penalty.zero_()
        want = ref.neg_log_likelihood(em[b : b + 1], tags[b : b + 1], mask[b : b + 1], reduction="none")
        torch.testing.assert_close(got[b : b + 1], want)
    # closed edges are the plain CRF
    torch.testing.assert_close(
        crf.neg_log_likelihood(em, tags, mask, reduction="none", open_start=torch.zeros(3, dtype=torch.bool),
                               open_end=torch.zeros(3, dtype=torch.bool)),
        crf.neg_log_likelihood(em, tags, mask, reduction="none"),
    )


def long_post() -> Sample:
    """Entities long enough that a 16-sub-token window must cut through one."""
    words = ("the University of California at Berkeley and the Massachusetts Institute of Technology "
             "met the United Nations Educational Scientific and Cultural Organization today").split()
    labels = ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG",
              "O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]
    return Sample("long", words, labels)


@pytest.fixture(scope="module")
def windows():
    aligner = WordAligner(tokenizer(), max_length=12)
    sample = long_post()
    items = make_items([sample], aligner, LabelSet(LABELS))
    return sample, items


def test_each_word_is_owned_by_exactly_one_window(windows):
    sample, items = windows
    assert len(items) >= 3
    batch = collate(items, 0)
    owned_words = []
    for b, it in enumerate(items):
        ks = batch["owned_mask"][b].nonzero().flatten().tolist()
        assert ks == list(range(ks[0], ks[-1] + 1)) if ks else True  # contiguous
        owned_words += [it.window.first_word + k for k in ks]
    assert sorted(owned_words) == list(range(len(sample.tokens)))
    assert batch["open_start"].tolist() == [it.window.owned[0] > 0 for it in items]
    assert batch["open_end"].tolist() == [it.window.owned[1] < len(sample.tokens) for it in items]
    assert not batch["open_start"][0] and not batch["open_end"][-1]


def test_windows_cut_inside_an_entity_keep_the_loss_small(windows):
    sample, items = windows
    cut = [it for it in items if it.open_start and sample.labels[it.window.owned[0]].startswith("I-")]
    assert cut, "the test needs a window whose owned words start inside an entity"
    model = tiny_model(image_encoder="none", multimodal=False, bio_constraints=True, max_length=12)
    batch = collate(items, tokenizer().pad_token_id)
    with torch.no_grad():
        out = model(**batch)
        loss = float(out.ner_loss)
        # without the open edges the I-X at a cut gets the start penalty: the ~1e4 jump
        closed = {k: v for k, v in batch.items() if k not in ("open_start", "open_end")}
        jump = float(model(**closed).ner_loss)
    assert torch.isfinite(out.ner_loss) and loss < 100, loss
    assert jump > 1000
    # each word counted once: the per-window NLLs over owned words add up to one pass over the post
    crf = model.crf
    with torch.no_grad():
        per_window = crf.neg_log_likelihood(
            *_owned(out.emissions, batch), reduction="none", open_start=batch["open_start"], open_end=batch["open_end"]
        )
    assert float(per_window.mean()) == pytest.approx(loss, rel=1e-5)
    assert int(batch["owned_mask"].sum()) == len(sample.tokens)


def _owned(emissions, batch):
    from bfcl.model.modeling import _owned_words

    em, tags, mask = _owned_words(emissions, batch["labels"], batch["owned_mask"] & batch["word_mask"])
    return em, tags, mask


def test_softmax_decoder_counts_owned_words_once(windows):
    sample, items = windows
    model = tiny_model(image_encoder="none", multimodal=False, decoder="softmax", max_length=12)
    batch = collate(items, tokenizer().pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    em, tags, mask = _owned(out.emissions, batch)
    want = torch.nn.functional.cross_entropy(em[mask], tags[mask])
    torch.testing.assert_close(out.ner_loss, want)
    assert int(mask.sum()) == len(sample.tokens)
