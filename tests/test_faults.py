"""A fault of the storage is never bad input: S3 (moto) behind a proxy that fails requests as S3
does under load (tests/s3proxy.py). A run through 5% failing requests gives the clean run's
results and skips; storage that is down fails the command in one line and records no skip, and
the re-run once it is back completes; a bad file on S3 is still a recorded skip."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.fs as pafs
import pytest
import ray

from vgray.errors import StorageError
from vgray.commands.synth import make_corpus

from s3proxy import SECRET, FaultyProxy, MotoServer

ARGS = ["--vocab-size", "6", "--dim", "4", "--epochs", "30", "--shard-clips", "120",
        "--workers", "2", "-q"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """moto with a two-stream corpus of 30 videos, two of them bad in what they hold (a
    truncated rgb file, a NaN in a flow file)."""
    root = tmp_path_factory.mktemp("faults")
    info = make_corpus(str(root / "c"), videos=30, dim=8, words=6, topics=2, flow=True,
                       flow_dim=4, min_clips=8, max_clips=20, seed=2)
    features = info["features"]
    truncated = os.path.join(features, "v_00004_rgb.npy")
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[:len(data) - 40])
    nan = os.path.join(features, "v_00007_flow.npy")
    flow = np.load(nan)
    flow[3, 1] = np.nan
    np.save(nan, flow)
    with MotoServer(str(root / "moto.log")) as moto:
        fs = moto.filesystem()
        fs.create_dir("faults")
        for name in sorted(os.listdir(features)):
            with fs.open_output_stream(f"faults/c/features/{name}") as out:
                out.write(open(os.path.join(features, name), "rb").read())
        with fs.open_output_stream("faults/c/train_ids.json") as out:
            out.write(open(info["train_ids"], "rb").read())
        yield {"moto": moto, "fs": fs, "root": root}


def train(proxy: FaultyProxy, out: str, timeout: float = 600,
          **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **proxy.env(), "PYTHONWARNINGS": "ignore", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "vgray.cli", "train", "s3://faults/c/features", "--out",
         f"s3://faults/{out}", "--train-ids", "s3://faults/c/train_ids.json", *ARGS],
        env=env, capture_output=True, text=True, timeout=timeout)


def read_run(fs, out: str) -> dict:
    """tokens, co-occurrence, vectors, skips and manifest of a RUN on S3."""
    import pyarrow.parquet as pq

    def data(rel):
        with fs.open_input_file(f"faults/{out}/{rel}") as f:
            return f.read()

    names = [e.path[len(f"faults/{out}/"):] for e in
             fs.get_file_info(pafs.FileSelector(f"faults/{out}", recursive=True))
             if e.type == pafs.FileType.File]
    tokens = {}
    for name in sorted(n for n in names if n.startswith("tokens/")):
        tokens.update(read_tokens_table(pq.read_table(io.BytesIO(data(name)))))
    parts = [pq.read_table(io.BytesIO(data(n))) for n in sorted(names)
             if n.startswith("cooccur/")]
    i, j, x = (np.concatenate([p[c].to_numpy() for p in parts]) for c in ("i", "j", "x"))
    order = np.lexsort((j, i))
    return {"tokens": tokens, "cooccur": (i[order], j[order], x[order]),
            "vectors": np.load(io.BytesIO(data("glove/vectors.npy"))),
            "skips": [json.loads(line) for line in data("skipped.jsonl").decode().splitlines()],
            "manifest": json.loads(data("manifest.json")), "names": names}


def read_tokens_table(table) -> dict:
    column = table.column("tokens").combine_chunks()
    flat, offsets = column.values.to_numpy(), column.offsets.to_numpy()
    return {vid: flat[offsets[k]:offsets[k + 1]]
            for k, vid in enumerate(table.column("video_id").to_pylist())}


@pytest.fixture(scope="module")
def clean(store):
    with FaultyProxy(store["moto"].endpoint) as proxy:
        done = train(proxy, "clean")
        assert done.returncode == 0, done.stderr[-3000:]
        per_video = proxy.total() / 30
    return read_run(store["fs"], "clean"), per_video


def assert_same(a: dict, b: dict) -> None:
    assert a["tokens"].keys() == b["tokens"].keys()
    assert all(np.array_equal(a["tokens"][k], b["tokens"][k]) for k in a["tokens"])
    assert all(np.array_equal(p, q) for p, q in zip(a["cooccur"], b["cooccur"]))
    np.testing.assert_array_equal(a["vectors"], b["vectors"])
    assert a["skips"] == b["skips"]


@pytest.mark.s3
def test_a_bad_file_on_s3_is_a_skip_and_a_clean_run_is_cheap(clean):
    run, per_video = clean
    skipped = {s["video_id"]: s["reason"] for s in run["skips"]}
    assert set(skipped) == {"v_00004", "v_00007"}
    assert "truncated" in skipped["v_00004"] and "non-finite" in skipped["v_00007"]
    assert len(run["tokens"]) == 28
    # a header read and three passes over two files, three files written, and the shards' own
    # files (this corpus is tiny: 28 videos share them)
    assert per_video < 13, per_video  # 12.2 with the scan on the workers (small files read whole)


@pytest.mark.s3
def test_five_percent_of_requests_failing_changes_nothing(store, clean):
    with FaultyProxy(store["moto"].endpoint, fail=0.05, seed=11) as proxy:
        done = train(proxy, "faulty")
        failed = sum(proxy.failed.values())
    assert done.returncode == 0, done.stderr[-3000:]
    assert failed > 10  # the proxy did fail requests, as S3 under load does
    run = read_run(store["fs"], "faulty")
    assert_same(clean[0], run)  # no video lost to a fault: the same skips, the same results
    retried = sum(s["requests"] + s["units"] for s in run["manifest"]["retries"].values())
    assert retried > 0 and SECRET not in done.stdout + done.stderr


@pytest.mark.s3
def test_storage_down_fails_in_one_line_and_the_rerun_completes(store, clean):
    with FaultyProxy(store["moto"].endpoint) as proxy:
        proxy.down = True
        started = time.perf_counter()
        # 2 tries a request (AWS_MAX_ATTEMPTS, test_attempts_per_request_follow_aws_max_attempts)
        # rather than 6: the same failure, without waiting out the longer backoffs.
        done = train(proxy, "down", timeout=300, AWS_MAX_ATTEMPTS="2")
        took = time.perf_counter() - started
        proxy.down = False
        names = [e.path for e in store["fs"].get_file_info(
            pafs.FileSelector("faults/down", recursive=True, allow_not_found=True))]
        again = train(proxy, "down")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "failed" in lines[0] and "Traceback" not in done.stderr and took < 180
    assert not [n for n in names if n.endswith("skipped.jsonl")]  # nothing recorded as skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same(clean[0], read_run(store["fs"], "down"))


def test_attempts_per_request_follow_aws_max_attempts(monkeypatch):
    """6 tries a request, first included; AWS_MAX_ATTEMPTS (as for AWS's own tools) sets
    another number: with 2, a request to an endpoint that never answers is sent twice."""
    from vgray.files import s3

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setattr(s3, "_client", None)
    assert s3.client().meta.config.retries["total_max_attempts"] == s3.MAX_ATTEMPTS == 6
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setattr(s3, "_client", None)
    before = s3.retries()
    with pytest.raises(StorageError, match="^s3://b/k: get_object failed: Could not connect"):
        s3.get("s3://b/k")
    assert s3.retries() - before == 1


@ray.remote(num_cpus=0)
class Flaky:
    """Fails its calls with a StorageError until `good_after` calls were made."""

    def __init__(self, good_after: int):
        self.calls, self.good_after = 0, good_after

    def work(self, k):
        self.calls += 1
        if self.calls <= self.good_after:
            raise StorageError(f"s3://b/k{k}: get_object failed: SlowDown")
        return k


def test_a_unit_that_meets_a_storage_fault_is_run_again_then_fails_in_one_line(ray_session,
                                                                               monkeypatch):
    import vgray.run.pool
    from vgray.run.pool import MAX_ATTEMPTS, Pool

    monkeypatch.setattr(vgray.run.pool.time, "sleep", lambda s: None)
    done = {}
    pool = Pool(lambda: Flaky.remote(2))
    try:
        pool.run(1, [0, 1, 2], lambda a, k: a.work.remote(k),
                 lambda k, result, finished: done.__setitem__(k, result), stage="assign")
    finally:
        pool.close()
    assert done == {0: 0, 1: 1, 2: 2} and pool.reruns == {"assign": 2}
    pool = Pool(lambda: Flaky.remote(10 ** 6))
    try:
        with pytest.raises(StorageError, match=f"kept failing \\({MAX_ATTEMPTS} attempts of "
                                               "embed unit 0\\): s3://b/k0: get_object failed"):
            pool.run(1, [0], lambda a, k: a.work.remote(k), lambda *a: None, stage="embed")
    finally:
        pool.close()


@ray.remote(num_cpus=0)
class Stalling:
    """Answers at once, but the first call ever made for unit 1 (told by a file) hangs, as a
    read from a connection that never answers would."""

    def __init__(self, flag: str):
        self.flag = flag

    def work(self, k):
        if k == 1 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            time.sleep(3600)
        time.sleep(0.05)
        return k


def test_a_unit_past_its_deadline_runs_again_on_another_worker(ray_session, tmp_path,
                                                               monkeypatch):
    import vgray.run.pool
    from vgray.run.pool import Pool

    monkeypatch.setattr(vgray.run.pool, "UNIT_DEADLINE_MIN_S", 2.0)
    made, done = [], {}

    def make():
        made.append(Stalling.remote(str(tmp_path / "stalled")))
        return made[-1]

    pool = Pool(make)
    started = time.perf_counter()
    try:
        pool.run(2, list(range(6)), lambda a, k: a.work.remote(k),
                 lambda k, result, finished: done.__setitem__(k, result), stage="assign")
    finally:
        pool.close()
    assert done == {k: k for k in range(6)} and pool.reruns == {"assign": 1}
    assert len(made) == 3  # the stalled worker was replaced
    assert time.perf_counter() - started < 60
