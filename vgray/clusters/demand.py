"""Asking the autoscaler for what a run needs (`request_resources`), and planning the GPU stages.

The request is a floor that makes nodes boot before work waits for them: replaced stage by stage,
cleared when the run ends. Ray keeps one such request per cluster, not one per client: a second
run's request replaces the first's, so a run clears the request at its end only while it is still
its own (see "Two runs on one cluster" in docs/ray.md).

Autoscaler v2 answers a request: one that no mix of node types can hold is infeasible as a whole,
and nothing of it is launched. Under v2 a request is therefore checked once the autoscaler has
looked at it, and made smaller at once where it is refused; where the node types are unknown it
grows in steps (GROWTH_STEP_CPUS, doubled while met), never in one jump the cluster cannot meet.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

from .autoscale import (GPU_WAIT_KNOWN_S, GPU_WAIT_UNKNOWN_S, GROWTH_STEP_CPUS, V1_REQUEST_KEY,
                        VERDICT_WAIT_S, Capacity, gcs_address, kv)
from ..errors import VgrayError

log = logging.getLogger("vgray")


def bundles(cpus: int, gpu: bool) -> list[dict]:
    """A CPU per shard worker, and a CPU with the GPU for the GPU worker."""
    return [{"CPU": 1}] * int(cpus) + ([{"CPU": 1, "GPU": 1}] if gpu else [])


def v2_reply():
    """The GCS's GetClusterStatusReply: the cluster's state and the autoscaler's last answer
    (its infeasible constraints are not in Ray's parsed ClusterStatus)."""
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(gcs_address()).get_cluster_status(timeout_s=10))
    return reply


def v2_constraint(reply) -> Counter:
    """The cluster's resource constraint in force, as a multiset of bundles."""
    held: Counter = Counter()
    for constraint in reply.cluster_resource_state.cluster_resource_constraints:
        for request in constraint.resource_requests:
            key = frozenset(dict(request.request.resources_bundle).items())
            held[key] += request.count
    return held


class Demand:
    """The capacity this run asks the autoscaler for. Does nothing on a cluster that cannot
    grow. `history` is what was asked, in order, for the manifest."""

    def __init__(self, cap: Capacity, echo=None):
        self.enabled = cap.autoscaling
        self.v2 = cap.autoscaler == "v2"
        self.known = cap.types_known()
        self.asked: list[dict] = []
        self.history: list[dict] = []
        self.met = {False: 0, True: -1}            # most CPUs v2 met, without / with the GPU
        self.refused: dict = {False: None, True: None}  # fewest CPUs v2 refused
        self.gpu_refused = False
        self.echo = echo or (lambda message: log.warning("%s", message))

    def ask(self, stage: str, cpus: int = 0, gpu: bool = False) -> int:
        """Ask for `cpus` CPUs of shard work (and the GPU); returns the CPUs asked for, fewer
        where v2 cannot meet them all."""
        cpus, gpu = int(cpus), bool(gpu) and not self.gpu_refused
        if not self.enabled:
            return cpus
        if not self.v2:
            self.send(stage, cpus, gpu)
            return cpus
        return self.ask_v2(stage, cpus, gpu)

    def ask_v2(self, stage: str, want: int, gpu: bool) -> int:
        wanted = want
        if self.refused[gpu] is not None:  # (with the GPU never 0 here: see gpu_refused)
            want = max(0, min(want, self.refused[gpu] - 1))
        reached = max(self.met[gpu], self.met[True] if not gpu else -1, 0)
        n = want if self.known else min(want, max(GROWTH_STEP_CPUS, 2 * reached))
        while True:
            self.send(stage, n, gpu)
            verdict = True if self.covered(n, gpu) else self.verdict()
            if verdict is None:  # no answer in time: the request stays as asked
                return n
            if verdict:
                self.met[gpu] = max(self.met[gpu], n)
                if n >= want:
                    return n
                n = min(want, max(2 * n, 1))  # the next step
                continue
            self.refused[gpu] = n if self.refused[gpu] is None else min(self.refused[gpu], n)
            want = min(want, n - 1)
            if gpu and n == 0:
                self.gpu_refused = True
                self.echo(f"{stage}: the autoscaler cannot launch a GPU node; "
                          "asking for CPUs only")
                return self.ask_v2(stage, wanted, False)
            lower = max(self.met[gpu], 0)
            n = (lower + n) // 2
            self.echo(f"{stage}: the autoscaler cannot meet {self.history[-1]['cpus']} CPUs; "
                      f"asking for {n}")

    def covered(self, cpus: int, gpu: bool) -> bool:
        """A request no larger than one v2 has met."""
        return cpus <= self.met[gpu] or (not gpu and cpus <= self.met[True])

    def verdict(self) -> bool | None:
        """Whether v2 can meet the request in force: True, False (infeasible), or None where the
        autoscaler has not looked at it within VERDICT_WAIT_S."""
        reply = v2_reply()
        version = reply.cluster_resource_state.cluster_resource_state_version
        deadline = time.monotonic() + VERDICT_WAIT_S
        while reply.autoscaling_state.last_seen_cluster_resource_state_version < version:
            if time.monotonic() > deadline:
                log.warning("the autoscaler did not answer the request within %.0f s",
                            VERDICT_WAIT_S)
                return None
            time.sleep(0.25)
            reply = v2_reply()
        return not reply.autoscaling_state.infeasible_cluster_resource_constraints

    def gpu_can_come(self) -> bool | None:
        """Ask v2 for a GPU node alone: whether one can be launched (None: no answer)."""
        if not (self.enabled and self.v2):
            return None
        self.send("probe: GPU", 0, True)
        verdict = self.verdict()
        if verdict is False:
            self.gpu_refused, self.refused[True] = True, 0
        elif verdict:
            self.met[True] = max(self.met[True], 0)
        return verdict

    def send(self, stage: str, cpus: int, gpu: bool) -> None:
        wanted = bundles(cpus, gpu)
        if wanted == self.asked:
            return
        request(wanted, self.v2)
        self.asked = wanted
        self.history.append({"stage": stage, "cpus": int(cpus), "gpu": bool(gpu)})

    def still_ours(self) -> bool:
        """Whether the cluster's request is still this run's (another run may have replaced it;
        where it cannot be read, it is taken for ours)."""
        try:
            if self.v2:
                return v2_constraint(v2_reply()) == Counter(frozenset(b.items())
                                                            for b in self.asked)
            raw = kv(V1_REQUEST_KEY)
            return raw is None or json.loads(raw) == self.asked
        except Exception:  # noqa: BLE001 - unreadable: clear it, as before
            return True

    def clear(self) -> None:
        """The run is over: every node may go back once idle. A request that another run has
        made since is left to it."""
        if not (self.enabled and self.asked):
            return
        try:
            if self.still_ours():
                request([], self.v2)
            else:
                self.echo("ray: another run's request to the autoscaler is left in place")
        except Exception as e:  # noqa: BLE001 - Ray may already be gone (Ctrl-C)
            log.warning("could not clear the autoscaler request: %s", e)
        self.asked = []
        self.history.append({"stage": "end", "cpus": 0, "gpu": False})


