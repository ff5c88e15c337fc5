"""Evidence for choosing a model: `vgray evaluate RUN [FEATURES] [--labels FILE]`.

Intrinsic measures need nothing but RUN: the final GloVe loss J, the k-means inertia per clip,
how the vocabulary is used (perplexity of the word distribution, dead and tiny words), how much
of each word's co-occurrence mass its 10 nearest neighbours (cosine) carry, and J on the videos
left out of training (`--train-ids`), counted like the training counts.

With labels (a JSON object video id -> class), each labelled video is mean-pooled in several
representations, which are compared side by side by a cross-validated linear probe (logistic
regression on standardised features, stratified folds, fixed seed) and by same-class retrieval
(cosine, mean average precision): Visual GloVe embeddings, bag of visual words, and, with
FEATURES, the raw features and raw + embeddings (how the paper feeds models downstream).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np

from ..algo import cooccur
from ..files import fs
from ..config import TrainConfig
from ..errors import VgrayError
from ..rundir.manifest import Manifest
from ..rundir.store import COOCCUR_SCHEMA, RunDir, load_run, read_table, read_tokens, write_json

FOLDS = 5
NEIGHBOURS = 10
TINY = 0.1  # a word used, by fewer clips than this share of the mean, is "tiny"


# ---------------------------------------------------------------------------------------------
# Labels

def read_labels(path: str) -> dict[str, str]:
    """video id -> class (a string or a number) from a JSON object."""
    try:
        data = json.loads(fs.read_bytes(path).decode("utf-8"))
    except OSError as e:
        raise VgrayError(f"cannot read --labels {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VgrayError(f"--labels {path} is not JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise VgrayError(f"--labels {path} must be a JSON object of video id -> class")
    labels = {}
    for vid, label in data.items():
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise VgrayError(f"--labels {path}: the class of {vid!r} must be a string or a number")
        labels[str(vid)] = str(label)
    return labels


# ---------------------------------------------------------------------------------------------
# Intrinsic measures

def dead_and_tiny(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dead words (used by no clip) and the tiny ones (used, by fewer clips than TINY of the
    mean), from the clips per word: a dead word is not also tiny."""
    counts = np.asarray(counts)
    dead = np.flatnonzero(counts == 0)
    tiny = np.flatnonzero((counts > 0) & (counts < TINY * counts.mean()))
    return dead, tiny


