"""Error paths of the commands and of the Python API that the rest of the fast tier did not reach
(measured with coverage over the fast tier): each is one clear line, exit 1 on the command line,
on small data and without Ray where the refusal needs none."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.errors import VgrayError


def refused(*args) -> str:
    """`vgray ARGS` in this process, which must exit 1 with one line `error: ...`: that line."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) >= 1, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's trained run, to take parts of it away."""
    copy = str(tmp_path / "run")
    shutil.copytree(trained_run[0], copy)
    return copy


def json_file(tmp_path, value, name="labels.json") -> str:
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def test_out_must_not_be_the_run(trained_run, corpus):
    run = trained_run[0]
    assert refused("embed", run, corpus["features"], "--out", run) == (
        "error: --out must be another directory than RUN")


def test_check_of_a_directory_that_is_no_run(tmp_path):
    assert refused("check", tmp_path, "--for", "bmt") == (
        f"error: {tmp_path} is not a run of vgray train or vgray embed (no manifest.json)")


@pytest.mark.parametrize("gone, said", [("tokens", "has no tokens"),
                                        ("cooccur", "has no co-occurrence counts (cooccur/)")])
def test_evaluate_of_a_run_missing_its_outputs(run_copy, gone, said):
    shutil.rmtree(os.path.join(run_copy, gone))
    assert refused("evaluate", run_copy).endswith(said)


def test_evaluate_refuses_labels_it_cannot_use(trained_run, corpus, tmp_path):
    run = trained_run[0]
    ids = sorted(json.load(open(corpus["labels"])))
    missing = str(tmp_path / "no-such.json")
    assert refused("evaluate", run, "--labels", missing).startswith(
        f"error: cannot read --labels {missing}: ")
    listed = json_file(tmp_path, {ids[0]: [1, 2]})
    assert refused("evaluate", run, "--labels", listed) == (
        f"error: --labels {listed}: the class of {ids[0]!r} must be a string or a number")
    lonely = json_file(tmp_path, {**{v: "a" for v in ids[:5]}, ids[5]: "b"})
    assert refused("evaluate", run, "--labels", lonely) == (
        "error: class 'b' has 1 labelled video; every class needs at least 2 for a "
        "cross-validated probe")


def test_evaluate_names_labelled_videos_missing_from_features(trained_run, corpus, tmp_path):
    """FEATURES given to evaluate lacks videos that RUN has and the labels name."""
    run = trained_run[0]
    part = tmp_path / "features"
    part.mkdir()
    names = sorted(os.listdir(corpus["features"]))
    first = names[0].rsplit("_", 1)[0]  # v_00000: its rgb and flow files are left out
    for name in (n for n in names if n.rsplit("_", 1)[0] != first):
        shutil.copy(os.path.join(corpus["features"], name), part / name)
    said = refused("evaluate", run, part, "--labels", corpus["labels"])
    assert said.startswith("error: 1 labelled videos are not in FEATURES ") and "(first: " in said


def test_train_ids_that_name_no_video_of_features(ray_session, corpus, tmp_path):
    ids = json_file(tmp_path, ["no-such-video", "nor-this-one"], "train_ids.json")
    assert refused("train", corpus["features"], "--out", tmp_path / "run", "--train-ids", ids,
                   "--vocab-size", "3", "-q") == ("error: none of the --train-ids has usable "
                                                  "features (none has a file in FEATURES)")
    assert not os.path.exists(tmp_path / "run" / "glove")


def test_export_of_a_run_without_tokens(run_copy, tmp_path):
    shutil.rmtree(os.path.join(run_copy, "tokens"))
    assert refused("export", run_copy, "--format", "parquet", "--out", tmp_path / "x").endswith(
        "has no tokens/part-*.parquet")


def test_the_python_api_refuses_what_the_command_line_cannot_pass(trained_run, tmp_path):
    """Choices the command line checks before vgray sees them, and the sweep's empty grid:
    one-line errors to a Python caller too."""
    from vgray.commands.downstream import check
    from vgray.commands.export import export
    from vgray.commands.sweep import sweep
    from vgray.model import VisualGlove

    with pytest.raises(VgrayError, match="^--format must be one of .*, got 'nope'$"):
        export(trained_run[0], "nope", str(tmp_path / "x"))
    with pytest.raises(VgrayError, match="^--for must be one of .*, got 'nope'$"):
        check(trained_run[0], "nope")
    with pytest.raises(VgrayError, match="^--vocab-size, --window and --dim each need at least "
                                         "one value$"):
        sweep(str(tmp_path), str(tmp_path / "s"), vocab_sizes=[], windows=[2], dims=[4])
    with pytest.raises(VgrayError, match=r"^centroids \(3, 4\) and vectors \(2, 8\) do not "):
        VisualGlove(np.zeros((3, 4)), np.zeros((2, 8)))


