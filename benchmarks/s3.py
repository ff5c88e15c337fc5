"""`vgray train s3://… --out s3://…` as a cloud run has it: requests per video, wall time at a
cloud's latency per request, and what faults cost.

    python benchmarks/s3.py [--videos 100] [--delay-videos 500] [--fault-videos 200] [--quick]

A real S3-compatible server (moto, on loopback) sits behind tests/s3proxy.py's proxy, which adds
a fixed delay to every request and fails a share of them as S3 does under load (half 503
SlowDown, half a reset connection). Tiny two-stream videos (8 to 20 clips, rgb 16 and flow 8
wide), as in the issue that asked for this. Rows:

- requests: the whole train at 0 ms, requests per video by method;
- local: the same corpus trained from local disk (the floor to compare with);
- 0 ms and 30 ms: wall time of the whole train from and to S3;
- 5% faults: the train with 5% of requests failing, compared with the clean run (tokens,
  co-occurrence, vectors) and its skip list;
- storage down: every request failing: the exit code, the time to the one-line failure, the
  skips recorded (none), and the re-run once the storage is back.

Writes benchmarks/results/s3.json.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import machine, write_result  # noqa: E402
from s3proxy import FaultyProxy, MotoServer  # noqa: E402
from vgray.commands.synth import make_corpus  # noqa: E402

TRAIN = ["--vocab-size", "6", "--dim", "4", "--epochs", "30", "-q"]


def upload(fs, local: str, prefix: str) -> None:
    for path in glob.glob(os.path.join(local, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as src, fs.open_output_stream(
                    f"{prefix}/{os.path.relpath(path, local)}") as dst:
                dst.write(src.read())


def download(fs, prefix: str, local: str) -> None:
    import pyarrow.fs as pafs

    for entry in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        if entry.type == pafs.FileType.File:
            target = os.path.join(local, entry.path[len(prefix) + 1:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with fs.open_input_file(entry.path) as f, open(target, "wb") as out:
                out.write(f.read())


def vgray(args: list[str], env: dict, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vgray.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - t


def results_of(run: str) -> dict:
    import pyarrow.parquet as pq

    from vgray.rundir.store import read_tokens

    tokens = read_tokens(sorted(glob.glob(os.path.join(run, "tokens", "*.parquet"))))
    table = pq.read_table(sorted(glob.glob(os.path.join(run, "cooccur", "*.parquet"))))
    order = np.lexsort((table["j"].to_numpy(), table["i"].to_numpy()))
    return {"tokens": tokens, "cooccur": {c: table[c].to_numpy()[order] for c in ("i", "j", "x")},
            "vectors": np.load(os.path.join(run, "glove", "vectors.npy")),
            "skips": open(os.path.join(run, "skipped.jsonl")).read().splitlines()}


def same(a: dict, b: dict) -> bool:
    return (a["tokens"].keys() == b["tokens"].keys()
            and all(np.array_equal(a["tokens"][k], b["tokens"][k]) for k in a["tokens"])
            and all(np.array_equal(a["cooccur"][c], b["cooccur"][c]) for c in a["cooccur"])
            and np.array_equal(a["vectors"], b["vectors"]) and a["skips"] == b["skips"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=100, help="corpus of the request count")
    p.add_argument("--delay-videos", type=int, default=500, help="corpus of the 0/30 ms rows")
    p.add_argument("--fault-videos", type=int, default=200, help="corpus of the fault rows")
    p.add_argument("--delay", type=float, default=0.03)
    p.add_argument("--quick", action="store_true", help="small corpora, for a smoke test")
    a = p.parse_args()
    if a.quick:
        a.videos, a.delay_videos, a.fault_videos = 20, 40, 30
    work = tempfile.mkdtemp(prefix="vgray-s3-")
    result: dict = {"machine": machine(), "delay_s": a.delay}
    base_env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with MotoServer(os.path.join(work, "moto.log")) as moto:
        fs = moto.filesystem()
        fs.create_dir("bench")
        corpora = {}
        for n in sorted({a.videos, a.delay_videos, a.fault_videos}):
            local = os.path.join(work, f"c{n}")
            make_corpus(local, videos=n, dim=16, words=6, topics=2, flow=True, flow_dim=8,
                        min_clips=8, max_clips=20, seed=1)
            upload(fs, local, f"bench/c{n}")
            corpora[n] = local

        def train(n: int, out: str, proxy: FaultyProxy, timeout: float = 3600):
            return vgray(["train", f"s3://bench/c{n}/features", "--out", f"s3://bench/{out}",
                          "--train-ids", f"s3://bench/c{n}/train_ids.json", *TRAIN],
                         {**base_env, **proxy.env()}, timeout)

        # Requests per video, the whole train, no delay.
        with FaultyProxy(moto.endpoint) as proxy:
            done, wall = train(a.videos, "count", proxy)
            assert done.returncode == 0, done.stderr[-3000:]
            counts = dict(proxy.counts)
        result["requests"] = {"videos": a.videos, "by_method": counts,
                              "per_video": round(sum(counts.values()) / a.videos, 2),
                              "wall_s": round(wall, 1)}
        print("requests:", result["requests"], flush=True)

        # Local disk, then S3 at 0 ms and at --delay per request.
        n = a.delay_videos
        done, wall = vgray(["train", os.path.join(corpora[n], "features"), "--out",
                            os.path.join(work, "local"), "--train-ids",
                            os.path.join(corpora[n], "train_ids.json"), *TRAIN], base_env)
        assert done.returncode == 0, done.stderr[-3000:]
        result["local"] = {"videos": n, "wall_s": round(wall, 1)}
        for delay in (0.0, a.delay):
            with FaultyProxy(moto.endpoint, delay=delay) as proxy:
                done, wall = train(n, f"delay{int(delay * 1000)}", proxy)
                assert done.returncode == 0, done.stderr[-3000:]
                result[f"s3_{int(delay * 1000)}ms"] = {
                    "videos": n, "wall_s": round(wall, 1), "requests": proxy.total(),
                    "vs_local": round(wall / result["local"]["wall_s"], 2)}
            print(f"{int(delay * 1000)} ms:", result[f"s3_{int(delay * 1000)}ms"], flush=True)

        # 5% of requests failing, against the clean run of the same corpus.
        n = a.fault_videos
        with FaultyProxy(moto.endpoint) as proxy:
            done, _ = train(n, "clean", proxy)
            assert done.returncode == 0, done.stderr[-3000:]
        download(fs, "bench/clean", os.path.join(work, "clean"))
        clean = results_of(os.path.join(work, "clean"))
        with FaultyProxy(moto.endpoint, fail=0.05, seed=7) as proxy:
            done, wall = train(n, "faulty", proxy)
            failed = dict(proxy.failed)
        row = {"videos": n, "exit": done.returncode, "wall_s": round(wall, 1),
               "failed_requests": failed}
        if done.returncode == 0:
            download(fs, "bench/faulty", os.path.join(work, "faulty"))
            faulty = results_of(os.path.join(work, "faulty"))
            row.update(skipped=len(faulty["skips"]), equal_to_clean=same(clean, faulty))
            manifest = json.load(open(os.path.join(work, "faulty", "manifest.json")))
            row["retries"] = manifest.get("retries")
        else:
            row["stderr"] = done.stderr.strip().splitlines()[-1:]
        result["faults_5pct"] = row
        print("5% faults:", row, flush=True)

        # Storage down: every request fails; then back.
        with FaultyProxy(moto.endpoint) as proxy:
            proxy.down = True
            done, wall = train(n, "down", proxy, timeout=900)
            lines = done.stderr.strip().splitlines()
            row = {"videos": n, "exit": done.returncode, "wall_s": round(wall, 1),
                   "stderr_lines": len(lines), "last_line": lines[-1] if lines else ""}
            proxy.down = False
            again, wall2 = train(n, "down", proxy)
            row["rerun_exit"] = again.returncode
        if again.returncode == 0:
            download(fs, "bench/down", os.path.join(work, "down"))
            back = results_of(os.path.join(work, "down"))
            row.update(rerun_equal_to_clean=same(clean, back), rerun_skipped=len(back["skips"]))
        result["storage_down"] = row
        print("storage down:", row, flush=True)
    write_result("s3-quick" if a.quick else "s3", result)


if __name__ == "__main__":
    main()
