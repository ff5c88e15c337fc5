"""Write the alive nodes of a Ray cluster, with their resources, every 0.25 s as JSON lines.

usage: python watch_nodes.py ADDRESS OUTFILE     (stopped by the test that started it)
"""

import json
import sys
import time

import ray


def main():
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    with open(sys.argv[2], "a") as out:
        while True:
            alive = {n["NodeID"]: {k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")}
                     for n in ray.nodes() if n["Alive"]}
            out.write(json.dumps({"t": time.time(), "alive": alive}) + "\n")
            out.flush()
            time.sleep(0.25)


if __name__ == "__main__":
    main()
