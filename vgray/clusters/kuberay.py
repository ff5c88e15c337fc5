"""On KubeRay: the node types of the RayCluster, read from the Kubernetes API.

KubeRay runs the autoscaler in a container of its own, so the head has no config file to read.
The RayCluster object holds the same facts: every Ray container has RAY_CLUSTER_NAME (and
RAY_CLUSTER_NAMESPACE), and with in-tree autoscaling the head pod's service account may `get`
rayclusters (a RayJob's entrypoint runs in the head pod). The object is converted to an autoscaler
config by Ray's own KubeRay converter (private API of the Ray version vgray is tested with:
`ray.autoscaler._private.kuberay.autoscaling_config._derive_autoscaling_config_from_ray_cr`),
without the retries and sleeps of Ray's fetch: one request with a short timeout, and a note where
it fails, since what it tells is only a better guess than "unknown".
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT_S = 2.0  # the API server answers in milliseconds; a refusal must not wait on it


class KubeError(Exception):
    """The RayCluster could not be read (its message is one line)."""


def api_base() -> str | None:
    """The Kubernetes API: VGRAY_K8S_API where set (e.g. http://127.0.0.1:8001 behind
    `kubectl proxy`), else the in-cluster service."""
    explicit = os.environ.get("VGRAY_K8S_API")
    if explicit:
        return explicit.rstrip("/")
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = os.environ.get("KUBERNETES_SERVICE_PORT_HTTPS") or os.environ.get(
        "KUBERNETES_SERVICE_PORT") or "443"
    return f"https://{f'[{host}]' if ':' in host else host}:{port}"


def account_file(name: str) -> str:
    """A file of the pod's service account (VGRAY_K8S_ACCOUNT moves the folder)."""
    return os.path.join(os.environ.get("VGRAY_K8S_ACCOUNT", ACCOUNT), name)


def namespace() -> str:
    ns = os.environ.get("RAY_CLUSTER_NAMESPACE")
    if ns:
        return ns
    try:
        with open(account_file("namespace")) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def read_raycluster(name: str, ns: str, timeout: float = TIMEOUT_S) -> dict:
    """GET the RayCluster object, with the service account's token; KubeError in one line."""
    base = api_base()
    if base is None:
        raise KubeError("no Kubernetes API (KUBERNETES_SERVICE_HOST is not set)")
    request = urllib.request.Request(
        f"{base}/apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}",
        headers={"Accept": "application/json"})
    try:
        with open(account_file("token")) as f:
            request.add_header("Authorization", "Bearer " + f.read().strip())
    except OSError:
        pass  # kubectl proxy adds the user's own credentials
    context = None
    if base.startswith("https://"):
        ca = account_file("ca.crt")
        context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        hint = " (the service account may not get rayclusters)" if e.code in (401, 403) else ""
        raise KubeError(f"HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise KubeError(f"{type(reason).__name__}: {reason}".strip()) from None


def to_autoscaling_config(raycluster: dict) -> dict:
    """The autoscaler config that Ray's KubeRay autoscaler derives from a RayCluster."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    return _derive_autoscaling_config_from_ray_cr(raycluster)


def autoscaling_config() -> tuple[dict | None, str | None, str]:
    """(config, where it was read, "") from this pod's RayCluster; (None, None, note) where it
    cannot be read or converted."""
    name, ns = os.environ.get("RAY_CLUSTER_NAME", ""), namespace()
    where = f"RayCluster {ns}/{name}"
    try:
        return to_autoscaling_config(read_raycluster(name, ns)), where, ""
    except KubeError as e:
        return None, None, f"cannot read the {where} ({e}); node types unknown"
    except Exception as e:  # noqa: BLE001 - a converter of another Ray, or an odd object
        return None, None, (f"cannot convert the {where} with this Ray's KubeRay converter "
                            f"({type(e).__name__}: {e}); node types unknown")
