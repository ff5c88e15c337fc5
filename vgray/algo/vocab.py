"""The visual vocabulary: k-means in torch (k-means|| seeding, Lloyd iterations), CPU or CUDA.

Lloyd's assignment step is one matrix product per block of clips. Where the hardware multiplies
bfloat16 natively (AVX512-BF16 / AMX CPUs, CUDA), the product runs in bfloat16 to propose each
clip's word, and the exact float32 distance decides between that proposal and the clip's current
word: a clip only moves when it gets exactly closer, so every iteration lowers the exact inertia,
as plain Lloyd does. The tokens of a run (`nearest`, `assign`) are always exact float32.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .nearest import CHUNK as _CHUNK  # rows held at once: chunk x K floats, 64 MB for K 4096
from .nearest import NumpyCodebook
from .nearest import block_rows as _block_rows

_PAIRWISE_MAX = 16384  # k-means|| candidates whose pairwise distances are held at once (1 GB)
INITS = ("k-means||", "k-means++")  # seedings: k-means|| in a few passes (default), greedy k-means++


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


class Codebook:
    """Centroids prepared once for many exact float32 nearest-word searches.

    On CPU the product is numpy's (OpenBLAS), which runs at the machine's BLAS speed on Intel and
    AMD alike; elsewhere it is torch's on the centroids' device, in float32 (TF32 is turned off
    for it: its 10-bit mantissa would change which word is nearest)."""

    def __init__(self, centers: torch.Tensor | np.ndarray, centers_sq: torch.Tensor | None = None,
                 use_numpy: bool = True):
        if isinstance(centers, np.ndarray):
            centers = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))
        self.centers = centers
        self.centers_sq = _sq_norms(centers) if centers_sq is None else centers_sq
        if centers.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as on CPU
        # use_numpy=False takes the torch products of the GPU path on CPU tensors too (tests).
        self.numpy = use_numpy and centers.device.type == "cpu" and centers.dtype == torch.float32
        if self.numpy:  # the shard workers' own search (nearest.py): the same tokens
            self._numpy = NumpyCodebook(centers.detach().numpy(), None if centers_sq is None
                                        else centers_sq.detach().numpy())

    @property
    def device(self) -> str:
        """Where it computes: cpu or cuda."""
        return self.centers.device.type

    def words(self, block: np.ndarray) -> np.ndarray:
        """The int32 word of every row of a float32 block (on the centroids' device)."""
        x = torch.from_numpy(block).to(self.centers.device)
        return self.nearest(x)[0].to(torch.int32).cpu().numpy()

    def nearest(self, x: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the nearest center (squared Euclidean) per row of x, and that distance."""
        chunk = chunk or _block_rows(self.centers.shape[0])
        labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        dists = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        if self.numpy and x.device.type == "cpu" and x.dtype == torch.float32:
            self._numpy.nearest(x.detach().contiguous().numpy(), chunk,
                                out=(labels.numpy(), dists.numpy()))
            return labels, dists
        centers, centers_sq = self.centers.to(x.dtype), self.centers_sq.to(x.dtype)
        for s in range(0, x.shape[0], chunk):
            block = x[s:s + chunk]
            partial = torch.addmm(centers_sq, block, centers.T, beta=1.0, alpha=-2.0)
            value, index = partial.min(dim=1)
            labels[s:s + chunk] = index
            dists[s:s + chunk] = (value + _sq_norms(block)).clamp_min_(0)
        return labels, dists


def nearest(x: torch.Tensor, centers: torch.Tensor, centers_sq: torch.Tensor | None = None,
            chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest center (squared Euclidean) per row of x, and that squared distance
    (exact float32; see Codebook)."""
    return Codebook(centers, centers_sq).nearest(x, chunk)


def assign(features: np.ndarray, centroids: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Visual word (nearest centroid) of every clip: float [T, D] -> int32 [T]."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
    labels, _ = nearest(x, c)
    return labels.to(torch.int32).cpu().numpy()


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, *,
                    n_local_trials: int | None = None, bfloat16: bool = False,
                    on_center=None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn).

    With bfloat16, the products behind the D^2 sampling weights are taken in bfloat16 (the
    seeds are still rows of x; only which rows are drawn changes). on_center(c) is called with
    the number of centres chosen so far."""
    n = x.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    x_sq = _sq_norms(x)
    low = x.to(torch.bfloat16) if bfloat16 else x
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centers[0] = x[first]

    def dist_to(rows: torch.Tensor) -> torch.Tensor:  # [n, r] squared distances
        out = torch.mm(low, low[rows].T).to(x.dtype).mul_(-2.0)
        return out.add_(x_sq.unsqueeze(1)).add_(x_sq[rows].unsqueeze(0)).clamp_min_(0)

    closest = dist_to(torch.tensor([first], device=x.device))[:, 0]
    for c in range(1, k):
        pot = closest.sum()
        if float(pot) <= 0:  # fewer distinct points than k: duplicate centers are unavoidable
            centers[c:] = x[torch.randint(n, (k - c,), generator=generator).to(x.device)]
            break
        rand = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(x.device)
        cumulative = torch.cumsum(closest.double(), 0)
        candidates = torch.searchsorted(cumulative, rand * cumulative[-1]).clamp_max_(n - 1)
        cand_dist = torch.minimum(closest.unsqueeze(1), dist_to(candidates))
        best = int(torch.argmin(cand_dist.sum(dim=0, dtype=torch.float64)))
        closest = cand_dist[:, best].contiguous()
        centers[c] = x[candidates[best]]
        if on_center is not None:
            on_center(c + 1)
    if on_center is not None:
        on_center(k)
    return centers


def kmeans_parallel(x: torch.Tensor, k: int, generator: torch.Generator, *, rounds: int = 5,
                    oversample: float = 0.5, bfloat16: bool = False,
                    on_center=None) -> torch.Tensor:
    """k-means|| seeding (Bahmani et al. 2012): `rounds` passes over x, each drawing about
    oversample * k candidates by D^2 sampling, then greedy weighted k-means++ over the candidates
    (each weighted by the rows of x nearest to it).

    k-means++ makes k passes over x, each a product with only 2 + log k columns (bound by memory,
    not compute); here every pass is one large product. The candidates' pairwise distances are
    computed once, so the k sequential steps of the last phase each read a few rows of that
    matrix. With bfloat16, the products behind the sampling weights are taken in bfloat16 (the
    seeds are still rows of x). on_center(c) is called with the number of centres chosen so far."""
    n, dev = x.shape[0], x.device
    x_sq = _sq_norms(x)
    low = x.to(torch.bfloat16) if bfloat16 else x

    def nearest_of(rows: torch.Tensor):  # [n] distance to the nearest of x[rows], and which
        best = torch.empty(n, dtype=x.dtype, device=dev)
        which = torch.empty(n, dtype=torch.int64, device=dev)
        cand, cand_sq = low[rows], x_sq[rows]
        for s in range(0, n, _CHUNK):
            d = torch.mm(low[s:s + _CHUNK], cand.T).to(x.dtype).mul_(-2.0)
            d.add_(x_sq[s:s + _CHUNK].unsqueeze(1)).add_(cand_sq.unsqueeze(0))
            best[s:s + _CHUNK], which[s:s + _CHUNK] = d.min(dim=1)
        return best.clamp_min_(0), which

    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    chosen = torch.tensor([first], device=dev)
    closest, owner = nearest_of(chosen)
    closest[first] = 0
    want = oversample * k
    for _ in range(rounds):
        pot = closest.double().sum()
        if float(pot) <= 0:
            break
        draw = torch.rand(n, generator=generator, dtype=torch.float64).to(dev)
        new = torch.nonzero(draw * pot < want * closest.double()).flatten()
        if len(new) == 0:
            continue
        d, which = nearest_of(new)
        closer = d < closest
        closest = torch.where(closer, d, closest)
        owner = torch.where(closer, which + len(chosen), owner)
        owner[new] = torch.arange(len(chosen), len(chosen) + len(new), device=dev)
        closest[new] = 0
        chosen = torch.cat([chosen, new])
    if len(chosen) < k:  # a sample barely larger than k: the farthest rows make up the rest
        rest = torch.argsort(closest, descending=True, stable=True)[: k - len(chosen)]
        owner[rest] = torch.arange(len(chosen), len(chosen) + len(rest), device=dev)
        chosen = torch.cat([chosen, rest])
    weights = torch.bincount(owner, minlength=len(chosen)).double()
    picked = _weighted_kmeans_plusplus(x[chosen], weights, k, generator, on_center=on_center)
    return x[chosen[picked]]


def _weighted_kmeans_plusplus(c: torch.Tensor, weights: torch.Tensor, k: int,
                              generator: torch.Generator, *, on_center=None) -> torch.Tensor:
    """Greedy k-means++ over m weighted points (m of a few k): indices of the k chosen.

    Their m x m squared distances are taken once, so each of the k steps reads only 2 + log k
    rows of them; beyond _PAIRWISE_MAX candidates (1 GB of distances) each step computes its
    rows instead."""
    m, dev = c.shape[0], c.device
    trials = 2 + int(math.log(k))
    sq = _sq_norms(c)

    def rows_of(index: torch.Tensor) -> torch.Tensor:  # [len(index), m] squared distances
        block = torch.mm(c[index], c.T).mul_(-2.0)
        return block.add_(sq[index].unsqueeze(1)).add_(sq.unsqueeze(0)).clamp_min_(0)

    if m <= _PAIRWISE_MAX:
        dist = torch.empty((m, m), dtype=torch.float32, device=dev)
        for s in range(0, m, _CHUNK):
            dist[s:s + _CHUNK] = rows_of(torch.arange(s, min(s + _CHUNK, m), device=dev))
        rows_of = dist.__getitem__
    picked = torch.empty(k, dtype=torch.int64, device=dev)
    # The first seed by weight alone, as k-means|| draws it from the rows it stands for.
    cumulative = torch.cumsum(weights, 0)
    rand = torch.rand(1, generator=generator, dtype=torch.float64).to(dev)
    picked[0] = torch.searchsorted(cumulative, rand * cumulative[-1]).clamp_max_(m - 1)[0]
    closest = rows_of(picked[:1])[0].double()
    for step in range(1, k):
        mass = closest * weights
        cumulative = torch.cumsum(mass, 0)
        if float(cumulative[-1]) <= 0:  # fewer distinct candidates than k: duplicates remain
            picked[step:] = torch.randint(m, (k - step,), generator=generator).to(dev)
            break
        rand = torch.rand(trials, generator=generator, dtype=torch.float64).to(dev)
        cand = torch.searchsorted(cumulative, rand * cumulative[-1]).clamp_max_(m - 1)
        cand_dist = torch.minimum(closest.unsqueeze(0), rows_of(cand).double())  # [trials, m]
        best = int(torch.argmin(cand_dist @ weights))
        closest = cand_dist[best]
        picked[step] = cand[best]
        if on_center is not None:
            on_center(step + 1)
    if on_center is not None:
        on_center(k)
    return picked


def bf16_matmul_is_fast(device: str) -> bool:
    """Whether this device multiplies bfloat16 matrices natively (else they are emulated)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


class KMeans:
    """k-means: k-means|| (or k-means++) seeding on a subsample, then Lloyd; scikit-learn style.

    Lloyd stops after max_iter iterations, when no clip changes word, or when an iteration
    lowers the inertia by less than `tol` of it.

    `fit` takes one float [N, D] array or a list of them (parts are never concatenated, so a
    sample held in several arrays costs no copy). The data are centred on their mean before
    distances are taken (k-means does not change under translation; bfloat16 does better).
    """

    def __init__(self, n_clusters: int, *, max_iter: int = 25, seed: int = 0,
                 device: str = "cpu", precision: str = "auto", seed_sample: int | None = None,
                 tol: float = 1e-4, init: str = "k-means||"):
        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError("precision must be auto, float32 or bfloat16")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}")
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.seed = seed
        self.device = device
        self.precision = precision
        self.tol = tol  # stop when an iteration lowers the inertia by less than this share
        self.seed_sample = seed_sample  # None: 8 clips per word (at least 4096) for the seeding
        self.init = init

    def fit(self, features, progress=None) -> "KMeans":
        """Fit on float [N, D] (N >= n_clusters); sets cluster_centers_, inertia_, n_iter_.

        progress(phase, done, total, unit, note), if given, is called as seeding picks centres
        and after every Lloyd pass (vgray.clusters.live.Reporter shows it from a remote task)."""
        parts = [features] if isinstance(features, np.ndarray) else list(features)
        parts = [np.ascontiguousarray(p, dtype=np.float32) for p in parts if len(p)]
        n = sum(len(p) for p in parts)
        if n < self.n_clusters or any(p.ndim != 2 for p in parts):
            raise ValueError(f"k-means needs at least {self.n_clusters} clips, got {n}")
        dev, k = torch.device(self.device), self.n_clusters
        self.precision_ = self.precision
        if self.precision == "auto":
            self.precision_ = "bfloat16" if bf16_matmul_is_fast(self.device) else "float32"
        with warnings.catch_warnings():  # parts may be read-only (Ray's shared memory): only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = [torch.from_numpy(p) for p in parts]
        mean = torch.zeros(parts[0].shape[1], dtype=torch.float64)
        for t in tensors:
            mean += t.sum(dim=0, dtype=torch.float64)
        self._mean = (mean / n).float().to(dev)
        self._tensors, self._starts = tensors, np.cumsum([0] + [len(p) for p in parts])

        generator = torch.Generator().manual_seed(self.seed)
        size = min(n, self.seed_sample or max(8 * k, 4096))
        rows = torch.randperm(n, generator=generator)[:size].sort().values if size < n else torch.arange(n)
        report = progress or (lambda *state: None)
        seeding = kmeans_parallel if self.init == "k-means||" else kmeans_plusplus
        centers = seeding(self._rows(rows), k, generator, bfloat16=self.precision_ == "bfloat16",
                          on_center=lambda c: report("vocab: seeding", c, k, "words"))
        labels, inertia = None, math.inf
        self.n_iter_, self.inertia_curve_ = 0, []  # inertia_curve_[i]: after i updates
        while True:
            new_labels, dists, sums, counts = self._pass(centers, labels)
            new_inertia = float(dists.double().sum())
            self.inertia_curve_.append(new_inertia)
            done = labels is not None and (torch.equal(new_labels, labels)
                                           or inertia - new_inertia <= self.tol * inertia)
            labels, inertia = new_labels, new_inertia
            report("vocab: k-means", self.n_iter_, self.max_iter, "iterations",
                   f"inertia/clip {inertia / n:.5g}")
            if done or self.n_iter_ == self.max_iter:
                break
            centers = self._update(sums, counts, dists, centers)
            self.n_iter_ += 1
        self.cluster_centers_ = (centers + self._mean).cpu().numpy()
        self.labels_ = labels.to(torch.int32).cpu().numpy()
        self.inertia_ = inertia  # exact, of these labels to these centres
        del self._tensors, self._mean
        return self

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """Centred rows of the data at global positions `index` (sorted or not)."""
        index = index.cpu().numpy()
        part = np.searchsorted(self._starts, index, side="right") - 1
        out = torch.empty((len(index), self._tensors[0].shape[1]), dtype=torch.float32)
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[torch.from_numpy(sel)] = self._tensors[p][torch.from_numpy(index[sel] - self._starts[p])]
        return out.to(self._mean.device) - self._mean

    def _pass(self, centers, labels):
        """One pass over the data: each clip's word, its exact squared distance, and the per-word
        sums and counts of the next centres."""
        dev, k = centers.device, self.n_clusters
        n = int(self._starts[-1])
        new_labels = torch.empty(n, dtype=torch.int64, device=dev)
        dists = torch.empty(n, dtype=torch.float32, device=dev)
        sums = torch.zeros_like(centers)
        centers_sq = _sq_norms(centers)
        low = centers.to(torch.bfloat16) if self.precision_ == "bfloat16" else None
        book = Codebook(centers, centers_sq) if low is None else None
        # float32 gains from large blocks; the bfloat16 pass was measured slower with them
        # (0.10 against 0.15 iterations/s on 384k clips, K 1500: benchmarks/README.md).
        rows = _block_rows(k) if low is None else _CHUNK
        for t, start in zip(self._tensors, self._starts):
            for s in range(0, len(t), rows):
                block = t[s:s + rows].to(centers.device) - self._mean
                at = slice(int(start) + s, int(start) + s + len(block))
                if low is None:
                    lab, d = book.nearest(block)
                else:
                    scores = torch.mm(block.to(torch.bfloat16), low.T).float()
                    proposal = torch.addcmul(centers_sq, scores, torch.tensor(-2.0, device=dev)).argmin(dim=1)
                    lab, d = self._closer(block, centers, proposal, None if labels is None else labels[at])
                new_labels[at], dists[at] = lab, d
                sums.index_add_(0, lab, block)
        counts = torch.bincount(new_labels, minlength=k)
        return new_labels, dists, sums, counts

    @staticmethod
    def _closer(block, centers, proposal, current):
        """Of the proposed word and the current one, the exactly closer (ties keep the current)."""
        d = ((block - centers[proposal]) ** 2).sum(dim=1)
        if current is None:
            return proposal, d
        d_now = ((block - centers[current]) ** 2).sum(dim=1)
        keep = d_now <= d
        return torch.where(keep, current, proposal), torch.where(keep, d_now, d)

    def _update(self, sums, counts, dists, centers):
        empty = torch.nonzero(counts == 0).flatten()
        new = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        if len(empty):
            # An empty word takes the clip farthest from its current word (as scikit-learn does).
            far = torch.argsort(dists, descending=True, stable=True)[: len(empty)]
            new[empty] = self._rows(far)
        return new

    def predict(self, features: np.ndarray) -> np.ndarray:
        return assign(features, self.cluster_centers_, self.device)
