"""Sparsemax, the shared training helpers and the Attentive CNN, on tiny hand-made inputs."""

import numpy as np
import pytest
import torch

from retrieval.attentive_cnn import AttentiveCNN, TokenFeaturizer, Vocab, words
from retrieval.sparsemax import sparsemax
from retrieval.training import Features, Split, TrainConfig, fit, hard_negative_pool, recall_at, score_matrix

from retrieval_models_corpus import ARTICLES, QUERIES


# ---- sparsemax ----------------------------------------------------------------------------------
def test_sparsemax_hand_cases():
    z = torch.tensor([[0.5, 0.3, -1.0], [1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    expected = torch.tensor([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(sparsemax(z), expected)


def test_sparsemax_is_a_sparse_distribution():
    z = torch.randn(64, 9, generator=torch.Generator().manual_seed(0)) * 3
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(64))
    assert (p >= 0).all() and (p == 0).any(dim=1).float().mean() > 0.5  # exact zeros, not tiny ones
    assert torch.equal(p.argmax(-1), z.argmax(-1))


def test_sparsemax_softmax_like_limits():
    z = torch.tensor([[0.3, 0.1, -0.2, 0.05]])
    torch.testing.assert_close(sparsemax(z * 100), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # cold: argmax
    hot = sparsemax(z / 100)  # hot: nearly uniform, order kept, like softmax
    torch.testing.assert_close(hot, torch.full_like(hot, 0.25), atol=0.01, rtol=0)
    assert torch.equal(hot.argsort(), z.argsort())


def test_sparsemax_mask_dim_and_gradient():
    z = torch.randn(3, 4, 5, dtype=torch.double, generator=torch.Generator().manual_seed(1), requires_grad=True)
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[0, :, 3:] = False
    mask[1] = False
    p = sparsemax(z, mask)
    assert (p[0, :, 3:] == 0).all() and (p[1] == 0).all()
    torch.testing.assert_close(p[[0, 2]].sum(-1), torch.ones(2, 4, dtype=torch.double))
    torch.testing.assert_close(sparsemax(z, dim=1), sparsemax(z.transpose(1, 2)).transpose(1, 2))
    p[0].sum().backward()  # weights sum to 1 whatever z is: the gradient of their sum is 0
    torch.testing.assert_close(z.grad, torch.zeros_like(z))
    assert torch.autograd.gradcheck(sparsemax, (torch.randn(4, 6, dtype=torch.double, requires_grad=True),))


# ---- training helpers ---------------------------------------------------------------------------
def test_hard_negative_pool_interleaves_and_skips_gold():
    bm25 = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    dense = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert hard_negative_pool([bm25, dense], [[0]], 3).tolist() == [[4, 1, 3]]


def test_recall_at_hand_case():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    assert recall_at(scores, [[2, 1], [0]], 1) == pytest.approx(0.0)
    assert recall_at(scores, [[2, 1], [0]], 2) == pytest.approx((0.5 + 1.0) / 2)


# ---- Attentive CNN ------------------------------------------------------------------------------
@pytest.fixture()
def cnn_inputs():
    vocab = Vocab.build([a.text for a in ARTICLES] + [q.text for q in QUERIES])
    featurizer = TokenFeaturizer(vocab, max_sentences=8, max_words=32)
    torch.manual_seed(0)
    model = AttentiveCNN(len(vocab), embed_dim=16, filters=24, attention_dim=8, dropout=0.0)
    return model, featurizer, featurizer.articles(ARTICLES), featurizer.queries([q.text for q in QUERIES])


def test_vocab_words_and_round_trip(tmp_path):
    assert words("Article 398-2 (i): A Minor's act") == ["article", "398-2", "i", "a", "minor", "s", "act"]
    vocab = Vocab.build(["b a", "a c"])
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c"] and vocab.encode("c zzz a") == [4, 1, 2]
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json").tokens == vocab.tokens


def test_attentive_cnn_forward_backward_shapes(cnn_inputs):
    model, _, articles, queries = cnn_inputs
    candidates = torch.tensor([[0, 1, 2], [3, 4, 0]])
    logits = model(queries.take(torch.tensor([0, 1])), articles.take(candidates))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():  # broadcasting one article set over the batch gives the same scores
        every = model(queries.take(torch.tensor([0, 1])), tuple(t[None] for t in articles.tensors))
        torch.testing.assert_close(every[[0, 1], [1, 4]], model(queries.take(torch.tensor([0, 1])), articles.take(candidates))[[0, 1], [1, 1]])


def test_attentive_cnn_ignores_padding(cnn_inputs):
    model, _, articles, _ = cnn_inputs
    model.eval()
    tokens = articles.tensors[0][:3]
    padded = torch.nn.functional.pad(tokens, (0, 5, 0, 2))  # more words and sentences, all padding
    with torch.no_grad():
        torch.testing.assert_close(model.encode(tokens), model.encode(padded))


def test_fit_lowers_the_loss_and_keeps_the_best_epoch(cnn_inputs):
    model, featurizer, articles, queries = cnn_inputs
    row = {a.id: i for i, a in enumerate(ARTICLES)}
    gold = [[row[g] for g in q.gold] for q in QUERIES]
    pool = hard_negative_pool([np.random.default_rng(0).random((len(QUERIES), len(ARTICLES)))], gold, 3)
    config = TrainConfig(epochs=5, lr=1e-2, batch_size=4, negatives=4, patience=99, recall_k=1, device="cpu")
    result = fit(model, articles, Split(queries, gold), Split(queries, gold), pool, config)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 5 and losses[-1] < losses[0] * 0.7
    best = max(h["valid_R@1"] for h in result.history)
    assert result.best_recall == best
    assert recall_at(score_matrix(model, queries, articles), gold, 1) == pytest.approx(best)


def test_score_matrix_batches_agree(cnn_inputs):
    model, _, articles, queries = cnn_inputs
    np.testing.assert_allclose(score_matrix(model, queries, articles, batch_size=1),
                               score_matrix(model, queries, articles, batch_size=64), rtol=1e-5, atol=1e-5)
    empty = Features((queries.tensors[0][:0],))
    assert score_matrix(model, empty, articles).shape == (0, len(ARTICLES))
