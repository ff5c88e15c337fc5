"""Windowed, 1/distance-weighted co-occurrence counts of visual words, exact under any sharding.

For every pair of positions p < q of one video with q - p <= window, X[t_p, t_q] and X[t_q, t_p]
each gain 1/(q - p). To stay exact whatever the number of shards, counts are kept as integers
scaled by L = lcm(1..window): a pair at distance d adds L/d. Integers add up exactly in any order;
X = S / L is taken once, at the end.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

MAX_WINDOW = 24  # lcm(1..24) ~ 5.4e9 keeps the scaled int64 counts far from overflow
_DENSE_LIMIT = 1 << 24  # vocabularies with K*K below this count into one dense array
_BLOCK = 1 << 21  # tokens per group of videos in the dense count


def scale(window: int) -> int:
    """L = lcm(1, ..., window): the factor that makes every 1/d weight an integer."""
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be between 1 and {MAX_WINDOW}, got {window}")
    return math.lcm(*range(1, window + 1))


def _aggregate(keys: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum int64 values per int64 key (0 <= key < size): sorted unique keys and their sums."""
    if size <= _DENSE_LIMIT and int(values.sum()) < 2**53:
        # bincount sums in float64, which is exact while every sum stays below 2**53.
        totals = np.bincount(keys, weights=values, minlength=size)
        nz = np.flatnonzero(totals)
        return nz.astype(np.int64), totals[nz].astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    values = values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    return keys[starts], np.add.reduceat(values, starts) if len(keys) else values


