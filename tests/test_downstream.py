"""`vgray check --for bmt|mdvc`: a RUN in the paper's configuration (1024-d rgb + flow, dim 128)
is readable by both models; each broken case is named in one line; train and embed warn when
their settings make outputs MDVC cannot read."""

import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.synth import make_corpus

SMALL = ["--vocab-size", "4", "--epochs", "20"]


def run_cli(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    both = make_corpus(str(root / "both"), videos=12, dim=1024, words=4, topics=2, flow=True,
                       flow_dim=1024, min_clips=6, max_clips=10, seed=2)
    rgb = make_corpus(str(root / "rgb"), videos=6, dim=1024, words=4, topics=2, min_clips=6,
                      max_clips=10, seed=3)
    return {"root": root, "both": both["features"], "rgb": rgb["features"]}


@pytest.fixture(scope="module")
def paper_run(ray_session, corpora):
    out = str(corpora["root"] / "paper")
    output = run_cli("train", corpora["both"], "--out", out, "--dim", "128", *SMALL)
    return out, output


def test_the_paper_configuration_passes_for_both(paper_run, corpora):
    run, output = paper_run
    assert "warning" not in output
    bmt = run_cli("check", run, "--for", "bmt")
    assert bmt.strip() == (f"BMT can read it: --video_features_path {corpora['both']} "
                           f"--audio_features_path {run}/embeddings --d_vid 1024 --d_aud 128 "
                           "(12 videos)")
    mdvc = run_cli("check", run, "--for", "mdvc")
    assert mdvc.strip() == (f"MDVC can read it: --video_features_path {run}/concat "
                            f"--audio_features_path {run}/embeddings (12 videos)")


def test_dim_64_fails_mdvc_in_one_line_and_train_warns(ray_session, corpora):
    run = str(corpora["root"] / "dim64")
    output = run_cli("train", corpora["both"], "--out", run, "--dim", "64", "-q", *SMALL)
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: MDVC cannot read this RUN as it is: concat rgb is 1024 + 64 = "
                        "1088 wide, MDVC asserts 1152; concat flow is 1024 + 64 = 1088 wide, MDVC "
                        "asserts 1152; embeddings are 64 wide (--dim), MDVC asserts 128. BMT can "
                        "(--d_aud 64); see vgray check."]
    lines = run_cli("check", run, "--for", "mdvc", code=1).splitlines()
    first = sorted(os.listdir(os.path.join(run, "embeddings")))[0][:-4]
    assert lines == [
        f"{run}/concat/{first}_rgb.npy: width 1088, MDVC asserts 1152 (1024 + 128) (and 11 more files like it)",
        f"{run}/concat/{first}_flow.npy: width 1088, MDVC asserts 1152 (1024 + 128) (and 11 more files like it)",
        f"{run}/embeddings/{first}.npy: width 64, MDVC asserts 128 (and 11 more files like it)",
        "MDVC cannot read it as it is: 36 problems in 12 videos"]
    assert len(run_cli("check", run, "--for", "mdvc", "--all", code=1).splitlines()) == 37
    assert "--d_aud 64 (12 videos)" in run_cli("check", run, "--for", "bmt")


def test_no_flow_fails_mdvc_and_bmt(ray_session, corpora):
    run = str(corpora["root"] / "noflow")
    output = run_cli("train", corpora["rgb"], "--out", run, "--dim", "128", "-q", *SMALL)
    assert "warning: MDVC cannot read this RUN as it is: without flow features there is no " \
           "concat/{id}_flow.npy. BMT can (--d_aud 128); see vgray check." in output
    lines = run_cli("check", run, "--for", "mdvc", code=1).splitlines()
    assert len(lines) == 2 and lines[0].endswith(
        "_flow.npy: missing; MDVC needs it; the corpus has no flow features (and 5 more files like it)")
    assert "_rgb.npy: width 1152" not in "\n".join(lines)  # rgb + 128 is right
    bmt = run_cli("check", run, "--for", "bmt", code=1).splitlines()
    assert bmt[0].startswith(corpora["rgb"]) and "missing; BMT's video stream needs it" in bmt[0]


def test_a_missing_embedding_fails_bmt_naming_the_zero_fill(paper_run, corpora, tmp_path):
    run, _ = paper_run
    out = str(tmp_path / "embedded")
    output = run_cli("embed", run, corpora["both"], "--out", out)
    assert "warning" not in output
    assert "BMT can read it" in run_cli("check", out, "--for", "bmt")
    victim = sorted(os.listdir(os.path.join(out, "embeddings")))[3]
    os.remove(os.path.join(out, "embeddings", victim))
    lines = run_cli("check", out, "--for", "bmt", code=1).splitlines()
    assert lines == [f"{out}/embeddings/{victim}: missing; BMT fills its audio stream with zeros "
                     "for it, silently",
                     "BMT cannot read it as it is: 1 problems in 12 videos"]


def test_unequal_t_is_named(paper_run, tmp_path):
    run, _ = paper_run
    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    name = sorted(os.listdir(os.path.join(copy, "embeddings")))[0]
    path = os.path.join(copy, "embeddings", name)
    np.save(path, np.load(path)[:-1], allow_pickle=False)
    lines = run_cli("check", copy, "--for", "mdvc", code=1).splitlines()
    assert len(lines) == 2 and lines[0].startswith(path) and "must have one T" in lines[0]


def test_a_run_without_embeddings_is_one_line(ray_session, corpora, tmp_path):
    from vgray.sweep import sweep

    out = str(tmp_path / "sweep")
    from vgray.config import TrainConfig

    sweep(corpora["both"], out, [4], [5], [128], TrainConfig(epochs=20))
    output = run_cli("check", os.path.join(out, "K4-w5-d128"), "--for", "mdvc", code=1)
    assert output.startswith("error: ") and "has no embeddings" in output
    assert "--for must be one of bmt, mdvc" in run_cli("check", out, "--for", "x", code=1)
