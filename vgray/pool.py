"""The run's workers and the retries: a pool of long-lived shard workers that runs every unit of
a stage, replacing what is lost, and the single calls (k-means, GloVe) made on one worker.

A fault of the machinery (a lost worker or node, a lost object) is told apart from an error of
vgray's code or of the input: the first is run again on another worker, up to MAX_ATTEMPTS
times, the second fails the run in one line.
"""

from __future__ import annotations

import contextlib
import logging
import time

import ray

from .cluster import node_alive, node_facts
from .demand import GpuPlan
from .errors import StorageError, VgrayError

log = logging.getLogger("vgray")

# Failures of the machinery, not of vgray's code: the work is run again on a fresh actor.
RETRIABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
             ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
             ray.exceptions.NodeDiedError)
# The same, but only a lost worker or node (its inputs are still there).
LOST_WORKER = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
               ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
MAX_ATTEMPTS = 4
# A unit still running past max(UNIT_DEADLINE_MIN_S, UNIT_DEADLINE_FACTOR x the slowest unit of
# its stage that finished) is taken for stalled (a hung read, a wedged node): its worker is
# replaced and the unit runs again, as for a lost worker. A stage's first unit has no deadline.
UNIT_DEADLINE_MIN_S = 600.0
UNIT_DEADLINE_FACTOR = 10.0


def storage_fault(error: BaseException) -> StorageError | None:
    """The StorageError that failed a remote call (its worker is fine), or None."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, StorageError) else None


class Pool:
    """A run's long-lived shard actors: started once and used by every stage, so each pays its
    process start, torch import and warm-up once per run rather than once per stage; grown when
    a stage needs more, replaced when lost, killed when the run ends (`close`).

    Work goes only to actors that have started: actors that cannot be placed yet (more workers
    than CPUs, or a cluster waiting for its autoscaler) hold no work hostage and join when they
    can. A unit whose actor or node is lost is run again on another actor (its outputs are
    idempotent), up to MAX_ATTEMPTS times."""

    def __init__(self, make_actor):
        self.make = make_actor
        self.starting: dict = {}  # readiness ref -> actor
        self.ready: list = []     # started and free
        self.failed_starts = 0
        self.reruns: dict[str, int] = {}  # stage -> units run again (lost worker, storage fault)

    def __len__(self) -> int:
        return len(self.starting) + len(self.ready)

    def grow(self, n: int) -> None:
        while len(self) < n:
            self._start()

    def _start(self) -> None:
        actor = self.make()
        self.starting[actor.__ray_ready__.remote()] = actor

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except RETRIABLE as e:
            self.failed_starts += 1
            if self.failed_starts > MAX_ATTEMPTS:  # e.g. its constructor fails every time
                raise VgrayError("shard workers fail to start: " + last_line(e)) from None
            log.warning("a shard worker was lost while starting (%s)", type(e).__name__)
            self._start()
            return
        self.ready.append(actor)

    def take(self, avoid: tuple = (), answer_s: float = 30.0):
        """A started actor for a call of its own (k-means, GloVe on CPU), off the `avoid` nodes;
        `give` it back, or `discard` it if it was lost. An actor that does not answer within
        `answer_s` (lost with its node) is discarded."""
        self.grow(1)
        while True:
            while not self.ready:
                [ref], _ = ray.wait(list(self.starting), num_returns=1)
                self._started(ref)
            actor = self.ready.pop(0)
            try:
                node = ray.get(actor.node.remote(), timeout=answer_s)
            except RETRIABLE + (ray.exceptions.GetTimeoutError,):
                self.discard(actor)
                continue
            if node not in avoid:
                return actor
            self.discard(actor)  # on a node found lost: it cannot be of use

    def one_per_node(self, answer_s: float = 30.0) -> list:
        """Started actors taken out of the pool, one on each node that has one (for calls that
        use every core of their node: GloVe fits of a sweep); `give` each back when done."""
        self.grow(1)
        while not self.ready:
            [ref], _ = ray.wait(list(self.starting), num_returns=1)
            self._started(ref)
        taken, nodes = [], set()
        for actor in list(self.ready):
            try:
                node = ray.get(actor.node.remote(), timeout=answer_s)
            except RETRIABLE + (ray.exceptions.GetTimeoutError,):
                self.ready.remove(actor)
                self.discard(actor)
                continue
            if node not in nodes:
                nodes.add(node)
                self.ready.remove(actor)
                taken.append(actor)
        return taken or [self.take()]

    def give(self, actor) -> None:
        self.ready.insert(0, actor)

    def discard(self, actor) -> None:
        """A lost actor: killed, and another one started in its place."""
        with contextlib.suppress(Exception):
            ray.kill(actor)
        self._start()

    def run(self, n: int, units: list[int], submit, on_done, extra: list | tuple = (),
            own: bool = True, stage: str = "", deadline: bool = True) -> list:
        """Every unit of a stage (submit(actor, k) for each k of `units`) on up to n actors of
        the pool, plus `extra` actors lent for this stage (the GPU worker, served first); without
        `own`, on the `extra` actors only (one taken from the pool replaces them if all are
        lost). on_done(k, result, finished) as each ends. Returns the extra actors not lost.
        With `deadline` (units of like size: shards, partitions), a stalled unit runs again."""
        self.grow(n)
        spare = list(extra)
        lent = {id(a) for a in spare}
        queue, attempts, inflight, finished = list(units), {}, {}, 0
        started, slowest = {}, None  # ref -> when it was submitted; the slowest finished unit

        def lost(actor, k, why: str) -> None:
            """The unit's worker is lost (or stalled): replaced, and the unit queued again."""
            attempts[k] = attempts.get(k, 1) + 1
            if attempts[k] > MAX_ATTEMPTS:
                raise VgrayError(f"{stage or 'a'} unit {k} failed {MAX_ATTEMPTS} times; "
                                 f"last: {why}")
            log.warning("%s unit %d lost (%s); running it again", stage, k, why)
            self.reruns[stage] = self.reruns.get(stage, 0) + 1
            if id(actor) in lent:
                lent.discard(id(actor))
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            else:
                self.discard(actor)
            queue.append(k)

        try:
            while queue or inflight:
                if queue and not own and not spare and not inflight:
                    spare.append(self.take())
                    lent.add(id(spare[-1]))
                while queue and (spare or (own and self.ready)):
                    actor = spare.pop() if spare else self.ready.pop()
                    k = queue.pop(0)
                    ref = submit(actor, k)
                    inflight[ref], started[ref] = (actor, k), time.monotonic()
                limit = (None if slowest is None or not inflight or not deadline else
                         max(UNIT_DEADLINE_MIN_S, UNIT_DEADLINE_FACTOR * slowest))
                timeout = None if limit is None else max(
                    0.1, min(started[r] for r in inflight) + limit - time.monotonic())
                ready, _ = ray.wait(list(inflight) + list(self.starting), num_returns=1,
                                    timeout=timeout)
                if not ready:  # a unit past its deadline
                    now = time.monotonic()
                    for ref in [r for r in inflight if now - started[r] >= limit]:
                        actor, k = inflight.pop(ref)
                        started.pop(ref)
                        lost(actor, k, f"no answer within {limit:.0f} s")
                    continue
                [ref] = ready
                if ref in self.starting:
                    self._started(ref)
                    continue
                actor, k = inflight.pop(ref)
                took = time.monotonic() - started.pop(ref)
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    fault = storage_fault(e)
                    if fault is None:
                        raise
                    # The storage failed past its own retries: the worker is fine, the unit
                    # is run again (its outputs are idempotent) after a pause.
                    attempts[k] = attempts.get(k, 1) + 1
                    if attempts[k] > MAX_ATTEMPTS:
                        raise StorageError(f"the storage kept failing ({MAX_ATTEMPTS} attempts "
                                           f"of {stage or 'a'} unit {k}): {fault}") from None
                    log.warning("%s unit %d met a storage fault (%s); running it again", stage,
                                k, fault)
                    self.reruns[stage] = self.reruns.get(stage, 0) + 1
                    (spare if id(actor) in lent else self.ready).append(actor)
                    time.sleep(min(30.0, 2.0 ** attempts[k]))
                    queue.append(k)
                    continue
                except RETRIABLE as e:
                    lost(actor, k, type(e).__name__)
                    continue
                (spare if id(actor) in lent else self.ready).append(actor)
                slowest = took if slowest is None else max(slowest, took)
                finished += 1
                on_done(k, stats, finished)
        finally:  # after a failure, actors still busy finish their call before the next one
            for actor, _ in inflight.values():
                (spare if id(actor) in lent else self.ready).append(actor)
        return spare

    def close(self) -> None:
        for actor in self.ready + list(self.starting.values()):
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.ready, self.starting = [], {}


