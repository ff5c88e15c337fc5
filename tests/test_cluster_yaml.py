"""cluster.yaml parses, passes Ray's own schema, and can place every stage vgray runs."""

import os

import pytest
import yaml

from vgray.run import worker

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
    """What each Ray piece of a run asks for, read from the pieces themselves."""
    o = worker.ShardWorker._default_options
    cpu = {"CPU": o.get("num_cpus", 1) or 0, "GPU": o.get("num_gpus", 0) or 0}
    # k-means and GloVe run on the GPU worker when the cluster can provide a GPU.
    gpu = {"CPU": worker.GPU_WORKER["num_cpus"], "GPU": worker.GPU_WORKER["num_gpus"]}
    return {"ShardWorker": cpu, "ShardWorker (GPU worker)": gpu}


@pytest.mark.parametrize("stage,request_", sorted(stage_requests().items()))
def test_every_stage_fits_some_node_type(config, stage, request_):
    assert request_["CPU"] + request_["GPU"] >= 1  # sanity: the options were read
    fits = [name for name, t in config["available_node_types"].items()
            if all(t["resources"].get(r, 0) >= n for r, n in request_.items())]
    assert fits, f"{stage} asks for {request_}, which no node type has"


def test_no_port_open_to_the_world(config):
    text = yaml.safe_dump(config)
    assert "0.0.0.0/0" not in text and "::/0" not in text
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]


def test_what_a_run_plans_on_it(config):
    """Read as vgray reads the autoscaler's copy of it on the head: shard work may grow to every
    CPU of the CPU type, and k-means and GloVe ask for the GPU type, from zero nodes."""
    from vgray.clusters.autoscale import Capacity, node_types
    from vgray.clusters.demand import plan_gpu

    types, head = node_types(config, {})
    cap = Capacity(0, 0, True, tuple(types), head)
    cpu = config["available_node_types"]["cpu_worker"]
    assert cap.cpus() == cpu["max_workers"] * cpu["resources"]["CPU"] == 128
    plan = plan_gpu("auto", cap)
    assert plan.request and plan.wait_s == 600 and "gpu_worker (CPU 8, GPU 1)" in plan.where
