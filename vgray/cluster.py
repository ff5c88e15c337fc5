"""The Ray cluster as a run sees it: connecting, what it has and can grow to, asking its
autoscaler for that, placing the GPU stages, which nodes are alive, and where work ran. (The
retrying pool of workers that runs on it is pool.py.)

An autoscaling cluster starts its worker types from zero, so what it *has* says little about what
it *can* provide. The node types and their maximum counts are read from the autoscaler's own
config (the monitor's `--autoscaling-config` on the head, or the launcher's
`~/ray_bootstrap_config.yaml`); where that cannot be read (KubeRay runs its autoscaler in another
container) vgray still asks, and bounds how long it waits for a GPU.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import ray

from .errors import VgrayError
from .progress import plural

log = logging.getLogger("vgray")

UNKNOWN_GROWTH_CPUS = 256  # shard actors at most where the autoscaler's node types are unknown
GPU_WAIT_KNOWN_S = 600.0    # a node type with a GPU exists: cloud GPU nodes take minutes to boot
GPU_WAIT_UNKNOWN_S = 120.0  # node types not readable: no way to tell an infeasible request


def ray_address(address: str | None = None) -> str:
    """Where connect() goes: `address`, else the RAY_ADDRESS that a Ray job runs with (not a
    Jobs API address), else "local" (an embedded Ray of this process)."""
    env = os.environ.get("RAY_ADDRESS", "")
    return address or (env if env and not env.startswith(("http://", "https://")) else "local")


def joining(address: str | None = None) -> str:
    """What connect() is about to do, in words; "" where Ray is already up in this process."""
    if ray.is_initialized():
        return ""
    address = ray_address(address)
    return "starting a local Ray" if address == "local" else f"connecting to {address}"


def connect(address: str | None = None) -> None:
    """Use the Ray already initialised in this process; else attach to `address` (or the
    RAY_ADDRESS that a Ray job runs with); else start an embedded local Ray, never picking up
    some other cluster that happens to run on this machine."""
    if not ray.is_initialized():
        address = ray_address(address)
        kwargs = {"include_dashboard": False} if address == "local" else {}
        main = threading.current_thread() is threading.main_thread()
        on_term = signal.getsignal(signal.SIGTERM) if main else None
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True, **kwargs)
        if callable(on_term):  # Ray's driver installs a fatal-signal handler for SIGTERM (a
            signal.signal(signal.SIGTERM, on_term)  # stack dump): the caller's is kept
    quiet_benign_ray_lines()


# Lines that Ray's GCS logs as errors, and streams to the driver, for what is no fault: killing
# an actor whose creation is still under way ("Failed to kill actor NIL_ID … Socket closed"; the
# kill succeeded, the worker went before it could answer: ray-project/ray#53412, #58544).
BENIGN_RAY_LINES = ("Failed to kill actor",)


def _quiet(handler):
    def handle(data: dict) -> None:
        if data.get("pid") == "gcs_server":
            lines = [line for line in data.get("lines", [])
                     if not any(text in line for text in BENIGN_RAY_LINES)]
            if not lines:
                return
            data = {**data, "lines": lines}
        handler(data)

    handle.vgray_quiet = True
    return handle


def quiet_benign_ray_lines() -> None:
    """Keep Ray's benign GCS error lines (BENIGN_RAY_LINES) out of this driver's output, which
    is vgray's one-line messages and results; every other line Ray streams is kept. (Ray's
    stream dispatcher is not public API: where it is not as expected, nothing changes.)"""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        with dispatcher._lock:
            dispatcher.handlers = [
                (name, handler if name != "ray_print_logs" or getattr(handler, "vgray_quiet", False)
                 else _quiet(handler)) for name, handler in dispatcher.handlers]
    except (ImportError, AttributeError, TypeError, ValueError):
        return


# ---------------------------------------------------------------------------------------------
# What the cluster has and can grow to

@dataclass(frozen=True)
class NodeType:
    """A worker type the autoscaler may launch: its resources (None if the config does not say)
    and how many more of it may join."""

    name: str
    resources: dict | None
    room: int

    def gpus(self) -> float | None:
        return None if self.resources is None else float(self.resources.get("GPU", 0))

    def cpus(self) -> float | None:
        return None if self.resources is None else float(self.resources.get("CPU", 0))

    def describe(self) -> str:
        if self.resources is None:
            return f"{self.name} (resources not stated)"
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(self.resources.items())
                          if k in ("CPU", "GPU") or not k.startswith(("memory", "object_store")))
        return f"{self.name} ({shown or 'no CPU or GPU'})"


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now and what its autoscaler can add."""

    cpus_now: float
    gpus_now: float
    autoscaling: bool               # an autoscaler that can add nodes
    types: tuple | None             # NodeType of every worker type (None: not readable)
    head_type: str | None = None
    source: str | None = None       # where the types were read

    def cpus(self) -> float:
        """CPUs for shard work once grown: those present plus those of the CPU-only types the
        autoscaler may still add (GPU types count only on a cluster without CPU-only types, so
        that CPU work never asks for GPU nodes); UNKNOWN_GROWTH_CPUS where the growth cannot be
        known."""
        if not self.autoscaling:
            return self.cpus_now
        if self.types is None or any(t.resources is None for t in self.types):
            return max(self.cpus_now, UNKNOWN_GROWTH_CPUS)
        cpu_only = [t for t in self.types if not t.gpus()]
        return self.cpus_now + sum(t.room * t.cpus() for t in (cpu_only or self.types))

    def can_get_gpu(self) -> bool | None:
        """True: a GPU is present or a type with one may be launched; False: neither; None: the
        node types cannot be read, so only trying tells."""
        if self.gpus_now > 0:
            return True
        if not self.autoscaling:
            return False
        if self.types is None:
            return None
        if any(t.room > 0 and t.gpus() for t in self.types):
            return True
        return None if any(t.resources is None and t.room > 0 for t in self.types) else False

    def describe_now(self) -> str:
        """'2 CPUs, no GPU' (and ', autoscaling' where nodes can be added)."""
        gpus = plural(int(self.gpus_now), "GPU") if self.gpus_now else "no GPU"
        return (f"{plural(int(self.cpus_now), 'CPU')}, {gpus}"
                + (", autoscaling" if self.autoscaling else ""))

    def to_dict(self) -> dict:
        return {"autoscaling": self.autoscaling, "cpus_now": self.cpus_now,
                "gpus_now": self.gpus_now, "autoscaler_config": self.source,
                "node_types": None if self.types is None else [
                    {"name": t.name, "resources": t.resources, "room": t.room} for t in self.types]}

    def describe_types(self) -> str:
        if self.types is None:
            return "node types unknown"
        names = ([f"{self.head_type} (head)"] if self.head_type else []) + [
            t.describe() for t in self.types]
        return "node types: " + (", ".join(names) if names else "none")


