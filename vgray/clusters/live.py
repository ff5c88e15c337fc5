"""Live progress from inside a long remote task (k-means seeding and iterations, GloVe epochs).

The task reports through a `Reporter` to a small `Board` actor (at most every few tenths of a
second); the driver polls the board while it waits for the task's result and draws each phase
with `Progress`, so a terminal sees the line move and a log gets throttled lines, as for the
stages that run on many workers.
"""

from __future__ import annotations

import contextlib
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..progress import Progress

POLL_SECONDS = 0.25


@ray.remote(num_cpus=0, max_restarts=-1)
class Board:
    """The latest (phase, done, total, unit, note, seconds into the phase) a task reported for each of its phases, in the
    order the phases began (so the end of a short phase is still shown); one per driver, emptied
    before each task (driver_board)."""

    def __init__(self):
        self._states = {}

    def post(self, state: tuple) -> None:
        self._states[state[0]] = state

    def read(self) -> list:
        return list(self._states.values())

    def clear(self) -> None:
        self._states = {}


class Reporter:
    """Called inside the task as report(phase, done, total, unit, note).

    Posts to the board when a phase starts or ends and otherwise at most every `every` seconds;
    posting never waits for the board. With no board it does nothing (local use, tests)."""

    def __init__(self, board=None, every: float = POLL_SECONDS, clock=time.monotonic):
        self.board, self.every, self.clock = board, every, clock
        self.phase, self.last, self.began = None, -float("inf"), 0.0
        self.posted, self._pending = 0, None

    def __call__(self, phase: str, done: int, total: int, unit: str, note: str = "") -> None:
        if self.board is None:
            return
        now = self.clock()
        if phase != self.phase:
            self.began = now
        if phase != self.phase or done >= total or now - self.last >= self.every:
            self._pending = self.board.post.remote(
                (phase, int(done), int(total), unit, note, now - self.began))
            self.phase, self.last = phase, now
            self.posted += 1

    def flush(self) -> None:
        """Wait until the board holds the last post (call before the task returns, so that the
        driver's final read sees the final state)."""
        if self._pending is not None:
            with contextlib.suppress(ray.exceptions.RayError):  # progress is never worth failing for
                ray.get(self._pending, timeout=10)
            self._pending = None


_kept: dict = {}  # this driver's Ray session -> its Board, see driver_board


def driver_board():
    """This driver's Board, emptied: one per Ray session of the driver, kept from one run to the
    next. A driver that trains again (the Python API, a notebook, the tests) reuses it: it holds
    no CPU, and each new one cost a process start (~0.8 CPU-seconds). It ends with the driver, as
    every actor it owns; one that was lost is started again. The session is told by the
    driver's node id and job id together (job ids start again at 1 in every Ray session)."""
    try:
        context = ray.get_runtime_context()
        session = (context.get_node_id(), context.get_job_id())
    except Exception:  # a client without a node of its own: a board of its own
        session = None
    board = _kept.get(session)
    if board is not None:
        try:
            ray.get(board.clear.remote(), timeout=10)
            return board
        except Exception:  # lost, or restarting with its node: progress is never worth failing for
            pass
    board = start_board()
    _kept.clear()  # a board of an earlier Ray session is gone with it
    if session is not None:
        _kept[session] = board
    return board


def start_board():
    """A Board on the driver's node where possible: a worker node that is lost (the autoscaler
    or a failure) takes no progress with it."""
    try:
        node = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(node, soft=True)
    except Exception:  # a client without a node of its own
        return Board.remote()
    return Board.options(scheduling_strategy=strategy).remote()


def get_with_progress(ref, board, echo, poll: float = POLL_SECONDS):
    """ray.get(ref), drawing what the task posts to `board` meanwhile."""
    progress, phases = None, []

    def read():
        try:
            return ray.get(board.read.remote(), timeout=10)
        except ray.exceptions.RayError:  # a board that is restarting or lost: show nothing
            return []

    def draw():
        nonlocal progress
        for name, done, total, unit, note, seconds in read():
            if name in phases and name != phases[-1]:
                continue  # a phase that was over at an earlier read
            if not phases or name != phases[-1]:
                if progress is not None:
                    progress.close()
                progress = Progress(echo, name, total, unit)
                phases.append(name)
            progress.set(done, note, seconds)

    try:
        while True:
            ready, _ = ray.wait([ref], timeout=poll)
            if ready:
                result = ray.get(ref)  # raises the task's error, if any
                draw()
                return result
            draw()
    finally:
        if progress is not None:
            progress.close()
