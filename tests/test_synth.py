"""`vgray synth`: labels.json holds the planted topics as `vgray evaluate --labels` reads them; a
non-empty OUT is refused unless --force, which replaces the old corpus so none of it remains
and removes nothing synth did not write."""

import json
import os

import pyarrow.parquet as pq
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.evaluate import read_labels

SMALL = ["--dim", "4", "--words", "4", "--topics", "2", "--min-clips", "2", "--max-clips", "4"]


def synth(*args):
    return CliRunner().invoke(app, ["synth", *map(str, args), *SMALL])


def videos_in(out):
    return sorted({n.rsplit("_", 1)[0] for n in os.listdir(os.path.join(out, "features"))})


def test_labels_are_the_planted_topics_as_evaluate_reads_them(tmp_path):
    out = tmp_path / "c"
    result = synth(out, "--videos", "12")
    assert result.exit_code == 0, result.output
    assert f"labels in {out / 'labels.json'}" in result.output
    truth = pq.read_table(out / "truth.parquet").to_pydict()
    labels = read_labels(str(out / "labels.json"))
    assert labels == {v: str(t) for v, t in zip(truth["video_id"], truth["topic"])}
    assert sorted(labels) == videos_in(out) and len(set(labels.values())) == 2
    train = json.load(open(out / "train_ids.json"))
    assert len(train) == round(0.8 * 12) and set(train) <= set(labels)


def test_a_non_empty_out_is_refused_and_force_replaces_it(tmp_path):
    out = tmp_path / "c"
    assert synth(out, "--videos", "30").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = sorted(os.listdir(out / "features"))

    refused = synth(out, "--videos", "10")
    assert refused.exit_code == 1
    line, = refused.output.strip().splitlines()
    assert line.startswith(f"error: {out} is not empty; pass --force") and "Traceback" not in line
    assert sorted(os.listdir(out / "features")) == before  # nothing written, nothing removed

    replaced = synth(out, "--videos", "10", "--force")
    assert replaced.exit_code == 0, replaced.output
    ids = [f"v_{v:05d}" for v in range(10)]
    assert videos_in(out) == ids  # none of the 30 old videos left
    assert sorted(json.load(open(out / "labels.json"))) == ids
    assert pq.read_table(out / "truth.parquet").num_rows == 10
    assert json.load(open(out / "synth.json"))["videos"] == 10
    assert set(json.load(open(out / "train_ids.json"))) <= set(ids)
    assert (out / "notes.txt").read_text() == "mine"  # not synth's: kept


def test_force_never_removes_what_synth_did_not_write(tmp_path):
    out = tmp_path / "data"
    (out / "features").mkdir(parents=True)
    (out / "features" / "clip_a.npy").write_bytes(b"real features")
    (out / "labels.json").write_text("{}")
    result = synth(out, "--videos", "4", "--force")
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert line.startswith(f"error: {out} holds features, labels.json but is not an output of "
                           "vgray synth")
    assert sorted(os.listdir(out)) == ["features", "labels.json"]
    assert os.listdir(out / "features") == ["clip_a.npy"]

    # With none of synth's names in OUT there is nothing to replace: written beside the rest.
    other = tmp_path / "other"
    other.mkdir()
    (other / "README").write_text("keep")
    assert synth(other, "--videos", "4", "--force").exit_code == 0
    assert (other / "README").read_text() == "keep" and len(videos_in(other)) == 4


def test_a_synth_cut_short_is_replaced_with_force(tmp_path):
    out = tmp_path / "c"
    assert synth(out, "--videos", "6").exit_code == 0
    os.remove(out / "synth.json")  # written last: a synth killed before the end has none
    assert synth(out, "--videos", "3", "--force").exit_code == 0
    assert videos_in(out) == ["v_00000", "v_00001", "v_00002"]


def test_out_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    result = synth(path, "--force")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {path} is not a directory"]
    assert path.read_text() == "x"
