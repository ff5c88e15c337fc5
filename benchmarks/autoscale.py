"""`vgray train` on a cluster that autoscales from zero: when its nodes join, how long the run
takes, what it used, and how soon the nodes go back; with and without vgray asking the
autoscaler for its capacity up front (`request_resources`).

    python benchmarks/autoscale.py [--videos 120] [--runs 2] [--autoscaler v1|v2]

The cluster is Ray's fake multi-node provider (tests/raycluster.py): a head with 0 CPUs, a CPU
type {CPU: 2} of up to 2 nodes and a GPU type {CPU: 1, GPU: 1} of up to 1 node, all from zero,
every node a set of processes on this machine (the GPU is not real: k-means and GloVe are placed
on the GPU type and compute on its CPU). A node joins in seconds here; on a cloud it takes
minutes, so what matters is *when* each node is asked for, not these absolute times.

"Without the request" runs the same command with vgray's autoscaler request switched off (its
shard actors and GPU stage still ask for their resources when they start, as pending work
does). Before each run the cluster is back to its head alone. Then, on a cluster of the CPU
type alone, the time to refuse `--device cuda` (with the node types read, and, under v2, with
them hidden as on KubeRay without access to the RayCluster). Writes
benchmarks/results/autoscale.json (autoscale-v2.json for v2).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from common import machine, write_result  # noqa: E402
from raycluster import fake_autoscaling_cluster  # noqa: E402
from vgray.commands.synth import make_corpus  # noqa: E402

TYPES = {"cpu_worker": {"resources": {"CPU": 2}, "max_workers": 2},
         "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1}}
NO_REQUEST = ("import sys, vgray.clusters.demand as d; d.Demand.ask = lambda self, stage, cpus=0, gpu=False: "
              "int(cpus); "
              "from vgray.cli import main; sys.argv[0] = 'vgray'; main()")


def snapshots(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def wait_for_head_only(path, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        snaps = snapshots(path)
        if snaps and all(not r for r in snaps[-1]["alive"].values()):
            return snaps[-1]["t"]
        time.sleep(0.5)
    raise SystemExit("the cluster did not scale back down")


def run(cluster, features, out, watch_log, with_request):
    args = ["train", features, "--out", out, "--vocab-size", "64", "--dim", "16",
            "--shard-clips", "400", "--address", cluster["address"]]
    code = [sys.executable, os.path.join(ROOT, "cli.py")] if with_request else [
        sys.executable, "-c", NO_REQUEST]
    wait_for_head_only(watch_log)
    t0 = time.time()
    done = subprocess.run(code + args, capture_output=True, text=True, env=cluster["env"],
                          timeout=1200)
    t1 = time.time()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    back = wait_for_head_only(watch_log)
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    first = {}
    for snap in snapshots(watch_log):
        if snap["t"] >= t0:
            for node, res in snap["alive"].items():
                first.setdefault(node, (snap["t"] - t0, res))
    cpu = sorted(t for t, res in first.values() if res and not res.get("GPU"))
    gpu = sorted(t for t, res in first.values() if res.get("GPU"))
    stages = m["stages"]
    return {"wall_s": round(t1 - t0, 1),
            "first_cpu_node_s": round(cpu[0], 1) if cpu else None,
            "cpu_nodes": len(cpu), "gpu_node_s": round(gpu[0], 1) if gpu else None,
            "all_back_after_run_s": round(back - t1, 1),
            "stages_s": {k: v["seconds"] for k, v in stages.items()},
            "node_seconds": m["nodes"], "asked": m["cluster"]["asked"],
            "ray_line": next(line for line in done.stderr.splitlines()
                             if line.startswith("ray: ") and line.endswith(" s)")),
            "node_types": m["cluster"]["node_types"],
            "stage_node_types": {k: sorted({f"{n['node_type']}: {', '.join(n['work'])}"
                                            for n in v.get("nodes", {}).values()})
                                 for k, v in stages.items()}}


BLIND = ("import sys, vgray.clusters.autoscale as a; a.find_monitor = lambda *x, **k: None; "
         "from vgray.cli import main; sys.argv[0] = 'vgray'; main()")


def refusal(tmp, features, autoscaler):
    """Seconds to refuse --device cuda on a cluster without a GPU type, and the error line."""
    out = {}
    with fake_autoscaling_cluster(os.path.join(tmp, "cpu-only"), {"cpu_worker": TYPES["cpu_worker"]},
                                  autoscaler=autoscaler) as cluster:
        for name, code in (("types_read", [os.path.join(ROOT, "cli.py")]),
                           ("types_hidden", ["-c", BLIND])):
            if name == "types_hidden" and autoscaler == "v1":
                continue
            t0 = time.time()
            done = subprocess.run([sys.executable, *code, "train", features, "--out",
                                   os.path.join(tmp, f"refused-{name}"), "--device", "cuda",
                                   "--address", cluster["address"]], capture_output=True,
                                  text=True, env=cluster["env"], timeout=600)
            out[name] = {"seconds": round(time.time() - t0, 1), "exit": done.returncode,
                         "lines": done.stderr.strip().splitlines()}
            print("refusal", name, json.dumps(out[name]), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=120)
    parser.add_argument("--runs", type=int, default=2, help="runs of each variant, alternated")
    parser.add_argument("--autoscaler", choices=["v1", "v2"], default="v1")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="vgray-autoscale-")
    info = make_corpus(os.path.join(tmp, "corpus"), videos=args.videos, dim=64, words=64,
                       topics=8, min_clips=40, max_clips=120, seed=0)
    print(f"corpus: {info['videos']} videos, {info['clips']} clips", flush=True)
    results = {"with_request": [], "without_request": []}
    with fake_autoscaling_cluster(os.path.join(tmp, "cluster"), TYPES, idle_timeout_minutes=0.1,
                                  autoscaler=args.autoscaler) as cluster:
        watch_log = os.path.join(tmp, "nodes.jsonl")
        watcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "watch_nodes.py"),
                                    cluster["address"], watch_log], env=cluster["env"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not os.path.exists(watch_log):
                time.sleep(0.5)
            for k in range(args.runs):
                for variant in ("with_request", "without_request"):
                    got = run(cluster, info["features"], os.path.join(tmp, f"{variant}-{k}"),
                              watch_log, variant == "with_request")
                    print(variant, json.dumps(got), flush=True)
                    results[variant].append(got)
        finally:
            watcher.kill()
            watcher.wait()
    refused = refusal(tmp, info["features"], args.autoscaler)
    write_result("autoscale" if args.autoscaler == "v1" else "autoscale-v2", {
        "machine": machine(), "autoscaler": args.autoscaler, "refuse_device_cuda": refused,
        "corpus": {"videos": info["videos"], "clips": info["clips"]},
        "cluster": "fake multi-node provider: head CPU 0; cpu_worker {CPU: 2} x2; "
                   "gpu_worker {CPU: 1, GPU: 1} x1; idle timeout 6 s", **results})


if __name__ == "__main__":
    main()
