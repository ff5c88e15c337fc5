"""Exact float32 nearest-word search in numpy alone, for the shard workers of a CPU run: they
tokenise without importing torch (1.8 CPU-seconds and a few hundred MB per process); only the
worker that fits k-means or GloVe imports it. `vocab.Codebook` takes this path on CPU too, so
the tokens of a run are the same whichever of the two computes them.
"""

from __future__ import annotations

import numpy as np

CHUNK = 4096  # rows per block at least (see block_rows)


def block_rows(k: int) -> int:
    """Rows per block of Lloyd's and the assignment's products: as many as 64 MB of scores hold,
    4,096 to 16,384 (blocks of 4,096 rows ran the float32 pass slower: benchmarks/README.md)."""
    return max(CHUNK, min(4 * CHUNK, (1 << 24) // max(k, 1)))


class NumpyCodebook:
    """Centroids [K, D] prepared once for many nearest-word searches: numpy's product (OpenBLAS),
    which runs at the machine's BLAS speed on Intel and AMD alike."""

    device = "cpu"  # where it computes, as vocab.Codebook names its own

    def __init__(self, centers: np.ndarray, centers_sq: np.ndarray | None = None):
        centers = np.ascontiguousarray(centers, dtype=np.float32)
        self.k = centers.shape[0]
        self._ct = np.ascontiguousarray(centers.T)
        self._csq = (np.einsum("ij,ij->i", centers, centers) if centers_sq is None
                     else np.asarray(centers_sq, dtype=np.float32))

    def nearest(self, xs: np.ndarray, chunk: int | None = None,
                out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Index of the nearest center (squared Euclidean) per row of float32 xs, and that
        distance; written into `out` (int64 labels, float32 distances) if given."""
        chunk = chunk or block_rows(self.k)
        labels, dists = out if out is not None else (np.empty(len(xs), np.int64),
                                                     np.empty(len(xs), np.float32))
        buf = np.empty((min(chunk, len(xs)), self._ct.shape[1]), dtype=np.float32)
        for s in range(0, len(xs), chunk):
            block = xs[s:s + chunk]
            scores = np.matmul(block, self._ct, out=buf[:len(block)])
            scores *= -2.0
            scores += self._csq  # ||x||^2 is the same for every center: added to the best only
            index = scores.argmin(axis=1)
            labels[s:s + chunk] = index
            value = scores[np.arange(len(block)), index] + np.einsum("ij,ij->i", block, block)
            dists[s:s + chunk] = np.maximum(value, 0)
        return labels, dists

    def words(self, block: np.ndarray) -> np.ndarray:
        """The int32 word of every row of a float32 block."""
        return self.nearest(block)[0].astype(np.int32)
