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

from ..clusters.cluster import node_alive, node_facts
from ..clusters.demand import GpuPlan
from ..errors import StorageError, VgrayError

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
        self.add(self.make())

    def add(self, actor):
        """An actor made elsewhere joins the pool, as one it started; returns it."""
        self.starting[actor.__ray_ready__.remote()] = actor
        return actor

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

    def take(self, avoid: tuple = (), answer_s: float = 30.0, prefer=None):
        """A started actor for a call of its own (k-means, GloVe on CPU), off the `avoid` nodes:
        `prefer` if it is free (the one that has torch loaded already); `give` it back, or
        `discard` it if it was lost. An actor that does not answer within `answer_s` (lost with
        its node) is discarded."""
        if prefer is not None and prefer in self.ready:
            self.ready.remove(prefer)
            self.ready.insert(0, prefer)
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

    def run(self, n: int, units: list[int], submit, on_done, *, extra: list | tuple = (),
            own: bool = True, stage: str = "", deadline: bool = True) -> list:
        """Every unit of a stage (submit(actor, k) for each k of `units`) on up to n actors of
        the pool, plus `extra` actors lent for this stage (the GPU worker, served first); without
        `own`, on the `extra` actors only (one taken from the pool replaces them if all are
        lost). on_done(k, result, finished) as each ends. Returns the extra actors not lost.
        With `deadline` (units of like size: shards, partitions), a stalled unit runs again."""
        self.grow(n)
        crew = Crew(self, extra, own=own)
        return StageRun(crew, units, submit, on_done, retries=Retries(stage, self.reruns),
                        deadline=Deadline(deadline)).run()

    def close(self) -> None:
        for actor in self.ready + list(self.starting.values()):
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.ready, self.starting = [], {}


class Crew:
    """The actors a stage's units run on: those lent for the stage (served first; a lost one is
    killed, not replaced) and, if the stage has its `own`, the pool's free ones."""

    def __init__(self, pool: Pool, extra: list | tuple, *, own: bool):
        self.pool, self.own = pool, own
        self.spare = list(extra)
        self.lent = {id(a) for a in self.spare}

    def has_free(self) -> bool:
        """Whether an actor can take a unit now."""
        return bool(self.spare or (self.own and self.pool.ready))

    def pop_free(self):
        return self.spare.pop() if self.spare else self.pool.ready.pop()

    def borrow(self) -> None:
        """Without actors of its own and with every lent one lost: one taken from the pool."""
        if not self.own and not self.spare:
            self.spare.append(self.pool.take())
            self.lent.add(id(self.spare[-1]))

    def back(self, actor) -> None:
        """An actor that is free again."""
        (self.spare if id(actor) in self.lent else self.pool.ready).append(actor)

    def replace(self, actor) -> None:
        """A lost (or stalled) actor: killed; the pool's own is replaced, a lent one is not."""
        if id(actor) in self.lent:
            self.lent.discard(id(actor))
            with contextlib.suppress(Exception):
                ray.kill(actor)
        else:
            self.pool.discard(actor)


class Retries:
    """How many times each unit of a stage has run, and when it may run again: after a lost
    worker or a storage fault, up to MAX_ATTEMPTS times in all."""

    def __init__(self, stage: str, reruns: dict[str, int]):
        self.stage, self.reruns = stage, reruns
        self.attempts: dict[int, int] = {}

    def again(self, k: int) -> int:
        """Unit k's next attempt, counted."""
        self.attempts[k] = self.attempts.get(k, 1) + 1
        return self.attempts[k]

    def after_lost(self, k: int, why: str) -> None:
        """Unit k's worker is lost (or stalled): it runs again, unless it has run too often."""
        if self.again(k) > MAX_ATTEMPTS:
            raise VgrayError(f"{self.stage or 'a'} unit {k} failed {MAX_ATTEMPTS} times; "
                             f"last: {why}")
        log.warning("%s unit %d lost (%s); running it again", self.stage, k, why)
        self.reruns[self.stage] = self.reruns.get(self.stage, 0) + 1

    def after_storage_fault(self, k: int, fault: StorageError) -> float:
        """Unit k met a storage fault past the storage's own retries: the seconds to wait before
        it runs again (growing with each attempt), unless it has run too often."""
        attempt = self.again(k)
        if attempt > MAX_ATTEMPTS:
            raise StorageError(f"the storage kept failing ({MAX_ATTEMPTS} attempts "
                               f"of {self.stage or 'a'} unit {k}): {fault}") from None
        log.warning("%s unit %d met a storage fault (%s); running it again", self.stage, k, fault)
        self.reruns[self.stage] = self.reruns.get(self.stage, 0) + 1
        return min(30.0, 2.0 ** attempt)


