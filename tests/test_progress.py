"""Progress lines: done of total, rate, ETA; in place on a terminal, throttled in logs."""

import io
import os
import time

import numpy as np
import pytest

from vgray.progress import Progress

from helpers import shared_ray


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_lines_are_throttled_and_the_last_one_shown_after_them():
    clock, lines = Clock(), []
    p = Progress(lines.append, "assign", 1000, "clips", tty=False, every=10, clock=clock)
    for _ in range(9):
        clock.now += 2
        p.advance(100)
    assert lines == ["assign: 500/1,000 clips (50%), 50 clips/s, ETA 10 s"]  # at 10 s
    clock.now += 2
    p.advance(100)
    assert lines[-1] == "assign: 1,000/1,000 clips (100%), 50 clips/s"


def test_a_stage_over_before_the_first_log_line_prints_nothing():
    clock, lines = Clock(), []
    p = Progress(lines.append, "scan", 4, "videos", tty=False, every=10, clock=clock)
    for _ in range(4):
        clock.now += 1
        p.advance(1)
    assert lines == []
    p = Progress(lines.append, "scan", 4, "videos", tty=False, every=0, clock=clock)
    p.advance(4)
    assert len(lines) == 1 and lines[0].startswith("scan: 4/4 videos (100%)")


def test_terminal_line_is_rewritten_in_place_and_cleared():
    clock, stream = Clock(), io.StringIO()
    p = Progress(print, "embed", 4, "videos", tty=True, clock=clock, stream=stream)
    clock.now = 1.0
    p.advance(1)
    clock.now = 2.0
    p.advance(1)
    p.close()
    out = stream.getvalue()
    assert out.count("\r") == 3 and "embed: 2/4 videos (50%), 1 videos/s, ETA 2 s" in out
    assert out.endswith("\r\x1b[K") and "\n" not in out


def test_quiet_prints_nothing_and_eta_reads_well():
    clock, stream = Clock(), io.StringIO()
    p = Progress(None, "vocab", 10**6, "clips", tty=True, clock=clock, stream=stream)
    clock.now = 10
    p.advance(1000)
    p.close()
    assert stream.getvalue() == ""
    assert p.line().endswith("ETA 2 h 46 min")


def test_set_shows_a_figure_and_the_final_line_once_and_slow_rates_keep_digits():
    clock, lines = Clock(), []
    p = Progress(lines.append, "glove", 300, "epochs", tty=False, every=10, clock=clock)
    clock.now = 4
    p.set(1, "loss 0.5")
    assert lines == []
    clock.now = 12
    p.set(3, "loss 0.25")
    assert lines == ["glove: 3/300 epochs (1%), 0.25 epochs/s, ETA 19 min 48 s, loss 0.25"]
    clock.now = 13
    p.set(300, "loss 0.125")
    p.set(300, "loss 0.125")  # the same final state read twice is shown once
    assert lines[1:] == ["glove: 300/300 epochs (100%), 23 epochs/s, loss 0.125"]


class FakeBoard:
    """Records what a Reporter posts (board.post.remote(state))."""

    def __init__(self):
        self.states = []
        outer = self

        class Post:
            @staticmethod
            def remote(state):
                outer.states.append(state)

        self.post = Post


def test_reporter_posts_phase_starts_and_ends_and_otherwise_throttles():
    from vgray.clusters.live import Reporter

    clock, board = Clock(), FakeBoard()
    report = Reporter(board, every=1.0, clock=clock)
    for c in range(1, 11):  # 10 centres in 0.5 s: the first and the last are posted
        clock.now += 0.05
        report("vocab: seeding", c, 10, "words")
    for it in range(6):  # one iteration per 0.4 s: a post at least 1 s after the one before
        clock.now += 0.4
        report("vocab: k-means", it, 25, "iterations", f"inertia/clip {10 - it}")
    assert [s[:2] for s in board.states] == [
        ("vocab: seeding", 1), ("vocab: seeding", 10),
        ("vocab: k-means", 0), ("vocab: k-means", 3)]
    assert board.states[-1][:5] == ("vocab: k-means", 3, 25, "iterations", "inertia/clip 7")
    assert [round(s[5], 2) for s in board.states] == [0, 0.45, 0, 1.2]  # seconds into the phase
    Reporter(None)("glove", 1, 2, "epochs")  # no board: nothing to do, no error