def capacity() -> Capacity:
    """Read what the connected cluster has and, from its autoscaler, what it can add."""
    have = ray.cluster_resources()
    status = _autoscaler_status()
    config, source = _autoscaler_config(status)
    if config is not None:
        running = _running_by_type(status)
        types, head = node_types(config, running)
        return Capacity(have.get("CPU", 0), have.get("GPU", 0), any(t.room > 0 for t in types),
                        tuple(types), head, source)
    # No readable config. KubeRay (autoscaler v2, in a container of its own) can still add
    # nodes; otherwise (the embedded local Ray, a plain `ray start --head`) the cluster is fixed.
    v2 = _kv("__autoscaler_v2_enabled") in (b"1", b"true")
    kuberay = "KUBERAY_GEN_RAY_START_CMD" in os.environ
    return Capacity(have.get("CPU", 0), have.get("GPU", 0), v2 or kuberay, None)


def node_types(config: dict, running: dict[str, int]) -> tuple[list[NodeType], str | None]:
    """Worker types of an autoscaler config with the room each has left: its max_workers less
    those running, within the cluster's max_workers overall."""
    available = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total = config.get("max_workers")
    workers = {name: t for name, t in available.items() if name != head}
    left = None if total is None else max(0, int(total) - sum(running.get(n, 0) for n in workers))
    types = []
    for name, spec in sorted(workers.items()):
        limit = spec.get("max_workers", total if total is not None else 0)
        room = max(0, int(limit) - running.get(name, 0))
        if left is not None:
            room = min(room, left)
        resources = spec.get("resources")
        types.append(NodeType(name, dict(resources) if resources is not None else None, room))
    return types, head


