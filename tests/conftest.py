import os

import numpy as np
import pytest

from vgray.synth import make_corpus


@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray for the tests of one module, stopped when the module is done so that
    the clusters other modules start (a `ray start --head`, a simulated multi-node cluster)
    never share the machine with it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small synthetic two-stream corpus with planted words and topics."""
    root = tmp_path_factory.mktemp("synth")
    info = make_corpus(str(root), videos=60, dim=16, words=12, topics=3, flow=True, flow_dim=8,
                       min_clips=8, max_clips=30, seed=1)
    return {"root": str(root), **info}


def write_npy(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array, allow_pickle=True)
