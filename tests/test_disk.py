"""Output on a full or read-only filesystem: one clear line, exit 1, nothing corrupt left under a
final name; after space is freed the same command finishes the job.

End to end, a real small filesystem (a tmpfs the test mounts; skipped with the reason where it
may not mount) gives the real errors. Everywhere, every writer of the run directory is checked
with injected faults: a write that fails half-way leaves neither a file under its final name nor
a temporary file.
"""

import contextlib
import glob
import json
import os
import errno
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vgray.rundir import store
from vgray.run import worker
from vgray.rundir.store import read_tokens
from vgray.commands.synth import make_corpus

from helpers import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--vocab-size", "6", "--dim", "4", "--epochs", "20", "--shard-clips", "200", "--workers", "1"]


def mount_tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                          capture_output=True, text=True)
    return done.returncode == 0


@contextlib.contextmanager
def mounted(path, options):
    if not mount_tmpfs(path, options):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def train(features, out):
    """`python cli.py train` as a driver of the tests' Ray (its stderr is what a user sees,
    Ray's lines from the workers included). The environment is taken now: ray.init() put
    RAY_AUTH_MODE=token in it, which a client of that Ray needs."""
    import ray

    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", features,
                           "--out", out, *ARGS, "--address", ray.get_runtime_context().gcs_address],
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
                          text=True, timeout=300)


def assert_nothing_corrupt(out):
    assert not glob.glob(os.path.join(out, "**", ".*.tmp-*"), recursive=True), "temporary files left"
    for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
        if path.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif path.endswith(".parquet"):
            pq.read_table(path)
        elif path.endswith(".json"):
            json.load(open(path))
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        assert json.load(open(manifest))["status"] != "complete"


def train_here(features, out):
    """The same command in this process, on the tests' Ray (where no failure is looked for)."""
    cli("train", features, "--out", out, *ARGS)


@pytest.fixture(scope="module")
def features(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    info = make_corpus(str(root / "c"), videos=30, dim=64, words=6, topics=2, min_clips=20, max_clips=40)
    clean = str(root / "clean")
    train_here(info["features"], clean)
    return info["features"], clean


def test_disk_full_fails_cleanly_and_the_rerun_finishes(features, tmp_path):
    feats, clean = features
    mnt = str(tmp_path / "small")
    with mounted(mnt, "size=256k") as ok:
        if not ok:
            pytest.skip("cannot mount a tmpfs here (needs root); test_writers_* inject the faults")
        out = os.path.join(mnt, "run")
        failed, expect = train(feats, out), "No space left on device"
        assert failed.returncode == 1, failed.stderr
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expect in last, failed.stderr
        assert "Traceback" not in failed.stderr and "Unhandled error" not in failed.stderr
        assert_nothing_corrupt(out)
        assert not os.path.exists(os.path.join(out, ".lock"))
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        train_here(feats, out)
        a, b = (read_tokens(sorted(glob.glob(os.path.join(d, "tokens", "part-*.parquet")))) for d in (out, clean))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        np.testing.assert_array_equal(np.load(os.path.join(out, "glove", "vectors.npy")),
                                      np.load(os.path.join(clean, "glove", "vectors.npy")))


def test_read_only_output_fails_with_one_line(features, tmp_path):
    feats, _ = features
    mnt = str(tmp_path / "ro")
    with mounted(mnt, "size=1m,ro") as ok:
        if not ok:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here, and root ignores file modes")
            os.makedirs(mnt, exist_ok=True)
            os.chmod(mnt, 0o555)
        failed = train(feats, os.path.join(mnt, "run"))
        assert failed.returncode == 1
        lines = failed.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and ("Read-only file system" in lines[-1]
                                                     or "Permission denied" in lines[-1]), failed.stderr


def half_then_full(write):
    """A writer that puts half of its bytes on disk, then fails as a full disk does."""
    def failing(*args, **kwargs):
        path = next(a for a in args if isinstance(a, str))
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    return failing


@pytest.mark.parametrize("writer", ["save_npy", "write_table", "write_json", "write_text", "write_bytes"])
def test_writers_leave_nothing_when_the_disk_fills(tmp_path, monkeypatch, writer):
    target = str(tmp_path / "d" / "out.bin")
    monkeypatch.setattr(store.np, "save", half_then_full(np.save))
    monkeypatch.setattr(store.pq, "write_table", lambda table, path, **k: half_then_full(None)(path))
    real_open = open

    def full_open(path, mode="r", *a, **k):  # text and bytes writers go through open()
        f = real_open(path, mode, *a, **k)
        if "w" in mode and ".tmp-" in str(path):
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    monkeypatch.setattr("builtins.open", full_open)
    args = {"save_npy": (np.ones(3),), "write_table": (pa.table({"a": [1]}),),
            "write_json": ({"a": 1},), "write_text": ("x",), "write_bytes": (b"x",)}[writer]
    with pytest.raises(OSError, match="No space left"):
        getattr(store, writer)(target, *args)
    assert os.listdir(tmp_path / "d") == []  # no final file, no temporary file


def test_concatenation_writer_leaves_nothing_when_the_disk_fills(tmp_path, monkeypatch):
    source = str(tmp_path / "v_rgb.npy")
    np.save(source, np.ones((50, 3), np.float32))
    calls = []

    def concat_then_full(features, emb, two):
        calls.append(1)
        if len(calls) == 3:  # the third block of ten clips does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return np.concatenate([features, emb], axis=1)

    monkeypatch.setattr(worker, "concat", concat_then_full)
    out = tmp_path / "concat"
    with pytest.raises(OSError, match="No space left"):
        worker.write_concat(str(out / "v_rgb.npy"), source, np.zeros((50, 2), np.float32), False, 10)
    assert os.listdir(out) == []
