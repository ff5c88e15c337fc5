"""Running vgray on a remote Ray cluster through the Ray Jobs API.

`--address http://HEAD:8265` submits the same command as a Ray job whose runtime_env carries the
vgray package (py_modules); its logs are streamed and the command exits with the job's outcome.
Ray's token authentication is left to Ray: the client reads the token the way Ray does
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, with RAY_AUTH_MODE=token), and vgray
never prints it or puts it into the job's runtime_env or the run directory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shlex
import sys
import time
from urllib.parse import urlparse

from ..errors import VgrayError, first_line

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 120


def is_jobs_address(address: str | None) -> bool:
    """An http(s) address is the Jobs API of a cluster's head; anything else is for ray.init."""
    return bool(address) and address.startswith(("http://", "https://"))


def is_loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_path(path: str, address: str, echo) -> str:
    """A path as the job on the cluster will see it. On a head on this machine, local paths are
    made absolute; on a remote cluster they must name storage every node shares."""
    if "://" in path:
        return path
    if is_loopback(address):
        return os.path.abspath(path)
    echo(f"note: {path} is a path on the cluster's nodes; it must be on storage that every node "
         "shares (a network file system mounted at the same place)")
    return path


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, auth failure, bad URL: one line
        raise VgrayError(f"cannot reach the Ray Jobs API at {address}: {first_line(e)}") from None


def submit(address: str, argv: list[str], wait: bool = True, echo=print, out=print) -> str:
    """Submit `vgray ARGV` as a Ray job; with wait, stream its logs and raise if it fails."""
    import vgray

    client = _client(address)
    runtime_env = {"py_modules": [os.path.dirname(os.path.abspath(vgray.__file__))],
                   "env_vars": {"PYTHONWARNINGS": "ignore"}}
    entrypoint = "python -m vgray.cli " + shlex.join(argv)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       metadata={"submitted_by": "vgray"})
            break
        except Exception as e:
            # A head that has just started answers before its job agent is up: wait for it.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise VgrayError(f"the cluster at {address} refused the job: {first_line(e)}") from None
    echo(f"submitted job {job_id} to {address}")
    if not wait:
        out(job_id)
        return job_id
    follow(address, job_id, client)
    status = str(client.get_job_status(job_id))
    if status != "SUCCEEDED":
        message = client.get_job_info(job_id).message or ""
        raise VgrayError(f"job {job_id} {status}" + (f": {message.strip().splitlines()[-1]}"
                                                    if message.strip() else ""))
    return job_id


def follow(address: str, job_id: str, client=None) -> None:
    """Stream a job's logs to stdout until it ends."""
    client = client or _client(address)

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception:  # the log stream can close early; fall back to polling the status
        while str(client.get_job_status(job_id)) not in TERMINAL:
            time.sleep(1)


def status(address: str, job_id: str) -> str:
    info = _client(address).get_job_info(job_id)
    return f"{job_id} {info.status}" + (f": {info.message}" if info.message else "")


def logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return _client(address).stop_job(job_id)