def _kv(key: str) -> bytes | None:
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return _internal_kv_get(key)
    except Exception:  # noqa: BLE001 - no KV, no autoscaler facts
        return None


def _autoscaler_status() -> dict:
    raw = _kv("__autoscaling_status")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _running_by_type(status: dict) -> dict[str, int]:
    """Nodes of each type that are up or being launched."""
    report = status.get("autoscaler_report") or {}
    running = dict(report.get("active_nodes") or {})
    for name, n in (report.get("idle_nodes") or {}).items():
        running[name] = running.get(name, 0) + n
    for entry in report.get("pending_nodes") or []:  # [ip, type, status]
        if len(entry) >= 2:
            running[entry[1]] = running.get(entry[1], 0) + 1
    for name, n in (report.get("pending_launches") or {}).items():
        running[name] = running.get(name, 0) + n
    return running


def _autoscaler_config(status: dict) -> tuple[dict | None, str | None]:
    """The autoscaler's config: the file its monitor was started with, where the monitor runs on
    this machine (a monitor without one is a fixed cluster's); else, on the head, the cluster
    launcher's bootstrap config."""
    argv = _monitor_argv(status.get("monitor_pid"), _gcs_port())
    if argv is not None:
        path = _flag(argv, "--autoscaling-config")
    else:
        candidate = os.path.expanduser("~/ray_bootstrap_config.yaml")
        path = candidate if os.path.exists(candidate) and _on_head() else None
    if path is None:
        return None, None
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read the autoscaler's config %s: %s", path, e)
        return None, None
    return (config, path) if isinstance(config, dict) else (None, None)


def _gcs_port() -> str | None:
    try:
        return ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    except Exception:  # noqa: BLE001
        return None


def _monitor_argv(pid, gcs_port: str | None) -> list[str] | None:
    """The command line of the Ray monitor with this pid, if it is this cluster's monitor and
    runs on this machine (a pid of another machine names some other process here)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except (OSError, ValueError, TypeError):
        return None
    if not any(a.endswith("monitor.py") for a in argv):
        return None
    gcs = _flag(argv, "--gcs-address")
    if gcs_port is not None and (gcs is None or gcs.rsplit(":", 1)[-1] != gcs_port):
        return None
    return argv


def _flag(argv: list[str], name: str) -> str | None:
    for k, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and k + 1 < len(argv):
            return argv[k + 1]
    return None


def _on_head() -> bool:
    try:
        me = ray.get_runtime_context().get_node_id()
        return any(n["NodeID"] == me and "node:__internal_head__" in n.get("Resources", {})
                   for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - a client without a node of its own
        return False


# ---------------------------------------------------------------------------------------------
# Asking the autoscaler, and placing the GPU stages

class Demand:
    """The capacity this run asks the autoscaler for (`request_resources`): a floor that makes
    nodes boot before work waits for them. Replaced stage by stage, cleared when the run ends so
    that every node can go back once idle. Does nothing on a cluster that cannot grow."""

    def __init__(self, cap: Capacity):
        self.enabled = cap.autoscaling
        self.asked: list[dict] = []
        self.history: list[dict] = []  # what was asked, in order, for the manifest

    def ask(self, stage: str, cpus: int = 0, gpu: bool = False) -> None:
        bundles = [{"CPU": 1}] * int(cpus) + ([{"CPU": 1, "GPU": 1}] if gpu else [])
        if not self.enabled or bundles == self.asked:
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
        self.asked = bundles
        self.history.append({"stage": stage, "cpus": int(cpus), "gpu": bool(gpu)})

    def clear(self) -> None:
        if self.enabled and self.asked:
            from ray.autoscaler.sdk import request_resources

            try:
                request_resources(bundles=[])
            except Exception as e:  # noqa: BLE001 - Ray may already be gone (Ctrl-C)
                log.warning("could not clear the autoscaler request: %s", e)
            self.asked = []
            self.history.append({"stage": "end", "cpus": 0, "gpu": False})


@dataclass(frozen=True)
class GpuPlan:
    """Whether the GPU stages (k-means, GloVe) ask Ray for a GPU, and how long they wait for one
    to join before running on CPU (`--device auto`) or failing (`--device cuda`)."""

    request: bool
    required: bool
    wait_s: float
    where: str = ""  # the node types, for messages


def plan_gpu(device: str, cap: Capacity, wait_s: float | None = None) -> GpuPlan:
    """--device cpu: never; cuda: always, failing at once where no GPU can come; auto: whenever
    the cluster has a GPU or may launch one (and tries, within a bound, where it cannot tell)."""
    if device == "cpu":
        return GpuPlan(False, False, 0.0)
    can = cap.can_get_gpu()
    where = cap.describe_types()
    if can is False:
        if device == "cuda":
            raise VgrayError("--device cuda, but the Ray cluster has no GPU and cannot launch one"
                             + (f" ({where})" if cap.types is not None else ""))
        return GpuPlan(False, False, 0.0, where)
    if wait_s is None:
        wait_s = GPU_WAIT_KNOWN_S if can else GPU_WAIT_UNKNOWN_S
    return GpuPlan(True, device == "cuda", float(wait_s), where)


def gpu_problem() -> str | None:
    """Why torch cannot use the GPU this process was given, or None if it can."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is built without CUDA"
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - its message is the reason
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "torch sees no CUDA device"