def usage_measures(tokens: dict[str, np.ndarray], vocab_size: int) -> dict:
    """Perplexity of the word distribution over every clip, dead and tiny words."""
    counts = np.bincount(np.concatenate(list(tokens.values())), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    dead, tiny = dead_and_tiny(counts)
    return {"perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "dead_words": len(dead), "tiny_words": len(tiny)}


def neighbour_share(vectors: np.ndarray, nonzeros, *, k: int = NEIGHBOURS) -> float:
    """Mean over words with co-occurrence mass of the share of that mass (sum of X[w, :]) which
    falls on the word's k nearest other words by cosine of the GloVe vectors; `nonzeros`: the
    co-occurrence counts as (i, j, x)."""
    from scipy.sparse import csr_matrix

    i, j, x = nonzeros
    words = len(vectors)
    matrix = csr_matrix((x, (i, j)), shape=(words, words))
    total = np.asarray(matrix.sum(axis=1)).ravel()
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    shares = []
    for start in range(0, words, 1024):  # bounded memory: 1024 x K similarities at a time
        rows = np.arange(start, min(start + 1024, words))
        cos = unit[rows] @ unit.T
        cos[np.arange(len(rows)), rows] = -np.inf
        near = np.argsort(-cos, axis=1, kind="stable")[:, :k]
        for w, n in zip(rows, near):
            if total[w] > 0:
                shares.append(matrix[w, n].sum() / total[w])
    return float(np.mean(shares)) if shares else 0.0


def held_out_loss(run: RunDir, manifest: Manifest, tokens: dict[str, np.ndarray]) -> dict | None:
    """J of the trained GloVe state on the co-occurrence counts of the videos that were not
    trained on, and J of the initial state (the fit's own, from its seed) on them (None when
    every video was trained on)."""
    from ..features.corpus import read_train_ids
    from ..algo.glove import initial_state, loss

    ids_file = manifest.train_ids_file
    if not ids_file:
        return None
    try:
        train = set(read_train_ids(ids_file))
    except VgrayError as e:  # moved or deleted since the run: the other measures still stand
        return {"videos": None, "nonzeros": None, "loss": None, "skipped": str(e)}
    held = [tokens[v] for v in sorted(tokens) if v not in train]
    if not held:
        return None
    cfg = manifest.config
    i, j, s = cooccur.count(held, cfg.vocab_size, cfg.window)
    if len(i) == 0:
        return {"videos": len(held), "nonzeros": 0, "loss": None}
    with np.load(io.BytesIO(fs.read_bytes(run.path("glove", "state.npz"))), allow_pickle=False) as state:
        w, wc, b, bc = (state[k] for k in ("w", "w_context", "b", "b_context"))
    x = cooccur.weights(s, cfg.window)
    value = loss((w, wc, b, bc), (i, j, x), x_max=cfg.x_max, alpha=cfg.alpha)
    start = [p.numpy() for p in initial_state(cfg.vocab_size, cfg.dim, int(cfg.seed))]
    initial = loss(start, (i, j, x), x_max=cfg.x_max, alpha=cfg.alpha)
    return {"videos": len(held), "nonzeros": int(len(i)), "loss": value, "initial_loss": initial}


# ---------------------------------------------------------------------------------------------
# Probe and retrieval

def probe_accuracy(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """Mean accuracy of a logistic-regression probe over stratified folds (at most FOLDS, at most
    the smallest class's size), standardised features, fixed seed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.unique(labels, return_counts=True)[1].min()))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(model, features, labels, cv=cv).mean())


def retrieval_map(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over videos of the average precision of ranking every other video by cosine
    similarity, the relevant ones being those of the same class."""
    from sklearn.metrics import average_precision_score

    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    scores = []
    for q in range(len(features)):
        others = np.arange(len(features)) != q
        relevant = labels[others] == labels[q]
        if relevant.any():
            scores.append(average_precision_score(relevant, sim[q, others]))
    return float(np.mean(scores))


def representations(ids: list[str], tokens: dict[str, np.ndarray], *, vectors: np.ndarray,
                    raw: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each video mean-pooled: GloVe embeddings, bag of words, and with FEATURES raw, raw+GloVe."""
    words = len(vectors)
    reps = {"visual_glove": np.stack([vectors[tokens[v]].mean(axis=0) for v in ids]),
            "bag_of_words": np.stack([np.bincount(tokens[v], minlength=words) / len(tokens[v])
                                      for v in ids])}
    if raw is not None:
        reps["raw"] = np.stack([raw[v] for v in ids])
        reps["raw+visual_glove"] = np.hstack([reps["raw"], reps["visual_glove"]])
    return reps


def mean_features(features: str, streams: str, *, ids: set[str], batch_clips: int = 8192,
                  reading=None) -> dict[str, np.ndarray]:
    """The mean clip feature (in RUN's streams) of each of `ids` in FEATURES, read in blocks."""
    from ..features.readers import load_clips, scan

    out = {}
    for v in scan(fs.normalize(features), streams, reading=reading).videos:
        if v.video_id in ids:
            total = np.zeros(v.stream_dim(streams), np.float64)
            for s in range(0, v.frames, batch_clips):
                total += load_clips(v, streams, s, min(s + batch_clips, v.frames)).sum(axis=0)
            out[v.video_id] = (total / v.frames).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# The command

def evaluate(run_dir: str, features: str | None = None, labels_path: str | None = None, *,
             out: str | None = None) -> dict:
    """Every measure of RUN (and, with labels, the probe and retrieval table); written to
    RUN/evaluation.json or `out`."""
    manifest, _, vectors = load_run(run_dir, need_vectors=True)
    run = RunDir(run_dir)
    cfg = manifest.config
    tokens = read_tokens(run.tokens_parts())
    if not tokens:
        raise VgrayError(f"{run_dir} has no tokens")
    table = read_table_all(run)
    result = {"run": run.root, "vocab_size": cfg.vocab_size, "window": cfg.window,
              "dim": cfg.dim, "videos": len(tokens),
              "intrinsic": {"final_loss": manifest.stages["glove"].final_loss,
                            "inertia_per_clip": manifest.stages["vocab"].inertia_per_clip,
                            **usage_measures(tokens, cfg.vocab_size),
                            "neighbour_share": neighbour_share(vectors, table),
                            "held_out": held_out_loss(run, manifest, tokens)}}
    if labels_path is not None:
        result["labels"] = _labelled(run, manifest, tokens=tokens, vectors=vectors, cfg=cfg,
                                     labels=read_labels(labels_path), features=features)
    write_json(out or run.path("evaluation.json"), result)
    return result


def read_table_all(run: RunDir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged co-occurrence counts of RUN as (i, j, x)."""
    parts = [read_table(p, schema=COOCCUR_SCHEMA) for p in run.files("cooccur", suffix=".parquet")]
    if not parts:
        raise VgrayError(f"{run.root} has no co-occurrence counts (cooccur/)")
    i, j, x = (np.concatenate([t.column(c).to_numpy() for t in parts]) for c in ("i", "j", "x"))
    return i, j, x


def _labelled(run: RunDir, manifest: Manifest, *, tokens: dict, vectors: np.ndarray,
              cfg: TrainConfig, labels: dict[str, str], features: str | None) -> dict:
    """The probe and retrieval table of the labelled videos of RUN, per representation."""
    skipped = {s["video_id"] for s in run.skips()}
    unknown = sorted(v for v in labels if v not in tokens and v not in skipped)
    if unknown:
        raise VgrayError(f"{len(unknown)} ids of --labels are not videos of {run.root} "
                         f"(first: {unknown[0]})")
    ids = sorted(v for v in tokens if v in labels)
    y = np.array([labels[v] for v in ids])
    classes, sizes = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise VgrayError(f"--labels gives {len(classes)} class for the videos of {run.root}; "
                         "a probe needs at least 2")
    if sizes.min() < 2:
        lonely = classes[sizes.argmin()].item()  # a Python str or number, not numpy's
        raise VgrayError(f"class {lonely!r} has 1 labelled video; every class "
                         "needs at least 2 for a cross-validated probe")
    raw = mean_features(features, cfg.streams, ids=set(ids),
                        reading=manifest.reading_for(features)) if features else None
    if raw is not None and set(raw) != set(ids):
        missing = sorted(set(ids) - set(raw))
        raise VgrayError(f"{len(missing)} labelled videos are not in FEATURES {features} "
                         f"(first: {missing[0]})")
    seed = int(cfg.seed)
    rows = {name: {"probe_accuracy": probe_accuracy(x, y, seed=seed), "retrieval_map": retrieval_map(x, y)}
            for name, x in representations(ids, tokens, vectors=vectors, raw=raw).items()}
    return {"videos": len(ids), "classes": len(classes), "chance": float(sizes.max() / len(ids)),
            "folds": min(FOLDS, int(sizes.min())),
            "unlabelled_videos": len(tokens) - len(ids),
            "labelled_but_skipped": len([v for v in labels if v in skipped and v not in tokens]),
            "representations": rows}


def overfits(held: dict | None) -> bool:
    """Whether the held-out J of the trained state is worse than that of its initial state."""
    return bool(held) and held.get("loss") is not None and held.get("initial_loss") is not None \
        and held["loss"] > held["initial_loss"]


def lines(result: dict) -> list[str]:
    """The short table `vgray evaluate` prints."""
    m = result["intrinsic"]

    def num(value, fmt=".4g"):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    held = m["held_out"]
    if held and held.get("skipped"):
        held_line = f"- ({held['skipped']})"
    elif held:
        start = held.get("initial_loss")
        held_line = f"{num(held['loss'])} ({held['videos']} videos" + (
            f"; {num(start)} at initialization)" if start is not None else ")")
    else:
        held_line = "- (every video trained)"
    out = [f"K {result['vocab_size']}, window {result['window']}, dim {result['dim']}, "
           f"{result['videos']} videos",
           f"  final J {num(m['final_loss'])}; held-out J {held_line}"]
    if overfits(held):
        out.append(f"  the held-out J is worse than at initialization ({num(held['loss'])} > "
                   f"{num(held['initial_loss'])}): the vectors fit the counts of the training "
                   "videos and not those of unseen videos (overfitting)")
    out += [f"  inertia/clip {num(m['inertia_per_clip'])}; perplexity {num(m['perplexity'])} of "
            f"{result['vocab_size']} words; {m['dead_words']} dead, {m['tiny_words']} tiny",
            f"  co-occurrence share of the {NEIGHBOURS} nearest neighbours "
            f"{num(m['neighbour_share'], '.3f')}"]
    if "labels" in result:
        lab = result["labels"]
        out.append(f"{lab['videos']} labelled videos, {lab['classes']} classes (chance "
                   f"{lab['chance']:.3f}), {lab['folds']}-fold probe; {lab['unlabelled_videos']} "
                   "without a label left out")
        out.append(f"  {'representation':<18} {'probe accuracy':>14} {'retrieval mAP':>14}")
        for name, r in lab["representations"].items():
            out.append(f"  {name:<18} {r['probe_accuracy']:>14.3f} {r['retrieval_map']:>14.3f}")
    return out
