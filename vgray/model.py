"""A trained run as a Python object: load it, tokenise and embed features, find neighbours.

    from vgray import VisualGlove
    model = VisualGlove.load("runs/anet")          # or s3://bucket/runs/anet
    words = model.tokens(features)                 # float [T, D] -> int32 [T]
    emb = model.embed(features)                    # float [T, D] -> float32 [T, dim]
    model.most_similar(17, k=5)                    # [(word, cosine), ...]

No Ray is needed to use a model; `VisualGlove.train` runs `vgray train` (Ray) and loads the result.
"""

from __future__ import annotations

import numpy as np

from .errors import VgrayError
from .rundir.store import load_run


class VisualGlove:
    """Visual GloVe: the visual vocabulary (k-means centroids) and one vector per visual word."""

    def __init__(self, centroids: np.ndarray, vectors: np.ndarray, streams: str = "rgb",
                 run: str | None = None):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if centroids.ndim != 2 or vectors.ndim != 2 or len(centroids) != len(vectors):
            raise VgrayError(f"centroids {centroids.shape} and vectors {vectors.shape} do not "
                             "describe the same vocabulary")
        self.centroids, self.vectors, self.streams, self.run = centroids, vectors, streams, run
        self._codebook = None

    @property
    def vocab_size(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def feature_dim(self) -> int:
        """Width of the features that are tokenised (rgb, flow, or both side by side)."""
        return self.centroids.shape[1]

    @classmethod
    def load(cls, run: str) -> "VisualGlove":
        """A finished `vgray train` run directory (or URI), checked before use."""
        manifest, centroids, vectors = load_run(run, need_vectors=True)
        return cls(centroids, vectors, manifest.config.streams, run)

    @classmethod
    def train(cls, features: str, out: str, train_ids: str | None = None, **settings) -> "VisualGlove":
        """Run `vgray train FEATURES --out OUT` (same settings as the CLI options, in snake_case)
        on Ray, then load the result."""
        from .config import TrainConfig
        from .commands.train import train

        train(features, out, TrainConfig(**settings), train_ids)
        return cls.load(out)

    def _features(self, features) -> np.ndarray:
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise VgrayError(f"features must be [T, {self.feature_dim}] ({self.streams}), got "
                             f"shape {tuple(x.shape)}")
        if x.dtype.kind != "f":
            raise VgrayError(f"features must be floating point, got {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise VgrayError("features hold NaN or inf")
        return x

    def tokens(self, features) -> np.ndarray:
        """The visual word of every clip: float [T, D] -> int32 [T] (exact nearest centroid)."""
        import torch

        from .algo.vocab import Codebook

        if self._codebook is None:
            self._codebook = Codebook(self.centroids)
        labels, _ = self._codebook.nearest(torch.from_numpy(self._features(features)))
        return labels.numpy().astype(np.int32)

    def embed(self, features) -> np.ndarray:
        """The Visual GloVe embedding of every clip: float [T, D] -> float32 [T, dim]."""
        return self.vectors[self.tokens(features)]

    def most_similar(self, word: int, k: int = 10) -> list[tuple[int, float]]:
        """The k words whose vectors are closest to `word`'s by cosine, best first."""
        if not 0 <= int(word) < self.vocab_size:
            raise VgrayError(f"word must be in [0, {self.vocab_size}), got {word}")
        norms = np.linalg.norm(self.vectors, axis=1)
        norms[norms == 0] = 1.0
        cos = (self.vectors @ self.vectors[word]) / (norms * norms[word])
        cos[word] = -np.inf
        order = np.argsort(-cos, kind="stable")[: max(0, min(k, self.vocab_size - 1))]
        return [(int(w), float(cos[w])) for w in order]
