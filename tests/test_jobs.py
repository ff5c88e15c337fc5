"""`vgray … --address http://HEAD:8265` through the Ray Jobs API, against a head this test starts
(`ray start --head --block` on loopback, token authentication on) and stops by its process
group."""

import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from vgray.commands.synth import make_corpus

from raycluster import free_port, own_ports
from raycluster import head as started_head

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "PYTHONWARNINGS": "ignore"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = shutil.which("ray") or pytest.fail("the ray command is not installed")
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 16
    dashboard = free_port()
    url = f"http://127.0.0.1:{dashboard}"

    def ready():
        try:
            request = urllib.request.Request(url + "/api/version",
                                             headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(request, timeout=5)
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    gcs = free_port()
    while gcs == dashboard:
        gcs = free_port()
    args = ["--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port",
            str(dashboard), *own_ports(gcs, dashboard), "--num-cpus", "2",
            "--include-dashboard", "true"]
    with started_head(args, env, home / "head.log", ready, grace=3):
        yield {"url": url, "env": env, "token": token, "home": home}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-corpus")
    return make_corpus(str(root), videos=16, dim=6, words=4, topics=2, min_clips=6, max_clips=12)


def vgray(*args, env, timeout=400):
    return subprocess.run([sys.executable, "-m", "vgray.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


TRAIN = ["--vocab-size", "4", "--dim", "3", "--epochs", "20", "-q"]


def test_train_submitted_as_a_job(head, corpus, tmp_path):
    out = tmp_path / "run"
    done = vgray("train", corpus["features"], "--out", out, "--train-ids", corpus["train_ids"],
                 *TRAIN, "--address", head["url"], env=head["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted job" in done.stderr
    assert "embedded 16 videos" in done.stdout  # the job's own summary line, streamed
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["status"] == "complete" and manifest["counts"]["videos"] == 16
    # The job ran the copy of vgray its runtime_env carried, not one installed on the cluster.
    assert "runtime_resources" in manifest["versions"]["vgray_location"]
    assert len(glob.glob(str(out / "embeddings" / "*.npy"))) == 16
    # The token is never printed, nor written into the run directory.
    assert head["token"] not in done.stdout + done.stderr
    for path in glob.glob(str(out / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            assert head["token"].encode() not in open(path, "rb").read(), path


def test_sweep_submitted_as_a_job(head, corpus, tmp_path):
    import pyarrow.parquet as pq

    truth = pq.read_table(os.path.join(os.path.dirname(corpus["features"]), "truth.parquet"))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(dict(zip(truth["video_id"].to_pylist(),
                                          map(str, truth["topic"].to_pylist())))))
    out = tmp_path / "sweep"
    done = vgray("sweep", corpus["features"], "--out", out, "--train-ids", corpus["train_ids"],
                 "--labels", labels, "--vocab-size", "3,4", "--window", "1,2", "--dim", "3",
                 "--epochs", "20", "-q", "--address", head["url"], env=head["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted job" in done.stderr and "best by probe accuracy: K" in done.stdout
    assert len(open(out / "sweep.csv").read().splitlines()) == 1 + 4
    assert json.load(open(out / "manifest.json"))["labels_file"] == str(labels)


def test_no_wait_and_the_jobs_commands(head, corpus, tmp_path):
    out = tmp_path / "run"
    done = vgray("train", corpus["features"], "--out", out, *TRAIN, "--address", head["url"],
                 "--no-wait", env=head["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = done.stdout.strip().splitlines()[-1]
    deadline = time.time() + 300
    while True:
        status = vgray("jobs", "status", job_id, "--address", head["url"], env=head["env"])
        assert status.returncode == 0, status.stderr
        if "SUCCEEDED" in status.stdout or "FAILED" in status.stdout or time.time() > deadline:
            break
        time.sleep(1)
    assert status.stdout.startswith(f"{job_id} SUCCEEDED"), status.stdout
    logs = vgray("jobs", "logs", job_id, "--address", head["url"], env=head["env"])
    assert "embedded 16 videos" in logs.stdout and head["token"] not in logs.stdout
    stop = vgray("jobs", "stop", job_id, "--address", head["url"], env=head["env"])
    assert stop.returncode == 0 and "was not running" in stop.stdout


def test_address_auto_attaches_to_the_running_cluster(head, corpus, tmp_path):
    """`--address auto`: this process becomes a driver of the cluster the test started."""
    out = tmp_path / "run"
    done = vgray("train", corpus["features"], "--out", out, *TRAIN, "--address", "auto",
                 env=head["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted job" not in done.stderr and done.stdout.startswith("embedded 16 videos")
    assert json.load(open(out / "manifest.json"))["status"] == "complete"
    assert head["token"] not in done.stdout + done.stderr
    # Not an embedded Ray: the shards ran on the node of the cluster the test started.
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(address='auto', "
                            "logging_level='ERROR'); print(*[n['NodeID'] for n in ray.nodes()])"],
                           env=head["env"], capture_output=True, text=True, timeout=120)
    head_nodes = set(probe.stdout.split())
    ran_on = {json.load(open(m))["node"] for m in glob.glob(str(out / ".work" / "assign" / "*.json"))}
    assert ran_on and ran_on <= head_nodes, (ran_on, head_nodes, probe.stderr[-1000:])


def test_failed_job_exits_non_zero_with_one_line(head, tmp_path):
    done = vgray("train", tmp_path / "missing", "--out", tmp_path / "run", *TRAIN,
                 "--address", head["url"], env=head["env"])
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job ") and "FAILED" in last


def test_without_the_token_the_cluster_refuses(head, corpus, tmp_path):
    env = {k: v for k, v in head["env"].items() if k not in ("RAY_AUTH_MODE",)}
    env["HOME"] = str(tmp_path)  # no token file here
    done = vgray("train", corpus["features"], "--out", tmp_path / "run", *TRAIN,
                 "--address", head["url"], env=env, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_paths_and_addresses():
    from vgray.clusters import submit
    from vgray.cli import _argv

    notes = []
    assert submit.is_jobs_address("http://h:8265") and not submit.is_jobs_address("auto")
    assert not submit.is_jobs_address("ray://h:10001") and not submit.is_jobs_address(None)
    assert submit.cluster_path("rel/dir", "http://127.0.0.1:8265", notes.append) == os.path.abspath("rel/dir")
    assert notes == []
    assert submit.cluster_path("/data/f", "http://10.1.2.3:8265", notes.append) == "/data/f"
    assert len(notes) == 1 and "shares" in notes[0]
    assert submit.cluster_path("s3://b/f", "http://10.1.2.3:8265", notes.append) == "s3://b/f"
    assert _argv("train", {"features": "F"}, {"vocab_size": 7, "strict": True, "workers": None,
                                                   "device": "cpu", "x_max": 2.5}, quiet=True) == [
        "train", "F", "--vocab-size", "7", "--strict", "--device", "cpu", "--x-max", "2.5", "-q"]
