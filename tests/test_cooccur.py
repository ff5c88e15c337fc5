"""Co-occurrence against a brute-force reference of DESIGN.md's definition."""

import numpy as np
import pytest

from vgray.algo import cooccur

from helpers import brute_force


def dense(i, j, s, k, window):
    x = np.zeros((k, k))
    x[i, j] = cooccur.weights(s, window)
    return x


@pytest.mark.parametrize("sequences,window", [
    ([[0, 1, 0, 2]], 5),              # repeated word, T < window
    ([[3, 3, 3, 3, 3, 3, 3]], 2),     # one word repeated: diagonal gets both directions
    ([[1]], 5),                       # T = 1: nothing
    ([[0, 1], [2, 3]], 5),            # a video boundary is never crossed
    ([[0, 1, 2, 3, 0, 1, 2, 3]], 1),  # window 1
    ([[0, 4, 4, 1, 2, 0, 3, 4, 2, 1, 1, 0]], 24),
])
def test_small_cases_match_brute_force(sequences, window):
    i, j, s = cooccur.count([np.array(t) for t in sequences], 5, window)
    np.testing.assert_allclose(dense(i, j, s, 5, window), brute_force(sequences, 5, window), rtol=1e-12)


def test_hand_computed_values():
    i, j, s = cooccur.count([np.array([0, 1, 0, 2])], 3, 5)
    x = dense(i, j, s, 3, 5)
    assert x[0, 0] == pytest.approx(1.0)        # positions 0 and 2: 1/2, both directions
    assert x[0, 1] == pytest.approx(2.0)        # (0,1) at d=1 and (1,0) at d=1
    assert x[0, 2] == pytest.approx(1 + 1 / 3)  # d=1 and d=3
    assert x[1, 2] == pytest.approx(0.5)
    assert np.array_equal(x, x.T)


def test_boundary_not_crossed():
    i, j, _ = cooccur.count([np.array([0, 0]), np.array([1, 1])], 2, 5)
    assert set(zip(i.tolist(), j.tolist())) == {(0, 0), (1, 1)}


@pytest.mark.parametrize("seed", range(5))
def test_random_corpus_and_exact_merge(seed):
    rng = np.random.default_rng(seed)
    k, window = 7, int(rng.integers(1, 8))
    seqs = [rng.integers(0, k, size=rng.integers(1, 40)) for _ in range(30)]
    i, j, s = cooccur.count(seqs, k, window)
    np.testing.assert_allclose(dense(i, j, s, k, window), brute_force(seqs, k, window), rtol=1e-12)
    # Shard the videos any way, count each shard, partition by i, merge: bit-identical result.
    cuts = sorted(rng.choice(np.arange(1, 30), size=4, replace=False))
    shards = [cooccur.count(part, k, window) for part in np.split(np.array(seqs, dtype=object), cuts)]
    merged = cooccur.merge(shards, k)
    for a, b in zip(merged, (i, j, s)):
        assert np.array_equal(a, b)
    parts = cooccur.partition(i, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(i)))
    assert all((i[p] % 3 == r).all() for r, p in enumerate(parts))


def test_sparse_path_matches_dense(monkeypatch):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 9, size=30) for _ in range(10)]
    want = cooccur.count(seqs, 9, 4)
    monkeypatch.setattr(cooccur, "_DENSE_LIMIT", 1)
    got = cooccur.count(seqs, 9, 4)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("block", [1, 2, 5, 13, 64])
def test_blocks_of_positions_change_nothing(monkeypatch, block):
    # the dense count takes the videos in groups of about _BLOCK tokens; any size gives the same X
    rng = np.random.default_rng(block)
    seqs = [rng.integers(0, 6, size=rng.integers(1, 25)) for _ in range(12)]
    want = cooccur.count(seqs, 6, 5)
    monkeypatch.setattr(cooccur, "_BLOCK", block)
    got = cooccur.count(seqs, 6, 5)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    np.testing.assert_allclose(dense(*got, 6, 5), brute_force(seqs, 6, 5), rtol=1e-12)


def test_empty_and_invalid():
    i, j, s = cooccur.count([np.array([1]), np.array([], dtype=int)], 3, 5)
    assert len(i) == len(j) == len(s) == 0
    with pytest.raises(ValueError):
        cooccur.count([np.array([0, 3])], 3, 5)
    with pytest.raises(ValueError):
        cooccur.scale(25)
    assert cooccur.scale(5) == 60


@pytest.mark.parametrize("seed", range(3))
def test_every_smaller_window_is_derived_exactly_from_the_counts_per_distance(seed):
    """X_w = sum over d <= w of c_d / d: a sweep counts once at its largest window."""
    rng = np.random.default_rng(seed)
    k = [5, 40, 300][seed]
    seqs = [rng.integers(0, k, size=int(rng.integers(0, 60))) for _ in range(25)]
    i, j, c = cooccur.count_by_distance(seqs, k, 10)
    assert c.shape[1] == 10 and (c.sum(axis=1) > 0).all()
    for w in range(1, 11):
        want = cooccur.count(seqs, k, w)
        got = cooccur.at_window(i, j, c, w)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), w
        np.testing.assert_allclose(dense(*got, k, w), brute_force(seqs, k, w), rtol=1e-12)
    with pytest.raises(ValueError, match="window must be between 1 and 10"):
        cooccur.at_window(i, j, c, 11)
    i, j, c = cooccur.count_by_distance([np.array([3])], k, 4)
    assert len(i) == 0 and c.shape == (0, 4)


def test_merge_by_distance_of_shards_equals_the_whole():
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 7, size=int(rng.integers(1, 30))) for _ in range(40)]
    whole = cooccur.count_by_distance(seqs, 7, 6)
    parts = [cooccur.count_by_distance(seqs[a:b], 7, 6) for a, b in ((0, 13), (13, 14), (14, 40))]
    merged = cooccur.merge_by_distance(parts, 7)
    assert all(np.array_equal(m, w) for m, w in zip(merged, whole))
    i, j, c = cooccur.merge_by_distance([], 7)
    assert len(i) == len(j) == len(c) == 0
