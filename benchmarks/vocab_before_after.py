"""The vocab fit before and after issue 29, in one process: OLD's KMeans against this one's.

    python benchmarks/vocab_before_after.py OLD FEATURES [REPEATS]

OLD is a copy of the code before (`git archive fd2813b | tar -x -C OLD`); its module is loaded
from there under another name, so both run in this process, alternately. FEATURES: a directory of {id}_rgb.npy (e.g. e2e.py's
1,500-video corpus). Prints seconds, seconds to the end of the first Lloyd pass (seeding
included), inertia/clip, iterations and precision. Both run in float32 (OLD's bfloat16 check is
turned off; run with benchmarks/avx2/sitecustomize.py for this one's).
"""
import glob
import importlib.util
import os
import sys
import time

import numpy as np
import torch
torch.set_num_threads(2)
spec = importlib.util.spec_from_file_location("oldvocab", os.path.join(sys.argv[1], "vgray", "vocab.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
old.bf16_matmul_is_fast = lambda d: False
from vgray.algo import vocab as new
print("new bf16?", new.bf16_matmul_is_fast("cpu"))
x = np.concatenate([np.load(p, allow_pickle=False) for p in sorted(glob.glob(os.path.join(sys.argv[2], "*_rgb.npy")))]).astype(np.float32)
res = {}
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1):
    for name, mod in (("old", old), ("new", new)):
        marks = {}
        def prog(phase, done, total, unit, note=""):
            if phase == "vocab: k-means" and "seeded" not in marks: marks["seeded"] = time.perf_counter()
        t0 = time.perf_counter(); m = mod.KMeans(1500, max_iter=25, seed=0, device="cpu").fit(x, progress=prog); t1 = time.perf_counter()
        res.setdefault(name, []).append((t1 - t0, marks["seeded"] - t0, m.inertia_ / len(x), m.n_iter_, m.precision_))
        print(name, [round(v, 4) if isinstance(v, float) else v for v in res[name][-1]], flush=True)