def request(wanted: list[dict], v2: bool) -> None:
    """Replace the cluster's request: through the GCS for v2 (Ray's own sdk decides by a local
    variable), through the KV for v1."""
    if v2:
        from ray.autoscaler.v2.sdk import request_cluster_resources

        request_cluster_resources(gcs_address(), [{"resources": b} for b in wanted])
    else:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=wanted)


# ---------------------------------------------------------------------------------------------
# The GPU stages

@dataclass(frozen=True)
class GpuPlan:
    """Whether the GPU stages (k-means, GloVe) ask Ray for a GPU, and how long they wait for one
    to join before running on CPU (`--device auto`) or failing (`--device cuda`)."""

    request: bool
    required: bool
    wait_s: float
    where: str = ""  # the node types, for messages
    note: str = ""   # why the GPU stages run on CPU, where that was decided here


def plan_gpu(device: str, cap: Capacity, wait_s: float | None = None,
             demand: Demand | None = None) -> GpuPlan:
    """--device cpu: never; cuda: always, failing at once where no GPU can come; auto: whenever
    the cluster has a GPU or may launch one. Where the node types are unknown, v2 is asked (it
    answers within an update interval); else a GPU is tried for a bounded wait."""
    if device == "cpu":
        return GpuPlan(False, False, 0.0)
    can = cap.can_get_gpu()
    where = cap.describe_types()
    told = False
    if can is None and demand is not None and demand.v2:
        can = demand.gpu_can_come()
        told = can is not None
    if can is False:
        why = ("the autoscaler (v2) cannot launch one, " + where if told
               else where if cap.types is not None else "")
        if device == "cuda":
            raise VgrayError("--device cuda, but the Ray cluster has no GPU and cannot launch one"
                             + (f" ({why})" if why else ""))
        note = f"no GPU can come ({why}): k-means and GloVe run on CPU" if told else ""
        return GpuPlan(False, False, 0.0, where, note)
    if wait_s is None:
        wait_s = GPU_WAIT_KNOWN_S if can else GPU_WAIT_UNKNOWN_S
    return GpuPlan(True, device == "cuda", float(wait_s), where)
