"""GloVe's epoch before and after the sampled predictions and the CSR gradient (issue 29), in one
process: OLD's trainer against this one's, alternately, 300 epochs, K 1500, dim 128, x_max 20,
--glove-tol's default on both.

    python benchmarks/glove_steps.py OLD [--cooccur RUN/cooccur] [--repeats 3] [--threads N]

OLD is a copy of the code before (`git archive deafa6e | tar -x -C OLD`); its glove module is
loaded from there under another name. Two co-occurrence matrices: the --cooccur of a RUN (e.g. the
1,500-video corpus of `e2e.py --videos 1500 --keep`: ~50k non-zeros, 2% of the pairs) and
glove.py's topic corpus (375k tokens, window 10: ~710k non-zeros, 32% of the pairs). Prints and
writes wall and CPU seconds (best of --repeats), the steps "auto" took, and both lowest J.
"""
import argparse
import glob
import importlib.util
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from common import machine, topic_tokens, write_result
from vgray.algo import cooccur
from vgray.algo import glove as new


def load_old(root: str):
    spec = importlib.util.spec_from_file_location("oldglove", os.path.join(root, "vgray", "glove.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("--cooccur", help="a RUN's cooccur/ directory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch's threads (on a loaded machine, 1 keeps the times comparable)")
    ap.add_argument("--name", help="suffix of the results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = load_old(args.old)
    matrices = {}
    if args.cooccur:
        t = pq.read_table(sorted(glob.glob(os.path.join(args.cooccur, "*.parquet"))))
        matrices["run"] = tuple(t.column(c).to_numpy() for c in ("i", "j", "x"))
    i, j, s = cooccur.count(topic_tokens(375_000, 1500), 1500, 10)
    matrices["topics"] = (i, j, cooccur.weights(s, 10))
    result = {"machine": machine(), "threads": torch.get_num_threads(), "old": args.old}
    for name, (i, j, x) in matrices.items():
        row = {"nonzeros": len(x), "pairs_share": round(len(x) / 1500 ** 2, 4)}
        times = {"old": [], "new": []}
        for _ in range(args.repeats):
            for which, module in (("old", old), ("new", new)):
                model = module.GloVe(128, x_max=20.0, alpha=0.75, epochs=300, learning_rate=0.05, tol=1e-4)
                wall, cpu = time.perf_counter(), time.process_time()
                model.fit(i, j, x, 1500)
                times[which].append((time.perf_counter() - wall, time.process_time() - cpu))
                row[f"{which}_lowest_j"] = min(model.loss_)
                row[f"{which}_epochs"] = model.n_epochs_
                print(name, which, f"{times[which][-1][0]:.2f} s wall, {times[which][-1][1]:.2f} s CPU,"
                      f" J {min(model.loss_):.6g}, {model.n_epochs_} epochs", flush=True)
        for which in times:
            row[f"{which}_wall_seconds"] = round(min(t[0] for t in times[which]), 2)
            row[f"{which}_cpu_seconds"] = round(min(t[1] for t in times[which]), 2)
        row["speedup_wall"] = round(row["old_wall_seconds"] / row["new_wall_seconds"], 2)
        row["steps"] = ("csr" if len(x) < new.CSR_MAX_SHARE * 1500 ** 2 else "dense")
        result[name] = row
        print(name, row, flush=True)
    write_result("glove_steps" + (f"-{args.name}" if args.name else ""), result)


if __name__ == "__main__":
    main()
