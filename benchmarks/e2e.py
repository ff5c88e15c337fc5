"""End to end: `vgray train` on an ActivityNet-sized synthetic corpus, with time and the peak
memory of every process (driver, Ray's own processes and every worker).

    python benchmarks/e2e.py [--videos 15000] [--scale 4] [--data /tmp/vgray-bench] [--faiss] [--rerun]

Writes a corpus of --videos videos (20 to 73 clips each, ~700k clips at the default, 1024-d rgb
float32, ~2.9 GB) unless it is already there, runs the real command line

    vgray train FEATURES --out RUN --vocab-size 1500 --window 5 --dim 128

in a subprocess, and reads VmHWM (the kernel's record of peak resident memory, shared pages
included) of that process and all its descendants every 0.2 s. With --scale S it then does the
same on a corpus S times larger and reports how much the largest peak grew. Disk: ~6 GB per 700k
clips of corpus plus output.

--faiss also times faiss's k-means alone on the same clips (every clip of the corpus, in this
process, after the run: `faiss.Kmeans(niter=25, max_points_per_centroid=256)`, as in kmeans.py)
and reports the run's wall time over it. --rerun times the same command again on the complete
RUN and checks that it wrote no file. Writes benchmarks/results/e2e.json (e2e-N.json for
--videos N other than 15000).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from common import machine, write_result
from vgray.commands.synth import make_corpus


def corpus(root: str, videos: int, dim: int) -> str:
    done = os.path.join(root, "summary.json")
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f).get("videos") == videos:
                return os.path.join(root, "features")
        shutil.rmtree(root)
    t = time.perf_counter()
    summary = make_corpus(root, videos=videos, dim=dim, words=3000, topics=100, min_clips=20,
                          max_clips=73, noise=0.5, train_fraction=1.0, seed=0)
    print(f"wrote {summary['clips']} clips in {time.perf_counter() - t:.0f} s", flush=True)
    with open(done, "w") as f:
        json.dump({"videos": videos, "clips": summary["clips"]}, f)
    return os.path.join(root, "features")


def descendants(pid: int) -> set[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def peak_kib(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
        return int(fields["VmHWM"].split()[0]), cmd
    except (OSError, KeyError, ValueError):
        return None


def run_train(features: str, out: str, extra: list[str]) -> dict:
    return run_cli(["train", features, "--out", out, "--vocab-size", "1500", "--window", "5",
                    "--dim", "128", *extra], out)


def run_cli(args: list[str], out: str) -> dict:
    """`vgray ARGS` in a subprocess on a fresh `out`: wall time, the peak memory of each of its
    processes, and the stage seconds of the manifest it leaves in `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "vgray.cli", *args]
    peaks: dict[int, tuple[int, str]] = {}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        for p in descendants(proc.pid):
            got = peak_kib(p)
            if got is None:
                continue
            kib, cmd = got
            before, name = peaks.get(p, (0, ""))
            if not name or ("IDLE" in name and "IDLE" not in cmd) or kib > before:
                name = cmd if (kib > before or not name) and "IDLE" not in cmd else (name or cmd)
            peaks[p] = (max(kib, before), name)
        time.sleep(0.2)
    seconds = time.perf_counter() - t
    reader.join()
    print("".join(lines), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"vgray {args[0]} failed ({proc.returncode})")
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    top = sorted(peaks.values(), reverse=True)[:5]
    return {"seconds": round(seconds, 1), "peak_process_mb": round(top[0][0] / 1024),
            "peak_process": top[0][1], "top_peaks_mb": [[round(k / 1024), c] for k, c in top],
            "processes_seen": len(peaks),
            "stages": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
            "clips": manifest.get("corpus", {}).get("clips")}


def faiss_kmeans(features: str, k: int = 1500) -> dict:
    """faiss's k-means alone on every clip of the corpus (the clips vgray's k-means sample is drawn
    from: all of them while there are fewer than 256 per word)."""
    import glob

    import faiss
    import numpy as np

    x = np.concatenate([np.load(p, allow_pickle=False)
                        for p in sorted(glob.glob(os.path.join(features, "*_rgb.npy")))])
    faiss.omp_set_num_threads(os.cpu_count())
    t = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], k, niter=25, max_points_per_centroid=256, seed=1234)
    km.train(x)
    return {"faiss_version": faiss.__version__, "clips": len(x),
            "seconds": round(time.perf_counter() - t, 1)}


def rerun(features: str, out: str, extra: list[str]) -> dict:
    """The same command on the complete RUN: its wall time, and whether any file was written."""
    def stamps():
        return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                for d, _, files in os.walk(out) for f in files}

    before = stamps()
    cmd = [sys.executable, "-m", "vgray.cli", "train", features, "--out", out, "--vocab-size",
           "1500", "--window", "5", "--dim", "128", *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"the re-run failed: {done.stderr[-2000:]}")
    after = stamps()
    return {"seconds": round(seconds, 2),
            "files_written": sorted(p for p in after if before.get(p) != after[p])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=15_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--scale", type=int, default=4, help="also run a corpus this many times larger (1: skip)")
    ap.add_argument("--data", default="/tmp/vgray-bench")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--faiss", action="store_true", help="also time faiss's k-means alone on the same clips")
    ap.add_argument("--rerun", action="store_true", help="also time a re-run of the complete RUN")
    ap.add_argument("--result", help="name of the results file (default e2e, or e2e-N for --videos N)")
    ap.add_argument("extra", nargs="*", help="more `vgray train` options, after --")
    args = ap.parse_args()
    result = {"machine": machine(), "videos": args.videos, "dim": args.dim,
              "command": "vgray train FEATURES --out RUN --vocab-size 1500 --window 5 --dim 128 "
                         + " ".join(args.extra)}
    sizes = [1] + ([args.scale] if args.scale > 1 else [])
    for s in sizes:
        root = os.path.join(args.data, f"x{s}")
        features = corpus(root, args.videos * s, args.dim)
        got = run_train(features, os.path.join(root, "run"), args.extra)
        result[f"x{s}"] = got
        print(f"x{s}: {got['seconds']} s, peak {got['peak_process_mb']} MB ({got['peak_process']})", flush=True)
        if args.rerun:
            got["rerun"] = rerun(features, os.path.join(root, "run"), args.extra)
            print(f"x{s} re-run: {got['rerun']}", flush=True)
        if args.faiss and s == 1:
            got["faiss_kmeans"] = faiss_kmeans(features)
            got["ratio_to_faiss"] = round(got["seconds"] / got["faiss_kmeans"]["seconds"], 2)
            print(f"faiss k-means alone: {got['faiss_kmeans']}; vgray train / faiss = "
                  f"{got['ratio_to_faiss']}", flush=True)
        if not args.keep:
            shutil.rmtree(os.path.join(root, "run"), ignore_errors=True)
    if len(sizes) > 1:
        result["peak_growth"] = round(result[f"x{args.scale}"]["peak_process_mb"] / result["x1"]["peak_process_mb"] - 1, 3)
    write_result(args.result or ("e2e" if args.videos == 15_000 else f"e2e-{args.videos}"), result)


if __name__ == "__main__":
    main()
