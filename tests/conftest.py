import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import settings

from vgray.commands.synth import make_corpus

from helpers import ARGS, cli, idle, shared_ray
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

def stop_shared_ray():
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """In one process, the modules marked `cluster` run after all the others (each keeps its own
    order): they stop the shared Ray (see ray_session), so in the middle of the run each one
    would make the next in-process module start Ray again.

    Under pytest-xdist (`-n 2 --dist loadgroup`, as CI runs the suite) they run first, one
    after another on one worker, while the other worker takes the other modules: a module's
    tests stay together on one worker (its module fixtures are made once), and no two of the
    real clusters ever run at the same time."""
    xdist = config.getoption("dist", "no") != "no" or "PYTEST_XDIST_WORKER" in os.environ
    items.sort(key=lambda item: (item.get_closest_marker("cluster") is not None) != xdist)
    for item in items:
        group = "cluster" if item.get_closest_marker("cluster") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


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
