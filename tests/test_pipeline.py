"""End to end on a small local Ray: the output contract, resumption, and worker independence."""

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vgray.algo import glove
from vgray.cli import app
from vgray.config import TrainConfig
from vgray.rundir.store import read_tokens

from helpers import ARGS, ROOT, assert_same_results, brute_force, cli, cooccur_of, tokens_of


@pytest.fixture(scope="module")
def trained(ray_session, trained_run):
    """The session's trained run (conftest.trained_run): RUN and the result of its train."""
    return trained_run


def test_contract_files(trained, corpus):
    run, result = trained
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("embedded 60 videos") and "skipped 0" in line
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert manifest["status"] == "complete"
    assert manifest["config"]["vocab_size"] == 12 and manifest["versions"]["ray"]
    for stage in ("scan", "vocab", "assign", "cooccur", "glove", "embed"):
        assert manifest["stages"][stage]["status"] == "done"
        assert manifest["stages"][stage]["seconds"] >= 0

    centroids = np.load(os.path.join(run, "vocab", "centroids.npy"))
    assert centroids.dtype == np.float32 and centroids.shape == (12, 16)

    tokens = tokens_of(run)
    schema = pq.read_schema(glob.glob(os.path.join(run, "tokens", "*.parquet"))[0])
    assert str(schema.field("video_id").type) == "string"
    assert str(schema.field("tokens").type) == "list<element: int32>"
    feats = corpus["features"]
    ids = sorted(f[:-8] for f in os.listdir(feats) if f.endswith("_rgb.npy"))
    assert sorted(tokens) == ids
    for vid in ids:  # tokens[t] is the nearest centroid of clip t (brute force)
        x = np.load(os.path.join(feats, f"{vid}_rgb.npy")).astype(np.float64)
        d = ((x[:, None] - centroids[None].astype(np.float64)) ** 2).sum(-1)
        chosen = d[np.arange(len(x)), tokens[vid]]
        np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5, atol=1e-5)

    co = cooccur_of(run)
    assert co["i"].dtype == np.int32 and co["x"].dtype == np.float64
    pairs = list(zip(co["i"].tolist(), co["j"].tolist()))
    assert len(pairs) == len(set(pairs))  # each (i, j) once across files
    train = json.load(open(corpus["train_ids"]))
    want = brute_force([tokens[v] for v in train], 12, 5)
    got = np.zeros((12, 12))
    got[co["i"], co["j"]] = co["x"]
    np.testing.assert_allclose(got, want, rtol=1e-12)

    vectors = np.load(os.path.join(run, "glove", "vectors.npy"))
    assert vectors.dtype == np.float32 and vectors.shape == (12, 8)
    state = np.load(os.path.join(run, "glove", "state.npz"), allow_pickle=False)
    assert sorted(state.files) == ["b", "b_context", "w", "w_context"]
    np.testing.assert_allclose(vectors, state["w"] + state["w_context"], rtol=1e-6)
    loss = np.loadtxt(os.path.join(run, "glove", "loss.csv"), delimiter=",", skiprows=1)
    assert loss.shape == (201, 2) and loss[-1, 1] < loss[0, 1]
    fit = manifest["stages"]["glove"]  # the state saved is the epoch of lowest J
    assert loss[fit["kept_epoch"], 1] == loss[:, 1].min() == fit["final_loss"]
    assert fit["last_loss"] == loss[-1, 1] and fit["initial_loss"] == loss[0, 1]
    direct = glove.loss([state[k] for k in ("w", "w_context", "b", "b_context")],
                        (co["i"], co["j"], co["x"]), x_max=TrainConfig().x_max, alpha=0.75)
    assert direct == pytest.approx(loss[fit["kept_epoch"], 1], rel=1e-4)

    for vid in ids:
        emb = np.load(os.path.join(run, "embeddings", f"{vid}.npy"))
        assert emb.dtype == np.float32 and np.array_equal(emb, vectors[tokens[vid]])
        rgb = np.load(os.path.join(feats, f"{vid}_rgb.npy"))
        flow = np.load(os.path.join(feats, f"{vid}_flow.npy"))
        crgb = np.load(os.path.join(run, "concat", f"{vid}_rgb.npy"))
        cflow = np.load(os.path.join(run, "concat", f"{vid}_flow.npy"))
        assert crgb.shape == (len(rgb), 16 + 8) and cflow.shape == (len(rgb), 8 + 8)
        np.testing.assert_array_equal(crgb, np.hstack([rgb, emb / 2]))
        np.testing.assert_array_equal(cflow, np.hstack([flow, emb / 2]))
    assert open(os.path.join(run, "skipped.jsonl")).read() == ""
    leftovers = [p for p in glob.glob(os.path.join(run, "**", "*"), recursive=True) if ".tmp-" in p]
    assert leftovers == []


