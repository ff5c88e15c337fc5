"""Per-clip embeddings and their concatenation with the original features (BMT/MDVC layout)."""

from __future__ import annotations

import numpy as np


def embed(tokens: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Clip embeddings: vectors[tokens], float32 [T, dim]."""
    return np.ascontiguousarray(vectors[np.asarray(tokens, dtype=np.int64)], dtype=np.float32)


def concat(features: np.ndarray, embeddings: np.ndarray, two_streams: bool) -> np.ndarray:
    """[features, emb] for a video with one stream; [features, emb/2] for each stream of a video
    with rgb and flow, so that the two streams' embedding parts add up to emb."""
    part = embeddings / 2 if two_streams else embeddings
    return np.concatenate([features, part], axis=1).astype(np.float32, copy=False)
