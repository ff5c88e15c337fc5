"""One invocation's bookkeeping over one output directory: its lock, its manifest and stage
records, its workers (the pool, the GPU worker) and the calls made on them.

A Job knows nothing of what a command computes: the stages (stages.py) hand it units to run and
figures to record, and `train`, `sweep`, `assign` and `embed` say which stages run in which order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time

import numpy as np
import ray

from .. import __version__
from ..files import fs, s3
from ..clusters.autoscale import Capacity, capacity
from ..clusters.cluster import avoiding, joining, node_usage, usage_by_type
from ..clusters.cluster import connect as connect_ray
from ..config import TrainConfig
from ..clusters.demand import Demand, GpuPlan, plan_gpu
from ..errors import StorageError, VgrayError
from ..clusters.live import get_with_progress, start_board
from ..rundir.manifest import Invocation, Manifest, Placement, Stage
from ..rundir.manifest import stage_record as record_of
from .pool import Pool, on_one_actor
from ..rundir.store import RunDir, RunLock
from .units import Fit
from .worker import GPU_WORKER, ShardWorker


def versions() -> dict:
    """Versions of what made a RUN (torch's read from its metadata: the driver never imports
    torch, which would cost it seconds at every start)."""
    import importlib.metadata

    import pyarrow

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"vgray": __version__, "vgray_location": os.path.dirname(os.path.abspath(__file__)),
            "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch_version, "numpy": np.__version__, "pyarrow": pyarrow.__version__}


LOCK = ".lock"


def out_state(out: str, features: str | None = None) -> str:
    """What --out is before a command writes to it: "absent", "empty" (nothing in it but a lock
    a killed vgray left) or "run" (it holds a vgray manifest.json). FEATURES itself, a directory
    inside FEATURES, a file, or a non-empty directory that is no vgray RUN are refused in one
    line, before anything is written or Ray starts."""
    root = fs.normalize(out)
    if features is not None:
        inside = _inside(root, fs.normalize(features))
        if inside is not None:
            raise VgrayError(f"--out {root} is {inside}; a RUN needs a directory of its own "
                             "(for example next to FEATURES)")
    if not fs.is_uri(root) and os.path.lexists(root) and not os.path.isdir(root):
        raise VgrayError(f"--out {root} is a file, not a directory")
    listed = fs.listdir(root)  # locally every entry; on object storage the files at the top
    names = [n for n in listed if n != LOCK]
    if "manifest.json" in names:
        return "run"
    if names or (fs.is_uri(root) and LOCK not in listed and fs.isdir(root)):
        raise VgrayError(f"--out {root} is not empty and is no vgray RUN (it has no "
                         "manifest.json); use a new or empty directory")
    return "empty" if fs.isdir(root) else "absent"


def _inside(root: str, features: str) -> str | None:
    """Whether the output directory is FEATURES or inside it (locally through symlinks too)."""
    if not fs.is_uri(root) and not fs.is_uri(features):
        root, features = os.path.realpath(root), os.path.realpath(features)
    if root.rstrip("/") == features.rstrip("/"):
        return "FEATURES"
    if root.startswith(features.rstrip("/") + "/"):
        return "inside FEATURES"
    return None


class Job:
    """One invocation over one output directory: lock, manifest, stage records, workers.

    Entering it and `open` need no cluster: --out is guarded, the lock taken and the settings
    compared first, so that a refusal is instant; `connect` then starts (or joins) Ray. A new
    RUN whose command is refused or fails before any stage past the scan is done is taken away
    again: --out is left as it was found (absent or empty), and the corrected command starts
    afresh. A fault of the machinery (storage, workers) or an interrupt leaves it to resume."""

    def __init__(self, out: str, echo=None, features: str | None = None):
        self.run = RunDir(out)
        self.features = features
        self._found = "run"  # what --out was (out_state); set on entering
        self._fresh = False  # this invocation made the manifest (see __exit__)
        self.echo = echo or (lambda message: None)
        self.t0 = time.perf_counter()
        self.work: dict[str, int] = {}
        self.manifest = Manifest("")  # open() reads or starts it
        self.lock = RunLock(self.run.root)
        self._board = None
        self.capacity: Capacity | None = None
        self.demand: Demand | None = None
        self.gpu = GpuPlan(False, False, 0.0)  # see plan_gpu; assign and embed use no GPU
        self.hold_gpu = False  # a GPU stage is still to come: keep asking for its node
        self.pool: Pool | None = None  # the run's shard workers (see start_workers)
        self.gpu_worker = None  # the worker given a GPU, kept from k-means to GloVe
        self.gpu_computes = False  # ... and its torch can use that GPU (it then assigns too)
        self._make_worker = None

    def board(self):
        """The actor that a long remote task posts its progress to: started on first use (or
        early, see start_workers), emptied for each task."""
        if self._board is None:
            self._board = start_board()
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._board.clear.remote(), timeout=10)
        return self._board

    def __enter__(self) -> "Job":
        self._found = out_state(self.run.root, self.features)
        return self

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

    def __exit__(self, kind, *exc) -> None:
        self.release_gpu_worker()
        if self.pool is not None:
            self.pool.close()
        if self.demand is not None:
            self.demand.clear()  # every node may go back once idle
        if self._board is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._board)
        self.lock.release()
        if kind is not None and self._undo(kind):
            self._take_away()

    def _undo(self, kind: type) -> bool:
        """A new RUN refused or failed for what the command asked (not a fault of the machinery,
        not an interrupt) before any stage past the scan was done."""
        if not self._fresh or not issubclass(kind, VgrayError) or issubclass(kind, StorageError):
            return False
        return not any(stage.done for name, stage in self.manifest.stages.items()
                       if name != "scan")

    def _take_away(self) -> None:
        """--out as it was found: absent, or the empty directory it was."""
        root = self.run.root
        with contextlib.suppress(Exception):  # never hides the error being reported
            if self._found == "empty" and not fs.is_uri(root):
                for name in os.listdir(root):
                    path = os.path.join(root, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        fs.remove_tree(path)
                    else:
                        os.remove(path)
            else:
                fs.remove_tree(root)

    # --- manifest -------------------------------------------------------------------------
    def open(self, header: Manifest) -> None:
        """Start or resume the RUN `header` describes (manifest.Manifest.for_train, for_sweep,
        for_apply): a RUN in use by another vgray, or made with other result-changing settings
        (header.settings), is refused."""
        self.lock.acquire()
        old = self.run.read_manifest()
        self._fresh = old is None
        if old is not None:
            made = old.settings_with_added()
            for key, value in header.settings.items():
                before = made.get(key)
                if before != value:
                    flag = "--" + key.replace("_", "-")
                    made = f"with {flag} {before!r}" if before is not None else f"without {flag}"
                    asks = f"for {value!r}" if value is not None else f"for no {flag}"
                    raise VgrayError(f"{self.run.root} was made {made}, this run asks {asks}; "
                                     "use another --out (or delete it to start over)")
            old.resume_as(header)
            self.manifest = old
        else:
            self.manifest = header
        self.manifest.retries = {}  # this invocation's, per stage (see run_units)
        self.manifest.versions = versions()
        self.manifest.status = "running"  # first saved once FEATURES has been scanned

    def save(self) -> None:
        self.run.write_manifest(self.manifest)

    def stage_done(self, name: str) -> bool:
        return self.manifest.stage_done(name)

    def invalidate(self, *paths: str) -> None:
        """Remove outputs (and markers) made from state that is being recomputed."""
        for path in paths:
            fs.remove_tree(path)

    def finish_stage(self, name: str, seconds: float, where: list | None = None,
                     **figures) -> None:
        """Record a finished stage; `where` is [(kind of work, here() of it)] for its nodes."""
        self.manifest.stages[name] = stage_record(seconds, where, **figures)
        self.save()

    def complete(self, stages: list[Stage]) -> float:
        """Close the manifest of a finished invocation: its status, time and work, the
        node-seconds per node type of `stages`, what the cluster was and what was asked of it;
        returns the invocation's seconds."""
        seconds = time.perf_counter() - self.t0
        self.manifest.status = "complete"
        self.manifest.last_invocation = Invocation(round(seconds, 3), dict(self.work))
        # requests this driver sent again (the scan's header reads, the manifest, listings)
        self.manifest.retries_of("driver").requests = s3.retries()
        self.demand.clear()  # the run's work is over: every node may go back once idle
        self.manifest.placement = Placement.of(
            usage_by_type([s.nodes for s in stages]), self.capacity.to_dict(),
            dataclasses.asdict(self.gpu), self.demand.history)
        self.save()
        return seconds

    # --- the workers ----------------------------------------------------------------------
    def start_workers(self, cfg: TrainConfig, gpu_now: bool = False, train: bool = False) -> None:
        """The run's shard workers, started as the first stage needs them and kept to the end.
        With `gpu_now` and a GPU plan, the GPU worker is asked for at once, so that its node
        boots, its process starts and torch loads while clips are sampled; with `train` (k-means
        or GloVe to come), the progress board starts now too, not when k-means waits for it."""
        def make(gpus: int = 0, avoid: tuple = ()):
            if gpus:
                return ShardWorker.options(**GPU_WORKER, **avoiding(avoid)).remote(
                    cfg.streams, cfg.batch_clips, cfg.device, None, time.time())
            return ShardWorker.options(**avoiding(avoid)).remote(
                cfg.streams, cfg.batch_clips, "cpu", None, time.time())

        self._make_worker = make
        self.pool = Pool(make)
        if gpu_now and self.gpu.request and self.gpu_worker is None:
            self.gpu_worker = make(1)
        if train and self._board is None:
            self._board = start_board()

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

    def workers(self, stage: str, requested: int | None, units: int) -> int:
        """Workers for `units` units: --workers, else as many as the work needs up to the CPUs
        the cluster has or its autoscaler can add; the autoscaler is asked for them."""
        n = max(1, min(requested or int(self.capacity.cpus()), units))
        asked = self.demand.ask(stage, cpus=max(n, len(self.pool)), gpu=self.hold_gpu)
        if not requested:  # fewer where autoscaler v2 cannot meet them all
            n = max(1, min(n, asked))
        return n

    def run_units(self, stage: str, requested: int | None, units: list[int], submit, on_done, *,
                  gpu: bool = False) -> None:
        """Every unit of a stage on the pool (grown to what the stage needs); with `gpu`, the
        GPU worker takes units too where its GPU computes."""
        n = self.workers(stage, requested, len(units))
        lent = [self.gpu_worker] if gpu and self.gpu_computes and self.gpu_worker else []
        retries = self.manifest.retries_of(stage)
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
            return self.pool.take(avoid)  # alive, and off the nodes found lost

        def keep(actor, ok):
            if actor is self.gpu_worker:
                if not ok:
                    self.release_gpu_worker()
            elif ok:
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


def stage_record(seconds: float, where: list | None = None, **figures) -> Stage:
    """A finished stage as the manifest records it; `where` is [(kind of work, here() of it)]."""
    nodes = None if where is None else node_usage([(kind, w) for kind, w in where if w])
    return record_of(seconds, nodes, **figures)
