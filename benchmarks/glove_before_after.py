"""GloVe before and after issue 29, in one process: OLD's trainer against this one's (--glove-tol 1e-4).

    python benchmarks/glove_before_after.py OLD COOCCUR

OLD is a copy of the code before (`git archive fd2813b | tar -x -C OLD`); its module is loaded
from there under another name, so both run in this process, alternately. COOCCUR: a RUN's cooccur/ directory. 300 epochs, K 1500,
dim 128, x_max 20, three times each; prints seconds, the lowest J and why the new one stopped.
"""
import glob
import importlib.util
import os
import sys
import time

import pyarrow.parquet as pq
import torch
torch.set_num_threads(2)
spec = importlib.util.spec_from_file_location("oldglove", os.path.join(sys.argv[1], "vgray", "glove.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
from vgray.algo import glove as new
t = pq.read_table(sorted(glob.glob(os.path.join(sys.argv[2], "*.parquet")))); i, j, x = (t.column(c).to_numpy() for c in ("i", "j", "x"))
res = {"old": [], "new": []}
for rep in range(3):
    for name in ("old", "new"):
        kw = {} if name == "old" else {"tol": 1e-4}
        m = (old if name == "old" else new).GloVe(128, x_max=20.0, alpha=0.75, epochs=300, learning_rate=0.05, **kw)
        t0 = time.perf_counter(); m.fit(i, j, x, 1500); res[name].append(time.perf_counter() - t0)
        print(name, round(res[name][-1], 2), "s, J", min(m.loss_), getattr(m, "stop_reason_", ""), flush=True)
print({k: round(min(v), 2) for k, v in res.items()})
