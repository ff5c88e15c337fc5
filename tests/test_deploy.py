"""The KubeRay deployment (deploy/): one Ray version everywhere, manifests that KubeRay's own
schemas accept field by field, a cluster that Ray's converter reads as a head with no CPUs and two
worker groups from zero; and vgray's read of a RayCluster from the Kubernetes API, including an
API that refuses or does not answer."""

import http.server
import json
import os
import re
import socket
import threading
import time

import pytest
import ray
import yaml

from vgray.clusters import kuberay
from vgray.clusters.autoscale import node_types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
SCHEMAS = os.path.join(os.path.dirname(ROOT), "shared", "kuberay")


def load(name):
    with open(os.path.join(DEPLOY, "kuberay", name)) as f:
        return yaml.safe_load(f)


def raycluster(namespace="vgray-ns"):
    """The RayCluster as the API serves it (with the namespace it was applied in)."""
    cr = load("raycluster.yaml")
    cr["metadata"]["namespace"] = namespace
    return cr


def containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_one_ray_version_in_the_image_the_manifests_and_the_tests():
    dockerfile = open(os.path.join(DEPLOY, "Dockerfile")).read()
    [version] = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    cluster, job = load("raycluster.yaml"), load("rayjob.yaml")
    specs = [cluster["spec"], job["spec"]["rayClusterSpec"]]
    assert [s["rayVersion"] for s in specs] == [version, version]
    images = {c["image"] for s in specs for c in containers(s)}
    assert len(images) == 1 and images.pop().endswith(f"-ray{version}")
    assert ray.__version__ == version, "the tests run another Ray than the deployment pins"


