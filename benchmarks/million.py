"""The driver at a million videos: what listing and scanning FEATURES, cutting the shards and the
no-op check of a complete RUN cost the process that runs `vgray train`, in time and memory.

    python benchmarks/million.py [--videos 1000000] [--data /tmp/vgray-million]

Writes --videos single-stream videos of 4 clips x 8 floats (240 bytes each, one small file per
video as `video_features` writes them) unless they are there, then, in fresh subprocesses each
(so that each peak is its own):

- workers: what `vgray train` does: the driver lists FEATURES and the run's shard workers (an
  embedded local Ray, default workers) read the headers, a chunk of the listing each
  (`stages.scan`); then `resume.make_shards` at the default --shard-clips. The driver's peak
  RSS (its own process: Ray's GCS and raylet are other processes), the headers it read itself
  (none), and the units' count;
- in_process: `readers.scan`, the same scan in one process (what `evaluate` and `check` do);
- listing: `corpus.features_fingerprint`, what the no-op check of a complete RUN does with FEATURES
  (one listing, no header read).

Local disk only: a million objects do not fit the S3 server this machine can run. On object
storage the listing is one request per 1,000 files, and each worker keeps 64 header reads in
flight (benchmarks/s3.py measures requests and their latency).
Writes benchmarks/results/million.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from common import machine, write_result

PROBE = r"""
import json, resource, sys, tempfile, time
import vgray.features.format_npy
from vgray.features.readers import features_fingerprint, scan
from vgray.run.resume import make_shards
from vgray.config import TrainConfig
root, what = sys.argv[1], sys.argv[2]
cfg = TrainConfig()
t = time.perf_counter()
if what == "workers":
    from vgray.clusters.cluster import connect
    from vgray.run import stages
    from vgray.run.job import Job
    from vgray.rundir.manifest import Manifest

    headers = [0]
    read_header = vgray.features.format_npy.read_header
    def counted(*a, **k):
        headers[0] += 1
        return read_header(*a, **k)
    vgray.features.format_npy.read_header = counted  # in this process only: the workers are others
    connect()
    started = time.perf_counter()
    with Job(tempfile.mkdtemp(), None) as job:
        job.open(Manifest("benchmark", settings={}))
        job.workers.connect()
        job.workers.start(cfg)
        corpus = stages.scan(job, root, cfg.streams)
        shards = make_shards(corpus.videos, cfg.shard_clips)
    out = {"videos": len(corpus.videos), "skipped": len(corpus.skips), "shards": len(shards),
           "ray_start_s": round(started - t, 1), "driver_header_reads": headers[0]}
elif what == "in_process":
    corpus = scan(root)
    shards = make_shards(corpus.videos, cfg.shard_clips)
    out = {"videos": len(corpus.videos), "skipped": len(corpus.skips), "shards": len(shards)}
else:
    out = {"listing": features_fingerprint(root)}
out["seconds"] = round(time.perf_counter() - t, 1)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def corpus(root: str, videos: int) -> None:
    done = os.path.join(root, "done.json")
    if os.path.exists(done) and json.load(open(done)).get("videos") == videos:
        return
    os.makedirs(root, exist_ok=True)
    t = time.perf_counter()
    block = np.arange(32, dtype=np.float32).reshape(4, 8)
    for n in range(videos):
        np.save(os.path.join(root, f"v{n:07d}.npy"), block + n % 97)
    json.dump({"videos": videos}, open(done, "w"))
    print(f"wrote {videos} videos in {time.perf_counter() - t:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=1_000_000)
    p.add_argument("--data", default="/tmp/vgray-million")
    a = p.parse_args()
    root = os.path.join(a.data, "features")
    corpus(root, a.videos)
    result = {"machine": machine(), "videos": a.videos}
    for what in ("workers", "in_process", "listing"):
        done = subprocess.run([sys.executable, "-c", PROBE, root, what], capture_output=True,
                              text=True, check=True)
        result[what] = json.loads(done.stdout.strip().splitlines()[-1])
        print(what, result[what], flush=True)
    write_result("million" if a.videos == 1_000_000 else f"million-{a.videos}", result)


if __name__ == "__main__":
    main()
