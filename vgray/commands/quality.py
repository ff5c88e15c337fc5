"""How well a run recovers a synthetic corpus's planted words and topics."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq

from ..rundir.store import load_npy, read_json, read_tokens


def nearest_neighbours(vectors: np.ndarray, words: np.ndarray, k: int = 1) -> np.ndarray:
    """The k nearest other words (cosine) of each of `words`, among `words`."""
    v = vectors[words] / np.maximum(np.linalg.norm(vectors[words], axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    return words[np.argsort(-sim, axis=1, kind="stable")[:, :k]]


def evaluate(run_dir: str, synth_dir: str) -> dict:
    """NMI between tokens and planted words; share of learned words whose nearest neighbour
    (cosine on the GloVe vectors) belongs to the same planted topic."""
    from sklearn.metrics import normalized_mutual_info_score

    truth = pq.read_table(os.path.join(synth_dir, "truth.parquet")).to_pydict()
    word_topic = np.array(read_json(os.path.join(synth_dir, "synth.json"))["word_topic"])
    tokens = read_tokens(sorted(glob.glob(os.path.join(run_dir, "tokens", "*.parquet"))))
    learned, planted = [], []
    for vid, words in zip(truth["video_id"], truth["words"]):
        if vid in tokens:
            learned.append(tokens[vid])
            planted.append(np.asarray(words))
    learned, planted = np.concatenate(learned), np.concatenate(planted)
    vectors = load_npy(os.path.join(run_dir, "glove", "vectors.npy"), np.float32, 2)
    used = np.unique(learned)
    # Topic of a learned word: the topic of the planted word most of its clips come from.
    topic = {}
    for w in used:
        topic[w] = word_topic[np.bincount(planted[learned == w]).argmax()]
    neighbour = nearest_neighbours(vectors, used)[:, 0]
    agree = np.mean([topic[w] == topic[n] for w, n in zip(used, neighbour)])
    return {"nmi": float(normalized_mutual_info_score(planted, learned)),
            "neighbour_topic_agreement": float(agree), "words_used": int(len(used))}