def test_the_rayjob_runs_the_raycluster_and_trains_from_object_storage():
    job = load("rayjob.yaml")
    assert job["spec"]["rayClusterSpec"] == load("raycluster.yaml")["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert re.fullmatch(r"vgray train s3://\S+ --out s3://\S+", job["spec"]["entrypoint"])


def test_s3_credentials_come_from_a_secret_never_the_manifest():
    for spec in (load("raycluster.yaml")["spec"], load("rayjob.yaml")["spec"]["rayClusterSpec"]):
        for c in containers(spec):
            names = {e["name"]: e for e in c["env"]}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert names[key]["valueFrom"]["secretKeyRef"]["name"] == "vgray-s3"
                assert "value" not in names[key]


# --- KubeRay's schemas, kubeconform-style -----------------------------------------------------

def strict(schema):
    """The schema with every object that names its properties closed to others (as kubeconform
    does with --strict), unless it says it keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validator(crd_file):
    jsonschema = pytest.importorskip("jsonschema")
    path = os.path.join(SCHEMAS, crd_file)
    if not os.path.exists(path):
        pytest.skip(f"KubeRay's schemas are not here ({SCHEMAS}: a clone without shared/)")
    with open(path) as f:
        crd = yaml.safe_load(f)
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("manifest, crd", [("raycluster.yaml", "ray.io_rayclusters.yaml"),
                                           ("rayjob.yaml", "ray.io_rayjobs.yaml")])
def test_manifests_validate_against_kuberays_v1_schemas(manifest, crd):
    check = validator(crd)
    obj = load(manifest)
    assert obj["apiVersion"] == "ray.io/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(obj)]
    assert errors == []
    # ... and the check is strict: a misspelt field is refused.
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e.message for e in check.iter_errors(obj))


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_rays_converter_sees_a_head_without_cpus_and_a_cpu_and_a_gpu_group_from_zero(which):
    if which == "raycluster":
        cr = raycluster()
    else:
        job = load("rayjob.yaml")
        cr = {"metadata": {"name": "vgray-train-x", "namespace": "default"},
              "spec": job["spec"]["rayClusterSpec"]}
    config = kuberay.to_autoscaling_config(cr)
    nodes = config["available_node_types"]
    assert config["head_node_type"] == "headgroup" and nodes["headgroup"]["resources"]["CPU"] == 0
    workers = {n: t for n, t in nodes.items() if n != "headgroup"}
    cpu = [t for t in workers.values() if t["resources"].get("CPU") and not t["resources"].get("GPU")]
    gpu = [t for t in workers.values() if t["resources"].get("GPU")]
    assert len(cpu) == 1 and len(gpu) == 1
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers.values())
    spec = cr["spec"]
    assert spec["enableInTreeAutoscaling"] and spec["autoscalerOptions"]["version"] == "v2"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0


# --- vgray reading the RayCluster from a (fake) Kubernetes API ----------------------------------

class FakeApi:
    """A Kubernetes API on loopback that serves one RayCluster to the bearer of one token;
    mode "forbid" answers 403, "silent" accepts connections and never answers."""

    def __init__(self, cr, token, mode="serve"):
        self.requests = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                api.requests.append((self.path, self.headers.get("Authorization")))
                meta = cr["metadata"]
                path = f"/apis/ray.io/v1/namespaces/{meta['namespace']}/rayclusters/{meta['name']}"
                if mode == "silent":
                    time.sleep(30)
                    return
                if mode == "forbid" or self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_error(403, "Forbidden")
                elif self.path != path:
                    self.send_error(404, "Not Found")
                else:
                    body = json.dumps(cr).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """The environment of a Ray container in a KubeRay pod: the cluster's name and namespace and
    the service account's token."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("the-token\n")
    monkeypatch.setenv("VGRAY_K8S_ACCOUNT", str(account))
    monkeypatch.setenv("RAY_CLUSTER_NAME", "vgray")
    monkeypatch.setenv("RAY_CLUSTER_NAMESPACE", "vgray-ns")
    return monkeypatch


def test_node_types_read_from_the_api_are_those_of_rays_converter(pod):
    cr = raycluster()
    with FakeApi(cr, "the-token") as url:
        pod.setenv("VGRAY_K8S_API", url)
        config, where, note = kuberay.autoscaling_config()
    assert (where, note) == ("RayCluster vgray-ns/vgray", "")
    ours, head = node_types(config, {})
    theirs, their_head = node_types(kuberay.to_autoscaling_config(cr), {})
    assert (ours, head) == (theirs, their_head)
    by_name = {t.name: t for t in ours}
    assert head == "headgroup" and set(by_name) == {"cpu", "gpu"}
    assert by_name["cpu"].cpus() == 8 and not by_name["cpu"].gpus() and by_name["cpu"].room == 8
    assert by_name["gpu"].gpus() == 1 and by_name["gpu"].room == 2
    assert (by_name["gpu"].min_count, by_name["gpu"].max_count) == (0, 2)


@pytest.mark.parametrize("mode, said", [("forbid", "HTTP 403"), ("silent", "timed out")])
def test_an_api_that_refuses_or_does_not_answer_falls_back_at_once(pod, mode, said):
    with FakeApi(raycluster(), "the-token", mode) as url:
        pod.setenv("VGRAY_K8S_API", url)
        t = time.perf_counter()
        config, where, note = kuberay.autoscaling_config()
        seconds = time.perf_counter() - t
    assert config is None and where is None
    assert note.startswith("cannot read the RayCluster vgray-ns/vgray (") and said in note
    assert note.endswith("node types unknown") and "\n" not in note
    assert seconds < 5


def test_a_wrong_token_is_refused_and_said(pod):
    pod.setenv("VGRAY_K8S_ACCOUNT", "/nonexistent")  # no token: the API refuses
    with FakeApi(raycluster(), "the-token") as url:
        pod.setenv("VGRAY_K8S_API", url)
        config, _, note = kuberay.autoscaling_config()
    assert config is None and "HTTP 403" in note and "may not get rayclusters" in note


def test_no_api_at_all_is_one_note(pod):
    pod.delenv("VGRAY_K8S_API", raising=False)
    pod.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config, _, note = kuberay.autoscaling_config()
    assert config is None and "KUBERNETES_SERVICE_HOST is not set" in note


def test_a_closed_port_is_one_note(pod):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pod.setenv("VGRAY_K8S_API", f"http://127.0.0.1:{port}")
    config, _, note = kuberay.autoscaling_config()
    assert config is None and "Connection" in note


def test_on_kuberay_the_raycluster_answers_where_no_monitor_runs_here(pod, monkeypatch):
    """The order of the sources: no GCS config, no monitor on this machine (KubeRay's runs in
    a container of its own), so the RayCluster answers; where it cannot, one note and unknown."""
    from vgray.clusters import autoscale

    monkeypatch.setattr(autoscale, "gcs_cluster_config", lambda: None)
    monkeypatch.setattr(autoscale, "find_monitor", lambda *a, **k: None)
    with FakeApi(raycluster(), "the-token") as url:
        pod.setenv("VGRAY_K8S_API", url)
        notes = []
        config, source = autoscale.autoscaler_config(None, True, notes)
    assert source == "RayCluster vgray-ns/vgray" and notes == []
    assert config == kuberay.to_autoscaling_config(raycluster())
    with FakeApi(raycluster(), "the-token", "forbid") as url:
        pod.setenv("VGRAY_K8S_API", url)
        notes = []
        assert autoscale.autoscaler_config(None, True, notes) == (None, None)
    assert len(notes) == 1 and "HTTP 403" in notes[0]