def last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def on_one_actor(make_actor, plan: GpuPlan, call, what: str, echo, lost: list,
                 keep=None) -> dict:
    """call(actor) on the actor that make_actor(gpu, avoid) gives for each attempt: by default
    a fresh one, killed when done so that nothing stays on its node; keep(actor, ok), if given,
    decides instead what becomes of it (a long-lived worker is kept). The actor needs a `node()`
    method. Attempts lost with their node are appended to `lost` as here() records (their time
    on the node is paid for too).

    With plan.request the actor asks for a GPU and waits plan.wait_s to be placed; then it runs
    on CPU (--device auto) or fails (cuda). A lost worker or node (a preempted spot GPU) runs it
    again on another actor, up to MAX_ATTEMPTS times, never on a node already lost: Ray may
    take seconds to notice a node is gone and would otherwise place the retry there."""
    def kill(actor, ok):
        ray.kill(actor)

    keep = keep or kill
    gpu, losses, avoid = plan.request, 0, []
    while True:
        actor, node, ok = make_actor(1 if gpu else 0, tuple(avoid)), None, False
        try:
            if gpu:
                ready, _ = ray.wait([actor.__ray_ready__.remote()], timeout=plan.wait_s)
                if not ready:
                    message = (f"no GPU node joined within {plan.wait_s:.0f} s"
                               + (f" ({plan.where})" if plan.where else ""))
                    if plan.required:
                        raise VgrayError(f"--device cuda, but {message}")
                    log.warning("%s: %s; running on CPU", what, message)
                    gpu = False
                    continue
            node, placed = ray.get(actor.node.remote()), time.time()
            result = call(actor)
            ok = True
            return result
        except LOST_WORKER as e:
            losses += 1
            if node:
                lost.append({"node": node, **node_facts(node), "span": [placed, time.time()]})
                if not node_alive(node):
                    avoid.append(node)
            if losses >= MAX_ATTEMPTS:
                raise VgrayError(f"{what} failed {losses} times; last: {type(e).__name__}") from e
            echo(f"{what}: its worker or node was lost ({type(e).__name__}); running it again")
        finally:
            keep(actor, ok)