def count(sequences: Iterable[np.ndarray], vocab_size: int, window: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled co-occurrence counts of token sequences: (i int32, j int32, s int64), sorted by (i, j).

    X[i, j] = s / scale(window). Each sequence is one video; counts never cross sequences.
    """
    factor = scale(window)
    seqs = [t for t in (np.asarray(t) for t in sequences) if len(t) > 1]
    if not seqs:
        empty = np.zeros(0, np.int64)
        return empty.astype(np.int32), empty.astype(np.int32), empty
    # The padding word's row and column are dropped (see _padded_groups).
    pad_id, m = vocab_size, vocab_size + 1
    groups = _padded_groups(seqs, vocab_size, window)
    if m * m <= _DENSE_LIMIT:
        totals = np.zeros(m * m, dtype=np.int64)
        for padded in groups:
            left = padded * m
            for d in range(1, window + 1):
                totals += np.bincount(left[:-d] + padded[d:], minlength=m * m) * (factor // d)
        directed = totals.reshape(m, m)[:vocab_size, :vocab_size]
        both = directed + directed.T  # X counts p < q in both directions
        i, j = np.nonzero(both)
        return i.astype(np.int32), j.astype(np.int32), both[i, j]
    padded = np.concatenate(list(groups))
    key_parts, value_parts = [], []
    for d in range(1, window + 1):
        a, b = padded[:-d], padded[d:]
        keep = (a != pad_id) & (b != pad_id)
        a, b = a[keep], b[keep]
        keys = np.concatenate([a * vocab_size + b, b * vocab_size + a])
        key_parts.append(keys)
        value_parts.append(np.full(len(keys), factor // d, dtype=np.int64))
    keys, sums = _aggregate(np.concatenate(key_parts), np.concatenate(value_parts),
                            vocab_size * vocab_size)
    return (keys // vocab_size).astype(np.int32), (keys % vocab_size).astype(np.int32), sums


def _padded_groups(seqs: list[np.ndarray], vocab_size: int, window: int):
    """Videos end to end with `window` padding words (id K) after each, yielded in groups of
    about _BLOCK tokens: every pair that would cross a video boundary has the padding word at one
    end. No per-distance masks; one pass over the tokens per distance; one group in memory at a
    time whatever the corpus."""
    pad_id = vocab_size
    pad = np.full(window, pad_id, dtype=np.int64)
    groups, group, size = [], [], 0
    for t in seqs:
        group += [t, pad]
        size += len(t) + window
        if size >= _BLOCK:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    for parts in groups:
        padded = np.concatenate(parts).astype(np.int64, copy=False)
        if padded.min() < 0 or padded.max() > pad_id or \
                np.count_nonzero(padded == pad_id) != window * (len(parts) // 2):
            raise ValueError(f"tokens must lie in [0, {vocab_size})")
        yield padded


def count_by_distance(sequences: Iterable[np.ndarray], vocab_size: int, window: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-occurrence counts kept per distance: (i int32, j int32, c int64 [n, window]), sorted by
    (i, j); c[:, d - 1] counts the pairs of words i, j that are d clips apart (both orders, as in
    `count`). Every window w <= `window` is derived from it exactly (`at_window`)."""
    seqs = [t for t in (np.asarray(t) for t in sequences) if len(t) > 1]
    if not seqs:
        empty = np.zeros(0, np.int64)
        return empty.astype(np.int32), empty.astype(np.int32), np.zeros((0, window), np.int64)
    pad_id, size = vocab_size, vocab_size * vocab_size
    per_distance = []
    for d in range(1, window + 1):
        keys = []
        for padded in _padded_groups(seqs, vocab_size, window):
            a, b = padded[:-d], padded[d:]
            keep = (a != pad_id) & (b != pad_id)
            keys += [a[keep] * vocab_size + b[keep], b[keep] * vocab_size + a[keep]]
        keys = np.concatenate(keys)
        per_distance.append(_aggregate(keys, np.ones(len(keys), np.int64), size))
    every = np.unique(np.concatenate([k for k, _ in per_distance]))
    c = np.zeros((len(every), window), np.int64)
    for d, (keys, sums) in enumerate(per_distance):
        c[np.searchsorted(every, keys), d] = sums
    return (every // vocab_size).astype(np.int32), (every % vocab_size).astype(np.int32), c


def at_window(i: np.ndarray, j: np.ndarray, c: np.ndarray, window: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scaled counts (i, j, s) of `count` at `window` from the per-distance counts of a window
    at least as large: s = sum over d <= window of c_d * lcm(1..window) / d, exactly."""
    if not 1 <= window <= c.shape[1]:
        raise ValueError(f"window must be between 1 and {c.shape[1]}, got {window}")
    factor = scale(window)
    s = c[:, :window] @ np.array([factor // d for d in range(1, window + 1)], dtype=np.int64)
    keep = s > 0
    return i[keep], j[keep], s[keep]


def merge_by_distance(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], vocab_size: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact sum of per-distance counts (i, j, c [n, W]) from any number of shards, sorted by
    (i, j)."""
    parts = list(parts)
    width = parts[0][2].shape[1] if parts else 1
    keys = np.concatenate([i.astype(np.int64) * vocab_size + j for i, j, _ in parts] or
                          [np.zeros(0, np.int64)])
    if not len(keys):
        empty = np.zeros(0, np.int32)
        return empty, empty, np.zeros((0, width), np.int64)
    c = np.concatenate([c.astype(np.int64) for _, _, c in parts])
    order = np.argsort(keys, kind="stable")
    keys, c = keys[order], c[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return ((keys[starts] // vocab_size).astype(np.int32),
            (keys[starts] % vocab_size).astype(np.int32), np.add.reduceat(c, starts, axis=0))


def merge(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], vocab_size: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact sum of partial scaled counts (i, j, s) from any number of shards, sorted by (i, j)."""
    parts = list(parts)
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty.astype(np.int32), empty.astype(np.int32), empty
    keys = np.concatenate([i.astype(np.int64) * vocab_size + j for i, j, _ in parts])
    values = np.concatenate([s.astype(np.int64) for _, _, s in parts])
    keys, sums = _aggregate(keys, values, vocab_size * vocab_size)
    return (keys // vocab_size).astype(np.int32), (keys % vocab_size).astype(np.int32), sums


def partition(i: np.ndarray, reducers: int) -> list[np.ndarray]:
    """Row indices of each reducer's part: pairs go to reducer i mod R (hash partition by i)."""
    owner = i.astype(np.int64) % reducers
    return [np.flatnonzero(owner == r) for r in range(reducers)]


def weights(s: np.ndarray, window: int) -> np.ndarray:
    """X = s / lcm(1..window) as float64."""
    return s.astype(np.float64) / scale(window)
