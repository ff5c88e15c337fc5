"""One invocation's record over one output directory: its lock, its manifest and stage records,
the work it did; and its workers (workers.py), which it holds but does not run.

A Job knows nothing of what a command computes: the stages (stages.py) hand its workers units to
run and return what they found, the commands record it (`count`, `finish_stage`), and `train`,
`sweep`, `assign` and `embed` say which stages run in which order.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

import numpy as np
import ray

from .. import __version__
from ..files import fs, s3
from ..clusters.cluster import node_usage
from ..errors import StorageError, VgrayError
from ..rundir.manifest import Invocation, Manifest, Stage
from ..rundir.manifest import stage_record as record_of
from ..rundir.store import RunDir, RunLock
from .workers import Workers


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
    """One invocation over one output directory: lock, manifest, stage records, work counts,
    and its `workers`.

    Entering it and `open` need no cluster: --out is guarded, the lock taken and the settings
    compared first, so that a refusal is instant; `workers.connect` then starts (or joins)
    Ray. A new
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
        self.workers = Workers(self.echo)  # started by workers.connect(), closed on exit

    def __enter__(self) -> "Job":
        self._found = out_state(self.run.root, self.features)
        return self

    def __exit__(self, kind, *exc) -> None:
        self.workers.close()
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

    def count(self, kind: str, n: int = 1) -> None:
        """`n` more units of work of `kind` done by this invocation (0: the kind is counted, and
        none was needed); the invocation's counts go to the manifest and the summary."""
        self.work[kind] = self.work.get(kind, 0) + n

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
        self.manifest.placement = self.workers.finish(stages)
        self.save()
        return seconds

    def run_units(self, stage: str, requested: int | None, units: list[int], submit, on_done, *,
                  gpu: bool = False) -> None:
        """Every unit of a stage on the workers (Workers.run_units), what they sent again
        recorded in the manifest as this invocation's retries of the stage."""
        self.workers.run_units(stage, requested, units, submit, on_done,
                               retries=self.manifest.retries_of(stage), gpu=gpu)


def stage_record(seconds: float, where: list | None = None, **figures) -> Stage:
    """A finished stage as the manifest records it; `where` is [(kind of work, here() of it)]."""
    nodes = None if where is None else node_usage([(kind, w) for kind, w in where if w])
    return record_of(seconds, nodes, **figures)
