"""Run `vgray train` and `vgray sweep` on a simulated multi-node Ray cluster (used by
test_multinode.py): one cluster for every job given, so that it starts once.

usage: python cluster_job.py FEATURES JOB=OUT [JOB=OUT ...]
Each JOB runs in turn on the same cluster, a head without CPUs and three worker nodes of one CPU:
- train: `vgray train` into OUT;
- kill: the same, and one worker node is killed once two shards are done; a fresh node joins
  (as an autoscaler would add one);
- sweep: `vgray sweep` of SWEEP into OUT;
- gpu-sweep: a node with a (fake) GPU joins first (torch finds no CUDA there), then the sweep.
One JSON line per job: {"job", "videos", "killed_after"}.
"""

import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from vgray.commands import train as training
from vgray.config import TrainConfig

CONFIG = TrainConfig(vocab_size=6, dim=4, epochs=20, shard_clips=50)
SWEEP = {"vocab_sizes": [3, 6], "windows": [2, 4], "dims": [4, 8]}
JOBS = ("train", "kill", "sweep", "gpu-sweep")


def run(cluster, nodes, features, job, out):
    result: dict = {}

    def work():  # in a thread: Cluster.add_node must run on the main thread
        try:
            if job.endswith("sweep"):
                from vgray.commands.sweep import sweep

                result["videos"] = len(sweep(features, out, **SWEEP, config=CONFIG).rows)
            else:
                result["videos"] = training.train(features, out, CONFIG).videos
        except BaseException as e:  # reported by the main thread
            result["error"] = repr(e)

    if job == "gpu-sweep":
        nodes.append(cluster.add_node(num_cpus=1, num_gpus=1))
        cluster.wait_for_nodes()
    thread = threading.Thread(target=work)
    thread.start()
    killed = []
    if job == "kill":
        markers = os.path.join(out, ".work", "assign")
        while thread.is_alive() and not (os.path.isdir(markers) and len(os.listdir(markers)) >= 2):
            time.sleep(0.005)
        cluster.remove_node(nodes.pop(0), allow_graceful=False)
        killed.append(len(os.listdir(markers)))
        nodes.append(cluster.add_node(num_cpus=1))
    thread.join()
    if "error" in result:
        sys.exit(f"{job} failed: {result['error']}")
    return {"job": job, "videos": result["videos"], "killed_after": killed}


def main():
    features, jobs = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
    assert jobs and all(job in JOBS for job, _ in jobs), __doc__
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    try:
        for job, out in jobs:
            print(json.dumps(run(cluster, nodes, features, job, out)), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
