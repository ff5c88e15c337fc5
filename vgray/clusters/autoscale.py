"""What an autoscaling Ray cluster can grow to, and asking its autoscaler for it.

An autoscaling cluster starts its worker types from zero, so what it *has* says little about what
it *can* provide. The node types (name, resources, min and max counts) are read from the first
source that answers:

1. the cluster config in the GCS (`ray._private.state.state.get_cluster_config()`: empty in every
   release up to 2.60; Ray's main branch fills it);
2. the config file of the v1 autoscaler's monitor on this machine (`--autoscaling-config`);
3. the config file of the v2 autoscaler's monitor on this machine;
4. on KubeRay, the RayCluster object, read from the Kubernetes API (kuberay.py);
5. the cluster launcher's `~/ray_bootstrap_config.yaml` on the head.

Autoscaler v2 (KubeRay's default) is told apart by the GCS, and it answers a request: a
constraint that no mix of node types can hold is reported infeasible, and nothing of it is
launched. So a request is never larger than the types hold, is grown in steps where the types are
unknown, and is made smaller at once where v2 refuses it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import ray

from ..progress import plural

log = logging.getLogger("vgray")

UNKNOWN_GROWTH_CPUS = 256  # shard actors at most where the autoscaler's node types are unknown
GROWTH_STEP_CPUS = 8        # v2, types unknown: the first step of a request, doubled while met
GPU_WAIT_KNOWN_S = 600.0    # a node type with a GPU exists: cloud GPU nodes take minutes to boot
GPU_WAIT_UNKNOWN_S = 120.0  # node types not readable, and no v2 to tell an infeasible request
VERDICT_WAIT_S = 30.0       # v2 looks at a request within one update interval (5 s by default)

V2_NAMESPACE = "__autoscaler"  # ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
V2_ENABLED_KEY = "__autoscaler_v2_enabled"
CLUSTER_CONFIG_KEY = "__autoscaler_cluster_config"
V1_REQUEST_KEY = "autoscaler_resource_request"  # where v1's request_resources writes
FIXED = "fixed"  # the source of a monitor that runs without a config: a cluster that cannot grow


# ---------------------------------------------------------------------------------------------
# What the cluster has and can grow to

@dataclass(frozen=True)
class NodeType:
    """A worker type the autoscaler may launch: its resources (None if the config does not say),
    its minimum and maximum count, and how many more of it may join."""

    name: str
    resources: dict | None
    room: int
    min_count: int = 0
    max_count: int | None = None

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
    source: str | None = None       # where the types were read (a path, gcs:…, kuberay:…)
    autoscaler: str | None = None   # "v1" or "v2"; None: none seen
    notes: tuple = field(default=(), compare=False)  # sources that failed, in one line each

    def cpus(self) -> float:
        """CPUs for shard work once grown: those present plus those of the CPU-only types the
        autoscaler may still add (GPU types count only on a cluster without CPU-only types, so
        that CPU work never asks for GPU nodes); UNKNOWN_GROWTH_CPUS where the growth cannot be
        known."""
        if not self.autoscaling:
            return self.cpus_now
        if not self.types_known():
            return max(self.cpus_now, UNKNOWN_GROWTH_CPUS)
        cpu_only = [t for t in self.types if not t.gpus()]
        return self.cpus_now + sum(t.room * t.cpus() for t in (cpu_only or self.types))

    def types_known(self) -> bool:
        return self.types is not None and all(t.resources is not None for t in self.types)

    def can_get_gpu(self) -> bool | None:
        """True: a GPU is present or a type with one may be launched; False: neither; None: the
        node types cannot be read, so only asking tells."""
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
        """'2 CPUs, no GPU', and where nodes can be added, by which autoscaler and where its
        node types were read: ', autoscaling (v2, node types from PATH)'."""
        gpus = plural(int(self.gpus_now), "GPU") if self.gpus_now else "no GPU"
        line = f"{plural(int(self.cpus_now), 'CPU')}, {gpus}"
        if self.autoscaling:
            read = f"from {self.source}" if self.source else "unknown"
            line += f", autoscaling ({self.autoscaler or 'autoscaler'}, node types {read})"
        return line

    def to_dict(self) -> dict:
        return {"autoscaling": self.autoscaling, "autoscaler": self.autoscaler,
                "cpus_now": self.cpus_now, "gpus_now": self.gpus_now,
                "autoscaler_config": self.source,
                "node_types": None if self.types is None else [
                    {"name": t.name, "resources": t.resources, "room": t.room,
                     "min": t.min_count, "max": t.max_count} for t in self.types]}

    def describe_types(self) -> str:
        if self.types is None:
            return "node types unknown"
        names = ([f"{self.head_type} (head)"] if self.head_type else []) + [
            t.describe() for t in self.types]
        return "node types: " + (", ".join(names) if names else "none")


def capacity() -> Capacity:
    """Read what the connected cluster has and, from its autoscaler, what it can add."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    v2 = autoscaler_v2()
    status = {} if v2 else autoscaler_status()
    notes: list[str] = []
    config, source = autoscaler_config(status.get("monitor_pid"), v2, notes)
    version = "v2" if v2 else ("v1" if status else None)
    if config is not None:
        running = v2_running() if v2 else running_by_type(status)
        types, head = node_types(config, running)
        return Capacity(cpus, gpus, any(t.room > 0 for t in types), tuple(types), head, source,
                        version, tuple(notes))
    # No readable config: v2 or KubeRay (its autoscaler in a container of its own) can still add
    # nodes, unless a monitor runs here without a config (a fixed `ray start --head`).
    kuberay = "KUBERAY_GEN_RAY_START_CMD" in os.environ
    return Capacity(cpus, gpus, (v2 and source != FIXED) or kuberay, None, None, None, version,
                    tuple(notes))


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
        types.append(NodeType(name, dict(resources) if resources is not None else None, room,
                              int(spec.get("min_workers", 0)), int(limit)))
    return types, head


