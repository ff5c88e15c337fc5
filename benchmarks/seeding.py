"""k-means seeding: k-means|| (vgray's default) against greedy k-means++ (its seeding before).

    python benchmarks/seeding.py [--clips 100000] [--vocab 1500] [--large 4000] [--features DIR]

Both seed the same 8 clips per word of the same clips, in this process, alternately (best of
--repeats each), with the precision vgray picks on this machine; then each seeding is followed
by vgray's Lloyd on every clip and scored by its exact float32 inertia. --large times k-means||
alone at a larger K (k-means++ there takes minutes). --features reads a corpus of {id}_rgb.npy
(e.g. the 1,500-video e2e corpus) instead of the generated clips. To stand in for a CPU without
bfloat16, run with benchmarks/avx2/sitecustomize.py (see there). Writes
benchmarks/results/seeding[-NAME].json.
"""

import argparse
import glob
import os
import time

import numpy as np
import torch

from common import clip_features, machine, write_result
from vgray.algo.vocab import KMeans, bf16_matmul_is_fast, kmeans_parallel, kmeans_plusplus


def seed_sample(x: np.ndarray, k: int) -> torch.Tensor:
    rows = np.random.default_rng(0).permutation(len(x))[:min(len(x), max(8 * k, 4096))]
    sample = torch.from_numpy(x[np.sort(rows)])
    return sample - sample.mean(0)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--large", type=int, default=4000, help="K timed for k-means|| alone (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", help="a directory of {id}_rgb.npy to cluster instead")
    ap.add_argument("--name", help="suffix of the results file")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.features:
        x = np.concatenate([np.load(p, allow_pickle=False) for p in
                            sorted(glob.glob(os.path.join(args.features, "*_rgb.npy")))])
        x = np.ascontiguousarray(x, dtype=np.float32)
    else:
        x = clip_features(args.clips, args.dim)
    bf16 = bf16_matmul_is_fast("cpu")
    result = {"machine": machine(), "native_bfloat16": bf16, "clips": len(x), "dim": x.shape[1],
              "vocab": args.vocab, "features": args.features or "generated (common.clip_features)"}
    sample = seed_sample(x, args.vocab)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    par, pp = [], []
    for _ in range(args.repeats):  # alternately, so both see the same load on the machine
        par.append(best_of(1, lambda: kmeans_parallel(sample, args.vocab, gen(), bfloat16=bf16)))
        pp.append(best_of(1, lambda: kmeans_plusplus(sample, args.vocab, gen(), bfloat16=bf16)))
        print(f"seeding K {args.vocab} on {len(sample)} clips: k-means|| {par[-1]:.2f} s, "
              f"k-means++ {pp[-1]:.2f} s", flush=True)
    result.update(seed_clips=len(sample), kmeans_parallel_seconds=round(min(par), 2),
                  kmeans_plusplus_seconds=round(min(pp), 2),
                  seeding_speedup=round(min(pp) / min(par), 1))
    if args.large:
        big = seed_sample(x, args.large) if len(x) >= 8 * args.large else None
        if big is None:
            big = seed_sample(clip_features(8 * args.large, x.shape[1]), args.large)
        t = best_of(args.repeats, lambda: kmeans_parallel(big, args.large, gen(), bfloat16=bf16))
        result.update(large_vocab=args.large, large_seed_clips=len(big),
                      large_kmeans_parallel_seconds=round(t, 2),
                      per_clip_growth=round((t / len(big)) / (min(par) / len(sample)), 2))
        print(f"seeding K {args.large} on {len(big)} clips: k-means|| {t:.2f} s", flush=True)
    for init in ("k-means||", "k-means++"):
        t = time.perf_counter()
        model = KMeans(args.vocab, seed=0, init=init).fit(x)
        key = "parallel" if init == "k-means||" else "plusplus"
        result.update({f"{key}_fit_seconds": round(time.perf_counter() - t, 1),
                       f"{key}_iterations": model.n_iter_, f"{key}_precision": model.precision_,
                       f"{key}_inertia_per_clip": round(model.inertia_ / len(x), 4)})
        print(f"{init} then Lloyd: {result[f'{key}_fit_seconds']} s, {model.n_iter_} iterations, "
              f"inertia/clip {result[f'{key}_inertia_per_clip']}", flush=True)
    result["inertia_change"] = round(result["parallel_inertia_per_clip"]
                                     / result["plusplus_inertia_per_clip"] - 1, 5)
    write_result("seeding" + (f"-{args.name}" if args.name else ""), result)


if __name__ == "__main__":
    main()
