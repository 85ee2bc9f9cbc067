"""SASRec's causal attention, the losses, the evaluation protocols and model save / load."""

import numpy as np
import pytest
import torch

from recsys import Recommender
from recsys.data import EvalCase, windows
from recsys.evaluate import evaluate, metrics_from_ranks, sample_unseen, target_ranks
import recsys.losses as losses
from recsys.losses import LOSSES, ChunkedSoftmaxCE, sequence_loss
from recsys.model import SASRec

N_ITEMS = 20



def tiny_model(**kwargs):
    torch.manual_seed(0)
    return SASRec(N_ITEMS, **{"maxlen": 8, "hidden": 16, "blocks": 2, "heads": 2, "dropout": 0.0, **kwargs}).eval()


@pytest.mark.parametrize("pre_ln", [True, False])
def test_no_future_leakage(pre_ln):
    model = tiny_model(pre_ln=pre_ln)
    seq = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2]])
    changed = seq.clone()
    changed[0, 5:] = torch.tensor([11, 12, 13])
    with torch.no_grad():
        before, after = model(seq), model(changed)
    torch.testing.assert_close(before[0, :5], after[0, :5])  # positions before the change are untouched
    assert not torch.allclose(before[0, 5:], after[0, 5:])


def test_padding_is_ignored_and_positions_matter():
    model = tiny_model()
    with torch.no_grad():
        short = model.encode(torch.tensor([[0, 0, 0, 0, 0, 3, 7, 1]]))
        # the same history cut to its own length gives the same state (padding is masked out)
        cut = model(torch.tensor([[3, 7, 1]]))[:, -1]
        swapped = model.encode(torch.tensor([[0, 0, 0, 0, 0, 7, 3, 1]]))
    torch.testing.assert_close(short, cut)
    assert not torch.allclose(short, swapped)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_decreases(loss):
    model = tiny_model(dropout=0.1).train()
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(1, N_ITEMS + 1, (16, 8), generator=gen)
    seq[:4, :3] = 0
    targets = seq % N_ITEMS + 1  # the next item is the current one's successor: learnable
    targets[seq == 0] = 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for _ in range(30):
        value = sequence_loss(loss, model(seq), targets, model.item_weight, n_negatives=8,
                              generator=torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < 0.5 * values[0], values


def test_ce_equals_a_hand_computed_softmax():
    states, targets = torch.randn(3, 4), torch.tensor([1, 2, 3])
    weight = torch.randn(4, 4)
    logits = states @ weight[1:].T
    expected = -(logits.log_softmax(1)[torch.arange(3), targets - 1]).mean()
    got = sequence_loss("ce", states.unsqueeze(0), targets.unsqueeze(0), weight)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_chunked_ce_equals_the_plain_full_softmax(monkeypatch, chunk_rows):
    """Values and gradients, whatever the chunking (one row, a ragged last chunk, one chunk); the gradients
    (computed in the forward pass) follow the upstream gradient, and a call without gradients gives the
    same value."""
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(13, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 13, (7,), generator=generator)
    monkeypatch.setattr(losses, "CE_CHUNK_BYTES", chunk_rows * 13 * 8)
    chunked = ChunkedSoftmaxCE.apply(states, items, targets, torch.float64)
    plain = torch.nn.functional.cross_entropy(states @ items.T, targets)
    torch.testing.assert_close(chunked, plain)
    for got, expected in zip(torch.autograd.grad(2.5 * chunked, (states, items)),
                             torch.autograd.grad(2.5 * plain, (states, items))):
        torch.testing.assert_close(got, expected)
    with torch.no_grad():
        torch.testing.assert_close(ChunkedSoftmaxCE.apply(states, items, targets, torch.float64), plain)


def test_chunked_ce_in_bfloat16_products_stays_close():
    """bf16 products (autocast) with the softmax in float32: within bf16 rounding of the exact loss."""
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(64, 16, generator=generator, requires_grad=True)
    items = (0.3 * torch.randn(500, 16, generator=generator)).requires_grad_()
    targets = torch.randint(0, 500, (64,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sequence_loss("ce", states[None], targets[None] + 1, torch.cat([torch.zeros(1, 16), items]))
    plain = torch.nn.functional.cross_entropy(states @ items.T, targets)
    assert low.dtype == torch.float32 and abs(low.item() - plain.item()) < 1e-2 * plain.item()
    grad_low, grad_plain = torch.autograd.grad(low, states)[0], torch.autograd.grad(plain, states)[0]
    assert (grad_low - grad_plain).norm() < 0.02 * grad_plain.norm()


def test_gbce_raises_the_positive_term_to_beta():
    """gSASRec: with t > 0 the positive term is weighted by beta = alpha (t (1 - 1/alpha) + 1/alpha),
    alpha = negatives / (n_items - 1); the negative terms are those of BCE over the same draws."""
    states, targets, weight = torch.randn(5, 4), torch.tensor([1, 2, 3, 4, 5]), torch.randn(50, 4)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    bce = sequence_loss("gbce", states[None], targets[None], weight, n_negatives=6, gbce_t=0.0, generator=gen())
    gbce = sequence_loss("gbce", states[None], targets[None], weight, n_negatives=6, gbce_t=0.5, generator=gen())
    alpha = 6 / 48
    beta = alpha * (0.5 * (1 - 1 / alpha) + 1 / alpha)
    positive = -torch.nn.functional.logsigmoid((states * weight[targets]).sum(1)).mean()
    torch.testing.assert_close(gbce - bce, (beta - 1) * positive)
    assert beta < 1 and gbce < bce


def test_gbce_with_t_zero_is_bce_over_the_negatives():
    states, targets, weight = torch.randn(5, 4), torch.tensor([1, 2, 3, 4, 5]), torch.randn(50, 4)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    got = sequence_loss("gbce", states[None], targets[None], weight, n_negatives=6, gbce_t=0.0, generator=gen())
    negatives = torch.randint(1, 50, (5, 6), generator=gen())  # six per position
    pos, neg = (states * weight[targets]).sum(1), (states[:, None] * weight[negatives]).sum(-1)
    neg = neg.masked_fill(negatives == targets[:, None], float("-inf"))
    expected = (-torch.nn.functional.logsigmoid(pos) - torch.nn.functional.logsigmoid(-neg).sum(1)).mean()
    torch.testing.assert_close(got, expected)  # t = 0 gives beta = 1: plain BCE


def test_metrics_from_ranks_hand_computed():
    got = metrics_from_ranks(np.array([0, 2, 15]), ks=(1, 5))
    assert got["Success@1"] == pytest.approx(1 / 3)
    assert got["Success@5"] == pytest.approx(2 / 3)
    assert got["nDCG@5"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert got["RR@5"] == pytest.approx((1 + 1 / 3) / 3)


def case_for(histories, targets, maxlen=8):
    items = np.concatenate([np.append(h, t) for h, t in zip(histories, targets)])
    lengths = np.array([len(h) + 1 for h in histories])
    seen_ends = np.cumsum(lengths)
    starts = seen_ends - lengths
    ends = seen_ends - 1
    return EvalCase(torch.from_numpy(windows(items, starts, ends, maxlen)), items[ends], items, starts, ends, seen_ends)


def test_full_ranking_excludes_history_unless_keep_seen():
    model = tiny_model()
    case = case_for([np.array([3, 5, 7])], [9])
    with torch.no_grad():
        scores = model.score_all(case.inputs)[0]
    target = scores[8]
    above = (scores > target).nonzero().flatten() + 1  # model ids scoring above the target
    seen_above = np.isin(above.numpy(), [3, 5, 7]).sum()
    assert target_ranks(model, case, keep_seen=True)[0] == len(above)
    assert target_ranks(model, case)[0] == len(above) - seen_above


def test_sampled_negatives_avoid_everything_the_user_saw():
    case = case_for([np.arange(1, 15)], [15])  # saw 1..15 of 20 items: negatives must be 16..20
    draws = sample_unseen(case, slice(0, 1), N_ITEMS, np.random.default_rng(0))
    assert draws.shape == (1, 100) and set(draws.ravel()) <= {16, 17, 18, 19, 20}
    metrics = evaluate(tiny_model(), case, "sampled100", ks=(10,))
    assert set(metrics) == {"Success@10", "nDCG@10", "RR@10"}


def test_save_load_round_trip(tmp_path):
    rec = Recommender(tiny_model(), [f"item-{i}" for i in range(1, N_ITEMS + 1)])
    rec.save_pretrained(tmp_path / "m")
    loaded = Recommender.from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.item_ids == rec.item_ids
    np.testing.assert_array_equal(loaded.item_vectors(), rec.item_vectors())
    history = ["item-3", "item-7", "item-1"]
    assert loaded.recommend(history, k=5) == rec.recommend(history, k=5)
    assert not {h.id for h in loaded.recommend(history, k=N_ITEMS)} & set(history)
