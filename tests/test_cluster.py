"""What the cluster can grow to, the GPU plan, bounded GPU waits, retries and node-seconds
(pure where possible; the fake autoscaling cluster itself is in test_autoscaling.py)."""

import os
import subprocess
import sys
import time

import pytest
import ray

from vgray.clusters.autoscale import Capacity, flag, monitor_argv, node_types
from vgray.clusters.cluster import (avoiding, node_alive, node_usage, pick_device, union_length,
                                    usage_by_type, usage_line)
from vgray.clusters.demand import GpuPlan, plan_gpu
from vgray.run.pool import on_one_actor
from vgray.errors import VgrayError
from vgray.rundir.manifest import NodeTypeUse

CONFIG = {"max_workers": 3, "head_node_type": "head", "available_node_types": {
    "head": {"resources": {"CPU": 0}, "max_workers": 0},
    "cpu": {"resources": {"CPU": 8}, "max_workers": 2},
    "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2}}}


def grown(config, running, cpus_now=0.0, gpus_now=0.0):
    types, head = node_types(config, running)
    return Capacity(cpus_now, gpus_now, any(t.room > 0 for t in types), tuple(types), head)


def test_room_of_each_type_within_the_cluster_limit():
    types, head = node_types(CONFIG, {"cpu": 1})
    assert head == "head"
    assert {t.name: t.room for t in types} == {"cpu": 1, "gpu": 2}
    types, _ = node_types(CONFIG, {"cpu": 2, "gpu": 1})  # 3 of max_workers 3 are up
    assert {t.name: t.room for t in types} == {"cpu": 0, "gpu": 0}
    # A type without max_workers may grow to the cluster's max_workers.
    types, _ = node_types({"max_workers": 4, "available_node_types": {"w": {"resources": {}}}}, {})
    assert [t.room for t in types] == [4]


def test_cpus_the_shard_work_may_grow_to():
    cap = grown(CONFIG, {"cpu": 1}, cpus_now=8)
    assert cap.autoscaling and cap.cpus() == 16  # one more CPU node; GPU nodes are not counted
    assert cap.can_get_gpu() is True
    gpu_only = {"max_workers": 2, "available_node_types": {
        "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 2}}}
    assert grown(gpu_only, {}).cpus() == 8  # no CPU-only type: the GPU type's CPUs count
    full = grown(CONFIG, {"cpu": 2, "gpu": 1}, cpus_now=24, gpus_now=1)
    assert not full.autoscaling and full.cpus() == 24 and full.can_get_gpu() is True
    fixed = Capacity(2, 0, False, None)  # a fixed cluster or the embedded local Ray
    assert fixed.cpus() == 2 and fixed.can_get_gpu() is False
    unknown = Capacity(0, 0, True, None)  # KubeRay: an autoscaler whose types cannot be read
    assert unknown.cpus() == 256 and unknown.can_get_gpu() is None  # bounded: actors are cheap
    no_resources = {"max_workers": 2, "available_node_types": {"w": {"max_workers": 2}}}
    assert grown(no_resources, {}).cpus() == 256 and grown(no_resources, {}).can_get_gpu() is None


def test_gpu_plan():
    cpu_only = {"max_workers": 2, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 2}, "max_workers": 2}}}
    with pytest.raises(VgrayError, match=r"^--device cuda, but the Ray cluster has no GPU and "
                       r"cannot launch one \(node types: head \(head\), cpu \(CPU 2\)\)$"):
        plan_gpu("cuda", grown(cpu_only, {}))
    assert plan_gpu("auto", grown(cpu_only, {})).request is False
    with pytest.raises(VgrayError, match="no GPU and cannot launch one$"):
        plan_gpu("cuda", Capacity(2, 0, False, None))
    assert plan_gpu("auto", grown(CONFIG, {})) == GpuPlan(True, False, 600.0, grown(
        CONFIG, {}).describe_types())
    assert plan_gpu("cuda", grown(CONFIG, {}), 30).wait_s == 30 and plan_gpu(
        "cuda", grown(CONFIG, {})).required
    unknown = plan_gpu("cuda", Capacity(0, 0, True, None))  # only trying tells: a bounded wait
    assert unknown.request and unknown.required and unknown.wait_s == 120
    assert plan_gpu("cpu", Capacity(8, 1, False, None)).request is False
    assert plan_gpu("auto", Capacity(8, 1, False, None)).request is True  # a GPU present now


def test_node_seconds():
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert union_length([]) == 0
    a = {"node": "a", "node_type": "cpu", "resources": {"CPU": 8.0}}
    b = {"node": "b", "node_type": None, "resources": {"CPU": 2.0}}
    usage = node_usage([("assign", {**a, "span": [0, 2]}), ("assign", {**a, "span": [1, 3]}),
                        ("assign", {**b, "span": [0, 1]})])
    assert usage == {"a": {"node_type": "cpu", "resources": {"CPU": 8.0}, "host": None,
                           "session": None, "seconds": 3.0, "work": {"assign": 2}},
                     "b": {"node_type": None, "resources": {"CPU": 2.0}, "host": None,
                           "session": None, "seconds": 1.0, "work": {"assign": 1}}}
    later = node_usage([("embed", {**a, "span": [10, 11.5]})])
    by_type = usage_by_type([usage, later, None])
    assert by_type == {"(CPU 2)": {"nodes": 1, "node_seconds": 1.0},
                       "cpu": {"nodes": 1, "node_seconds": 4.5}}
    uses = {t: NodeTypeUse(**u) for t, u in by_type.items()}
    assert usage_line(uses) == "nodes: 1 × (CPU 2): 1.0 node-s; 1 × cpu: 4.5 node-s"


def test_a_machine_resumed_on_is_one_node():
    """Ray names a node afresh each time it starts: one machine, met again by a resumed run
    under a new id, is one node; nodes that share a host in one session (the simulated nodes of
    ray.cluster_utils.Cluster) are several; a node without host or session counts by its id."""
    def node(session, host="10.0.0.1", seconds=1.0):
        return {"node_type": None, "resources": {"CPU": 2.0}, "host": host, "session": session,
                "seconds": seconds, "work": {"assign": 1}}

    resumed = [{"id1": node("s1")}, {"id2": node("s2")}, {"id2": node("s2")}]
    assert usage_by_type(resumed) == {"(CPU 2)": {"nodes": 1, "node_seconds": 3.0}}
    simulated = [{"a": node("s1"), "b": node("s1"), "c": node("s1")}, {"d": node("s2")}]
    assert usage_by_type(simulated)["(CPU 2)"]["nodes"] == 3
    two_hosts = [{"a": node("s1")}, {"b": node("s2", host="10.0.0.2")}]
    assert usage_by_type(two_hosts)["(CPU 2)"]["nodes"] == 2
    old = [{"a": node(None, None)}, {"b": node(None, None)}]
    assert usage_by_type(old)["(CPU 2)"]["nodes"] == 2


def test_the_monitor_config_is_read_only_from_this_clusters_monitor(tmp_path):
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             str(tmp_path / "monitor.py"), "--gcs-address=10.0.0.1:6379",
                             "--autoscaling-config", "/etc/cluster.yaml"])
    try:
        deadline = time.time() + 30
        while monitor_argv(fake.pid, "6379") is None and time.time() < deadline:
            time.sleep(0.05)  # until the child has exec'd
        argv = monitor_argv(fake.pid, "6379")
        assert flag(argv, "--autoscaling-config") == "/etc/cluster.yaml"
        assert flag(argv, "--gcs-address") == "10.0.0.1:6379"
        assert monitor_argv(fake.pid, "6380") is None  # another cluster's monitor
    finally:
        fake.kill()
        fake.wait()
    assert monitor_argv(os.getpid(), "6379") is None  # not a monitor
    assert monitor_argv(fake.pid, "6379") is None  # gone
    assert monitor_argv(None, "6379") is None


