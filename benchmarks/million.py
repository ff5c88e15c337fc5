"""The driver at a million videos: what listing and scanning FEATURES, cutting the shards and the
no-op check of a complete RUN cost the process that runs `vgray train`, in time and memory.

    python benchmarks/million.py [--videos 1000000] [--data /tmp/vgray-million]

Writes --videos single-stream videos of 4 clips x 8 floats (240 bytes each, one small file per
video as `video_features` writes them) unless they are there, then, in fresh subprocesses each
(so that each peak is its own):

- scan: `corpus.scan` (one listing, one header read per file) and `resume.make_shards` at the
  default --shard-clips, with the driver's peak RSS (VmHWM) and the units' count;
- listing: `corpus.list_features`, what the no-op check of a complete RUN does with FEATURES
  (one listing, no header read).

Local disk only: a million objects do not fit the S3 server this machine can run. On object
storage the listing is one request per 1,000 files, and the scan's header reads are 64 in
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
import json, resource, sys, time
from vgray.corpus import list_features, scan
from vgray.resume import make_shards
from vgray.config import TrainConfig
root, what = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if what == "scan":
    corpus = scan(root)
    shards = make_shards(corpus.videos, TrainConfig().shard_clips)
    out = {"videos": len(corpus.videos), "skipped": len(corpus.skips), "shards": len(shards)}
else:
    out = {"listing": list_features(root)}
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
    for what in ("scan", "listing"):
        done = subprocess.run([sys.executable, "-c", PROBE, root, what], capture_output=True,
                              text=True, check=True)
        result[what] = json.loads(done.stdout.strip().splitlines()[-1])
        print(what, result[what], flush=True)
    write_result("million" if a.videos == 1_000_000 else f"million-{a.videos}", result)


if __name__ == "__main__":
    main()