def kv(key: str, namespace: str | None = None) -> bytes | None:
    """A value of the GCS's key-value store (None: absent, or no store to ask)."""
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return _internal_kv_get(key, namespace=namespace)
    except Exception:  # noqa: BLE001 - no KV, no autoscaler facts
        return None


def autoscaler_v2() -> bool:
    """Whether the cluster's autoscaler is v2, as the GCS says (the key lives in the
    autoscaler's namespace; Ray's is_autoscaler_v2() trusts a local variable first)."""
    return kv(V2_ENABLED_KEY, V2_NAMESPACE) in (b"1", b"true")


def autoscaler_status() -> dict:
    """The v1 autoscaler's last report (absent under v2)."""
    raw = kv("__autoscaling_status")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def running_by_type(status: dict) -> dict[str, int]:
    """Nodes of each type that are up or being launched, from v1's report."""
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


def gcs_address() -> str:
    return ray.get_runtime_context().gcs_address


def gcs_port() -> str | None:
    try:
        return gcs_address().rsplit(":", 1)[-1]
    except Exception:  # noqa: BLE001
        return None


def v2_running() -> dict[str, int]:
    """Nodes of each type that are up or being launched, from v2's cluster status."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(gcs_address())
    except Exception as e:  # noqa: BLE001 - counts are then those of a cluster from zero
        log.warning("cannot read the autoscaler's status: %s", e)
        return {}
    running: dict[str, int] = {}
    for node in status.active_nodes + status.idle_nodes + status.pending_nodes:
        running[node.ray_node_type_name] = running.get(node.ray_node_type_name, 0) + 1
    for launch in status.pending_launches:
        running[launch.ray_node_type_name] = (running.get(launch.ray_node_type_name, 0)
                                              + launch.count)
    return running


def v2_node_type(node_id: str) -> str | None:
    """A node's type as v2 knows it, for nodes alive or lost (None: no v2, or not known)."""
    if not autoscaler_v2():
        return None
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(gcs_address())
    except Exception:  # noqa: BLE001 - facts are nice to have
        return None
    for node in (status.active_nodes + status.idle_nodes + status.pending_nodes
                 + status.failed_nodes):
        if node.node_id == node_id:
            return node.ray_node_type_name or None
    return None


