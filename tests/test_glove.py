"""The GloVe trainer: loss decreasing, matching a direct evaluation, dense == sparse."""

import numpy as np
import pytest

from vgray import cooccur, glove
from vgray.glove import GloVe


def topic_cooccur(k=40, topics=4, videos=200, seed=0):
    rng = np.random.default_rng(seed)
    per = k // topics
    seqs = [rng.integers(t * per, (t + 1) * per, size=rng.integers(10, 40))
            for t in rng.integers(topics, size=videos)]
    i, j, s = cooccur.count(seqs, k, 5)
    return i, j, cooccur.weights(s, 5), per


def test_loss_decreases_and_matches_direct_evaluation():
    i, j, x, _ = topic_cooccur()
    model = GloVe(dim=8, epochs=150, seed=0).fit(i, j, x, 40)
    losses = np.array(model.loss_)
    assert len(losses) == 151
    assert losses[-1] < 0.05 * losses[0]
    assert (np.diff(losses[100:]) <= 1e-9).mean() > 0.95  # settles into a monotone descent
    # The reported final J is the J of the returned state, evaluated independently in float64.
    assert model.loss(i, j, x) == pytest.approx(losses[-1], rel=1e-4)
    np.testing.assert_allclose(model.vectors_, model.w_ + model.w_context_, rtol=1e-6)


def test_direct_loss_by_hand():
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    wc = np.array([[0.5, 0.5], [1.0, 1.0]])
    b, bc = np.array([0.1, 0.2]), np.array([0.0, -0.1])
    i, j, x = np.array([0, 1]), np.array([1, 0]), np.array([50.0, 200.0])
    # pair (0,1): 1 + 0.1 - 0.1 - log 50 ; f = (50/100)^0.75
    e0 = 1.0 - np.log(50.0)
    e1 = 1.0 + 0.2 - np.log(200.0)
    want = ((0.5 ** 0.75) * e0 ** 2 + 1.0 * e1 ** 2) / 2
    assert glove.loss(w, wc, b, bc, i, j, x, 100.0, 0.75) == pytest.approx(want)


def test_dense_and_sparse_steps_agree(monkeypatch):
    i, j, x, _ = topic_cooccur(k=20, videos=60)
    dense = GloVe(dim=4, epochs=30, seed=1).fit(i, j, x, 20)
    monkeypatch.setattr(glove, "DENSE_MAX_WORDS", 5)
    sparse = GloVe(dim=4, epochs=30, seed=1).fit(i, j, x, 20)
    np.testing.assert_allclose(dense.loss_, sparse.loss_, rtol=1e-4)
    np.testing.assert_allclose(dense.vectors_, sparse.vectors_, rtol=1e-3, atol=1e-4)


def test_neighbours_share_topic():
    from vgray.quality import nearest_neighbours

    i, j, x, per = topic_cooccur(k=40, topics=4, videos=400)
    model = GloVe(dim=16, epochs=300, seed=0).fit(i, j, x, 40)
    words = np.arange(40)
    nn = nearest_neighbours(model.vectors_, words, k=3)
    assert (nn // per == (words // per)[:, None]).mean() >= 0.95


def test_rejects_empty_and_nonpositive():
    with pytest.raises(ValueError, match="empty"):
        GloVe().fit(np.zeros(0, int), np.zeros(0, int), np.zeros(0), 3)
    with pytest.raises(ValueError):
        GloVe().fit(np.array([0]), np.array([1]), np.array([0.0]), 3)