def test_kmeans_reports_seeding_and_every_iteration_with_its_inertia():
    from vgray.algo.vocab import KMeans

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 8)) + 5 * rng.integers(0, 6, size=(600, 1))).astype(np.float32)
    states = []
    model = KMeans(12, max_iter=30, seed=0, precision="float32").fit(
        x, progress=lambda *state: states.append(state))
    seeding = [s for s in states if s[0] == "vocab: seeding"]
    lloyd = [s for s in states if s[0] == "vocab: k-means"]
    assert [s[1] for s in seeding][-1] == 12 and all(s[2:4] == (12, "words") for s in seeding)
    assert [s[1] for s in lloyd] == list(range(model.n_iter_ + 1))
    assert all(s[2:4] == (30, "iterations") for s in lloyd)
    assert [s[4] for s in lloyd] == [f"inertia/clip {v / 600:.5g}" for v in model.inertia_curve_]


def test_driver_draws_what_a_remote_task_posts_while_it_runs(ray_session):
    """A task that posts a short phase, then 0..20 over ~1 s: the driver prints the end of the
    first phase, states in between, the final one, and the task's result; a failing task raises
    its error."""
    import ray

    from vgray.clusters.live import Reporter, get_with_progress, start_board

    @ray.remote(num_cpus=0)
    def work(board, fail=False):
        report = Reporter(board, every=0.05)
        for c in range(1, 6):  # a phase over long before the driver's next read
            report("seeding", c, 5, "words")
        for e in range(21):
            time.sleep(0.05)
            report("glove", e, 20, "epochs", f"loss {1 / (e + 1):.3g}")
            if fail and e == 5:
                raise ValueError("diverged")
        report.flush()
        return "trained"

    board, lines = start_board(), []
    os.environ["VGRAY_PROGRESS_EVERY"] = "0"
    try:
        assert get_with_progress(work.remote(board), board, lines.append, poll=0.1) == "trained"
    finally:
        del os.environ["VGRAY_PROGRESS_EVERY"]
    # its end is shown all the same (after a state read mid-phase, if a read came that early)
    seeding = [line for line in lines if line.startswith("seeding: ")]
    assert lines[:len(seeding)] == seeding and seeding[-1].startswith("seeding: 5/5 words (100%)")
    lines = lines[len(seeding):]
    assert len(lines) >= 3, lines
    assert lines[-1].startswith("glove: 20/20 epochs (100%)") and lines[-1].endswith("loss 0.0476")
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and 0 < done[0] < 20
    with pytest.raises(ValueError, match="diverged"):
        get_with_progress(work.remote(board, fail=True), board, lines.append, poll=0.1)
    ray.kill(board)  # a lost board costs the progress lines, never the result
    assert get_with_progress(work.remote(board), board, lines.append, poll=0.1) == "trained"


def test_the_drivers_board_is_kept_in_a_ray_session_and_new_in_the_next(ray_session):
    """The progress board is the driver's for the length of its Ray session: a second run gets
    the same one, emptied; after ray.shutdown() and a new ray.init() (a notebook restarting
    Ray), whose first job id is the same, a run gets a new board that answers."""
    from vgray.clusters.live import driver_board

    ray = ray_session
    first = driver_board()
    first.post.remote(("seeding", 1, 2, "words", "", 0.0))
    again = driver_board()
    assert again == first and ray.get(again.read.remote()) == []
    job = ray.get_runtime_context().get_job_id()
    ray.shutdown()
    ray = shared_ray()  # the tests' Ray again: a new session, this process its first driver
    assert ray.get_runtime_context().get_job_id() == job
    new = driver_board()
    assert new != first and ray.get(new.read.remote(), timeout=30) == []
