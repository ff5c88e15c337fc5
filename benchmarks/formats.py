"""The same corpus in three forms: one `.npy` per video, 16 WebDataset tar shards, one HDF5
file. `vgray train` on each, with wall time and the peak memory of every process.

    python benchmarks/formats.py [--videos 15000] [--data /tmp/vgray-bench]

The corpus is e2e.py's (15,000 single-stream videos, ~700k clips x 1024-d float32, ~2.9 GB;
written unless it is there); the tar shards hold each video's `.npy` bytes as `{id}.npy` (written
with webdataset's TarWriter), the HDF5 file a group per video with one dataset (h5py). Each run
is the real command line (`--vocab-size 1500 --window 5 --dim 128`, default workers) in a
subprocess, on local disk, and the three runs' tokens and vectors are compared.

Writes benchmarks/results/formats.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from common import machine, write_result
from e2e import corpus, run_train

SHARDS = 16


def video_id(path: str) -> str:
    """The id of e2e.py's `{id}_rgb.npy` (as vgray's listing has it)."""
    return os.path.basename(path)[: -len("_rgb.npy")]


def to_webdataset(features: str, root: str) -> float:
    import webdataset as wds

    t = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    paths = sorted(glob.glob(os.path.join(features, "*.npy")))
    per = -(-len(paths) // SHARDS)
    for n in range(SHARDS):
        with wds.TarWriter(os.path.join(root, f"shard-{n:04d}.tar")) as sink:
            for path in paths[n * per:(n + 1) * per]:
                with open(path, "rb") as f:
                    sink.write({"__key__": video_id(path), "npy": f.read()})
    return time.perf_counter() - t


def to_hdf5(features: str, path: str) -> float:
    import h5py

    t = time.perf_counter()
    with h5py.File(path, "w") as out:
        for src in sorted(glob.glob(os.path.join(features, "*.npy"))):
            out.create_dataset(f"{video_id(src)}/features", data=np.load(src))
    return time.perf_counter() - t


def same(a: str, b: str) -> bool:
    import pyarrow.parquet as pq

    ta = pq.read_table(os.path.join(a, "tokens")).sort_by("video_id")
    tb = pq.read_table(os.path.join(b, "tokens")).sort_by("video_id")
    return ta.equals(tb) and np.array_equal(np.load(os.path.join(a, "glove", "vectors.npy")),
                                            np.load(os.path.join(b, "glove", "vectors.npy")))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=15_000)
    p.add_argument("--data", default="/tmp/vgray-bench")
    a = p.parse_args()
    root = os.path.join(a.data, f"v{a.videos}") if a.videos != 15_000 else a.data
    features = corpus(root, a.videos, 1024)
    wds_root, h5 = os.path.join(root, "wds"), os.path.join(root, "corpus.h5")
    result = {"machine": machine(), "videos": a.videos, "converted_s": {}}
    if not os.path.exists(os.path.join(wds_root, f"shard-{SHARDS - 1:04d}.tar")):
        result["converted_s"]["webdataset"] = round(to_webdataset(features, wds_root), 1)
    if not os.path.exists(h5):
        result["converted_s"]["hdf5"] = round(to_hdf5(features, h5), 1)
    runs = {}
    for name, source in (("npy", features), ("webdataset", wds_root), ("hdf5", h5)):
        out = os.path.join(root, f"run-{name}")
        runs[name] = run_train(source, out, [])
        print(name, {k: runs[name][k] for k in ("seconds", "peak_process_mb")}, flush=True)
    result["runs"] = runs
    result["equal_to_npy"] = {name: same(os.path.join(root, "run-npy"),
                                         os.path.join(root, f"run-{name}"))
                              for name in ("webdataset", "hdf5")}
    write_result("formats", result)


if __name__ == "__main__":
    main()
