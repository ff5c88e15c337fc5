"""What several test modules share: brute-force references, readers of a RUN's outputs and the
comparison of two runs. Fixtures live in conftest.py; no test module imports another."""

import glob
import os
import time

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from vgray.cli import app
from vgray.rundir.store import read_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The settings of the session's trained run (conftest.trained_run) and of the tests that
# train the same corpus again to compare with it.
ARGS = ["--vocab-size", "12", "--dim", "8", "--epochs", "200", "--shard-clips", "200", "-q"]


def cli(*args):
    """`vgray ARGS` in this process; fails the test unless it exits 0."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def brute_force(sequences, k, window):
    """X[t_p, t_q] += 1/(q-p) and X[t_q, t_p] += 1/(q-p) for p < q, q - p <= window."""
    x = np.zeros((k, k))
    for seq in sequences:
        for p in range(len(seq)):
            for q in range(p + 1, min(len(seq), p + window + 1)):
                x[seq[p], seq[q]] += 1.0 / (q - p)
                x[seq[q], seq[p]] += 1.0 / (q - p)
    return x


def tokens_of(run):
    """video id -> its tokens, from RUN/tokens."""
    return read_tokens(sorted(glob.glob(os.path.join(run, "tokens", "*.parquet"))))


def cooccur_of(run):
    """RUN's co-occurrence as arrays i, j, x in (i, j) order."""
    table = pq.read_table(sorted(glob.glob(os.path.join(run, "cooccur", "*.parquet"))))
    order = np.lexsort((table["j"].to_numpy(), table["i"].to_numpy()))
    return {c: table[c].to_numpy()[order] for c in ("i", "j", "x")}


def assert_same_results(a_dir, b_dir):
    """Two RUNs hold the same tokens, co-occurrence and vectors, bit for bit."""
    a, b = tokens_of(a_dir), tokens_of(b_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ca, cb = cooccur_of(a_dir), cooccur_of(b_dir)
    assert all(np.array_equal(ca[c], cb[c]) for c in ca)
    np.testing.assert_array_equal(np.load(os.path.join(a_dir, "glove", "vectors.npy")),
                                  np.load(os.path.join(b_dir, "glove", "vectors.npy")))


def upload_tree(fs, local, bucket_path):
    """Copy the files under `local` to `bucket_path` of a pyarrow filesystem."""
    for path in glob.glob(os.path.join(local, "**", "*"), recursive=True):
        if os.path.isfile(path):
            rel = os.path.relpath(path, local)
            with open(path, "rb") as src, fs.open_output_stream(f"{bucket_path}/{rel}") as dst:
                dst.write(src.read())


# One local Ray, shared by the modules that need one (conftest.ray_session)

_shared = {"address": None}


def shared_ray():
    """The small local Ray of the in-process tests, started if it is not up."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != _shared["address"]:
        ray.shutdown()  # some other Ray, started by a test: not the one the tests expect
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
        _shared["address"] = ray.get_runtime_context().gcs_address
    return ray


def idle(ray, wait_s=10.0):
    """True once every CPU and GPU of the Ray is free again (an actor ends a moment after its
    kill); False if some stay in use for `wait_s`."""
    deadline = time.time() + wait_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(r, 0) == total.get(r, 0) for r in ("CPU", "GPU")):
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.2)
