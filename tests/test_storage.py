"""FEATURES, --train-ids and --out as s3:// URIs, against a real S3-compatible server (moto in
server mode on loopback, started and stopped by this test), checked against the same run on
local files."""

import io
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.synth import make_corpus

from helpers import cooccur_of, tokens_of, upload_tree
from s3proxy import SECRET

pytestmark = pytest.mark.s3


def test_train_from_s3_to_s3_matches_local(ray_session, s3, tmp_path):
    info = make_corpus(str(tmp_path / "c"), videos=24, dim=8, words=6, topics=2, flow=True,
                       flow_dim=4, min_clips=8, max_clips=20)
    # One Fortran-order video: on object storage it is read whole, not by row ranges.
    fortran = os.path.join(info["features"], "v_00003_rgb.npy")
    np.save(fortran, np.asfortranarray(np.load(fortran)))
    upload_tree(s3["fs"], str(tmp_path / "c"), "vgray-test/corpus")
    args = ["--vocab-size", "6", "--dim", "4", "--epochs", "30", "--shard-clips", "100",
            "--workers", "2", "-q"]
    local = tmp_path / "local"
    result = CliRunner().invoke(app, ["train", info["features"], "--out", str(local),
                                      "--train-ids", info["train_ids"], *args])
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [sys.executable, "-m", "vgray.cli", "train", "s3://vgray-test/corpus/features",
         "--out", "s3://vgray-test/run", "--train-ids", "s3://vgray-test/corpus/train_ids.json",
         *args], env=s3["env"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("embedded 24 videos")

    remote = tmp_path / "downloaded"  # the run as written to S3, brought back to compare
    selector = pafs.FileSelector("vgray-test/run", recursive=True)
    names = []
    for entry in s3["fs"].get_file_info(selector):
        if entry.type == pafs.FileType.File:
            rel = entry.path[len("vgray-test/run/"):]
            names.append(rel)
            os.makedirs(remote / os.path.dirname(rel), exist_ok=True)
            with s3["fs"].open_input_file(entry.path) as f:
                (remote / rel).write_bytes(f.read())
    assert "manifest.json" in names and "glove/vectors.npy" in names
    assert not [n for n in names if ".tmp-" in n or n == ".lock"]
    assert SECRET not in done.stdout + done.stderr
    assert not [n for n in names if SECRET.encode() in (remote / n).read_bytes()]
    failed = subprocess.run(  # an error about the storage names no credential either
        [sys.executable, "-m", "vgray.cli", "train", "s3://no-such-bucket/features", "--out",
         "s3://vgray-test/run2", *args], env=s3["env"], capture_output=True, text=True, timeout=400)
    assert failed.returncode == 1 and failed.stderr.startswith("error: ")
    assert SECRET not in failed.stdout + failed.stderr
    a, b = tokens_of(str(local)), tokens_of(str(remote))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ca, cb = cooccur_of(str(local)), cooccur_of(str(remote))
    assert all(np.array_equal(ca[c], cb[c]) for c in ca)
    for vid in a:
        for rel in (f"embeddings/{vid}.npy", f"concat/{vid}_rgb.npy", f"concat/{vid}_flow.npy"):
            np.testing.assert_array_equal(np.load(local / rel), np.load(io.BytesIO((remote / rel).read_bytes())))

    # Re-running on the complete S3 run does no work...
    def stamps():
        return {e.path: e.mtime for e in s3["fs"].get_file_info(selector)
                if e.type == pafs.FileType.File}

    before = stamps()
    time.sleep(1.1)  # S3 keeps whole seconds: a rewritten object would show a later time
    again = subprocess.run(
        [sys.executable, "-m", "vgray.cli", "train", "s3://vgray-test/corpus/features",
         "--out", "s3://vgray-test/run", "--train-ids", "s3://vgray-test/corpus/train_ids.json",
         *args], env=s3["env"], capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("embedded 24 videos")
    # ...and writes nothing: every object keeps its modification time.
    assert stamps() == before
