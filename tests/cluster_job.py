"""Run `vgray train` on a simulated multi-node Ray cluster (used by test_multinode.py).

usage: python cluster_job.py FEATURES OUT [--kill | --sweep [--gpu]]
With --kill, one worker node is killed once two shards are done, and a fresh node joins (as an
autoscaler would add one). With --sweep, `vgray sweep` of SWEEP runs instead of train; with
--gpu, one node has a (fake) GPU.
"""

import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from vgray import train as training
from vgray.config import TrainConfig

CONFIG = TrainConfig(vocab_size=6, dim=4, epochs=20, shard_clips=50)
SWEEP = {"vocab_sizes": [3, 6], "windows": [2, 4], "dims": [4, 8]}


def main():
    features, out = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    # --gpu: the third node has a GPU resource (fake: torch finds no CUDA there)
    nodes = [cluster.add_node(num_cpus=1, num_gpus=int(n == 2 and "--gpu" in sys.argv))
             for n in range(3)]
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    result: dict = {}

    def train():  # in a thread: Cluster.add_node must run on the main thread
        try:
            if "--sweep" in sys.argv:
                from vgray.sweep import sweep

                result["videos"] = len(sweep(features, out, **SWEEP, config=CONFIG).rows)
            else:
                result["videos"] = training.train(features, out, CONFIG).videos
        except BaseException as e:  # reported by the main thread
            result["error"] = repr(e)

    job = threading.Thread(target=train)
    job.start()
    killed = []
    if "--kill" in sys.argv:
        markers = os.path.join(out, ".work", "assign")
        while job.is_alive() and not (os.path.isdir(markers) and len(os.listdir(markers)) >= 2):
            time.sleep(0.005)
        cluster.remove_node(nodes[0], allow_graceful=False)
        killed.append(len(os.listdir(markers)))
        cluster.add_node(num_cpus=1)
    job.join()
    ray.shutdown()
    cluster.shutdown()
    if "error" in result:
        sys.exit(f"train failed: {result['error']}")
    print(json.dumps({"videos": result["videos"], "killed_after": killed}))


if __name__ == "__main__":
    main()
