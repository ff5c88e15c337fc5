"""The visual vocabulary: k-means in torch (k-means++ init, Lloyd iterations), CPU or CUDA."""

from __future__ import annotations

import math

import numpy as np
import torch

# Rows of the data whose distances to all centroids are held at once (bounds memory at
# chunk x K floats: 64 MB for K = 4096).
_CHUNK = 4096


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


def nearest(x: torch.Tensor, centers: torch.Tensor, centers_sq: torch.Tensor | None = None,
            chunk: int = _CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest center (squared Euclidean) per row of x, and that squared distance."""
    if centers_sq is None:
        centers_sq = _sq_norms(centers)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    dists = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        block = x[s:s + chunk]
        # ||x||^2 is the same for every center, so it is added only to the chosen distance.
        partial = torch.addmm(centers_sq, block, centers.T, beta=1.0, alpha=-2.0)
        value, index = partial.min(dim=1)
        labels[s:s + chunk] = index
        dists[s:s + chunk] = (value + _sq_norms(block)).clamp_min_(0)
    return labels, dists


def assign(features: np.ndarray, centroids: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Visual word (nearest centroid) of every clip: float [T, D] -> int32 [T]."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
    labels, _ = nearest(x, c)
    return labels.to(torch.int32).cpu().numpy()


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator,
                    n_local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn)."""
    n = x.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    x_sq = _sq_norms(x)
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centers[0] = x[first]

    def dist_to(rows: torch.Tensor) -> torch.Tensor:  # [r, n] squared distances
        out = torch.addmm(x_sq.unsqueeze(0), x[rows], x.T, alpha=-2.0)
        return out.add_(x_sq[rows].unsqueeze(1)).clamp_min_(0)

    closest = dist_to(torch.tensor([first], device=x.device))[0]
    for c in range(1, k):
        pot = closest.sum()
        if float(pot) <= 0:  # fewer distinct points than k: duplicate centers are unavoidable
            centers[c:] = x[torch.randint(n, (k - c,), generator=generator).to(x.device)]
            break
        rand = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(x.device)
        cumulative = torch.cumsum(closest.double(), 0)
        candidates = torch.searchsorted(cumulative, rand * cumulative[-1]).clamp_max_(n - 1)
        cand_dist = torch.minimum(closest.unsqueeze(0), dist_to(candidates))
        best = int(torch.argmin(cand_dist.double().sum(dim=1)))
        closest = cand_dist[best]
        centers[c] = x[candidates[best]]
    return centers


class KMeans:
    """k-means with k-means++ seeding and Lloyd iterations; scikit-learn-style estimator."""

    def __init__(self, n_clusters: int, max_iter: int = 25, seed: int = 0, device: str = "cpu"):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.seed = seed
        self.device = device

    def fit(self, features: np.ndarray) -> "KMeans":
        """Fit on float [N, D] (N >= n_clusters); sets cluster_centers_, inertia_, n_iter_."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] < self.n_clusters:
            raise ValueError(f"k-means needs at least {self.n_clusters} clips, got {features.shape[0]}")
        x = torch.from_numpy(features).to(self.device)
        generator = torch.Generator().manual_seed(self.seed)
        centers = kmeans_plusplus(x, self.n_clusters, generator)
        labels = None
        self.n_iter_ = 0
        for it in range(self.max_iter):
            new_labels, dists = nearest(x, centers)
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            centers = self._update(x, labels, dists, centers)
            self.n_iter_ = it + 1
        labels, dists = nearest(x, centers)
        self.cluster_centers_ = centers.cpu().numpy()
        self.labels_ = labels.to(torch.int32).cpu().numpy()
        self.inertia_ = float(dists.double().sum())
        return self

    def _update(self, x, labels, dists, centers):
        k = self.n_clusters
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        new = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        if len(empty):
            # An empty word takes the clip farthest from its current word (as scikit-learn does).
            far = torch.argsort(dists, descending=True, stable=True)[: len(empty)]
            new[empty] = x[far]
        return new

    def predict(self, features: np.ndarray) -> np.ndarray:
        return assign(features, self.cluster_centers_, self.device)
