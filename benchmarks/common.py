"""Shared pieces of the benchmark scripts: the machine line, result files and synthetic data."""

from __future__ import annotations

import json
import os
import platform
import resource

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {model}, {os.cpu_count()} cores, {gpu}, "
            f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, result: dict) -> str:
    for k, v in result.items():
        print(f"{k}: {v}")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
    return path


def topic_tokens(tokens: int, vocab: int, topics: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Token sequences shaped like visual words of real videos: each video keeps to one topic
    (a Zipf-weighted slice of the vocabulary) and a word often repeats over consecutive clips."""
    rng = np.random.default_rng(seed)
    ranks = 1.0 / np.arange(1, vocab + 1) ** 0.8
    topic_words = [rng.permutation(vocab) for _ in range(topics)]
    seqs, n = [], 0
    while n < tokens:
        length = int(min(rng.integers(20, 81), tokens - n))
        words = topic_words[int(rng.integers(topics))]
        runs = rng.integers(1, 4, size=length)
        picks = words[rng.choice(vocab, size=length, p=ranks / ranks.sum())]
        seqs.append(np.repeat(picks, runs)[:length].astype(np.int32))
        n += length
    return seqs


def clip_features(n: int, dim: int, modes: int = 3000, seed: int = 0) -> np.ndarray:
    """Non-negative clip features around `modes` prototypes, like pooled ReLU activations."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(modes, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        block = 0.7 * prototypes[rng.integers(0, modes, m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
        np.maximum(block, 0, out=out[s:s + m])
    return out
