"""Lloyd's float32 pass and the nearest-word search in blocks of 4,096, 11,184 and 16,384 rows,
alternately, best of 3; and faiss's exact search (IndexFlatL2) on the same clips.

    python benchmarks/lloyd_blocks.py FEATURES

FEATURES: a directory of {id}_rgb.npy (e.g. e2e.py's 1,500-video corpus); K 1500 centroids drawn
from the clips. Run with benchmarks/avx2/sitecustomize.py to stand in for a CPU without bfloat16.
"""
import glob
import os
import sys
import time

import numpy as np
import torch
torch.set_num_threads(2)
import vgray.algo.vocab as V
x = np.concatenate([np.load(p, allow_pickle=False) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*_rgb.npy")))]).astype(np.float32)
xt = torch.from_numpy(x); mean = xt.mean(0)
c = (xt[torch.from_numpy(np.random.default_rng(0).choice(len(x), 1500, replace=False))] - mean).contiguous()
km = V.KMeans(1500, precision="float32"); km.precision_ = "float32"
km._tensors, km._starts, km._mean = [xt], np.array([0, len(x)]), mean
res = {}
for rep in range(3):
    for chunk in (4096, 11184, 16384):
        V._CHUNK = chunk
        t = time.perf_counter(); out = km._pass(c, None); res.setdefault(chunk, []).append(time.perf_counter() - t)
        book = V.Codebook(c)
        t = time.perf_counter(); book.nearest(xt - mean, chunk); res.setdefault(f"nearest {chunk}", []).append(time.perf_counter() - t)
    print({k: round(min(v), 2) for k, v in res.items()}, flush=True)
import faiss  # noqa: E402

faiss.omp_set_num_threads(2)
index = faiss.IndexFlatL2(x.shape[1])
index.add(c.numpy())
times = []
for rep in range(3):
    t = time.perf_counter()
    index.search((xt - mean).numpy(), 1)
    times.append(time.perf_counter() - t)
print(f"faiss IndexFlatL2 search: {min(times):.2f} s")
