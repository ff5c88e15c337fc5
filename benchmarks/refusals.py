"""How long a refused `vgray train` takes, as a user types it: each is the real command line in a
fresh process (the import of vgray included), and none may start Ray.

    python benchmarks/refusals.py [--repeat 3]

Rows: a missing FEATURES, an empty FEATURES, training ids without files, --out equal to
FEATURES, --out a non-empty directory that is no RUN, --out a file, the lock held by another
vgray, a changed setting on a complete RUN, and, for comparison, the no-op re-run of that
complete RUN and a bad option (a usage error). Each row: the median wall time of --repeat runs,
the exit code, whether a Ray session directory appeared, and the line printed. Last, a train that
does run: how long until its first line ("ray: starting a local Ray…") and until Ray is up.

Writes benchmarks/results/refusals.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import machine, write_result

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vgray.rundir.store import RunLock  # noqa: E402
from vgray.commands.synth import make_corpus  # noqa: E402

ARGS = ["--vocab-size", "4", "--dim", "2", "--epochs", "5", "-q"]
RAY_SESSIONS = "/tmp/ray/session_*"


def vgray(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "vgray.cli", *argv], env=env, text=True,
                          capture_output=True, timeout=600)


def timed(argv: list[str], repeat: int) -> dict:
    walls, sessions = [], set(glob.glob(RAY_SESSIONS))
    for _ in range(repeat):
        t = time.perf_counter()
        done = vgray(*argv)
        walls.append(time.perf_counter() - t)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"seconds": round(statistics.median(walls), 2), "exit": done.returncode,
            "ray_started": bool(set(glob.glob(RAY_SESSIONS)) - sessions),
            "line": lines[-1] if lines else ""}


def first_lines(features: str, root: str, repeat: int) -> dict:
    """Seconds from a train (into a new --out each time) until its first line on stderr, and
    until its second (Ray up)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    firsts, seconds, lines = [], [], []
    for n in range(repeat):
        argv = ["train", features, "--out", os.path.join(root, f"fresh{n}"), *ARGS[:-1]]
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "vgray.cli", *argv], env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines = [proc.stderr.readline()]
        firsts.append(time.perf_counter() - t)
        lines.append(proc.stderr.readline())
        seconds.append(time.perf_counter() - t)
        proc.stderr.read()
        proc.wait()
    return {"first_line_s": round(statistics.median(firsts), 2),
            "ray_up_s": round(statistics.median(seconds), 2),
            "lines": [line.rstrip("\n") for line in lines]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="vgray-refusals-")
    info = make_corpus(os.path.join(root, "c"), videos=40, dim=8, words=4, topics=2)
    features = info["features"]
    os.makedirs(os.path.join(root, "empty"))
    ids = os.path.join(root, "none.json")
    with open(ids, "w") as f:
        json.dump(["nope1", "nope2"], f)
    afile = os.path.join(root, "afile")
    open(afile, "w").close()
    run = os.path.join(root, "run")
    made = vgray("train", features, "--out", run, *ARGS)
    assert made.returncode == 0, made.stderr
    locked = os.path.join(root, "locked")
    os.makedirs(locked)
    holder = RunLock(locked)
    holder.acquire()
    rows = {
        "missing FEATURES": ["train", os.path.join(root, "typo"), "--out", os.path.join(root, "r1")],
        "empty FEATURES": ["train", os.path.join(root, "empty"), "--out", os.path.join(root, "r2")],
        "training ids without files": ["train", features, "--out", os.path.join(root, "r3"),
                                       "--train-ids", ids],
        "--out is FEATURES": ["train", features, "--out", features],
        "--out not empty, no RUN": ["train", features, "--out", os.path.dirname(features)],
        "--out a file": ["train", features, "--out", afile],
        "the lock held": ["train", features, "--out", locked],
        "a changed setting": ["train", features, "--out", run, *ARGS, "--vocab-size", "5"],
        "no-op re-run (not a refusal)": ["train", features, "--out", run],
        "a bad option (usage error)": ["train", features, "--out", run, "--bogus"],
    }
    result = {"machine": machine(), "repeat": a.repeat, "rows": {}}
    try:
        for name, argv in rows.items():
            argv = argv if "--bogus" in argv or "-q" in argv else argv + ARGS
            result["rows"][name] = timed(argv, a.repeat)
            print(name, result["rows"][name], flush=True)
        result["a train that runs"] = first_lines(features, root, a.repeat)
        print("a train that runs", result["a train that runs"], flush=True)
    finally:
        holder.release()
        shutil.rmtree(root, ignore_errors=True)
    write_result("refusals", result)


if __name__ == "__main__":
    main()
