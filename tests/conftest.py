import os

import numpy as np
import pytest

from vgray.synth import make_corpus


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every test that needs it (started once, stopped at the end)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
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
