"""Assignment: vgray's nearest-word search against one bare BLAS matmul + argmin.

    python benchmarks/assign.py [--clips 100000] [--dim 1024] [--vocab 1500]

The reference is the least any exact assignment has to do: numpy's `x @ c.T` over all clips at
once (one BLAS call) and an argmin of |c|^2 - 2 x.c. vgray.algo.vocab.assign works in blocks of 4096
clips (bounded memory) in float32 and must give the same words. Best of --repeat runs each.
Writes benchmarks/results/assign.json.
"""

import argparse
import time

import numpy as np
import torch

from common import clip_features, machine, write_result
from vgray.algo.vocab import assign


def reference(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    scores = x @ c.T
    scores *= -2.0
    scores += (c * c).sum(axis=1)
    return scores.argmin(axis=1)


def best_of(repeat, fn, *args):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = clip_features(args.clips, args.dim)
    c = x[np.random.default_rng(1).choice(len(x), args.vocab, replace=False)] + 0.01
    ref_s, want = best_of(args.repeat, reference, x, c)
    ours_s, got = best_of(args.repeat, assign, x, c)
    result = {"machine": machine(), "clips": args.clips, "dim": args.dim, "vocab": args.vocab,
              "reference": "numpy x @ c.T + argmin, one call", "reference_seconds": round(ref_s, 3),
              "reference_gflops": round(2 * args.clips * args.dim * args.vocab / ref_s / 1e9, 1),
              "vgray_seconds": round(ours_s, 3), "ratio_vgray_to_reference": round(ours_s / ref_s, 3),
              "same_words": float(np.mean(got == want))}
    write_result("assign", result)


if __name__ == "__main__":
    main()