def test_quality_on_planted_corpus(trained, corpus):
    from vgray.commands.quality import evaluate

    q = evaluate(trained[0], corpus["root"])
    assert q["nmi"] >= 0.95
    assert q["neighbour_topic_agreement"] >= 0.9


def test_rerun_does_no_work(trained, corpus, monkeypatch):
    """A complete RUN is recognised from its manifest, markers and outputs: no Ray work, and not
    one file of RUN written again (sync tools copy whatever was rewritten)."""
    import vgray.features.format_npy
    import vgray.run.workers
    import vgray.commands.train

    run, _ = trained
    files = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(run, "**"), recursive=True)}
    assert os.path.join(run, "manifest.json") in files and os.path.join(run, "skipped.jsonl") in files
    monkeypatch.setattr(vgray.run.workers, "connect_ray", lambda *a: pytest.fail("Ray was used"))
    # one listing of FEATURES tells it: not one header is read
    monkeypatch.setattr(vgray.features.format_npy, "read_header", lambda *a: pytest.fail("a header was read"))
    result = CliRunner().invoke(app, ["train", corpus["features"], "--out", run, "--train-ids",
                                      corpus["train_ids"], *ARGS[:-1]])
    assert result.exit_code == 0, result.output
    assert "is complete: nothing to do" in result.output
    assert result.stdout.strip().splitlines()[-1].startswith("embedded 60 videos")
    assert {p: os.stat(p).st_mtime_ns
            for p in glob.glob(os.path.join(run, "**"), recursive=True)} == files
    # The library call says the same, with no work done.
    summary = vgray.commands.train.train(corpus["features"], run, TrainConfig(
        vocab_size=12, dim=8, epochs=200, shard_clips=200), corpus["train_ids"])
    assert set(summary.work.values()) == {0} and summary.videos == 60


def test_resumed_run_leaves_an_unchanged_skip_list_alone(trained, corpus, tmp_path):
    """A re-run that has work to do rewrites skipped.jsonl only if its content changes."""
    run, _ = trained
    copy = str(tmp_path / "resumed")
    shutil.copytree(run, copy)
    os.remove(os.path.join(copy, ".work", "embed", "00000.json"))
    before = os.stat(os.path.join(copy, "skipped.jsonl")).st_mtime_ns
    cli("train", corpus["features"], "--out", copy, "--train-ids", corpus["train_ids"], *ARGS)
    work = json.load(open(os.path.join(copy, "manifest.json")))["last_invocation"]["work"]
    assert work["embed_shards"] == 1
    assert os.stat(os.path.join(copy, "skipped.jsonl")).st_mtime_ns == before


@pytest.mark.parametrize("made_by", ["this vgray", "an earlier vgray"])
def test_features_are_scanned_once_per_command(trained, corpus, tmp_path, monkeypatch, made_by):
    """A RUN that looks complete but is not: the no-op check tells it from one listing and the
    run scans; on a RUN of an earlier vgray (no listing fingerprint in its manifest) the check
    scans FEATURES and the run resumes with that scan instead of scanning again."""
    import vgray.run.resume
    import vgray.run.stages

    run, _ = trained
    copy = str(tmp_path / "rescan")
    shutil.copytree(run, copy)
    os.remove(os.path.join(copy, ".work", "embed", "00001.json"))
    if made_by == "an earlier vgray":
        path = os.path.join(copy, "manifest.json")
        manifest = json.load(open(path))
        del manifest["corpus"]["listing"]
        json.dump(manifest, open(path, "w"))
    scans = []
    for module, name in ((vgray.run.resume, "scan"), (vgray.run.stages, "list_videos")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, **k: scans.append(1) or real(*a, **k))
    cli("train", corpus["features"], "--out", copy, "--train-ids", corpus["train_ids"], *ARGS)
    work = json.load(open(os.path.join(copy, "manifest.json")))["last_invocation"]["work"]
    assert work["embed_shards"] == 1 and len(scans) == 1
    assert_same_results(run, copy)