class Deadline:
    """When a stage's units are taken for stalled: past max(UNIT_DEADLINE_MIN_S,
    UNIT_DEADLINE_FACTOR x the slowest unit that finished); none before a first one finishes,
    none at all if not `enabled` (units of unlike size)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.started: dict = {}  # ref -> when it was submitted
        self.slowest: float | None = None

    def submitted(self, ref) -> None:
        self.started[ref] = time.monotonic()

    def ended(self, ref) -> float:
        """The seconds the unit of `ref` took."""
        return time.monotonic() - self.started.pop(ref)

    def finished(self, took: float) -> None:
        self.slowest = took if self.slowest is None else max(self.slowest, took)

    def limit(self) -> float | None:
        if self.slowest is None or not self.started or not self.enabled:
            return None
        return max(UNIT_DEADLINE_MIN_S, UNIT_DEADLINE_FACTOR * self.slowest)

    def timeout(self) -> float | None:
        """How long to wait for the next answer before the earliest unit is past its limit."""
        limit = self.limit()
        if limit is None:
            return None
        return max(0.1, min(self.started.values()) + limit - time.monotonic())

    def overdue(self) -> list:
        """The refs past the limit, forgotten here."""
        limit, now = self.limit(), time.monotonic()
        late = [r for r in self.started if now - self.started[r] >= limit]
        for ref in late:
            self.started.pop(ref)
        return late


class StageRun:
    """Every unit of one stage on a crew (see Pool.run): submits units to free actors, waits for
    the first answer, and hands each fault to its policy (a lost worker, a storage fault, a
    stall)."""

    def __init__(self, crew: Crew, units: list[int], submit, on_done, *, retries: Retries,
                 deadline: Deadline):
        self.crew, self.pool, self.submit, self.on_done = crew, crew.pool, submit, on_done
        self.retries, self.deadline = retries, deadline
        self.queue, self.inflight, self.finished = list(units), {}, 0  # inflight: ref -> (actor, k)

    def run(self) -> list:
        """Returns the lent actors not lost."""
        try:
            while self.queue or self.inflight:
                self.fill()
                ready, _ = ray.wait(list(self.inflight) + list(self.pool.starting),
                                    num_returns=1, timeout=self.deadline.timeout())
                if not ready:
                    self.stalled()
                elif ready[0] in self.pool.starting:
                    self.pool._started(ready[0])
                else:
                    self.ended(ready[0])
        finally:  # after a failure, actors still busy finish their call before the next one
            for actor, _ in self.inflight.values():
                self.crew.back(actor)
        return self.crew.spare

    def fill(self) -> None:
        """A unit of the queue to each free actor."""
        if self.queue and not self.inflight:
            self.crew.borrow()
        while self.queue and self.crew.has_free():
            actor = self.crew.pop_free()
            k = self.queue.pop(0)
            ref = self.submit(actor, k)
            self.inflight[ref] = (actor, k)
            self.deadline.submitted(ref)

    def ended(self, ref) -> None:
        actor, k = self.inflight.pop(ref)
        took = self.deadline.ended(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            fault = storage_fault(e)
            if fault is None:
                raise
            self.storage_fault(actor, k, fault)
            return
        except RETRIABLE as e:
            self.lost(actor, k, type(e).__name__)
            return
        self.crew.back(actor)
        self.deadline.finished(took)
        self.finished += 1
        self.on_done(k, result, self.finished)

    def lost(self, actor, k: int, why: str) -> None:
        """The unit's worker is lost (or stalled): replaced, and the unit queued again."""
        self.retries.after_lost(k, why)
        self.crew.replace(actor)
        self.queue.append(k)

    def storage_fault(self, actor, k: int, fault: StorageError) -> None:
        """The storage failed past its own retries: the worker is fine, the unit is run again
        (its outputs are idempotent) after a pause."""
        pause = self.retries.after_storage_fault(k, fault)
        self.crew.back(actor)
        time.sleep(pause)
        self.queue.append(k)

    def stalled(self) -> None:
        """No answer in time: each unit past its deadline runs again on another worker."""
        limit = self.deadline.limit()
        for ref in self.deadline.overdue():
            actor, k = self.inflight.pop(ref)
            self.lost(actor, k, f"no answer within {limit:.0f} s")


def last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def on_one_actor(make_actor, plan: GpuPlan, call, *, what: str, echo, lost: list,
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
