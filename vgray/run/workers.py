"""One invocation's workers: what the cluster has and was asked for, the GPU plan, the pool of
shard workers, the GPU worker and the progress board, and the calls made on them.

The Workers know nothing of the RUN they work for: the Job (job.py) holds its record and hands
them what a stage records of its retries; the stages (stages.py) hand them units to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import ray

from ..clusters.autoscale import Capacity, capacity
from ..clusters.cluster import avoiding, joining, usage_by_type
from ..clusters.cluster import connect as connect_ray
from ..clusters.demand import Demand, GpuPlan, plan_gpu
from ..clusters.live import driver_board, get_with_progress
from ..config import TrainConfig
from ..rundir.manifest import Placement, Retries, Stage
from .pool import Pool, on_one_actor
from .units import Fit
from .worker import GPU_WORKER, ShardWorker


class Workers:
    """The Ray side of one invocation, started by `connect` (a Job makes its Workers before Ray
    starts: refusals need no cluster) and closed with the Job."""

    def __init__(self, echo):
        self.echo = echo
        self.capacity: Capacity | None = None
        self.demand: Demand | None = None
        self.gpu = GpuPlan(False, False, 0.0)  # see plan_gpu; assign and embed use no GPU
        self.hold_gpu = False  # a GPU stage is still to come: keep asking for its node
        self.pool: Pool | None = None  # the run's shard workers (see start)
        self.gpu_worker = None  # the worker given a GPU, kept from k-means to GloVe
        self.gpu_computes = False  # ... and its torch can use that GPU (it then assigns too)
        self._make_worker = None
        self._trainer = None  # the shard worker that ran the last k-means or GloVe

    def connect(self) -> None:
        """Ray, once the checks that need no cluster have passed: what it has and can grow to.
        Starting Ray takes seconds: a line says so before, and what it found after."""
        t, doing = time.perf_counter(), joining()
        if doing:
            self.echo(f"ray: {doing}…")
        connect_ray()
        self.capacity = capacity()
        self.demand = Demand(self.capacity, self.echo)
        if doing:
            self.echo(f"ray: {self.capacity.describe_now()} ({time.perf_counter() - t:.1f} s)")
        for note in self.capacity.notes:
            self.echo(f"ray: {note}")

    def close(self) -> None:
        """Every worker gone, every node free to go back once idle."""
        self.release_gpu_worker()
        if self.pool is not None:
            self.pool.close()
        if self.demand is not None:
            self.demand.clear()  # every node may go back once idle
        # The board is the driver's, kept for its next run (live.driver_board).

    def board(self):
        """The actor that a long remote task posts its progress to (the driver's: see
        live.driver_board), emptied for each task."""
        return driver_board()

    def start(self, cfg: TrainConfig, *, gpu_now: bool = False, train: bool = False) -> None:
        """The run's shard workers, started as the first stage needs them and kept to the end.
        With `gpu_now` and a GPU plan, the GPU worker is asked for at once, so that its node
        boots, its process starts and torch loads while clips are sampled; with `train` (k-means
        or GloVe to come), the first shard worker (meant to fit them) and the progress board
        start now too, not when k-means waits for them."""
        def make(gpus: int = 0, avoid: tuple = (), torch_now: bool = False):
            if gpus:
                return ShardWorker.options(**GPU_WORKER, **avoiding(avoid)).remote(
                    cfg.streams, cfg.batch_clips, cfg.device, None, time.time())
            return ShardWorker.options(**avoiding(avoid)).remote(
                cfg.streams, cfg.batch_clips, "cpu", None, time.time(), torch_now=torch_now)

        self._make_worker = make
        self.pool = Pool(make)
        if gpu_now and self.gpu.request and self.gpu_worker is None:
            self.gpu_worker = make(1)
        if train and not self.gpu.request:
            # The first worker is the one k-means and GloVe prefer: its torch loads while it
            # scans. The others never import it (worker.py).
            self._trainer = self.pool.add(make(torch_now=True))
        if train:
            driver_board()  # its process starts now, not when k-means waits for it

    def plan_gpu(self, cfg: TrainConfig, *, gpu_stages_left: bool) -> None:
        """The GPU plan of a command that trains (it fails here if --device cuda cannot be had).
        While a GPU stage is left, the run keeps asking for a GPU node: it boots while FEATURES
        is scanned and clips are sampled, and is not given back between k-means and GloVe."""
        self.gpu = plan_gpu(cfg.device, self.capacity, cfg.gpu_wait, self.demand)
        if self.gpu.note:
            self.echo(f"gpu: {self.gpu.note}")
        self.hold_gpu = self.gpu.request and gpu_stages_left

    def gpu_stages_over(self) -> None:
        """No GPU node is asked for any more, and nothing of vgray stays on one."""
        self.hold_gpu = False
        self.release_gpu_worker()

    def release_gpu_worker(self) -> None:
        """Nothing of vgray stays on the GPU node once the GPU stages are over."""
        if self.gpu_worker is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.gpu_worker)
        self.gpu_worker, self.gpu_computes = None, False

    def ask_for_trainer(self, stage: str) -> None:
        """While k-means or GloVe runs: the pool's CPUs, and the GPU where the plan has one."""
        self.demand.ask(stage, cpus=len(self.pool), gpu=self.gpu.request)

    def size(self, stage: str, requested: int | None, units: int) -> int:
        """Workers for `units` units: --workers, else as many as the work needs up to the CPUs
        the cluster has or its autoscaler can add; the autoscaler is asked for them."""
        n = max(1, min(requested or int(self.capacity.cpus()), units))
        asked = self.demand.ask(stage, cpus=max(n, len(self.pool)), gpu=self.hold_gpu)
        if not requested:  # fewer where autoscaler v2 cannot meet them all
            n = max(1, min(n, asked))
        return n

    def run_units(self, stage: str, requested: int | None, units: list[int], submit, on_done, *,
                  retries: Retries, gpu: bool = False) -> None:
        """Every unit of a stage on the pool (grown to what the stage needs); with `gpu`, the
        GPU worker takes units too where its GPU computes. What was sent again is added to
        `retries`."""
        n = self.size(stage, requested, len(units))
        lent = [self.gpu_worker] if gpu and self.gpu_computes and self.gpu_worker else []
        reruns = self.pool.reruns.get(stage, 0)

        def done(k, result, finished):
            first = result[0] if isinstance(result, list) and result else result
            retries.requests += getattr(first, "retries", 0)
            on_done(k, result, finished)

        try:
            if not self.pool.run(n, units, submit, done, extra=lent, stage=stage) and lent:
                self.gpu_worker, self.gpu_computes = None, False  # lost: GloVe asks for another
        finally:
            retries.units += self.pool.reruns.get(stage, 0) - reruns

    def on_trainer(self, what: str, call, where: list) -> Fit:
        """call(actor) for k-means or GloVe: on the GPU worker where the GPU plan says so (it is
        kept for the next GPU stage), else on a shard worker that then uses every core of its
        node (see pool.on_one_actor for the wait and the retries); its node and those of
        attempts lost with their node are added to `where`."""
        def make(gpus, avoid):
            if gpus:
                if self.gpu_worker is None or avoid:
                    self.release_gpu_worker()
                    self.gpu_worker = self._make_worker(1, avoid)
                return self.gpu_worker
            # alive, off the nodes found lost, and the last trainer where it is free: a CPU
            # worker imports torch only for k-means or GloVe (worker.py), once
            return self.pool.take(avoid, prefer=self._trainer)

        def keep(actor, ok):
            if actor is self.gpu_worker:
                if not ok:
                    self.release_gpu_worker()
            elif ok:
                self._trainer = actor
                self.pool.give(actor)
            else:
                self.pool.discard(actor)

        lost = []
        try:
            fit = on_one_actor(make, self.gpu, call, what=what, echo=self.echo, lost=lost, keep=keep)
        finally:
            where += [(f"{what} (lost)", w) for w in lost]
        where.append((what, fit.where))
        if self.gpu_worker is not None and fit.device == "cuda":
            self.gpu_computes = True
        return fit

    def fit_glove(self, root: str, cfg: TrainConfig, where: list) -> Fit:
        """GloVe on the counts of the RUN at `root` (writes its glove/), on the trainer that
        on_trainer picks, its epochs shown live."""
        def fit(actor):
            board = self.board()
            return get_with_progress(actor.glove.remote(root, cfg.to_dict(), board), board,
                                     self.echo)

        return self.on_trainer("glove", fit, where)

    def finish(self, stages: list[Stage]) -> Placement:
        """The run's work is over: every node may go back once idle. Returns where `stages` ran
        (node-seconds per node type), what the cluster was and what was asked of it."""
        self.demand.clear()
        return Placement.of(usage_by_type([s.nodes for s in stages]), self.capacity.to_dict(),
                            dataclasses.asdict(self.gpu), self.demand.history)
