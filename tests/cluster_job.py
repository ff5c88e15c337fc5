"""Run `vgray train` on a simulated multi-node Ray cluster (used by test_multinode.py).

usage: python cluster_job.py FEATURES OUT [--kill]
With --kill, one worker node is killed once two shards are done, and a fresh node joins (as an
autoscaler would add one).
"""

import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from vgray import pipeline
from vgray.config import TrainConfig

CONFIG = TrainConfig(vocab_size=6, dim=4, epochs=20, shard_clips=50)


def main():
    features, out = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    result: dict = {}

    def train():  # in a thread: Cluster.add_node must run on the main thread
        try:
            result["videos"] = pipeline.train(features, out, CONFIG).videos
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
