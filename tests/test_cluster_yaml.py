"""cluster.yaml parses, passes Ray's own schema, and can place every stage vgray runs."""

import os

import pytest
import yaml

from vgray import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_passes_ray_schema(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # the launcher's own checks, offline


def test_node_types(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head does no heavy work
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert any(t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU")
               for t in workers.values())
    assert any("vgray" in c for c in config["setup_commands"])


def stage_requests():
    """What each Ray piece of the pipeline asks for, read from the pieces themselves."""
    def opts(remote):
        return getattr(remote, "_default_options", None) or remote.__ray_metadata__.__dict__

    requests = {}
    for name in ("ShardWorker", "GloveTrainer", "fit_vocabulary", "reduce_partition", "embed_shard"):
        remote = getattr(pipeline, name)
        o = opts(remote)
        requests[name] = {"CPU": o.get("num_cpus", 1) or 0, "GPU": o.get("num_gpus", 0) or 0}
    # k-means and GloVe also run with num_gpus=1 when the cluster has GPUs.
    requests["fit_vocabulary (GPU)"] = {**requests["fit_vocabulary"], "GPU": 1}
    requests["GloveTrainer (GPU)"] = {**requests["GloveTrainer"], "GPU": 1}
    return requests


@pytest.mark.parametrize("stage,request_", sorted(stage_requests().items()))
def test_every_stage_fits_some_node_type(config, stage, request_):
    assert request_["CPU"] >= 1  # sanity: the options were read
    fits = [name for name, t in config["available_node_types"].items()
            if all(t["resources"].get(r, 0) >= n for r, n in request_.items())]
    assert fits, f"{stage} asks for {request_}, which no node type has"


def test_no_port_open_to_the_world(config):
    text = yaml.safe_dump(config)
    assert "0.0.0.0/0" not in text and "::/0" not in text
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