def test_features_that_are_a_file_of_another_form(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not features")
    for fmt in ("npy", "pt"):  # (a webdataset or Parquet FEATURES may be one file)
        assert refused("train", text, "--out", tmp_path / f"run-{fmt}", "--format", fmt) == (
            f"error: FEATURES {text} is not a directory")
    assert refused("train", tmp_path / "gone.h5", "--out", tmp_path / "r", "--format",
                   "hdf5") == f"error: FEATURES {tmp_path / 'gone.h5'} does not exist"
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert refused("train", broken, "--out", tmp_path / "r2").startswith(
        f"error: cannot open the HDF5 file {broken}: ")


@pytest.mark.parametrize("damage, said", [
    ("vectors", "glove/vectors.npy should be 2-D, is 1-D"),
    ("config", "manifest.json is unreadable: manifest field config is missing"),
    ("malformed", "manifest field config is malformed: "),
])
def test_a_damaged_run_is_named(run_copy, corpus, tmp_path, damage, said):
    path = os.path.join(run_copy, "manifest.json")
    manifest = json.load(open(path))
    if damage == "vectors":
        np.save(os.path.join(run_copy, "glove", "vectors.npy"), np.zeros(3, np.float32))
    elif damage == "config":
        del manifest["config"]
    else:
        manifest["config"]["vocab_size"] = "many"
    with open(path, "w") as f:
        json.dump(manifest, f)
    assert said in refused("embed", run_copy, corpus["features"], "--out", tmp_path / "e")


# What the readers say of a video that holds no [T, D] float features: the reason of its skip
# (a train records it in skipped.jsonl; test_formats trains on broken members of every form).

def reason(call, *args) -> str:
    from vgray.errors import BadVideo

    with pytest.raises(BadVideo) as caught:
        call(*args)
    return str(caught.value)


def test_parquet_cells_that_hold_no_features():
    import pyarrow as pa

    from vgray.features.format_parquet import list_rows

    clips = pa.list_(pa.float32())
    assert reason(list_rows, None, "rgb") == "rgb: null"
    assert reason(list_rows, pa.array([[1, 2]], pa.list_(pa.int32())), "rgb") == (
        "rgb: not a list of lists of float")
    assert reason(list_rows, pa.array([], clips), "rgb") == "rgb: no clips (T = 0)"
    assert reason(list_rows, pa.array([[1.0, 2.0], [3.0]], clips), "rgb") == (
        "rgb: clips of different widths")
    assert reason(list_rows, pa.array([[1.0, None]], clips), "rgb") == "rgb: a null value"
    assert reason(list_rows, pa.array([[], []], clips), "rgb") == (
        "rgb: zero-width features (D = 0)")


def test_pt_files_that_hold_no_float_tensor(tmp_path):
    import torch

    from vgray.features.format_pt import pt_shape

    torch.save(torch.zeros(4, 3, dtype=torch.int64), tmp_path / "ints.pt")
    torch.save({"rgb": torch.zeros(4, 3)}, tmp_path / "dict.pt")
    assert reason(pt_shape, str(tmp_path / "ints.pt")) == (
        "dtype torch.int64 is not a floating-point type")
    assert reason(pt_shape, str(tmp_path / "dict.pt")) == "holds a dict, not one tensor"
    assert reason(pt_shape, str(tmp_path / "gone.pt")) == (
        "unreadable file: not found (removed since it was listed?)")


@pytest.mark.parametrize("shape, dtype, said", [
    ((4, 3), "int32", "rgb: dtype int32 is not a floating-point type"),
    ((4, 3, 2), "float32", "rgb: expected a 2-D [T, D] array, got shape (4, 3, 2)"),
    ((0, 3), "float32", "rgb: no clips (T = 0)"),
    ((4, 0), "float32", "rgb: zero-width features (D = 0)")])
def test_shapes_and_dtypes_that_are_no_features(shape, dtype, said):
    from vgray.features.format_base import float_shape

    assert reason(float_shape, shape, np.dtype(dtype), "rgb") == said


def test_hdf5_groups_without_the_dataset_asked_for(tmp_path):
    import h5py

    from vgray.features.format_hdf5 import h5_streams

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("a/x", data=np.zeros((3, 2), np.float32))
        f.create_dataset("a/y", data=np.zeros((3, 2), np.float32))
        f.create_dataset("b/i3d/flow", data=np.zeros((3, 2), np.float32))
        assert reason(h5_streams, f["a"], None, None) == (
            "2 2-D float datasets in the group (x, y); choose one with --hdf5-key")
        assert reason(h5_streams, f["a"], "i3d", None) == "no 'i3d' in the group (it has x, y)"
        assert reason(h5_streams, f["b"], "i3d", None) == "the group 'i3d' has no 'rgb' dataset"


def test_a_webdataset_key_twice_in_one_shard(tmp_path):
    import io
    import tarfile

    from vgray.features.format_webdataset import member_video, tar_members

    path = str(tmp_path / "shard-0000.tar")
    with tarfile.open(path, "w") as tar:
        for name in ("a/v1.rgb.npy", "b/v1.rgb.npy", "v2.rgb.npy"):
            data = io.BytesIO()
            np.save(data, np.ones((3, 2), np.float32))
            member = tarfile.TarInfo(name)
            member.size = len(data.getvalue())
            tar.addfile(member, io.BytesIO(data.getvalue()))
    members = tar_members(path)
    skip = member_video(path, "v1", members["v1"], "rgb", "")
    assert (skip.video_id, skip.reason) == ("v1", "v1.rgb.npy is in the shard twice")
    assert member_video(path, "v2", members["v2"], "rgb", "").video_id == "v2"
