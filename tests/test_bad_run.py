"""`vgray assign`/`embed` with a RUN that does not fit, is incomplete or is corrupt: one line,
exit 1, nothing written to --out; nothing in a model file is ever unpickled."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.synth import make_corpus

ARGS = ["--vocab-size", "6", "--dim", "4", "--epochs", "20", "--shard-clips", "60", "-q"]


class Trap:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("badrun")
    info = make_corpus(str(root / "c"), videos=10, dim=8, words=6, topics=2)
    run = str(root / "run")
    result = CliRunner().invoke(app, ["train", info["features"], "--out", run, *ARGS])
    assert result.exit_code == 0, result.output
    return {"features": info["features"], "run": run, "root": root}


def broken_copy(trained, tmp_path, change):
    run = str(tmp_path / "run")
    shutil.copytree(trained["run"], run)
    change(run)
    return run


def invoke(command, run, features, out):
    result = CliRunner().invoke(app, [command, run, features, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert not os.path.exists(out), "nothing may be written"
    return result.output


def test_corpus_of_another_width(trained, tmp_path):
    other = make_corpus(str(tmp_path / "wide"), videos=4, dim=16, words=6, topics=2)
    for command in ("assign", "embed"):
        line = invoke(command, trained["run"], other["features"], tmp_path / command)
        assert "D = 16 but the RUN has D = 8" in line


def test_incomplete_run(trained, tmp_path):
    def unfinish(run):
        path = os.path.join(run, "manifest.json")
        manifest = json.load(open(path))
        manifest["stages"]["glove"]["status"] = "running"
        json.dump(manifest, open(path, "w"))

    run = broken_copy(trained, tmp_path, unfinish)
    assert "incomplete (stage glove not done)" in invoke("embed", run, trained["features"], tmp_path / "o")


@pytest.mark.parametrize("name,damage,expect", [
    ("vocab/centroids.npy", "truncate", "cannot load"),
    ("vocab/centroids.npy", "nan", "non-finite"),
    ("vocab/centroids.npy", "shape", "has 3 words, the manifest says 6"),
    ("vocab/centroids.npy", "int", "should be float32"),
    ("glove/vectors.npy", "truncate", "cannot load"),
    ("glove/vectors.npy", "nan", "non-finite"),
    ("glove/vectors.npy", "shape", "has shape (6, 5), expected (6, 4)"),
    ("glove/vectors.npy", "pickle", "cannot load"),
    ("vocab/centroids.npy", "pickle", "cannot load"),
    ("manifest.json", "garbage", "manifest.json is unreadable"),
])
def test_corrupt_model_files(trained, tmp_path, name, damage, expect):
    marker = str(tmp_path / "unpickled")

    def corrupt(run):
        path = os.path.join(run, name)
        if damage == "truncate":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
        elif damage == "garbage":
            open(path, "w").write("{not json")
        elif damage == "pickle":
            array = np.empty((6, 4), dtype=object)
            array[:] = Trap(marker)
            np.save(path, array, allow_pickle=True)
        else:
            array = np.load(path)
            if damage == "nan":
                array[1, 2] = np.nan
            elif damage == "shape":
                array = array[:3] if "centroids" in name else np.zeros((6, 5), np.float32)
            elif damage == "int":
                array = array.astype(np.int32)
            np.save(path, array)

    run = broken_copy(trained, tmp_path, corrupt)
    command = "embed" if "glove" in name or name == "manifest.json" else "assign"
    assert expect in invoke(command, run, trained["features"], tmp_path / "o")
    assert not os.path.exists(marker), "a model file was unpickled"
