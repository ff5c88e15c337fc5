"""`vgray sweep` against one `vgray train` at its largest K, on the ActivityNet-sized corpus.

    python benchmarks/sweep.py [--videos 15000] [--data /tmp/vgray-bench]

Runs, in subprocesses, on the corpus of e2e.py (written unless it is there):

    vgray train FEATURES --out RUN --vocab-size 1500 --window 10 --dim 128
    vgray sweep FEATURES --out DIR --vocab-size 500,1000,1500 --window 3,5,10 --dim 64,128

and reports the sweep's cost ratio as the issue defines it: (sweep wall time - its 18 GloVe
fits) / the train's wall time. The sweep's evaluations (intrinsic measures of each
combination) are counted in the sweep, not taken out; they are also reported on their own, as
is the ratio against the train without its embedding stage (the sweep writes no embeddings).
Writes benchmarks/results/sweep.json.
"""

import argparse
import json
import os
import shutil

from common import machine, write_result
from e2e import corpus, run_cli

GRID = {"vocab_size": "500,1000,1500", "window": "3,5,10", "dim": "64,128"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=15_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--data", default="/tmp/vgray-bench")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    args = ap.parse_args()
    root = os.path.join(args.data, "x1")
    features = corpus(root, args.videos, args.dim)
    train_dir, sweep_dir = os.path.join(root, "train-K1500-w10"), os.path.join(root, "sweep")
    train = run_cli(["train", features, "--out", train_dir, "--vocab-size", "1500", "--window",
                     "10", "--dim", "128"], train_dir)
    print(f"train: {train['seconds']} s", flush=True)
    grid = [a for k, v in GRID.items() for a in ("--" + k.replace("_", "-"), v)]
    sweep = run_cli(["sweep", features, "--out", sweep_dir, *grid], sweep_dir)
    with open(os.path.join(sweep_dir, "manifest.json")) as f:
        manifest = json.load(f)
    fits, evaluations = {}, {}
    for name in sorted(os.listdir(sweep_dir)):
        path = os.path.join(sweep_dir, name, "manifest.json")
        if name.startswith("K") and os.path.exists(path):
            with open(path) as f:
                fits[name] = json.load(f)["stages"]["glove"]["seconds"]
            evaluations[name] = manifest["evaluated"][name]["seconds"]
    fit_s, eval_s = sum(fits.values()), sum(evaluations.values())
    shared = sweep["seconds"] - fit_s
    result = {
        "machine": machine(), "videos": args.videos, "clips": train["clips"],
        "train": {"command": "vgray train FEATURES --out RUN --vocab-size 1500 --window 10 --dim 128",
                  "seconds": train["seconds"], "stages": train["stages"],
                  "peak_process_mb": train["peak_process_mb"]},
        "sweep": {"command": "vgray sweep FEATURES --out DIR " + " ".join(grid),
                  "seconds": sweep["seconds"], "combinations": len(fits),
                  "glove_fit_seconds": round(fit_s, 1), "evaluate_seconds": round(eval_s, 1),
                  "kmeans_seconds": {k: v["vocab"]["kmeans_seconds"]
                                     for k, v in manifest["vocabularies"].items()},
                  "glove_fits": fits, "peak_process_mb": sweep["peak_process_mb"],
                  "top_peaks_mb": sweep["top_peaks_mb"]},
        "cost_ratio": round(shared / train["seconds"], 2),
        "cost_ratio_without_evaluation": round((shared - eval_s) / train["seconds"], 2),
        "cost_ratio_to_train_without_embed": round(
            shared / (train["seconds"] - train["stages"]["embed"]), 2),
    }
    print(f"sweep: {sweep['seconds']} s, of which {fit_s:.1f} s GloVe fits and {eval_s:.1f} s "
          f"evaluation; cost ratio {result['cost_ratio']}", flush=True)
    if not args.keep:
        for d in (train_dir, sweep_dir):
            shutil.rmtree(d, ignore_errors=True)
    write_result("sweep", result)


if __name__ == "__main__":
    main()
