"""The Ray cluster as a run sees it: connecting, the device a task computes on, which nodes are
alive, and where work ran. (What the cluster can grow to is autoscale.py, asking its autoscaler
for it demand.py, and the retrying pool of workers that runs on it pool.py.)
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import ray

from .autoscale import autoscaler_status, v2_node_type
from ..errors import VgrayError, first_line

log = logging.getLogger("vgray")

def ray_address(address: str | None = None) -> str:
    """Where connect() goes: `address`, else the RAY_ADDRESS that a Ray job runs with (not a
    Jobs API address), else "local" (an embedded Ray of this process). "auto" follows Ray's
    rule: RAY_ADDRESS first where it is set, else the cluster this machine last started."""
    env = os.environ.get("RAY_ADDRESS", "")
    env = env if env and env != "auto" and not env.startswith(("http://", "https://")) else ""
    if address == "auto" and env:
        return env
    return address or env or ("auto" if os.environ.get("RAY_ADDRESS") == "auto" else "local")


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
# The device of a task

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
        return first_line(e)
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
        mapping = (autoscaler_status().get("autoscaler_report") or {}).get("node_type_mapping")
        node_type = (mapping or {}).get(node_id) or v2_node_type(node_id)
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


def usage_by_type(stages: list[dict | None]) -> dict:
    """Node-seconds per node type over every stage (each stage's node_usage, None where it
    recorded none): {type: {nodes, node_seconds}}.

    Within one Ray session every node id is a node. A resumed run meets its machines again
    under new ids (Ray names a node afresh each time it starts), so across sessions nodes are
    matched by host: a host counts as many nodes as it held at once in any one session (one
    machine resumed on is one node; the simulated nodes of one machine are several). A node
    recorded without host or session counts by its id."""
    out: dict = {}
    ids: dict = {}  # (label, host or id) -> {session: {node ids}}
    for stage in stages:
        for node_id, node in (stage or {}).items():
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
    """One line: nodes and node-seconds of vgray work per node type (manifest.NodeTypeUse)."""
    return "nodes: " + "; ".join(f"{u.nodes} × {label}: {u.node_seconds:.1f} node-s"
                                 for label, u in by_type.items())