def pick_device(device: str) -> tuple[str, str | None]:
    """(device to compute on, why a GPU this task was given is not used). With --device cuda a
    GPU that torch cannot use is an error; with auto the task runs on CPU and says why."""
    if device == "cpu":
        return "cpu", None
    given = bool(ray.get_gpu_ids()) if ray.is_initialized() else False
    problem = gpu_problem()
    if problem is None:
        return "cuda", None
    facts = where_facts()
    node = f"node {facts['node'][:12]}" + (f" ({facts['node_type']})" if facts["node_type"] else "")
    if given:
        note = f"the GPU of {node} is not usable by torch: {problem}"
        if device == "cuda":
            raise VgrayError(f"--device cuda, but {note}")
        return "cpu", note
    if device == "cuda":
        raise VgrayError(f"--device cuda, but {node} has no GPU for this task ({problem})")
    return "cpu", None


# ---------------------------------------------------------------------------------------------
# Nodes: alive, avoided

def node_alive(node: str, timeout: float = 10.0) -> bool:
    """Whether a node still runs work: a no-CPU probe pinned to it answers within `timeout`.
    (Ray takes seconds to declare a lost node dead, and meanwhile would place work there.)"""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    ref = probe.remote()
    ready, _ = ray.wait([ref], timeout=timeout)
    try:
        return bool(ready) and ray.get(ref) is True
    except ray.exceptions.RayError:
        return False
    finally:
        if not ready:
            ray.cancel(ref, force=True)


@ray.remote(num_cpus=0, max_retries=0)
def _probe() -> bool:
    return True


def avoiding(nodes: tuple) -> dict:
    """Ray options that keep an actor off these nodes."""
    return {"label_selector": {"ray.io/node-id": f"!in({', '.join(nodes)})"}} if nodes else {}


# ---------------------------------------------------------------------------------------------
# Where work ran

