"""`vgray check --for bmt|mdvc`: a RUN in the paper's configuration (1024-d rgb + flow, dim 128)
is readable by both models; each broken case is named in one line; train and embed warn when
their settings make outputs MDVC or BMT cannot read, with the verdict `check` gives."""

import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.synth import make_corpus

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
    synth = make_corpus(str(root / "synth"), videos=6, words=4, topics=2, flow=True, min_clips=6,
                        max_clips=10, seed=4)  # vgray synth's widths: rgb 64, flow 32
    return {"root": root, "both": both["features"], "rgb": rgb["features"],
            "synth": synth["features"]}


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


@pytest.fixture(scope="module")
def dim64_run(ray_session, corpora):
    out = str(corpora["root"] / "dim64")
    return out, run_cli("train", corpora["both"], "--out", out, "--dim", "64", "-q", *SMALL)


def test_dim_64_fails_mdvc_in_one_line_and_train_warns(dim64_run):
    run, output = dim64_run
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: MDVC cannot read this RUN as it is: concat rgb is 1024 + 64 = "
                        "1088 wide, MDVC asserts 1152; concat flow is 1024 + 64 = 1088 wide, MDVC "
                        "asserts 1152; embeddings are 64 wide (--dim), MDVC asserts 128. BMT can "
                        "(--d_vid 1024 --d_aud 64); see vgray check."]
    lines = run_cli("check", run, "--for", "mdvc", code=1).splitlines()
    assert lines == [  # the settings' reasons, as the warning gives them; no file besides
        f"{run}: concat rgb is 1024 + 64 = 1088 wide, MDVC asserts 1152",
        f"{run}: concat flow is 1024 + 64 = 1088 wide, MDVC asserts 1152",
        f"{run}: embeddings are 64 wide (--dim), MDVC asserts 128",
        "MDVC cannot read it as it is: 3 problems in 12 videos"]
    assert run_cli("check", run, "--for", "mdvc", "--all", code=1).splitlines() == lines
    assert "--d_vid 1024 --d_aud 64 (12 videos)" in run_cli("check", run, "--for", "bmt")


def test_a_file_of_another_width_than_the_settings_is_named(dim64_run, tmp_path):
    run = str(tmp_path / "dim64")
    shutil.copytree(dim64_run[0], run)
    name = sorted(os.listdir(os.path.join(run, "embeddings")))[2]
    path = os.path.join(run, "concat", name[:-4] + "_rgb.npy")
    np.save(path, np.load(path)[:, :-1], allow_pickle=False)
    lines = run_cli("check", run, "--for", "mdvc", code=1).splitlines()
    assert lines[3] == f"{path}: width 1087, MDVC asserts 1152 (1024 + 128)"
    assert lines[-1] == "MDVC cannot read it as it is: 4 problems in 12 videos"


def test_train_and_check_agree_on_bmt_for_unequal_rgb_and_flow(ray_session, corpora):
    run = str(corpora["root"] / "synth-run")
    output = run_cli("train", corpora["synth"], "--out", run, "-q", *SMALL)
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: MDVC cannot read this RUN as it is: concat rgb is 64 + 128 = "
                        "192 wide, MDVC asserts 1152; concat flow is 32 + 128 = 160 wide, MDVC "
                        "asserts 1152. BMT cannot read this RUN as it is: rgb is 64 wide, flow 32; "
                        "BMT's --d_vid is one width for both (its loader asserts that rgb and "
                        "flow have one shape); see vgray check."]
    assert "BMT can (" not in output
    assert run_cli("check", run, "--for", "bmt", code=1).splitlines() == [
        f"{corpora['synth']}: rgb is 64 wide, flow 32; BMT's --d_vid is one width for both (its "
        "loader asserts that rgb and flow have one shape)",
        "BMT cannot read it as it is: 1 problem in 6 videos"]


def test_no_flow_fails_mdvc_and_bmt(ray_session, corpora):
    run = str(corpora["root"] / "noflow")
    output = run_cli("train", corpora["rgb"], "--out", run, "--dim", "128", "-q", *SMALL)
    assert "warning: MDVC cannot read this RUN as it is: without flow features there is no " \
           "concat/{id}_flow.npy. BMT cannot read this RUN as it is: without flow features " \
           "there is no {id}_flow.npy, which BMT's video stream reads; see vgray check." in output
    lines = run_cli("check", run, "--for", "mdvc", code=1).splitlines()
    assert lines == [f"{run}: without flow features there is no concat/{{id}}_flow.npy",
                     "MDVC cannot read it as it is: 1 problem in 6 videos"]  # rgb + 128 is right
    assert run_cli("check", run, "--for", "bmt", code=1).splitlines() == [
        f"{corpora['rgb']}: without flow features there is no {{id}}_flow.npy, which BMT's video "
        "stream reads", "BMT cannot read it as it is: 1 problem in 6 videos"]


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
                     "BMT cannot read it as it is: 1 problem in 12 videos"]


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
    from vgray.commands.sweep import sweep

    out = str(tmp_path / "sweep")
    from vgray.config import TrainConfig

    sweep(corpora["both"], out, vocab_sizes=[4], windows=[5], dims=[128],
          config=TrainConfig(epochs=20))
    output = run_cli("check", os.path.join(out, "K4-w5-d128"), "--for", "mdvc", code=1)
    assert output.startswith("error: ") and "has no embeddings" in output
    assert "'x' is not one of 'bmt', 'mdvc'" in run_cli("check", out, "--for", "x", code=2)


def test_what_the_settings_decide_for_each_model():
    from vgray.features.corpus import SINGLE_STREAM, TWO_STREAM
    from vgray.commands.downstream import Settings, cannot_read

    assert cannot_read(Settings(TWO_STREAM, 1024, 1024, 128)) == {"bmt": [], "mdvc": []}
    equal = cannot_read(Settings(TWO_STREAM, 512, 512, 128))  # any one width fits BMT
    assert equal["bmt"] == [] and len(equal["mdvc"]) == 2
    unequal = cannot_read(Settings(TWO_STREAM, 1024, 512, 128))
    assert unequal["bmt"] == ["rgb is 1024 wide, flow 512; BMT's --d_vid is one width for both "
                              "(its loader asserts that rgb and flow have one shape)"]
    assert unequal["mdvc"] == ["concat flow is 512 + 128 = 640 wide, MDVC asserts 1152"]
    single = cannot_read(Settings(SINGLE_STREAM, 1024, None, 128))
    assert single["bmt"] == ["the single-stream layout ({id}.npy); BMT reads {id}_rgb.npy and "
                             "{id}_flow.npy"]
    assert single["mdvc"] == ["the single-stream layout gives concat/{id}.npy, MDVC reads "
                              "{id}_rgb.npy and {id}_flow.npy"]
