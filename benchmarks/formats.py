"""The same corpus in three forms: one `.npy` per video, 16 WebDataset tar shards, one HDF5
file. `vgray train` on each, with wall time and the peak memory of every process.

    python benchmarks/formats.py [--videos 15000] [--data /tmp/vgray-bench]
    python benchmarks/formats.py --s3 [--videos 500] [--delay 0.03]

The corpus is e2e.py's (15,000 single-stream videos, ~700k clips x 1024-d float32, ~2.9 GB;
written unless it is there); the tar shards hold each video's `.npy` bytes as `{id}.npy` (written
with webdataset's TarWriter), the HDF5 file a group per video with one dataset (h5py). Each run
is the real command line (`--vocab-size 1500 --window 5 --dim 128`, default workers) in a
subprocess, on local disk, and the three runs' tokens and vectors are compared.

With --s3 the three forms of a smaller corpus (the same generator, 500 videos by default) are
uploaded to a real S3-compatible server (moto, on loopback) behind s3.py's proxy, and `vgray
train s3://…` (K 256, window 5, dim 128; --out on local disk, so that every request counted is a
read of FEATURES) runs on each: the requests by method and per video at 0 ms, and the wall time
at 0 ms and at --delay per request, against the same corpus read from local disk; the tokens
and vectors of every run are compared with the local `.npy` run's.

Writes benchmarks/results/formats.json (formats-s3.json with --s3).
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


def ranged_gets_s(moto, reads: dict, n: int = 20) -> dict:
    """Mean seconds of one ranged GET, for each name -> (uri, length), through a 0 ms proxy."""
    from s3proxy import FaultyProxy

    from vgray.files import fs, s3

    out = {}
    with FaultyProxy(moto.endpoint) as proxy:
        saved = {k: os.environ.get(k) for k in proxy.env()}
        os.environ.update(proxy.env())
        try:
            for name, (uri, length) in reads.items():
                fs.read_range(uri, 0, length)  # the connection made
                t = time.perf_counter()
                for _ in range(n):
                    fs.read_range(uri, 0, length)
                out[name] = round((time.perf_counter() - t) / n, 4)
        finally:
            s3._client = None  # made for this proxy only
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return out


S3_TRAIN = ["--vocab-size", "256", "--window", "5", "--dim", "128", "-q"]


def on_s3(a) -> None:
    """The three forms read through the S3 proxy (see the module's docstring)."""
    import shutil
    import sys
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from s3 import upload, vgray
    from s3proxy import FaultyProxy, MotoServer

    root = os.path.join(a.data, f"s3-v{a.videos}")
    features = corpus(root, a.videos, 1024)
    wds_root, h5 = os.path.join(root, "wds"), os.path.join(root, "corpus.h5")
    if not os.path.exists(os.path.join(wds_root, f"shard-{SHARDS - 1:04d}.tar")):
        to_webdataset(features, wds_root)
    if not os.path.exists(h5):
        to_hdf5(features, h5)
    work = tempfile.mkdtemp(prefix="vgray-formats-s3-")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result: dict = {"machine": machine(), "videos": a.videos, "delay_s": a.delay,
                    "train": S3_TRAIN, "runs": {}}
    try:
        local = os.path.join(work, "local-npy")
        done, wall = vgray(["train", features, "--out", local, *S3_TRAIN], env)
        assert done.returncode == 0, done.stderr[-3000:]
        result["local_npy_s"] = round(wall, 1)
        print("local npy:", result["local_npy_s"], flush=True)
        with MotoServer(os.path.join(work, "moto.log")) as moto:
            fs = moto.filesystem()
            fs.create_dir("bench")
            upload(fs, features, "bench/npy")
            upload(fs, wds_root, "bench/wds")
            with open(h5, "rb") as src, fs.open_output_stream("bench/corpus.h5") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            uris = {"npy": "s3://bench/npy", "webdataset": "s3://bench/wds",
                    "hdf5": "s3://bench/corpus.h5"}
            # What one ranged GET costs the harness itself (moto serves a range of a large
            # object far slower than a small object), through the proxy at 0 ms.
            one = f"s3://bench/npy/{os.path.basename(sorted(glob.glob(features + '/*.npy'))[0])}"
            result["moto_ranged_get_s"] = ranged_gets_s(moto, {
                "hdf5 file, 2 MiB": ("s3://bench/corpus.h5", 2 << 20),
                "hdf5 file, 64 KiB": ("s3://bench/corpus.h5", 64 << 10),
                "one .npy file, 64 KiB": (one, 64 << 10)})
            print("moto:", result["moto_ranged_get_s"], flush=True)
            for name, uri in uris.items():
                row = {}
                for delay in (0.0, a.delay):
                    out = os.path.join(work, f"{name}-{int(delay * 1000)}ms")
                    with FaultyProxy(moto.endpoint, delay=delay) as proxy:
                        done, wall = vgray(["train", uri, "--out", out, *S3_TRAIN],
                                           {**env, **proxy.env()})
                        assert done.returncode == 0, done.stderr[-3000:]
                        counts = dict(proxy.counts)
                    ms = f"{int(delay * 1000)}ms"
                    row[f"wall_s_{ms}"] = round(wall, 1)
                    if delay == 0.0:
                        row["requests"] = counts
                        row["requests_per_video"] = round(sum(counts.values()) / a.videos, 2)
                    row[f"equal_to_local_npy_{ms}"] = same(local, out)
                    shutil.rmtree(out, ignore_errors=True)
                result["runs"][name] = row
                print(name, row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("formats-s3", result)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=None,
                   help="videos in the corpus (15,000; 500 with --s3)")
    p.add_argument("--data", default="/tmp/vgray-bench")
    p.add_argument("--s3", action="store_true", help="read the three forms through the S3 proxy")
    p.add_argument("--delay", type=float, default=0.03, help="seconds per request (--s3)")
    a = p.parse_args()
    if a.s3:
        a.videos = a.videos or 500
        return on_s3(a)
    a.videos = a.videos or 15_000
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