@functools.lru_cache(maxsize=None)
def _node_facts(node_id: str, own_type: str | None) -> tuple:
    """(node type, {CPU, GPU}, host address) of a node, from Ray's node table and the
    autoscaler."""
    node_type = own_type
    if not node_type:
        mapping = (_autoscaler_status().get("autoscaler_report") or {}).get("node_type_mapping")
        node_type = (mapping or {}).get(node_id)
    if node_type == f"node_{node_id}":  # the name Ray makes up for a node of no declared type
        node_type = None
    resources, host = {}, None
    try:
        for n in ray.nodes():
            if n["NodeID"] == node_id:
                resources = {k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")}
                host = n.get("NodeManagerAddress") or None
    except Exception:  # noqa: BLE001 - facts are nice to have
        pass
    return node_type, tuple(sorted(resources.items())), host


def node_facts(node_id: str, own_type: str | None = None) -> dict:
    """A node's type, resources, host address, and the Ray session it belongs to (own_type:
    what the node says of itself). A node's id is new each time Ray starts on a machine; the
    host and session tell one machine seen by two invocations from two machines."""
    node_type, resources, host = _node_facts(node_id, own_type)
    try:
        session = ray.get_runtime_context().get_session_name()
    except Exception:  # noqa: BLE001 - facts are nice to have
        session = None
    return {"node_type": node_type, "resources": dict(resources), "host": host,
            "session": session}


def where_facts() -> dict:
    """This worker's node: its id, type and resources."""
    node = ray.get_runtime_context().get_node_id()
    # RAY_NODE_TYPE_NAME is set on the nodes that the autoscaler's launchers start.
    return {"node": node, **node_facts(node, os.environ.get("RAY_NODE_TYPE_NAME") or None)}


def actor_start(submitted: float) -> float:
    """When this actor began to cost its node: its process's start (on Linux), but not before the
    driver asked for the actor (Ray may hand it an older, idle process)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(submitted, time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError):
        return submitted


def here(since: float) -> dict:
    """Where and when a piece of work ran (wall-clock span on its node), for the manifest."""
    return {**where_facts(), "span": [round(since, 3), round(time.time(), 3)]}


def node_usage(records: list[tuple[str, dict]]) -> dict:
    """Per node id: type, resources, seconds with vgray work on it (the union of the spans of
    the work done there) and how many pieces of each kind of work ran there."""
    nodes: dict = {}
    for kind, where in records:
        node = nodes.setdefault(where["node"], {"node_type": where.get("node_type"),
                                                "resources": where.get("resources") or {},
                                                "host": where.get("host"),
                                                "session": where.get("session"),
                                                "seconds": 0.0, "work": {}, "_spans": []})
        node["work"][kind] = node["work"].get(kind, 0) + 1
        node["_spans"].append(tuple(where["span"]))
    for node in nodes.values():
        node["seconds"] = round(union_length(node.pop("_spans")), 3)
    return dict(sorted(nodes.items()))


def union_length(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, end = 0.0, -float("inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def node_label(node: dict) -> str:
    """The node's type, or its resources where it has no declared type."""
    if node.get("node_type"):
        return node["node_type"]
    res = node.get("resources") or {}
    return "(" + (", ".join(f"{k} {v:g}" for k, v in sorted(res.items())) or "no CPU") + ")"


def usage_by_type(stages: dict) -> dict:
    """Node-seconds per node type over every stage: {type: {nodes, node_seconds}}.

    Within one Ray session every node id is a node. A resumed run meets its machines again
    under new ids (Ray names a node afresh each time it starts), so across sessions nodes are
    matched by host: a host counts as many nodes as it held at once in any one session (one
    machine resumed on is one node; the simulated nodes of one machine are several). A node
    recorded without host or session counts by its id."""
    out: dict = {}
    ids: dict = {}  # (label, host or id) -> {session: {node ids}}
    for stage in stages.values():
        for node_id, node in (stage.get("nodes") or {}).items():
            label = node_label(node)
            entry = out.setdefault(label, {"nodes": 0, "node_seconds": 0.0})
            entry["node_seconds"] = round(entry["node_seconds"] + node["seconds"], 3)
            host, session = node.get("host"), node.get("session")
            key = (label, host) if host and session else (label, "id:" + node_id)
            ids.setdefault(key, {}).setdefault(session, set()).add(node_id)
    for (label, _), sessions in ids.items():
        out[label]["nodes"] += max(len(nodes) for nodes in sessions.values())
    return dict(sorted(out.items()))


def usage_line(by_type: dict) -> str:
    """One line: nodes and node-seconds of vgray work per node type."""
    return "nodes: " + "; ".join(f"{u['nodes']} × {label}: {u['node_seconds']:.1f} node-s"
                                 for label, u in by_type.items())
