"""A new user's first hour (issue 21): a failed or refused command leaves --out as it found it,
--out is guarded, and every refusal that needs no cluster comes before Ray starts. Each command
runs as a user types it."""

import json
import os

import pytest
from typer.testing import CliRunner

import vgray
import vgray.run.workers
from vgray.cli import app
from vgray.rundir.store import RunLock
from vgray.commands.synth import make_corpus

ARGS = ["--vocab-size", "4", "--dim", "2", "--epochs", "5", "--workers", "1", "-q"]


def listing(path):
    return sorted(os.path.relpath(os.path.join(d, n), path)
                  for d, dirs, files in os.walk(path) for n in dirs + files)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("first-hour"))
    info = make_corpus(os.path.join(root, "c"), videos=10, dim=8, words=4, topics=2, seed=3)
    return {"root": root, **info}


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the command starts (or joins) Ray."""
    monkeypatch.setattr(vgray.run.workers, "connect_ray",
                        lambda *a, **k: pytest.fail("Ray was started for a refusal"))


def refused(*argv):
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output


def test_out_is_guarded_without_starting_ray(corpus, tmp_path, no_ray):
    features = corpus["features"]
    before = listing(corpus["root"])
    assert "is FEATURES" in refused("train", features, "--out", features, *ARGS)
    assert "inside FEATURES" in refused("train", features, "--out",
                                        os.path.join(features, "run"), *ARGS)
    # a directory that is not empty and is no vgray RUN (here: the corpus's own parent)
    assert "is not empty and is no vgray RUN" in refused(
        "train", features, "--out", os.path.dirname(features), *ARGS)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert "is a file, not a directory" in refused("train", features, "--out", str(afile), *ARGS)
    # the same guard for the commands that apply a RUN and for the sweep
    assert "is FEATURES" in refused("sweep", features, "--out", features, "--vocab-size", "3,4",
                                    "--window", "2", "--dim", "2", "--epochs", "5")
    assert listing(corpus["root"]) == before and afile.read_text() == "mine"


def test_refusals_from_the_listing_and_the_manifest_come_before_ray(corpus, tmp_path, no_ray):
    features = corpus["features"]
    out = str(tmp_path / "run")
    assert "is not a directory" in refused("train", str(tmp_path / "typo"), "--out", out, *ARGS)
    (tmp_path / "empty").mkdir()
    assert "no usable videos" in refused("train", str(tmp_path / "empty"), "--out", out, *ARGS)
    ids = tmp_path / "none.json"
    ids.write_text(json.dumps(["nope1", "nope2"]))
    assert "none of the --train-ids has usable features" in refused(
        "train", features, "--out", out, "--train-ids", str(ids), *ARGS)
    assert not os.path.exists(out)
    os.makedirs(out)
    holder = RunLock(out)  # as a vgray that is running on this --out holds it
    holder.acquire()
    try:
        assert "is in use by another vgray (pid" in refused("train", features, "--out", out,
                                                            *ARGS)
    finally:
        holder.release()
    assert os.listdir(out) == []


def test_a_failed_train_leaves_out_as_it_found_it_and_the_corrected_command_works(
        ray_session, corpus, tmp_path, no_ray, monkeypatch):
    features = corpus["features"]
    out = str(tmp_path / "run")
    ids = tmp_path / "none.json"
    ids.write_text(json.dumps(["nope1"]))
    refused("train", features, "--out", out, "--train-ids", str(ids), *ARGS)
    assert not os.path.exists(out)
    monkeypatch.undo()  # Ray may start from here on
    # a failure after the scan (more words than training clips): no manifest, no lock, nothing
    line = refused("train", features, "--out", out, *ARGS, "--vocab-size", "100000")
    assert "--vocab-size 100000 needs at least that many training clips" in line
    assert not os.path.exists(out)
    os.makedirs(out)  # an empty directory stays an empty directory
    refused("train", features, "--out", out, *ARGS, "--vocab-size", "100000")
    assert os.listdir(out) == []
    # the corrected command then works, and `evaluate` finds a finished RUN
    result = CliRunner().invoke(app, ["train", features, "--out", out, *ARGS])
    assert result.exit_code == 0, result.output
    assert json.load(open(os.path.join(out, "manifest.json")))["status"] == "complete"
    # a changed setting on the finished RUN: refused before Ray, the RUN unchanged
    before = {p: os.path.getmtime(os.path.join(out, p)) for p in listing(out)}
    monkeypatch.setattr(vgray.run.workers, "connect_ray",
                        lambda *a, **k: pytest.fail("Ray was started for a refusal"))
    assert "was made with --vocab-size 4, this run asks for 5" in refused(
        "train", features, "--out", out, *ARGS, "--vocab-size", "5")
    # `vgray info`: what the RUN holds, where, without Ray
    shown = CliRunner().invoke(app, ["info", out])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"{out}: vgray train, complete, made by vgray {vgray.__version__}"
    assert any(line.startswith("settings: --vocab-size 4, --window 5, --dim 2") for line in lines)
    assert any(line.startswith("corpus: 10 videos, ") for line in lines)
    assert any(line.startswith("stages: scan done (") and "embed done" in line for line in lines)
    assert f"{out}/embeddings/: 10 files, " in shown.output and f"{out}/concat/: 10 files" in shown.output
    assert "is no vgray RUN" in refused("info", features)
    line = refused("train", features, "--out", out, *ARGS, "--train-ids", corpus["train_ids"])
    assert "was made without --train-ids, this run asks for '" in line and "None" not in line
    assert "is FEATURES" in refused("embed", out, features, "--out", features)
    assert {p: os.path.getmtime(os.path.join(out, p)) for p in listing(out)} == before


def test_version_help_and_usage_errors_in_one_style(no_ray):
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"vgray {vgray.__version__}\n"
    result = CliRunner().invoke(app, ["train", "-h"])
    assert result.exit_code == 0
    for panel in ("Data", "Vocabulary", "GloVe", "Cluster", "Output"):
        assert f"─ {panel} ─" in result.output
    assert "<rgb|flow|rgb+flow>" in result.output and "<auto|cpu|cuda>" in result.output
    assert "<files|parquet>" in result.output and "<bool>" not in result.output
    assert "<bmt|mdvc>" in CliRunner().invoke(app, ["check", "-h"]).output
    # usage errors: one line, exit 2, the help to read, no DEBUG hint and no box
    for argv, says in ((["train", "F"], "Missing option '--out'"),
                       (["train", "F", "--out", "R", "--bogus"], "No such option: --bogus"),
                       (["train", "F", "--out", "R", "-k", "many"], "Invalid value for '--vocab-size'"),
                       (["train", "F", "--out", "R", "--device", "tpu"], "'tpu' is not one of")):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        [line] = result.output.splitlines()
        assert line.startswith("error: ") and says in line and line.endswith(" train --help)")
        assert "VGRAY_DEBUG" not in line
    # vgray's own refusals take no DEBUG hint either
    assert "VGRAY_DEBUG" not in refused("train", "/nonexistent/features", "--out", "/nonexistent/r")
