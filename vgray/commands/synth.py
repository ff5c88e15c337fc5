"""A synthetic corpus with planted visual words and topics, for the demo, tests and benchmarks.

Each word is a point in feature space (well separated); each topic owns a block of words; each
video picks a topic and is a run of segments, each segment one of the topic's words repeated a
few clips, every clip its word's point plus Gaussian noise. A good vocabulary recovers the words,
and GloVe vectors of words of one topic end up near each other.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pyarrow as pa

from ..errors import VgrayError
from ..rundir.store import save_npy, write_json, write_table

# Everything make_corpus writes in OUT, and the names of its feature files (and of their
# temporary files while a write is in flight).
WRITTEN = ("features", "train_ids.json", "truth.parquet", "labels.json", "synth.json")
FEATURE_FILE = re.compile(r"\.?v_\d{5,}_(rgb|flow)(\.tmp-[0-9a-f]{8})?\.npy")


def word_topic(words: int, topics: int) -> np.ndarray:
    """Topic of each planted word: topics own contiguous, near-equal blocks of words."""
    return (np.arange(words) * topics) // words


def is_synth_output(out: str) -> bool:
    """Whether OUT was written by make_corpus: its synth.json, or (a write cut short) a
    features/ holding nothing but feature files of synth's names."""
    features = os.path.join(out, "features")
    if os.path.isfile(os.path.join(out, "synth.json")):
        return True
    return os.path.isdir(features) and all(
        FEATURE_FILE.fullmatch(n) and os.path.isfile(os.path.join(features, n))
        for n in os.listdir(features))


def clear(out: str, *, force: bool = False) -> None:
    """Make OUT ready for a new corpus. A non-empty OUT is refused unless `force`; with it,
    what an earlier make_corpus wrote there is removed (nothing else, and never OUT itself),
    so that no video or label of the old corpus remains. What make_corpus would overwrite
    but did not write is never removed."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise VgrayError(f"{out} is not a directory")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    if not force:
        raise VgrayError(f"{out} is not empty; pass --force to replace the corpus in it, or "
                         f"choose a new OUT")
    ours = [n for n in entries if n in WRITTEN]
    if ours and not is_synth_output(out):
        raise VgrayError(f"{out} holds {', '.join(ours)} but is not an output of vgray synth "
                         f"(no synth.json); not replaced even with --force: choose a new OUT")
    for n in ours:
        path = os.path.join(out, n)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def make_corpus(out: str, *, videos: int = 200, dim: int = 64, words: int = 24, topics: int = 4,
                flow: bool = False, flow_dim: int = 32, min_clips: int = 16, max_clips: int = 64,
                noise: float = 0.1, train_fraction: float = 0.8, seed: int = 0,
                force: bool = False) -> dict:
    """Write OUT/features/*.npy, OUT/train_ids.json, OUT/truth.parquet and OUT/labels.json (the
    topic of each video, as `vgray evaluate --labels` reads it); return a summary. A non-empty
    OUT is refused unless `force` replaces the corpus in it (see `clear`)."""
    if not (words >= topics >= 1 and videos >= 1 and 1 <= min_clips <= max_clips and dim >= 1):
        raise ValueError("synth needs words >= topics >= 1, videos >= 1, 1 <= min_clips <= max_clips")
    clear(out, force=force)
    rng = np.random.default_rng(seed)
    rgb_points = rng.normal(size=(words, dim)).astype(np.float32)
    flow_points = rng.normal(size=(words, flow_dim)).astype(np.float32)
    topic_of = word_topic(words, topics)
    features = os.path.join(out, "features")
    os.makedirs(features, exist_ok=True)
    ids, video_topics, truth, clips = [], [], [], 0
    for v in range(videos):
        vid = f"v_{v:05d}"
        topic = int(rng.integers(topics))
        own = np.flatnonzero(topic_of == topic)
        length = int(rng.integers(min_clips, max_clips + 1))
        seq = []
        while len(seq) < length:
            seq.extend([int(rng.choice(own))] * int(rng.integers(1, 5)))
        seq = np.array(seq[:length], dtype=np.int32)
        rgb = rgb_points[seq] + noise * rng.normal(size=(length, dim)).astype(np.float32)
        save_npy(os.path.join(features, f"{vid}_rgb.npy"), rgb.astype(np.float32))
        if flow:
            fl = flow_points[seq] + noise * rng.normal(size=(length, flow_dim)).astype(np.float32)
            save_npy(os.path.join(features, f"{vid}_flow.npy"), fl.astype(np.float32))
        ids.append(vid)
        video_topics.append(topic)
        truth.append(seq)
        clips += length
    n_train = max(1, int(round(train_fraction * videos)))
    train_ids = sorted(rng.permutation(ids)[:n_train].tolist())
    write_json(os.path.join(out, "train_ids.json"), train_ids)
    table = pa.table({"video_id": pa.array(ids, pa.string()),
                      "topic": pa.array(video_topics, pa.int32()),
                      "words": pa.array([t.tolist() for t in truth], pa.list_(pa.int32()))})
    write_table(os.path.join(out, "truth.parquet"), table)
    write_json(os.path.join(out, "labels.json"), dict(zip(ids, video_topics)))
    write_json(os.path.join(out, "synth.json"), {
        "videos": videos, "clips": clips, "dim": dim, "words": words, "topics": topics,
        "flow": flow, "flow_dim": flow_dim if flow else None, "noise": noise, "seed": seed,
        "train_videos": len(train_ids), "word_topic": topic_of.tolist()})
    return {"features": features, "train_ids": os.path.join(out, "train_ids.json"),
            "truth": os.path.join(out, "truth.parquet"),
            "labels": os.path.join(out, "labels.json"), "videos": videos, "clips": clips}
