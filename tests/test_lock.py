"""Two vgray on one --out: the second refuses; a crashed run's lock does not stick (no Ray)."""

import json
import os
import subprocess
import sys

import pytest

from vgray.errors import VgrayError
from vgray.rundir.store import RunLock


def test_second_holder_is_refused_until_the_first_releases(tmp_path):
    first, second = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    first.acquire()
    with pytest.raises(VgrayError, match=r"is in use by another vgray \(pid \d+ on .*\); wait"):
        second.acquire()
    first.release()
    assert not os.path.exists(first.path)
    second.acquire()
    second.release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    lock = RunLock(str(tmp_path))
    with open(lock.path, "w") as f:  # what a run killed with -9 leaves behind
        json.dump({"host": os.uname().nodename, "pid": int(child.stdout), "since": "earlier"}, f)
    lock.acquire()
    with open(lock.path) as f:
        assert json.load(f)["pid"] == os.getpid()
    lock.release()


def test_lock_without_heartbeat_is_stale_even_from_another_host(tmp_path):
    lock = RunLock(str(tmp_path))
    with open(lock.path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "since": "long ago"}, f)
    with pytest.raises(VgrayError, match="elsewhere"):
        lock.acquire()  # fresh: another machine may be running
    old = os.path.getmtime(lock.path) - RunLock.STALE - 5
    os.utime(lock.path, (old, old))
    lock.acquire()
    lock.release()


def test_heartbeat_keeps_a_long_run_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "HEARTBEAT", 0.05)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    old = os.path.getmtime(lock.path) - 1000
    os.utime(lock.path, (old, old))
    import time
    time.sleep(0.3)
    assert os.path.getmtime(lock.path) > old + 900
    lock.release()