def test_features_changed_after_the_run_are_told_from_the_listing(ray_session, tmp_path):
    """A file of FEATURES of another length (or a video added) since RUN was made: the no-op
    check, which reads no header, does not call RUN complete, and the run refuses it."""
    from vgray.commands.synth import make_corpus

    info = make_corpus(str(tmp_path / "c"), videos=12, dim=6, words=4, topics=2, min_clips=5,
                       max_clips=9)
    run = str(tmp_path / "run")
    args = ["train", info["features"], "--out", run, "--vocab-size", "4", "--dim", "3",
            "--epochs", "10"]
    cli(*args)
    assert "nothing to do" in cli(*args).output
    path = os.path.join(info["features"], "v_00003_rgb.npy")
    np.save(path, np.load(path)[:-1])  # one clip less: the same name, another size
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "nothing to do" not in result.output
    assert f"FEATURES {info['features']} changed since {run} was started" in result.output


def test_changed_setting_is_refused(trained, corpus):
    run, _ = trained
    result = CliRunner().invoke(app, ["train", corpus["features"], "--out", run, "--train-ids",
                                      corpus["train_ids"], *ARGS[:-1], "--window", "3"])
    assert result.exit_code == 1
    assert "--window" in result.output and "Traceback" not in result.output


def test_lost_outputs_are_recomputed(trained, corpus, tmp_path):
    """Later stages deleted and shards unmarked: a re-run redoes exactly what is needed."""
    run, _ = trained
    copy = str(tmp_path / "damaged")
    shutil.copytree(run, copy)
    for stage in ("cooccur", "glove", "embeddings", "concat"):
        shutil.rmtree(os.path.join(copy, stage))
    shutil.rmtree(os.path.join(copy, ".work", "embed"))
    open(os.path.join(copy, "tokens", ".part-00000.tmp-deadbeef.parquet"), "wb").write(b"partial")
    shards = len(glob.glob(os.path.join(run, ".work", "assign", "*.json")))
    cli("train", corpus["features"], "--out", copy, "--train-ids", corpus["train_ids"],
        "--workers", "1", *ARGS)
    work = json.load(open(os.path.join(copy, "manifest.json")))["last_invocation"]["work"]
    # The merged counts are gone and so are the partials: every shard counts again.
    assert work == {"vocab": 0, "assign_shards": shards, "reduce_parts": 4, "glove": 1,
                    "embed_shards": shards}
    assert_same_results(run, copy)


def test_new_vocabulary_recomputes_everything_after_it(trained, corpus, tmp_path):
    """A lost codebook is refitted, and nothing computed from the old one is kept."""
    run, _ = trained
    copy = str(tmp_path / "novocab")
    shutil.copytree(run, copy)
    os.remove(os.path.join(copy, "vocab", "centroids.npy"))
    shards = len(glob.glob(os.path.join(run, ".work", "assign", "*.json")))
    cli("train", corpus["features"], "--out", copy, "--train-ids", corpus["train_ids"], *ARGS)
    work = json.load(open(os.path.join(copy, "manifest.json")))["last_invocation"]["work"]
    assert work == {"vocab": 1, "assign_shards": shards, "reduce_parts": 4, "glove": 1,
                    "embed_shards": shards}
    assert_same_results(run, copy)


