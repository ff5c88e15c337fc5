"""vgray on a cluster that autoscales from zero: Ray's fake multi-node provider, every node a set
of processes on this machine. A run asks for the nodes and the GPU it needs, runs k-means and
GloVe on the GPU type, survives the loss of its GPU node, and lets every node go back."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vgray.commands.synth import make_corpus

from raycluster import fake_autoscaling_cluster
from helpers import assert_same_results

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CPU = {"cpu_worker": {"resources": {"CPU": 2}, "max_workers": 2}}
GPU = {"gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1}}
# 12 shards; GloVe long enough (a second or more) to lose its node in the middle of it.
ARGS = ["--vocab-size", "6", "--dim", "4", "--epochs", "10000", "--glove-tol", "0",
        "--shard-clips", "100"]


# vgray as on KubeRay, where the autoscaler runs in a container of its own: no monitor process
# on this machine to read the node types from (and no RayCluster to read them either).
BLIND = ("import sys, vgray.clusters.autoscale as a; a.find_monitor = lambda *x, **k: None; "
         "from vgray.cli import main; sys.argv[0] = 'vgray'; main()")


def vgray(*args, env=None, timeout=600, blind=False):
    """`python cli.py ARGS`; with a cluster's env (its token) to run on it; `blind`: without
    sight of the autoscaler's monitor."""
    env = env or {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    program = ["-c", BLIND] if blind else [os.path.join(ROOT, "cli.py")]
    return subprocess.run([sys.executable, *program, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoscaling")
    return make_corpus(str(root / "c"), videos=40, dim=8, words=6, topics=2, min_clips=20,
                       max_clips=40)["features"]


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    """The same run on an embedded local Ray: what every cluster run must equal."""
    out = str(tmp_path_factory.mktemp("local") / "run")
    done = vgray("train", corpus, "--out", out, *ARGS, "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


class Watch:
    """The alive nodes of the cluster and their resources, polled by a separate driver."""

    def __init__(self, address, path, env):
        self.path = path
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "watch_nodes.py"),
                                      address, path], stdout=subprocess.DEVNULL,
                                     stderr=open(path + ".log", "w"), env=env)

    def snapshots(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def resources(self):
        """Every node ever seen alive -> its resources."""
        seen = {}
        for snap in self.snapshots():
            seen.update(snap["alive"])
        return seen

    def joined(self, since):
        """Seconds after `since` at which each node was first seen alive."""
        first = {}
        for snap in self.snapshots():
            for node in snap["alive"]:
                first.setdefault(node, snap["t"] - since)
        return first

    def wait_for(self, predicate, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            snaps = self.snapshots()
            if snaps and predicate(snaps[-1]["alive"]):
                return True
            time.sleep(0.5)
        return False

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="class", params=["v1", "v2"])
def cluster(request, tmp_path_factory):
    """A head with 0 CPUs and the class's worker types, all from zero, under Ray's classic
    autoscaler (v1) and under v2 (KubeRay's default); a node watcher on it."""
    tmp = str(tmp_path_factory.mktemp("fake-cluster"))
    with fake_autoscaling_cluster(tmp, request.cls.TYPES, autoscaler=request.param) as c:
        watch = Watch(c["address"], os.path.join(tmp, "nodes.jsonl"), c["env"])
        assert watch.wait_for(lambda alive: len(alive) == 1, 120), "the head did not register"
        yield {**c, "watch": watch, "autoscaler": request.param}
        watch.stop()


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def nodes_doing(m, stage, work):
    return {node: info for node, info in m["stages"][stage]["nodes"].items() if work in info["work"]}


def only_head(alive):
    return all(not r for r in alive.values())  # the head has no CPU and no GPU


class TestCpuAndGpuTypes:
    TYPES = {**CPU, **GPU}

    def test_grows_from_zero_and_puts_the_gpu_stages_on_the_gpu_type(self, cluster, corpus,
                                                                      local_run, tmp_path):
        out = str(tmp_path / "run")
        t0 = time.time()
        done = vgray("train", corpus, "--out", out, *ARGS, "--address", cluster["address"],
                     env=cluster["env"])
        wall = time.time() - t0
        assert done.returncode == 0, done.stderr[-3000:]
        m = manifest(out)
        seen = cluster["watch"].resources()

        # The node types and their maximum counts were read from the autoscaler's config.
        assert m["cluster"]["autoscaling"] and m["cluster"]["autoscaler_config"] == cluster["config"]
        assert m["cluster"]["autoscaler"] == cluster["autoscaler"]
        assert {t["name"]: t["room"] for t in m["cluster"]["node_types"]} == {
            "cpu_worker": 2, "gpu_worker": 1}
        # Shard work followed the shards up to what the cluster can grow to: 4 CPUs of the CPU
        # type (the GPU type's CPU is kept for GPU work), and a GPU while k-means and GloVe are
        # still to come; all cleared at the end.
        # The workers that read the headers are asked for first: one for this small corpus's
        # one chunk of the listing, with the GPU, so that its node boots during the scan. Then
        # the shard workers and the GPU from the sampling to GloVe (the workers are kept to the
        # end), the GPU no more for the embedding, nothing at the end.
        assert m["cluster"]["asked"] == [{"stage": "scan", "cpus": 1, "gpu": True},
                                         {"stage": "vocab", "cpus": 4, "gpu": True},
                                         {"stage": "embed", "cpus": 4, "gpu": False},
                                         {"stage": "end", "cpus": 0, "gpu": False}]

        cpu_nodes = {node for stage, work in (("vocab", "sample"), ("assign", "assign"),
                                              ("embed", "embed"))
                     for node, info in nodes_doing(m, stage, work).items()
                     if info["node_type"] == "cpu_worker"}
        assert len(cpu_nodes) >= 2, m["stages"]
        assert all(seen[node] == {"CPU": 2.0} for node in cpu_nodes)
        for stage, work in (("vocab", "kmeans"), ("glove", "glove")):
            [(node, info)] = nodes_doing(m, stage, work).items()
            assert info["node_type"] == "gpu_worker" and seen[node] == {"CPU": 1.0, "GPU": 1.0}
            assert info["resources"] == {"CPU": 1.0, "GPU": 1.0} and info["seconds"] > 0
            # The fake GPU is not usable by torch: said, and computed on CPU.
            assert m["stages"][stage]["device"] == "cpu"
            assert "not usable by torch" in m["stages"][stage]["device_note"]
        assert "not usable by torch" in done.stderr
        by_type = m["nodes"]
        assert set(by_type) == {"cpu_worker", "gpu_worker"} and by_type["gpu_worker"]["nodes"] == 1
        assert "× gpu_worker:" in done.stderr and "node-s" in done.stderr

        assert_same_results(local_run, out)
        # Nothing of vgray stays on a node: every worker node goes back once idle.
        assert cluster["watch"].wait_for(only_head, 120), cluster["watch"].snapshots()[-1]
        joined = cluster["watch"].joined(t0)
        firsts = sorted(t for node, t in joined.items() if node in cpu_nodes)
        gpu_node = next(iter(nodes_doing(m, "glove", "glove")))
        print(f"\nfirst CPU node after {firsts[0]:.1f} s, GPU node after {joined[gpu_node]:.1f} s,"
              f" run {wall:.1f} s")

    def test_node_types_unknown_v2_is_asked_in_steps(self, cluster, corpus, local_run, tmp_path):
        """Autoscaler v2 with node types that cannot be read (KubeRay's sidecar, no RayCluster
        access): a GPU is asked for and v2's answer taken at once; CPUs are asked for in steps
        that the cluster can meet, and made fewer where v2 refuses them."""
        if cluster["autoscaler"] != "v2":
            pytest.skip("v1 does not say what it cannot meet: unknown types wait for a GPU")
        out = str(tmp_path / "run")
        done = vgray("train", corpus, "--out", out, *ARGS, "--address", cluster["address"],
                     env=cluster["env"], blind=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "autoscaling (v2, node types unknown)" in done.stderr
        m = manifest(out)
        assert m["cluster"]["node_types"] is None and m["cluster"]["gpu"]["request"] is True
        asked = m["cluster"]["asked"]
        assert asked[0] == {"stage": "probe: GPU", "cpus": 0, "gpu": True}
        # The first step is GROWTH_STEP_CPUS (8 of the 12 shards); the types hold 4 CPUs of
        # shard work besides the GPU type's: v2 refuses, vgray asks for fewer until it is met.
        assert {"stage": "vocab", "cpus": 8, "gpu": True} in asked
        assert max(a["cpus"] for a in asked if a["stage"] != "probe: GPU") <= 8
        # Without the GPU bundle (embedding) the GPU type's CPU counts too: 5 are met. (Where
        # the types are unknown, CPU work cannot be kept off a GPU type.)
        assert asked[-2:] == [{"stage": "embed", "cpus": 5, "gpu": False},
                              {"stage": "end", "cpus": 0, "gpu": False}]
        assert "the autoscaler cannot meet 8 CPUs" in done.stderr
        for stage, work in (("vocab", "kmeans"), ("glove", "glove")):
            [info] = nodes_doing(m, stage, work).values()
            assert info["node_type"] == "gpu_worker"
        assert_same_results(local_run, out)
        assert cluster["watch"].wait_for(only_head, 120), cluster["watch"].snapshots()[-1]

    def test_device_cuda_fails_on_a_gpu_torch_cannot_use(self, cluster, corpus, tmp_path):
        done = vgray("train", corpus, "--out", tmp_path / "run", *ARGS, "--device", "cuda",
                     "--address", cluster["address"], env=cluster["env"])
        assert done.returncode == 1
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert "--device cuda, but the GPU of node" in lines[0]
        assert "(gpu_worker) is not usable by torch" in lines[0]
        # The failed run's request to the autoscaler is cleared too: every node goes back.
        assert cluster["watch"].wait_for(only_head, 120), cluster["watch"].snapshots()[-1]

    def test_gpu_node_lost_during_glove(self, cluster, corpus, local_run, tmp_path):
        """A preempted GPU node: GloVe runs again on another node, a GPU node the autoscaler
        brings instead or, with --device auto, a CPU node once --gpu-wait is over."""
        out = str(tmp_path / "run")
        log = tmp_path / "stderr.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "train", corpus,
                                     "--out", out, *ARGS, "--gpu-wait", "10",
                                     "--address", cluster["address"]],
                                    stdout=subprocess.DEVNULL, stderr=err, env=cluster["env"])
            try:
                worker = wait_for_process("ray::ShardWorker.glove", proc, 300)
                killed = kill_node_of(worker)  # in the middle of its epochs
                proc.wait(timeout=400)
            finally:
                if proc.poll() is None:
                    proc.kill()
        stderr = log.read_text()
        assert proc.returncode == 0, stderr[-3000:]
        assert "glove: its worker or node was lost" in stderr
        m = manifest(out)
        [node] = nodes_doing(m, "glove", "glove")
        assert node != killed
        # The lost attempt's time on the killed node is counted too: it was paid for.
        assert nodes_doing(m, "glove", "glove (lost)")[killed]["node_type"] == "gpu_worker"
        assert_same_results(local_run, out)


class TestCpuTypeOnly:
    TYPES = CPU

    def test_device_cuda_fails_at_once_naming_the_node_types(self, cluster, corpus, tmp_path):
        done = vgray("train", corpus, "--out", tmp_path / "run", *ARGS, "--device", "cuda",
                     "--address", cluster["address"], env=cluster["env"], timeout=120)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        # what Ray was found to be (a cluster that starts from zero workers), then one error
        assert lines[0] == f"ray: connecting to {cluster['address']}…", lines
        assert lines[1] == (f"ray: 0 CPUs, no GPU, autoscaling ({cluster['autoscaler']}, node "
                            f"types from {cluster['config']}) ({lines[1].rsplit('(', 1)[1]}"), lines
        assert re.fullmatch(r"\d+\.\d s\)", lines[1].rsplit("(", 1)[1]), lines
        assert lines[2:] == [
            "error: --device cuda, but the Ray cluster has no GPU and cannot launch one (node "
            "types: ray.head.default (head), cpu_worker (CPU 2))"]
        assert not (tmp_path / "run").exists()

    def test_address_auto_follows_ray_address(self, cluster, corpus, tmp_path):
        """`--address auto` attaches to RAY_ADDRESS where it is set (Ray's rule), not to the
        cluster that this machine's ray_current_cluster names."""
        current = "/tmp/ray/ray_current_cluster"
        had = open(current).read() if os.path.exists(current) else None
        os.makedirs(os.path.dirname(current), exist_ok=True)
        with open(current, "w") as f:
            f.write("127.0.0.1:1")  # a cluster that cannot be reached
        try:
            done = vgray("train", corpus, "--out", tmp_path / "run", "--device", "cuda",
                         "--address", "auto", env={**cluster["env"],
                                                   "RAY_ADDRESS": cluster["address"]},
                         timeout=60)
        finally:
            if had is None:
                os.remove(current)
            else:
                with open(current, "w") as f:
                    f.write(had)
        lines = done.stderr.strip().splitlines()
        assert lines[0] == f"ray: connecting to {cluster['address']}…", lines
        assert done.returncode == 1 and lines[-1].startswith("error: --device cuda, but the Ray "
                                                             "cluster has no GPU"), lines

    def test_node_types_unknown_v2_refuses_cuda_at_once(self, cluster, corpus, tmp_path):
        if cluster["autoscaler"] != "v2":
            pytest.skip("v1 does not say what it cannot meet: unknown types wait for a GPU")
        t = time.time()
        done = vgray("train", corpus, "--out", tmp_path / "run", *ARGS, "--device", "cuda",
                     "--address", cluster["address"], env=cluster["env"], timeout=60, blind=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and lines[-1] == (
            "error: --device cuda, but the Ray cluster has no GPU and cannot launch one (the "
            "autoscaler (v2) cannot launch one, node types unknown)"), lines
        assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
        print(f"\nrefused in {time.time() - t:.1f} s")

    def test_device_auto_runs_on_cpu(self, cluster, corpus, local_run, tmp_path):
        out = str(tmp_path / "run")
        done = vgray("train", corpus, "--out", out, *ARGS, "--address", cluster["address"],
                     env=cluster["env"])
        assert done.returncode == 0, done.stderr[-3000:]
        m = manifest(out)
        assert m["cluster"]["gpu"]["request"] is False
        assert all(a["gpu"] is False for a in m["cluster"]["asked"])
        for stage, work in (("vocab", "kmeans"), ("glove", "glove")):
            [info] = nodes_doing(m, stage, work).values()
            assert info["node_type"] == "cpu_worker"
            assert m["stages"][stage]["device"] == "cpu" and not m["stages"][stage]["device_note"]
        assert_same_results(local_run, out)


def wait_for_process(title, owner, timeout):
    """The pid of a process of a fake node whose command line starts with `title` (a Ray
    worker names itself after the call it runs). A process of another Ray on this machine (of
    a test run beside this one) has the same title but no fake node id: it is never taken."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert owner.poll() is None, "the run ended first"
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(title.encode()):
                        continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if b"\0RAY_OVERRIDE_NODE_ID_FOR_TESTING=" in b"\0" + f.read():
                        return int(pid)
            except OSError:
                continue
        time.sleep(0.1)
    pytest.fail(f"no {title} process within {timeout} s")


def kill_node_of(pid):
    """Kill the fake node that runs worker `pid`, as a preemption would: its raylet (the
    worker's parent), then the worker. Returns the node's id."""
    with open(f"/proc/{pid}/stat") as f:
        raylet = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    node = env[b"RAY_OVERRIDE_NODE_ID_FOR_TESTING"].decode()
    for victim in (raylet, pid):
        os.kill(victim, signal.SIGKILL)
    return node