def test_avoiding():
    assert avoiding(()) == {}
    assert avoiding(("a", "b")) == {"label_selector": {"ray.io/node-id": "!in(a, b)"}}


@ray.remote(num_cpus=1)
class Probe:
    """Stands in for the Trainer: dies once (its process exits) if told to."""

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def run(self, flag):
        if flag and not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return {"gpus": ray.get_gpu_ids(), "device": pick_device("auto")}


def make_probe(gpus, avoid):
    return Probe.options(num_gpus=gpus, **avoiding(avoid)).remote()


def test_a_gpu_that_never_comes_is_waited_for_within_the_bound(ray_session, caplog):
    start = time.time()
    result = on_one_actor(make_probe, GpuPlan(True, False, 2.0, "node types: x"),
                          lambda a: ray.get(a.run.remote(None)), what="glove", echo=print, lost=[])
    assert result["gpus"] == [] and tuple(result["device"]) == ("cpu", None)
    assert time.time() - start < 60
    assert "glove: no GPU node joined within 2 s (node types: x); running on CPU" in caplog.text
    with pytest.raises(VgrayError, match=r"^--device cuda, but no GPU node joined within 2 s "
                       r"\(node types: x\)$"):
        on_one_actor(make_probe, GpuPlan(True, True, 2.0, "node types: x"),
                     lambda a: ray.get(a.run.remote(None)), what="glove", echo=print, lost=[])