def test_driver_killed_mid_run_resumes(tmp_path, interrupted_corpus):
    """kill -9 of the driver (and the Ray it started) mid-assignment; the re-run resumes."""
    import signal
    import time

    args, env, clean = interrupted_corpus
    crashed = str(tmp_path / "crashed")
    proc = subprocess.Popen(args + ["--out", crashed, "-q"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = os.path.join(crashed, ".work", "assign")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(markers) and len(os.listdir(markers)) >= 3:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the processes it started
        proc.wait()

    def finished():
        return len([m for m in os.listdir(markers) if m.endswith(".json")])

    # Ray's workers have process groups of their own: one may finish its shard after the kill,
    # before it notices that its raylet is gone. Count once no marker has appeared for 2 s.
    done_before, stable_since = finished(), time.time()
    while time.time() - stable_since < 2:
        time.sleep(0.1)
        if finished() != done_before:
            done_before, stable_since = finished(), time.time()
    shards = 80 * 40 // 60  # at least this many shards of at most 50 clips
    assert 3 <= done_before < shards, "the kill did not land mid-assignment"
    assert not os.path.exists(os.path.join(crashed, "glove", "vectors.npy"))
    for path in glob.glob(os.path.join(crashed, "**", "*"), recursive=True):
        if ".tmp-" not in path and path.endswith(".npy"):
            np.load(path)  # everything under a final name is complete
    resume(args, crashed)
    total = len(os.listdir(markers))
    manifest = json.load(open(os.path.join(crashed, "manifest.json")))
    work = manifest["last_invocation"]["work"]
    assert work["vocab"] == 0 and work["assign_shards"] == total - done_before
    # the vocabulary was made in the first Ray session, the rest in the second: one machine
    sessions = {n["session"] for stage in manifest["stages"].values()
                for n in (stage.get("nodes") or {}).values()}
    assert len(sessions) == 2 and [u["nodes"] for u in manifest["nodes"].values()] == [1]
    assert_same_results(clean, crashed)


@pytest.fixture(scope="module")
def interrupted_corpus(ray_session, tmp_path_factory):
    """A corpus, the command that trains on it, and its uninterrupted run (made with -q). Only
    the run that is interrupted needs a process of its own: the uninterrupted run and the
    re-runs that resume are the same command in this process (`resume`), on the tests' Ray."""
    from vgray.commands.synth import make_corpus

    root = tmp_path_factory.mktemp("ctrlc")
    info = make_corpus(str(root / "c"), videos=80, dim=8, words=6, topics=2, min_clips=40,
                       max_clips=60)
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "train", info["features"],
            "--vocab-size", "6", "--dim", "4", "--epochs", "20", "--shard-clips", "50",
            "--workers", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    clean = str(root / "clean")
    resume(args, clean)
    return args, env, clean


def resume(args, out):
    """The command of `args` (`python cli.py ...`) with `--out OUT -q`, run in this process."""
    cli(*args[2:], "--out", out, "-q")


@pytest.mark.parametrize("stage,sent,ray", [
    ("vocab", "SIGINT", "embedded"), ("assign", "SIGTERM", "attached"),
    pytest.param("embed", "SIGINT", "attached", marks=pytest.mark.slow)])
def test_ctrl_c_mid_run_exits_promptly_and_resumes(tmp_path, stage, sent, ray,
                                                   interrupted_corpus):
    """SIGINT to the whole foreground group, as Ctrl-C sends it, during a stage: a message, exit
    130 within seconds, Ray's processes gone (those of the Ray it started; attached, its
    workers are the cluster's), the lock released; the re-run finishes the rest
    and gives the results of an uninterrupted run. SIGTERM to the vgray process alone, as a
    scheduler (Slurm, Kubernetes, `timeout`) sends it, here to a driver attached to a running
    Ray (the tests' own) as a RayJob's is: the same, with exit 143 and no stack dump of Ray's
    fatal-signal handler."""
    import signal
    import threading
    import time

    import ray as ray_module

    args, env, clean = interrupted_corpus
    out = str(tmp_path / "run")
    if ray == "attached":
        args = args + ["--address", ray_module.get_runtime_context().gcs_address]
    # SIGINT as a terminal has it, even where this test runs in the background (which ignores it).
    proc = subprocess.Popen(args + ["--out", out], env={**env, "VGRAY_PROGRESS_EVERY": "0"},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    # with VGRAY_PROGRESS_EVERY=0 every finished shard prints a progress line
    trigger = {"vocab": "scan:", "assign": "assign: ", "embed": "embed: "}[stage]
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(line.startswith(trigger) for line in list(lines)):
                break
            time.sleep(0.005)
        if sent == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        at = time.time()
        proc.wait(timeout=30)
        took = time.time() - at
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    err = "".join(lines)
    if sent == "SIGINT":
        assert proc.returncode == 130, err
        assert "interrupted; run the same command again to resume" in err
    else:
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1] == ("terminated (SIGTERM); run the same command "
                                                "again to resume"), err
        assert "SIGTERM received" not in err and "PC: @" not in err
    assert "Traceback" not in err and took < 20
    for _ in range(100):  # every process of the group (Ray's included) ends
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the interrupted run are still alive")
    assert not os.path.exists(os.path.join(out, ".lock"))
    for path in glob.glob(os.path.join(out, "**", "*.npy"), recursive=True):
        np.load(path)  # nothing partial under a final name
    resume(args, out)
    assert_same_results(clean, out)


def test_one_worker_and_two_workers_identical(trained, corpus, tmp_path):
    run, _ = trained
    one = str(tmp_path / "one")
    cli("train", corpus["features"], "--out", one, "--train-ids", corpus["train_ids"],
        "--workers", "1", *ARGS)
    assert_same_results(run, one)
    many = str(tmp_path / "many")  # more workers than the 2 CPUs: capped, not stuck
    cli("train", corpus["features"], "--out", many, "--train-ids", corpus["train_ids"],
        "--workers", "8", *ARGS)
    assert_same_results(run, many)


def test_a_worker_on_the_gpu_path_writes_the_same_shard(trained, corpus, tmp_path):
    """What a GPU worker writes for a shard (its products in torch, run here on CPU tensors)
    equals a CPU worker's: tokens and partial counts."""
    import ray

    from vgray.features.readers import scan
    from vgray.run.resume import make_shards
    from vgray.run.units import Count, TokenizeUnit, Vocabulary
    from vgray.run.worker import ShardWorker

    run, _ = trained
    videos = scan(corpus["features"], "rgb").videos
    shard = make_shards(videos, 200)[0]
    count = Count(12, 5, 2)
    written = {}
    for backend in ("auto", "torch"):
        out = str(tmp_path / backend)
        worker = ShardWorker.remote("rgb", 64, "cpu", None, None, backend)
        try:
            [stats] = ray.get(worker.tokenize.remote(TokenizeUnit(0, shard, [True] * len(shard), [
                Vocabulary(out, os.path.join(run, "vocab", "centroids.npy"),
                           os.path.join(out, "tokens.parquet"), count=count)])))
        finally:
            ray.kill(worker)
        assert stats.videos == len(shard) and stats.device == "cpu"
        written[backend] = (read_tokens([os.path.join(out, "tokens.parquet")]),
                            [pq.read_table(p) for p in sorted(glob.glob(
                                os.path.join(out, ".work", "cooccur", "*.parquet")))])
    (a, pa_), (b, pb) = written["auto"], written["torch"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert len(pa_) == 2 and all(x.equals(y) for x, y in zip(pa_, pb))
    whole = tokens_of(run)  # and both equal the trained RUN's tokens
    assert all(np.array_equal(a[k], whole[k]) for k in a)


def test_assign_and_embed_commands(trained, corpus, tmp_path):
    run, _ = trained
    out = tmp_path / "assigned"
    result = cli("assign", run, corpus["features"], "--out", out, "-q")
    assert result.stdout.strip().startswith("tokenised 60 videos")
    tokens = tokens_of(run)
    table = read_tokens([str(out / "tokens.parquet")])
    assert table.keys() == tokens.keys()
    for vid, t in tokens.items():
        per_video = np.load(out / f"{vid}.npy")
        assert per_video.dtype == np.int32 and np.array_equal(per_video, t)
        assert np.array_equal(table[vid], t)

    emb_out = tmp_path / "embedded"
    cli("embed", run, corpus["features"], "--out", emb_out, "-q")
    for vid in tokens:
        for rel in (f"embeddings/{vid}.npy", f"concat/{vid}_rgb.npy", f"concat/{vid}_flow.npy"):
            np.testing.assert_array_equal(np.load(emb_out / rel), np.load(os.path.join(run, rel)))


def test_embed_refuses_incomplete_run(ray_session, corpus, tmp_path):
    result = CliRunner().invoke(app, ["embed", str(tmp_path), corpus["features"], "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 1 and "not a vgray train run" in result.output
    assert not (tmp_path / "o").exists()


def test_single_stream_layout_and_rgb_flow(ray_session, tmp_path):
    from vgray.commands.synth import make_corpus

    info = make_corpus(str(tmp_path / "c"), videos=12, dim=6, words=4, topics=2, flow=True,
                       flow_dim=3, min_clips=5, max_clips=9)
    single = tmp_path / "single"
    single.mkdir()
    for f in os.listdir(info["features"]):
        if f.endswith("_rgb.npy"):
            shutil.copy(os.path.join(info["features"], f), single / f.replace("_rgb", ""))
    run = tmp_path / "run1"
    cli("train", single, "--out", run, "--vocab-size", "4", "--dim", "3", "--epochs", "20", "-q")
    for f in os.listdir(single):
        c = np.load(run / "concat" / f)
        np.testing.assert_array_equal(c[:, :6], np.load(single / f))
        np.testing.assert_array_equal(c[:, 6:], np.load(run / "embeddings" / f))
    both = tmp_path / "run2"
    cli("train", info["features"], "--out", both, "--streams", "rgb+flow", "--vocab-size", "4",
        "--dim", "3", "--epochs", "20", "-q")
    assert np.load(both / "vocab" / "centroids.npy").shape == (4, 6 + 3)


def test_python_cli_py_subprocess(tmp_path):
    """`python cli.py` from a checkout runs the same app, with its own embedded Ray."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "VGRAY_PROGRESS_EVERY": "0"}
    subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "synth", str(tmp_path / "c"),
                    "--videos", "8", "--dim", "4", "--words", "3", "--topics", "1"],
                   check=True, env=env, capture_output=True)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train",
                           str(tmp_path / "c" / "features"), "--out", str(tmp_path / "r"),
                           "--vocab-size", "3", "--dim", "2", "--epochs", "5", "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("embedded 8 videos")
    assert "vocab:" in done.stderr and "glove:" in done.stderr
    # the live progress of the k-means and GloVe tasks, reported from inside them
    assert "\nvocab: seeding: 3/3 words (100%)" in done.stderr
    assert "\nglove: 5/5 epochs (100%)" in done.stderr and ", loss " in done.stderr
    assert "\ncooccur: reduce: 4/4 partitions (100%)" in done.stderr
    # Starting Ray takes seconds: a line says so first, and what Ray has once it is up.
    first, second, rest = done.stderr.split("\n", 2)
    assert first == "ray: starting a local Ray…"
    assert re.fullmatch(r"ray: \d+ CPUs?, no GPU \(\d+\.\d s\)", second), second
    assert rest.startswith("scan: 8/8 videos (100%)")  # the workers read a chunk at a time
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "r2")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in bad.stderr


def test_demo_recovers_planted_truth(ray_session, tmp_path):
    result = cli("demo", "--out", tmp_path, "--videos", "60", "-q")
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("embedded 60 videos")
    nmi = float(lines[1].split("NMI ")[1].split(";")[0])
    assert nmi >= 0.95
    assert (tmp_path / "run" / "glove" / "vectors.npy").exists()


def test_device_cuda_without_gpu_is_one_line_error(ray_session, corpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for machines without one")
    result = CliRunner().invoke(app, ["train", corpus["features"], "--out", str(tmp_path / "r"),
                                      "--device", "cuda", *ARGS])
    assert result.exit_code == 1 and "no GPU" in result.output and "Traceback" not in result.output


def test_invalid_option_is_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"),
                                      "--streams", "depth"])
    assert result.exit_code == 2  # a usage error, as for any bad option
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: Invalid value for '--streams': 'depth' is not one of 'rgb', "
                           "'flow', 'rgb+flow'. (see ") and line.endswith(" train --help)")


def test_installed_console_script():
    exe = shutil.which("vgray")
    assert exe, "`pip install .` should put a vgray command on PATH"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("train", "assign", "embed", "synth", "demo"):
        assert command in done.stdout


def test_workers_that_cannot_start_fail_with_one_line(ray_session, tmp_path, monkeypatch):
    import vgray.run.pool
    from vgray.errors import VgrayError
    from vgray.run.pool import Pool
    from vgray.run.worker import ShardWorker

    # One failed start is retried, the next one ends it (not MAX_ATTEMPTS + 1 worker processes
    # started, each importing torch, to show the same).
    monkeypatch.setattr(vgray.run.pool, "MAX_ATTEMPTS", 1)
    pool = Pool(lambda: ShardWorker.remote("rgb", 8, "cpu", str(tmp_path / "none.npy")))
    try:
        with pytest.raises(VgrayError, match="shard workers fail to start: .*cannot load"):
            pool.run(2, [0, 1], lambda actor, k: None, lambda *a: None)
    finally:
        pool.close()


def test_embeddings_as_parquet_equal_the_per_video_files(trained, corpus, tmp_path, monkeypatch):
    """--embeddings parquet: one table per shard, a row per clip, with the vectors the per-video
    files hold; no concat/, and the check for BMT/MDVC says why it cannot be read there. The
    driver lists FEATURES and reads no header: the workers do (a header read in the driver's
    process fails the test)."""
    import vgray.features.format_npy

    run, _ = trained
    monkeypatch.setattr(vgray.features.format_npy, "read_header", lambda *a: pytest.fail("the driver read a header"))
    out = str(tmp_path / "parquet")
    line = cli("train", corpus["features"], "--out", out, "--train-ids", corpus["train_ids"],
               "--embeddings", "parquet", *ARGS).stdout.strip().splitlines()[-1]
    assert line.startswith("embedded 60 videos")
    assert json.load(open(os.path.join(out, "manifest.json")))["stages"]["scan"]["nodes"]
    assert not os.path.exists(os.path.join(out, "concat"))
    parts = sorted(glob.glob(os.path.join(out, "embeddings", "part-*.parquet")))
    assert len(parts) == len(glob.glob(os.path.join(run, "tokens", "*.parquet"))) > 1
    table = pq.read_table(parts)
    assert table.column_names == ["video_id", "clip", "token", "embedding"]
    assert table.num_rows == sum(len(t) for t in tokens_of(run).values())
    emb = np.asarray(table["embedding"].combine_chunks().flatten()).reshape(table.num_rows, -1)
    ids, clips = table["video_id"].to_pylist(), table["clip"].to_numpy()
    for vid in sorted(set(ids))[:5]:
        rows = [n for n, v in enumerate(ids) if v == vid]
        assert list(clips[rows]) == list(range(len(rows)))
        np.testing.assert_array_equal(emb[rows], np.load(os.path.join(run, "embeddings", f"{vid}.npy")))
    # the same settings but the layout: another RUN, refused as any changed setting is
    result = CliRunner().invoke(app, ["train", corpus["features"], "--out", out, "--train-ids",
                                      corpus["train_ids"], *ARGS])
    assert result.exit_code == 1 and "--embeddings 'parquet'" in result.output
    result = CliRunner().invoke(app, ["check", out, "--for", "mdvc"])
    assert result.exit_code == 1 and "Parquet tables" in result.output
    # `vgray embed --embeddings parquet`: RUN's model applied to the corpus, the same tables
    applied = str(tmp_path / "applied")
    line = cli("embed", run, corpus["features"], "--out", applied, "--embeddings", "parquet",
               "--workers", "2").stdout.strip().splitlines()[-1]
    assert line.startswith("embedded 60 videos") and not os.path.exists(os.path.join(applied, "concat"))
    again = pq.read_table(sorted(glob.glob(os.path.join(applied, "embeddings", "part-*.parquet"))))
    order = [("video_id", "ascending"), ("clip", "ascending")]
    assert again.sort_by(order).equals(table.sort_by(order))
    result = CliRunner().invoke(app, ["embed", run, corpus["features"], "--out", applied])
    assert result.exit_code == 1 and "--embeddings 'parquet'" in result.output
    result = CliRunner().invoke(app, ["embed", run, corpus["features"], "--out", applied,
                                      "--embeddings", "npy"])
    assert result.exit_code == 2 and result.output.startswith(
        "error: Invalid value for '--embeddings': 'npy' is not one of 'files', 'parquet'.")

