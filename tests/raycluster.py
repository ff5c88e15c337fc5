"""Ray heads that tests start themselves and stop by their process group (never `ray stop`,
which would kill every Ray process on the machine)."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

CURRENT = "/tmp/ray/ray_current_cluster"  # written by `ray start --head`
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_ID = "f" * 51 + "00000"  # the fake provider's head node id


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports(*taken: int) -> list[str]:
    """Ports of its own for a head, each a different one: another Ray on this machine (the
    tests' own) holds the defaults. (A port freed can be handed out again: taken twice, two of
    the head's components would clash and the head not come up.)"""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--ray-client-server-port", "--runtime-env-agent-port",
             "--node-manager-port", "--object-manager-port")
    ports: list[int] = []
    while len(ports) < len(flags):
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    return [arg for flag, port in zip(flags, ports) for arg in (flag, str(port))]


@contextlib.contextmanager
def head(args: list[str], env: dict, log_path, ready, timeout: float = 180, grace: float = 20):
    """`ray start --head --block ARGS` in its own process group until ready() is true; stopped
    (with every node it started) when the block ends."""
    ray_cli = shutil.which("ray") or pytest.fail("the ray command is not installed")
    had_current = os.path.exists(CURRENT)
    log = open(log_path, "w")
    proc = subprocess.Popen([ray_cli, "start", "--head", "--block", "--node-ip-address",
                             "127.0.0.1", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=os.path.dirname(str(log_path)))
    try:
        deadline = time.time() + timeout
        while not ready():
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("the Ray head did not come up: " + open(log_path).read()[-2000:])
            time.sleep(0.5)
        yield proc
    finally:
        stop_group(proc, grace)
        log.close()
        if not had_current and os.path.exists(CURRENT):
            os.remove(CURRENT)


def stop_group(proc, grace: float = 20) -> None:
    """Stop what a test started, by its process group: the head and its children (those that
    outlive the head's own shutdown, or `grace` seconds, are killed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def gcs_up(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def fake_autoscaling_cluster(tmp, worker_types: dict, idle_timeout_minutes: float = 0.1,
                             max_workers: int = 8, autoscaler: str = "v1"):
    """A head with 0 CPUs whose autoscaler launches `worker_types` (name -> {resources,
    max_workers}) from zero, through Ray's fake multi-node provider (every node a set of
    processes on this machine). Yields the GCS address, the autoscaler config's path and the
    environment a client needs (the cluster's token).

    autoscaler "v2" runs Ray's autoscaler v2 (KubeRay's default): its monitor cannot open the
    `fake_multinode` type's example.yaml (not in the wheels), so the same provider class is
    loaded as an external one, and the head is given the instance id that v2 needs."""
    port = free_port()
    provider = {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}",
                "disable_node_updaters": True, "disable_launch_config_check": True,
                # Without it fake nodes are never marked active and never scale down.
                "use_node_id_as_ip": True}
    if autoscaler == "v2":
        provider.update(type="external", module=FAKE_PROVIDER, launch_multiple=True,
                        head_node_id=FAKE_HEAD_ID)
    config = {
        "cluster_name": "vgray-test", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            **{name: {"node_config": {}, "min_workers": 0, **spec}
               for name, spec in worker_types.items()}},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(tmp, "autoscaling.yaml")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    token = os.path.join(tmp, "auth_token")  # clusters Ray starts use token authentication
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    clients = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    env = {**os.environ, **clients, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           # A node that stops answering (a killed raylet) is replaced by the autoscaler after
           # 5 s, not 30. (It must stay shorter than the ~15 s in which the GCS declares such a
           # node dead: after that the fake provider's node is never replaced.)
           "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5", "PYTHONWARNINGS": "ignore"}
    env.pop("RAY_ADDRESS", None)
    if autoscaler == "v2":
        env.update(RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_ID,
                   RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_ID)
    args = [f"--autoscaling-config={path}", "--num-cpus=0", f"--port={port}",
            "--include-dashboard=false", *own_ports(port)]
    log = os.path.join(tmp, "head.log")
    up = lambda: gcs_up(port) and "Ray runtime started" in open(log).read()  # noqa: E731
    with head(args, env, log, up, grace=3):  # nothing of a fake cluster needs a graceful end
        # A client must not inherit RAY_enable_autoscaler_v2: Ray's is_autoscaler_v2() trusts it.
        client_env = {**{k: v for k, v in os.environ.items()
                         if k not in ("RAY_ADDRESS", "RAY_enable_autoscaler_v2")}, **clients}
        yield {"address": f"127.0.0.1:{port}", "config": path, "env": client_env}