def test_a_lost_worker_is_run_again(ray_session, tmp_path):
    said, lost = [], []
    flag = str(tmp_path / "died-once")
    result = on_one_actor(make_probe, GpuPlan(False, False, 0.0), lambda a: ray.get(
        a.run.remote(flag)), what="glove", echo=said.append, lost=lost)
    assert result["gpus"] == [] and os.path.exists(flag)
    assert len(said) == 1 and said[0].startswith("glove: its worker or node was lost")
    # Only the process died: its time is recorded as lost work, and the node, still alive, is
    # used again (on this one-node Ray there is no other).
    [record] = lost
    assert record["node"] == ray.get_runtime_context().get_node_id()
    assert record["span"][1] >= record["span"][0]


def test_node_alive(ray_session):
    assert node_alive(ray.get_runtime_context().get_node_id())
    assert not node_alive("ab" * 28, timeout=2)  # no such node


def test_pick_device_on_a_machine_without_cuda(ray_session):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert ray.get(ray.remote(lambda: pick_device("auto")).remote()) == ("cpu", None)
    assert ray.get(ray.remote(lambda: pick_device("cpu")).remote()) == ("cpu", None)
    with pytest.raises(Exception, match="--device cuda, but node .* has no GPU for this task"):
        ray.get(ray.remote(lambda: pick_device("cuda")).remote())


@ray.remote(num_cpus=0)
class Hand:
    """A worker that says who did each unit; a dying one exits on its first."""

    def __init__(self, name):
        self.name = name

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def work(self, k):
        if self.name == "dying":
            os._exit(1)
        return self.name


