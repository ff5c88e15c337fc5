"""What a small `vgray train` costs the machine: the fixed cost of its workers, not its data.
The synthetic corpus of the tests (60 videos, 1,189 clips, K 12) is trained --repeat times in
one process on one local Ray (2 CPUs, no dashboard), as the test suite and a notebook do; each
row is the median wall time of a train and the CPU-seconds the whole machine spent on it (from
/proc/stat, until 3 s after it ended: the workers' exit included). The first train is left out
(it finds Ray's idle workers started).

    python benchmarks/small_train.py [--repeat 7]

Writes benchmarks/results/small_train.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from common import machine, write_result


def busy_seconds() -> float:
    """CPU-seconds spent by the whole machine so far (every core, all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import ray

    from vgray.commands.synth import make_corpus
    from vgray.commands.train import train
    from vgray.config import TrainConfig

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    root = tempfile.mkdtemp(prefix="vgray-small-")
    info = make_corpus(os.path.join(root, "c"), videos=60, dim=16, words=12, topics=3, flow=True,
                       flow_dim=8, min_clips=8, max_clips=30, seed=1)
    cfg = TrainConfig(vocab_size=12, dim=8, epochs=200, shard_clips=200, workers=2)
    walls, cpus = [], []
    for n in range(args.repeat + 1):
        time.sleep(2)
        c, t = busy_seconds(), time.perf_counter()
        train(info["features"], os.path.join(root, f"run{n}"), cfg, info["train_ids"],
              echo=lambda line: None)
        wall = time.perf_counter() - t
        time.sleep(3)
        if n:
            walls.append(wall)
            cpus.append(busy_seconds() - c)
        print(f"train {n}: {wall:.2f} s, {busy_seconds() - c:.2f} CPU-s", flush=True)
    result = {"machine": machine(), "repeat": args.repeat,
              "wall_s_median": round(statistics.median(walls), 2),
              "wall_s": [round(w, 2) for w in walls],
              "cpu_s_median": round(statistics.median(cpus), 2),
              "cpu_s": [round(c, 2) for c in cpus]}
    print(result)
    write_result("small_train", result)


if __name__ == "__main__":
    main()
