"""Vocabulary: vgray's k-means against faiss and the original script's MiniBatchKMeans.

    python benchmarks/kmeans.py [--clips 100000] [--dim 1024] [--vocab 1500] [--minibatch]

All run in this process on the same clips (non-negative, clustered like pooled CNN features) and
are scored by the same exact float32 inertia per clip (each clip to its nearest centroid, computed
outside the timings). faiss: `faiss.Kmeans(niter=25, max_points_per_centroid=256)`, its defaults
otherwise (`pip install faiss-cpu`; skipped with a note if missing). The original script fits
`MiniBatchKMeans(batch_size=20000)` five times; --minibatch times one such fit (minutes) and
reports five times it. Writes benchmarks/results/kmeans.json.
"""

import argparse
import time

import numpy as np
import torch

from common import clip_features, machine, write_result
from vgray.algo.vocab import KMeans, nearest


def inertia_per_clip(x: np.ndarray, centroids: np.ndarray) -> float:
    _, d = nearest(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(centroids, np.float32)))
    return float(d.double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=1500)
    ap.add_argument("--iters", type=int, default=25, help="vgray's --kmeans-iters (its default)")
    ap.add_argument("--minibatch", action="store_true", help="also time sklearn MiniBatchKMeans")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = clip_features(args.clips, args.dim)
    result = {"machine": machine(), "clips": args.clips, "dim": args.dim, "vocab": args.vocab}

    t = time.perf_counter()
    model = KMeans(args.vocab, max_iter=args.iters, seed=0).fit(x)
    result.update(vgray_seconds=round(time.perf_counter() - t, 2), vgray_iterations=model.n_iter_,
                  vgray_precision=model.precision_,
                  vgray_inertia_per_clip=round(inertia_per_clip(x, model.cluster_centers_), 3))
    print(f"vgray: {result['vgray_seconds']} s, inertia/clip {result['vgray_inertia_per_clip']}")

    try:
        import faiss
    except ImportError:
        result["faiss"] = "not installed (pip install faiss-cpu)"
    else:
        faiss.omp_set_num_threads(torch.get_num_threads())
        t = time.perf_counter()
        km = faiss.Kmeans(args.dim, args.vocab, niter=25, max_points_per_centroid=256, seed=1234)
        km.train(x)
        result.update(faiss_version=faiss.__version__, faiss_seconds=round(time.perf_counter() - t, 2),
                      faiss_inertia_per_clip=round(inertia_per_clip(x, km.centroids), 3))
        result["speedup_vs_faiss"] = round(result["faiss_seconds"] / result["vgray_seconds"], 2)
        print(f"faiss: {result['faiss_seconds']} s, inertia/clip {result['faiss_inertia_per_clip']}")

    if args.minibatch:
        from sklearn.cluster import MiniBatchKMeans
        t = time.perf_counter()
        mb = MiniBatchKMeans(args.vocab, batch_size=20000, random_state=0).fit(x)
        one = time.perf_counter() - t
        result.update(minibatch_seconds_per_fit=round(one, 1), minibatch_fits=5,
                      minibatch_seconds=round(5 * one, 1),
                      minibatch_inertia_per_clip=round(inertia_per_clip(x, mb.cluster_centers_), 3))
        result["speedup_vs_minibatch"] = round(result["minibatch_seconds"] / result["vgray_seconds"], 1)
    write_result("kmeans", result)


if __name__ == "__main__":
    main()
