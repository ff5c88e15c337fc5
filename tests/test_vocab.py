"""k-means and assignment against brute force and scikit-learn."""

import numpy as np
import pytest
import torch

from vgray.algo.vocab import KMeans, assign, kmeans_parallel, kmeans_plusplus, nearest


def brute_nearest(x, c):
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d


@pytest.mark.parametrize("seed", range(4))
def test_assign_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 12)).astype(np.float32) * (seed + 1)
    c = rng.normal(size=(17, 12)).astype(np.float32)
    got = assign(x, c)
    want, d = brute_nearest(x, c)
    assert got.dtype == np.int32 and got.shape == (500,)
    # Equal up to float32 near-ties: the chosen centroid is never farther than the best.
    chosen = d[np.arange(len(x)), got]
    np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5, atol=1e-5)
    assert (got == want).mean() > 0.99


@pytest.mark.parametrize("seed", range(3))
def test_torch_path_matches_brute_force(seed):
    # the path CUDA takes (torch matmul); on CPU float32 goes through numpy's BLAS instead
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 9)) * (seed + 1)
    c = rng.normal(size=(13, 9))
    labels, d = nearest(torch.from_numpy(x), torch.from_numpy(c), chunk=64)
    want, full = brute_nearest(x, c)
    assert np.array_equal(labels.numpy(), want)
    np.testing.assert_allclose(d.numpy(), full.min(1), rtol=1e-9, atol=1e-9)


def test_nearest_chunks_agree():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(1000, 8)).astype(np.float32))
    c = torch.from_numpy(rng.normal(size=(9, 8)).astype(np.float32))
    l1, d1 = nearest(x, c, chunk=7)
    l2, d2 = nearest(x, c, chunk=4096)
    assert torch.equal(l1, l2)
    _, brute = brute_nearest(x.numpy(), c.numpy())
    np.testing.assert_allclose(d1.numpy(), brute.min(1), rtol=1e-4, atol=1e-4)


def planted(k=10, d=16, per=100, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    truth = np.repeat(np.arange(k), per)
    return (centers[truth] + noise * rng.normal(size=(k * per, d))).astype(np.float32), truth


def test_recovers_planted_words():
    from sklearn.metrics import normalized_mutual_info_score

    x, truth = planted()
    model = KMeans(10, seed=0).fit(x)
    assert normalized_mutual_info_score(truth, model.labels_) >= 0.99
    assert model.cluster_centers_.shape == (10, 16)
    assert model.inertia_ == pytest.approx(((x - model.cluster_centers_[model.labels_]) ** 2).sum(), rel=1e-4)


def test_kmeanspp_spreads_over_clusters():
    x, truth = planted(k=8, per=50)
    centers = kmeans_plusplus(torch.from_numpy(x), 8, torch.Generator().manual_seed(0)).numpy()
    hit = {int(truth[np.argmin(((x - c) ** 2).sum(1))]) for c in centers}
    assert len(hit) >= 7  # k-means++ puts (nearly) one seed in each planted cluster


def seed_cost(x, centers):
    return brute_nearest(x.astype(np.float64), centers.astype(np.float64))[1].min(1).sum()


@pytest.mark.parametrize("seed", range(3))
def test_kmeans_parallel_picks_distinct_rows_in_every_planted_cluster(seed):
    x, truth = planted(k=12, per=60, seed=seed)
    centers = kmeans_parallel(torch.from_numpy(x), 12, torch.Generator().manual_seed(seed)).numpy()
    rows = [np.flatnonzero((x == c).all(1)) for c in centers]
    assert all(len(r) >= 1 for r in rows)  # every seed is a row of x
    assert len({int(r[0]) for r in rows}) == 12  # and no row twice
    assert len({int(truth[r[0]]) for r in rows}) == 12  # one seed in each planted cluster


def test_kmeans_parallel_without_the_pairwise_matrix_seeds_the_same(monkeypatch):
    # Past _PAIRWISE_MAX candidates each step computes its rows: the same seeds up to rounding.
    from vgray.algo import vocab

    x, truth = planted(k=12, per=60, seed=1)
    t = torch.from_numpy(x)
    held = kmeans_parallel(t, 12, torch.Generator().manual_seed(1))
    monkeypatch.setattr(vocab, "_PAIRWISE_MAX", 5)
    computed = kmeans_parallel(t, 12, torch.Generator().manual_seed(1))
    assert torch.equal(held, computed)


def test_kmeans_parallel_is_deterministic_per_seed():
    x, _ = planted(k=10, per=40, d=8, noise=1.0)
    t = torch.from_numpy(x)
    a = kmeans_parallel(t, 10, torch.Generator().manual_seed(5))
    b = kmeans_parallel(t, 10, torch.Generator().manual_seed(5))
    c = kmeans_parallel(t, 10, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_parallel_seeds_as_well_as_kmeanspp(seed):
    # Overlapping blobs, where seeding matters: the seeds' own cost, and the inertia after Lloyd.
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(loc=rng.normal(size=16) * 1.5, size=(rng.integers(20, 120), 16))
                        for _ in range(60)]).astype(np.float32)
    t = torch.from_numpy(x)
    par = kmeans_parallel(t, 40, torch.Generator().manual_seed(seed)).numpy()
    pp = kmeans_plusplus(t, 40, torch.Generator().manual_seed(seed)).numpy()
    assert seed_cost(x, par) <= 1.15 * seed_cost(x, pp)
    ours = KMeans(40, seed=seed, precision="float32").fit(x).inertia_
    plusplus = KMeans(40, seed=seed, precision="float32", init="k-means++").fit(x).inertia_
    assert ours <= 1.03 * plusplus