# ---------------------------------------------------------------------------------------------
# Where the node types are read

def autoscaler_config(monitor_pid, v2: bool, notes: list) -> tuple[dict | None, str | None]:
    """The autoscaler's config and where it was read, from the first source that answers (the
    module's docstring has the order); (None, FIXED) for a monitor without a config file;
    (None, None) where none answers."""
    config = gcs_cluster_config()
    if config is not None:
        return config, "gcs:cluster_config"
    port = gcs_port()
    argv = None if v2 else monitor_argv(monitor_pid, port)
    argv = argv or find_monitor(port, "v2" if v2 else "")
    if argv is not None:  # a monitor without a config file is a fixed cluster's
        path = flag(argv, "--autoscaling-config")
        return (read_yaml(path), path) if path else (None, FIXED)
    if os.environ.get("RAY_CLUSTER_NAME"):
        from . import kuberay

        config, where, note = kuberay.autoscaling_config()
        if config is not None:
            return config, where
        notes.append(note)
    candidate = os.path.expanduser("~/ray_bootstrap_config.yaml")
    if os.path.exists(candidate) and on_head():
        return read_yaml(candidate), candidate
    return None, None


def gcs_cluster_config() -> dict | None:
    """The node types that the GCS holds (autoscaler_pb2.ClusterConfig), as a config."""
    raw = kv(CLUSTER_CONFIG_KEY, V2_NAMESPACE)
    if not raw:
        return None
    try:
        from ray.core.generated.autoscaler_pb2 import ClusterConfig

        cluster = ClusterConfig.FromString(raw)
    except Exception as e:  # noqa: BLE001 - a format this vgray does not know
        log.warning("cannot read the cluster config in the GCS: %s", e)
        return None
    if not cluster.node_group_configs:
        return None
    return {"available_node_types": {
        g.name: {"resources": dict(g.resources), "min_workers": g.min_count,
                 "max_workers": g.max_count} for g in cluster.node_group_configs},
        "head_node_type": None}


def read_yaml(path: str) -> dict | None:
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read the autoscaler's config %s: %s", path, e)
        return None
    return config if isinstance(config, dict) else None


def cmdline(pid) -> list[str] | None:
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except (OSError, ValueError, TypeError):
        return None


def monitor_argv(pid, port: str | None) -> list[str] | None:
    """The command line of the Ray monitor with this pid, if it is this cluster's monitor and
    runs on this machine (a pid of another machine names some other process here)."""
    argv = cmdline(pid)
    if argv is None or not any(a.endswith("monitor.py") for a in argv):
        return None
    gcs = flag(argv, "--gcs-address")
    if port is not None and (gcs is None or gcs.rsplit(":", 1)[-1] != port):
        return None
    return argv


def find_monitor(port: str | None, kind: str = "") -> list[str] | None:
    """The command line of this cluster's monitor among the processes of this machine (v2's
    has no pid in the GCS); kind "v2" takes only `…/autoscaler/v2/monitor.py`."""
    if port is None or not os.path.isdir("/proc"):
        return None
    ending = "autoscaler/v2/monitor.py" if kind == "v2" else "monitor.py"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        argv = cmdline(pid)
        if argv and any(a.endswith(ending) for a in argv[:3]):
            found = monitor_argv(pid, port)
            if found is not None:
                return found
    return None


def flag(argv: list[str], name: str) -> str | None:
    for k, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and k + 1 < len(argv):
            return argv[k + 1]
    return None


def on_head() -> bool:
    try:
        me = ray.get_runtime_context().get_node_id()
        return any(n["NodeID"] == me and "node:__internal_head__" in n.get("Resources", {})
                   for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - a client without a node of its own
        return False
