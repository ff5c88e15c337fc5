import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import settings

from vgray.commands.synth import make_corpus

from helpers import ARGS, cli
from s3proxy import SECRET

# Hypothesis: a small profile while developing, the full one in CI (.ci/run sets CI=true).
# Choose one by name with --hypothesis-profile=ci, or a number of examples with
# VGRAY_HYPOTHESIS_EXAMPLES.
settings.register_profile("dev", max_examples=100)
settings.register_profile("ci", max_examples=1000)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
if os.environ.get("VGRAY_HYPOTHESIS_EXAMPLES"):
    settings.register_profile("env", max_examples=int(os.environ["VGRAY_HYPOTHESIS_EXAMPLES"]))
    settings.load_profile("env")


def pytest_report_header(config):
    return f"hypothesis: {settings.default.max_examples} examples per property"


# ---------------------------------------------------------------------------------------------
# One local Ray, shared by the modules that need one

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


def stop_shared_ray():
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def pytest_collection_modifyitems(config, items):
    """The modules marked `cluster` run after all the others (each keeps its own order): they
    stop the shared Ray (see ray_session), so in the middle of the run each one would make the
    next in-process module start Ray again."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="module")
def ray_session(request):
    """A small local Ray for the in-process tests. Modules in a row share one, so that Ray
    starts a few times per session rather than once per module; it is stopped after a module
    that left work on it (the next one gets a fresh Ray), and never runs beside a module marked
    `cluster`, whose `ray start --head` or simulated multi-node cluster must not share the
    machine with it."""
    ray = shared_ray()
    yield ray
    if request.node.get_closest_marker("cluster") or not idle(ray):
        ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _no_shared_ray_beside_a_cluster(request):
    if request.node.get_closest_marker("cluster"):
        stop_shared_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _shared_ray_stopped_at_the_end():
    yield
    stop_shared_ray()


# ---------------------------------------------------------------------------------------------
# Data and runs made once per session

@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small synthetic two-stream corpus with planted words and topics."""
    root = tmp_path_factory.mktemp("synth")
    info = make_corpus(str(root), videos=60, dim=16, words=12, topics=3, flow=True, flow_dim=8,
                       min_clips=8, max_clips=30, seed=1)
    return {"root": str(root), **info}


@pytest.fixture(scope="session")
def trained_run(corpus, tmp_path_factory):
    """`vgray train` of the corpus on 2 workers with helpers.ARGS, once per session: (RUN, the
    CliRunner result). For the tests that only read a run: a test that changes a run or writes
    into it works on a copy."""
    shared_ray()
    run = str(tmp_path_factory.mktemp("run") / "run")
    result = cli("train", corpus["features"], "--out", run, "--train-ids", corpus["train_ids"],
                 "--workers", "2", *ARGS)
    return run, result


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto in server mode) on loopback for the module, with a
    bucket vgray-test; AWS_* in os.environ point at it while the module runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               access_key="testing", secret_key=SECRET, region="us-east-1",
                               allow_bucket_creation=True)
        fs.create_dir("vgray-test")
        yield {"env": {**os.environ, **env, "PYTHONWARNINGS": "ignore"}, "fs": fs}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