def test_kmeans_parallel_with_as_many_rows_as_words():
    # Too few D^2 draws to make k candidates: the farthest rows make up the rest, all distinct.
    x, _ = planted(k=4, per=5, d=6, noise=0.5)
    centers = kmeans_parallel(torch.from_numpy(x), 20, torch.Generator().manual_seed(0),
                              rounds=1, oversample=0.1).numpy()
    assert len(np.unique(centers, axis=0)) == 20
    assert KMeans(20, seed=0).fit(x).inertia_ == pytest.approx(0.0, abs=1e-6)


def test_bad_init_is_refused_and_kmeanspp_still_fits():
    with pytest.raises(ValueError, match="init"):
        KMeans(3, init="random")
    x, truth = planted(k=6, per=30)
    from sklearn.metrics import normalized_mutual_info_score

    model = KMeans(6, seed=0, init="k-means++").fit(x)
    assert normalized_mutual_info_score(truth, model.labels_) >= 0.99


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", range(3))
def test_inertia_no_worse_than_minibatch_kmeans(seed, precision):
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(loc=rng.normal(size=32) * 2, size=(200, 32)) for _ in range(25)])
    x = x.astype(np.float32)
    ours = KMeans(30, seed=seed, precision=precision).fit(x).inertia_
    theirs = MiniBatchKMeans(30, random_state=seed).fit(x).inertia_
    assert ours <= theirs * 1.0001


def test_deterministic_and_needs_enough_points():
    x, _ = planted(k=5, per=20)
    a, b = KMeans(5, seed=3).fit(x), KMeans(5, seed=3).fit(x)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    with pytest.raises(ValueError):
        KMeans(50).fit(x[:10])


def test_duplicate_points_fewer_than_k():
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    model = KMeans(5, seed=0).fit(x)
    assert model.inertia_ == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_every_iteration_lowers_the_exact_inertia(precision):
    # bfloat16 only proposes words; the exact distance decides, so Lloyd's guarantee holds
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(3000, 48)) + 40).astype(np.float32)  # far from the origin: hard for bf16
    model = KMeans(40, max_iter=30, seed=1, precision=precision, tol=0).fit(x)
    curve = np.array(model.inertia_curve_)
    assert len(curve) == model.n_iter_ + 1 and model.n_iter_ >= 3
    assert np.all(np.diff(curve) <= 1e-6 * curve[:-1])
    exact = ((x - model.cluster_centers_[model.labels_]) ** 2).sum()
    assert model.inertia_ == pytest.approx(exact, rel=1e-4)
    # and the labels it returns are the nearest words to within float32 ties
    best = brute_nearest(x.astype(np.float64), model.cluster_centers_.astype(np.float64))[1].min(1)
    own = ((x.astype(np.float64) - model.cluster_centers_[model.labels_]) ** 2).sum(1)
    assert np.mean(own <= best * (1 + 1e-4) + 1e-6) >= (0.999 if precision == "bfloat16" else 1.0)


def test_parts_are_the_same_data_as_one_array():
    x, _ = planted(k=12, per=60, d=24)
    whole = KMeans(12, seed=2, precision="float32").fit(x)
    parts = KMeans(12, seed=2, precision="float32").fit([x[:100], x[100:100], x[100:450], x[450:]])
    np.testing.assert_allclose(parts.cluster_centers_, whole.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert np.array_equal(parts.labels_, whole.labels_)


def test_stops_early_once_converged():
    x, _ = planted(k=6, per=80)
    model = KMeans(6, max_iter=50, seed=0).fit(x)
    assert model.n_iter_ < 50


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        KMeans(3, precision="fp8")


def test_too_few_clips_per_word_is_a_warning_naming_the_numbers():
    from vgray.run.stages import MIN_CLIPS_PER_WORD, thin_sample_warning

    assert MIN_CLIPS_PER_WORD == 39  # faiss's min_points_per_centroid
    assert thin_sample_warning(6311, 1500) == (
        "warning: 6,311 training clips for 1,500 words (4 per word); k-means wants at least 39 "
        "per word: consider a smaller --vocab-size")
    assert thin_sample_warning(38 * 1500 + 1499, 1500, sampled=True) == (
        "warning: 58,499 clips in the k-means sample for 1,500 words (38 per word); k-means wants "
        "at least 39 per word: consider a smaller --vocab-size or a larger --kmeans-sample")
    assert thin_sample_warning(39 * 1500, 1500) is None
    assert thin_sample_warning(384_000, 1500, sampled=True) is None