def test_the_pool_keeps_its_workers_across_stages_and_lends_extra_ones(ray_session):
    from vgray.run.pool import Pool

    made = []

    def make():
        made.append(Hand.remote(f"pool{len(made)}"))
        return made[-1]

    pool = Pool(make)
    try:
        gpu, done = Hand.remote("gpu"), {}

        def record(k, who, finished):
            done[k] = who

        back = pool.run(2, list(range(30)), lambda a, k: a.work.remote(k), record, extra=[gpu])
        assert sorted(done) == list(range(30)) and "gpu" in done.values()
        assert back == [gpu] and len(pool) == 2 and len(made) == 2
        # A later stage runs on the same actors: none is started again.
        done.clear()
        pool.run(1, [0, 1, 2], lambda a, k: a.work.remote(k), record)
        assert sorted(done) == [0, 1, 2] and set(done.values()) <= {"pool0", "pool1"}
        assert len(made) == 2
        # A lent actor that is lost is not handed back; its unit is done by the pool's.
        done.clear()
        back = pool.run(2, [0, 1], lambda a, k: a.work.remote(k), record,
                        extra=[Hand.remote("dying")])
        assert back == [] and sorted(done) == [0, 1] and set(done.values()) <= {"pool0", "pool1"}
        # take/give: a worker for a call of its own, off the nodes to avoid.
        first = pool.take()
        assert ray.get(first.work.remote(0)) in {"pool0", "pool1"} and len(pool.ready) == 1
        pool.give(first)
        assert len(pool) == 2
    finally:
        pool.close()
    assert pool.ready == [] and pool.starting == {}


def test_rays_benign_kill_line_is_kept_out_of_the_output_and_other_lines_are_not(ray_session,
                                                                                  capsys):
    """Ray's GCS streams 'Failed to kill actor NIL_ID … Socket closed' to the driver when an
    actor is killed while it is being created (the kill worked); it would break vgray's one-line
    errors and its stdout. Every other line Ray streams still reaches the driver."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from vgray.clusters.cluster import connect

    connect()
    connect()  # idempotent: wrapped once
    assert sum(name == "ray_print_logs" for name, _ in dispatcher.handlers) == 1
    benign = ("[2026-12-02 13:42:41,389 E 22436 22436] (gcs_server) gcs_actor_scheduler.cc:538: "
              "Failed to kill actor NIL_ID, return status: Invalid: KillActor RPC failed for "
              "actor NIL_ID: RpcError: RPC error: Socket closed rpc_code: 14")
    other = "[2026-12-02 13:42:41,390 E 22436 22436] (gcs_server) gcs_server.cc:1: disk full"
    base = {"ip": "127.0.0.1", "pid": "gcs_server", "job": "", "is_err": False,
            "actor_name": "", "task_name": ""}
    capsys.readouterr()
    dispatcher.emit({**base, "lines": [benign]})
    dispatcher.emit({**base, "lines": [benign, other]})
    dispatcher.emit({**base, "pid": 1234, "lines": ["a worker's own line"]})
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "Failed to kill actor" not in shown
    assert "disk full" in shown and "a worker's own line" in shown


def test_the_embedded_ray_is_a_fixed_cluster_of_v1(ray_session):
    from vgray.clusters.autoscale import capacity

    cap = capacity()
    assert (cap.autoscaling, cap.autoscaler, cap.types) == (False, "v1", None)
    assert cap.describe_now() == "2 CPUs, no GPU"


def test_node_types_held_by_the_gcs_come_first(ray_session):
    """Ray's main branch fills the GCS's cluster config (empty up to 2.60): read it first."""
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from vgray.clusters.autoscale import CLUSTER_CONFIG_KEY, V2_NAMESPACE, capacity

    config = ClusterConfig(node_group_configs=[
        NodeGroupConfig(name="cpu", resources={"CPU": 4}, min_count=0, max_count=3),
        NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=1)])
    _internal_kv_put(CLUSTER_CONFIG_KEY, config.SerializeToString(), namespace=V2_NAMESPACE)
    try:
        cap = capacity()
    finally:
        _internal_kv_del(CLUSTER_CONFIG_KEY, namespace=V2_NAMESPACE)
    assert cap.source == "gcs:cluster_config" and cap.autoscaling
    assert [(t.name, t.resources, t.room, t.min_count, t.max_count) for t in cap.types] == [
        ("cpu", {"CPU": 4.0}, 3, 0, 3), ("gpu", {"CPU": 8.0, "GPU": 1.0}, 1, 0, 1)]
    assert cap.cpus() == 2 + 12 and cap.can_get_gpu() is True
    assert "autoscaling (v1, node types from gcs:cluster_config)" in cap.describe_now()
