"""Multi-node behaviour on a simulated cluster (ray.cluster_utils.Cluster, in a subprocess so
that it does not disturb the tests' own local Ray; one cluster, started once, runs the jobs of
every test in turn)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from vgray.commands.train import train
from vgray.commands.synth import make_corpus

from helpers import assert_same_results

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """The corpus and a single-node run of it with the same settings."""
    sys.path.insert(0, HERE)
    from cluster_job import CONFIG

    root = tmp_path_factory.mktemp("multinode")
    # ~110 shards: enough that the actors which start last still find work (the first one
    # ready takes shards while the others start; with ~35 shards it sometimes took them all).
    info = make_corpus(str(root / "c"), videos=120, dim=8, words=6, topics=2, min_clips=20,
                       max_clips=40)
    single = str(root / "single")
    train(info["features"], single, CONFIG)
    return info["features"], single


@pytest.fixture(scope="module")
def on_cluster(reference, tmp_path_factory):
    """The four jobs of this module's tests, in turn on one simulated cluster (started once):
    a train, a train that loses a node, a sweep, and a sweep once a node with a GPU has joined.
    Job -> (OUT, what cluster_job.py said of it)."""
    root = tmp_path_factory.mktemp("on-cluster")
    outs = {job: str(root / job) for job in ("train", "kill", "sweep", "gpu-sweep")}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, os.path.join(HERE, "cluster_job.py"), reference[0],
                           *(f"{job}={out}" for job, out in outs.items())],
                          capture_output=True, text=True, timeout=800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]
    assert [r["job"] for r in said] == list(outs)
    return {r["job"]: (outs[r["job"]], r) for r in said}


def nodes_used(out):
    return {json.load(open(m))["node"] for m in glob.glob(os.path.join(out, ".work", "assign", "*.json"))}


def test_three_nodes_share_the_work_with_identical_results(reference, on_cluster):
    _, single = reference
    out, result = on_cluster["train"]
    assert result["videos"] == 120
    assert len(nodes_used(out)) >= 2
    assert_same_results(single, out)


def test_worker_node_killed_mid_assignment(reference, on_cluster):
    _, single = reference
    out, result = on_cluster["kill"]
    assert result["killed_after"] and result["killed_after"][0] < 40  # mid-assignment
    assert result["videos"] == 120
    assert_same_results(single, out)  # nothing lost, nothing counted twice


@pytest.fixture(scope="module")
def single_sweep(reference, tmp_path_factory):
    from cluster_job import CONFIG, SWEEP

    from vgray.commands.sweep import sweep

    out = str(tmp_path_factory.mktemp("sweep") / "single")
    sweep(reference[0], out, **SWEEP, config=CONFIG)
    return out


def fits_of(out, single):
    """The stage records of each combination's GloVe fit; each combination equals the single-node
    sweep's."""
    fits = {}
    for path in sorted(glob.glob(os.path.join(out, "K*", "manifest.json"))):
        fits[path] = json.load(open(path))["stages"]["glove"]
        assert_same_results(os.path.dirname(path),
                            os.path.join(single, os.path.basename(os.path.dirname(path))))
    assert len(fits) == 8
    return fits


def test_a_sweep_fits_on_every_node_with_the_single_node_results(on_cluster, single_sweep):
    """The GloVe fits of a sweep run in parallel, one per node (each with every core of its
    node), and give what the same sweep gives on one node."""
    out, result = on_cluster["sweep"]
    assert result["videos"] == 8  # combinations
    fit_nodes = set()
    for fit in fits_of(out, single_sweep).values():
        fit_nodes |= set(fit["nodes"])
    assert len(fit_nodes) >= 2


def test_a_sweep_with_a_gpu_fits_on_the_gpu_worker(on_cluster, single_sweep):
    """With a GPU in the cluster, every fit goes to the GPU worker (here a fake GPU that torch
    cannot use: said, and computed on CPU), with the single-node results."""
    out, result = on_cluster["gpu-sweep"]
    assert result["videos"] == 8
    fits = fits_of(out, single_sweep).values()
    assert len({node for fit in fits for node in fit["nodes"]}) == 1
    assert all(fit["device"] == "cpu" and fit["device_note"] for fit in fits)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert all(v["vocab"]["device_note"] for v in manifest["vocabularies"].values())
