"""`vgray sweep`: every combination equals a separate `vgray train` (tokens, counts, vectors),
derived windows are exact, each combination is a RUN the other commands use, a killed or
extended sweep resumes to the same table, bad input is one line."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vgray import VisualGlove
from vgray.commands import evaluate as ev
from vgray.cli import app
from vgray.errors import VgrayError
from vgray.rundir.sweeptable import SweepSummary, best_of, parse_values
from vgray.commands.sweep import report_page

from helpers import ROOT, brute_force, tokens_of

GRID = [(k, w, d) for k in (3, 6) for w in (2, 4) for d in (4, 8)]
COMMON = ["--epochs", "40", "--shard-clips", "300"]
SWEEP = ["--vocab-size", "3,6", "--window", "2,4", "--dim", "4,8", *COMMON]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def table(path, drop=("seconds", "kmeans_seconds")):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def combo(out, k, w, d):
    return os.path.join(out, f"K{k}-w{w}-d{d}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """80 videos of 20-40 clips: the default sample (256 clips per word) is a strict part of
    the ~1,900 training clips for K 3 and K 6, so K 3's sample is a subset of K 6's."""
    import pyarrow.parquet as pq

    from vgray.commands.synth import make_corpus

    root = tmp_path_factory.mktemp("sweepdata")
    info = make_corpus(str(root / "c"), videos=80, dim=8, words=6, topics=3, min_clips=20,
                       max_clips=40, seed=3)
    # A video that the scan accepts and loading refuses (a NaN clip): skipped, and recorded
    # the same way by the sweep's combinations as by train.
    bad = os.path.join(info["features"], "v_00007_rgb.npy")
    x = np.load(bad)
    x[3, 1] = np.nan
    np.save(bad, x, allow_pickle=False)
    truth = pq.read_table(os.path.join(str(root / "c"), "truth.parquet")).to_pydict()
    labels = root / "labels.json"
    labels.write_text(json.dumps(dict(zip(truth["video_id"], map(str, truth["topic"])))))
    return {**info, "labels": str(labels), "root": str(root)}


@pytest.fixture(scope="module")
def swept(ray_session, data):
    out = os.path.join(data["root"], "sweep")
    result = invoke("sweep", data["features"], "--out", out, "--train-ids", data["train_ids"],
                    "--labels", data["labels"], *SWEEP)
    return out, result.output


# Two combinations that hold every value of each axis are trained again in the fast tier; the
# other six only with the slow tests.
FAST = [(3, 2, 4), (6, 4, 8)]


@pytest.mark.parametrize("k,w,d", [pytest.param(*c, id=f"K{c[0]}-w{c[1]}-d{c[2]}",
                                                marks=() if c in FAST else pytest.mark.slow)
                                   for c in GRID])
def test_every_combination_equals_a_separate_train(swept, data, tmp_path, k, w, d):
    out, _ = swept
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    clips = [manifest["vocabularies"][k]["vocab"]["sample_clips"] for k in ("3", "6")]
    train_clips = sum(len(t) for v, t in tokens_of(combo(out, 3, 2, 4)).items()
                      if v in json.load(open(data["train_ids"])))
    assert clips[0] < clips[1] < train_clips  # K 3's sample is a strict subset of K 6's
    run = str(tmp_path / f"K{k}-w{w}-d{d}")
    invoke("train", data["features"], "--out", run, "--train-ids", data["train_ids"],
           "--vocab-size", k, "--window", w, "--dim", d, "-q", *COMMON)
    mine = combo(out, k, w, d)
    for path in ("vocab/centroids.npy", "glove/vectors.npy"):
        np.testing.assert_array_equal(np.load(os.path.join(mine, path)),
                                      np.load(os.path.join(run, path)), err_msg=path)
    a, b = tokens_of(mine), tokens_of(run)
    assert a.keys() == b.keys() and all(np.array_equal(a[v], b[v]) for v in a)
    parts = sorted(os.listdir(os.path.join(run, "cooccur")))
    assert sorted(os.listdir(os.path.join(mine, "cooccur"))) == parts
    for part in parts:  # file by file: the same rows in the same order
        assert pq.read_table(os.path.join(mine, "cooccur", part)).equals(
            pq.read_table(os.path.join(run, "cooccur", part)))
    assert open(os.path.join(mine, "glove", "loss.csv")).read() == \
        open(os.path.join(run, "glove", "loss.csv")).read()
    skipped = open(os.path.join(run, "skipped.jsonl")).read()
    assert open(os.path.join(mine, "skipped.jsonl")).read() == skipped
    assert "v_00007" in skipped and "non-finite" in skipped
    theirs = json.load(open(os.path.join(run, "manifest.json")))
    assert json.load(open(os.path.join(mine, "manifest.json")))["settings"] == theirs["settings"]


def test_derived_windows_are_exact(swept, data):
    out, _ = swept
    train = set(json.load(open(data["train_ids"])))
    for k, w, d in GRID:
        run = combo(out, k, w, d)
        tokens = tokens_of(run)
        want = brute_force([tokens[v] for v in sorted(tokens) if v in train], k, w)
        t = pq.read_table(sorted(glob.glob(os.path.join(run, "cooccur", "*.parquet"))))
        got = np.zeros((k, k))
        got[t["i"].to_numpy(), t["j"].to_numpy()] = t["x"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert (t["x"].to_numpy() > 0).all()


def test_table_report_and_best(swept, data):
    out, output = swept
    rows = table(os.path.join(out, "sweep.csv"), drop=())
    assert [(int(r["vocab_size"]), int(r["window"]), int(r["dim"])) for r in rows] == GRID
    assert set(rows[0]) >= {"final_loss", "inertia_per_clip", "perplexity", "dead_words",
                            "neighbour_share", "held_out_loss", "probe_accuracy", "seconds"}
    for r, (k, w, d) in zip(rows, GRID):
        result = json.load(open(os.path.join(combo(out, k, w, d), "evaluation.json")))
        probe = result["labels"]["representations"]["visual_glove"]["probe_accuracy"]
        assert float(r["probe_accuracy"]) == pytest.approx(probe, abs=1e-12)
        assert float(r["final_loss"]) == pytest.approx(result["intrinsic"]["final_loss"])
        assert r["held_out_loss"] != ""  # --train-ids left videos out
    # Highest probe accuracy, then highest retrieval mAP, then the first in the table.
    best = min(enumerate(rows), key=lambda nr: (-float(nr[1]["probe_accuracy"]),
                                                -float(nr[1]["retrieval_map"]), nr[0]))[1]
    name = f"K{best['vocab_size']}-w{best['window']}-d{best['dim']}"
    assert f"best by probe accuracy: {name}" in output
    assert float(best["probe_accuracy"]) > 0.9  # the planted topics, 3 classes (chance ~ 1/3)
    page = open(os.path.join(out, "report.html")).read()
    assert page.count("data:image/png;base64,") == 6 and name in page
    assert 'alt="retrieval_map"' in page


def test_a_combination_is_a_run(swept, data, tmp_path):
    out, _ = swept
    run = combo(out, 6, 4, 8)
    model = VisualGlove.load(run)
    assert (model.vocab_size, model.dim) == (6, 8)
    invoke("export", run, "--format", "glove-text", "--out", str(tmp_path / "export"))
    invoke("report", run, "-q")
    assert os.path.exists(os.path.join(run, "report", "index.html"))
    invoke("embed", run, data["features"], "--out", str(tmp_path / "embedded"), "-q")
    assert len(os.listdir(tmp_path / "embedded" / "embeddings")) == 79  # v_00007 skipped
    # train with the combination's settings into it: only the embeddings are left to make
    invoke("train", data["features"], "--out", run, "--train-ids", data["train_ids"],
           "--vocab-size", 6, "--window", 4, "--dim", 8, "-q", *COMMON)
    work = json.load(open(os.path.join(run, "manifest.json")))["last_invocation"]["work"]
    assert work["embed_shards"] > 0 and not any(
        work[k] for k in ("vocab", "assign_shards", "reduce_parts", "glove"))
    emb = np.load(os.path.join(run, "embeddings", sorted(os.listdir(os.path.join(run, "embeddings")))[0]))
    assert emb.shape[1] == 8


def test_rerun_does_no_work_and_added_values_reuse_the_rest(swept, data, tmp_path, monkeypatch):
    import vgray.run.workers

    out, output = swept
    files = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "**"), recursive=True)}
    monkeypatch.setattr(vgray.run.workers, "connect_ray", lambda *a: pytest.fail("Ray was used"))
    again = invoke("sweep", data["features"], "--out", out, "--train-ids", data["train_ids"],
                   "--labels", data["labels"], *SWEEP)
    assert "is complete: nothing to do" in again.output
    assert again.stdout.splitlines()[:-1] == output.splitlines()[-len(GRID) - 3:-1]  # the table
    assert {p: os.stat(p).st_mtime_ns
            for p in glob.glob(os.path.join(out, "**"), recursive=True)} == files
    # A subset of the grid is not the same sweep: its table is written, with no training.
    monkeypatch.undo()
    invoke("sweep", data["features"], "--out", out, "--train-ids", data["train_ids"],
           "--labels", data["labels"], "-q", *SWEEP[:2], "--window", "2", "--dim", "4", *COMMON)
    work = json.load(open(os.path.join(out, "manifest.json")))["last_invocation"]["work"]
    assert not any(work.values()), work
    assert len(table(os.path.join(out, "sweep.csv"))) == 2
    invoke("sweep", data["features"], "--out", out, "--train-ids", data["train_ids"],
           "--labels", data["labels"], "-q", *SWEEP)  # the whole table again, for the others
    assert len(table(os.path.join(out, "sweep.csv"))) == len(GRID)
    grown = str(tmp_path / "grown")
    first = ["--train-ids", data["train_ids"], "--labels", data["labels"], "-q", *COMMON]
    invoke("sweep", data["features"], "--out", grown, "--vocab-size", "3", "--window", "2",
           "--dim", "4", *first)
    parts = glob.glob(os.path.join(grown, "shared", "K3", "tokens", "*.parquet"))
    written = {p: os.stat(p).st_mtime_ns for p in parts}
    invoke("sweep", data["features"], "--out", grown, "--vocab-size", "3,6", "--window", "2,4",
           "--dim", "4,8", *first)
    assert parts and {p: os.stat(p).st_mtime_ns for p in parts} == written
    work = json.load(open(os.path.join(grown, "manifest.json")))["last_invocation"]["work"]
    # K 3 is not fitted again; its tokens are re-read (not re-tokenised) to count window 4
    assert work["vocab"] == 1 and work["glove"] == len(GRID) - 1 and work["evaluate"] == len(GRID) - 1
    assert table(os.path.join(grown, "sweep.csv")) == table(os.path.join(out, "sweep.csv"))


@pytest.mark.slow  # a sweep process of its own, killed: ~20 s; the fast tier kills a train
def test_killed_sweep_resumes_to_the_same_table(swept, data, tmp_path):
    out, _ = swept
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "sweep", data["features"],
            "--train-ids", data["train_ids"], "--labels", data["labels"], "--workers", "1", "-q",
            *SWEEP]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(args + ["--out", killed], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(combo(killed, 3, 2, 4), "manifest.json")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not os.path.exists(first):
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert os.path.exists(first) and not os.path.exists(os.path.join(killed, "sweep.csv"))
    invoke(*args[2:], "--out", killed)  # the same command again, in this process: it resumes
    work = json.load(open(os.path.join(killed, "manifest.json")))["last_invocation"]["work"]
    assert work["vocab"] == 0 and 1 <= len(GRID) - work["glove"]
    assert table(os.path.join(killed, "sweep.csv")) == table(os.path.join(out, "sweep.csv"))


def test_bad_labels_and_lists_are_one_line_before_any_training(ray_session, data, tmp_path):
    out = str(tmp_path / "bad")

    def fails(*args, says):
        result = CliRunner().invoke(app, ["sweep", data["features"], "--out", out, "-q",
                                          *map(str, args)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ") and says in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not glob.glob(os.path.join(out, "K*"))

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"not-a-video": "a", **json.load(open(data["labels"]))}))
    fails("--labels", unknown, *SWEEP, says="ids of --labels are not videos of FEATURES")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({v: "a" for v in json.load(open(data["labels"]))}))
    fails("--labels", one, *SWEEP, says="a probe needs at least 2")
    notjson = tmp_path / "bad.json"
    notjson.write_text("{")
    fails("--labels", notjson, *SWEEP, says="labels")
    fails("--window", "2,x", says="--window takes integers")
    fails("--window", "2,30", says="--window must be between 1 and 24")
    fails("--vocab-size", "3,6", "--kmeans-sample", "4", says="--kmeans-sample must be at least")


def test_a_train_run_is_not_swept_into(swept, data, tmp_path):
    import shutil

    run = str(tmp_path / "run")  # a combination is a train RUN (test_a_combination_is_a_run)
    shutil.copytree(combo(swept[0], 3, 2, 4), run)
    assert json.load(open(os.path.join(run, "manifest.json")))["command"] == "train"
    files = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(run, "**"), recursive=True)}
    result = CliRunner().invoke(app, ["sweep", data["features"], "--out", run, *SWEEP])
    assert result.exit_code == 1 and "is a vgray train RUN, not a sweep" in result.output
    assert {p: os.stat(p).st_mtime_ns
            for p in glob.glob(os.path.join(run, "**"), recursive=True)} == files


def test_a_sweep_dir_is_not_taken_for_a_run(swept):
    out, _ = swept
    result = CliRunner().invoke(app, ["evaluate", out])
    assert result.exit_code == 1 and "is a vgray sweep: each combination in it is a RUN" in result.output
    with pytest.raises(VgrayError, match="sweep.csv"):
        VisualGlove.load(out)


def row(k, w, d, probe, retrieval):
    return {"vocab_size": k, "window": w, "dim": d, "final_loss": 0.1, "inertia_per_clip": 1.0,
            "perplexity": 2.0, "dead_words": 0, "tiny_words": 0, "neighbour_share": 0.5,
            "held_out_loss": None, "probe_accuracy": probe, "retrieval_map": retrieval,
            "kmeans_seconds": 1.0, "seconds": 0.5}


# On real recordings all four combinations scored probe accuracy 1.0; the first was named best
# although another had the higher retrieval mAP.
TIED = [row(500, 3, 64, 1.0, 0.981), row(500, 3, 128, 1.0, 0.995), row(1000, 3, 64, 1.0, 0.990),
        row(1000, 3, 128, 0.98, 0.999)]


def test_ties_of_the_probe_are_broken_by_retrieval():
    assert best_of(TIED, "probe_accuracy") is TIED[1]
    # the same accuracy summed in another order is still a tie
    near = [row(8, 2, 8, 0.1 + 0.2, 0.5), row(8, 2, 16, 0.3, 0.6)]
    assert near[0]["probe_accuracy"] != near[1]["probe_accuracy"]
    assert best_of(near, "probe_accuracy") is near[1]
    # a tie on both goes to the first in the table; a higher probe wins whatever its mAP
    both = [row(8, 2, 8, 0.9, 0.7), row(8, 2, 16, 0.9, 0.7), row(16, 2, 8, 0.8, 1.0)]
    assert best_of(both, "probe_accuracy") is both[0]
    assert best_of([row(8, 2, 8, 0.9, 0.1), row(16, 2, 8, 0.95, 0.0)],
                   "probe_accuracy")["vocab_size"] == 16
    assert best_of(TIED, None) is None  # without labels no best is named
    assert best_of([row(8, 2, 8, None, None)], "probe_accuracy") is None


def test_the_output_says_how_a_tie_was_broken():
    summary = SweepSummary("SWEEP", TIED, best_of(TIED, "probe_accuracy"), "probe_accuracy",
                           1.0, {})
    lines = summary.lines()
    assert lines[0].split() == ["vocab_size", "window", "dim", "final_loss", "perplexity",
                                "neighbour_share", "probe_accuracy", "retrieval_map", "seconds"]
    assert lines[2].split()[7] == "0.995"
    assert lines[-2] == ("best by probe accuracy: K500-w3-d128 (1) -> SWEEP/K500-w3-d128; "
                         "3 combinations tie on probe accuracy, broken by retrieval mAP (0.995)")
    alone = [row(8, 2, 8, 0.9, 0.1), row(16, 2, 8, 0.95, 0.0)]
    line = SweepSummary("S", alone, alone[1], "probe_accuracy", 1.0, {}).lines()[-2]
    assert line == "best by probe accuracy: K16-w2-d8 (0.95) -> S/K16-w2-d8"
    both = [row(8, 2, 8, 0.9, 0.7), row(8, 2, 16, 0.9, 0.7)]
    line = SweepSummary("S", both, both[0], "probe_accuracy", 1.0, {}).lines()[-2]
    assert line.endswith("broken by retrieval mAP (0.7), then by table order (2 tie on both)")


def test_the_report_plots_retrieval_and_names_the_tie_break():
    page = report_page(TIED, "probe_accuracy", TIED[1])
    alts = re.findall(r'<img alt="([a-z_]+)" src="data:image/png;base64,', page)
    assert alts == ["final_loss", "inertia_per_clip", "perplexity", "neighbour_share",
                    "probe_accuracy", "retrieval_map"]
    assert ("Best by probe accuracy: <b>K500-w3-d128</b>; 3 combinations tie on probe accuracy, "
            "broken by retrieval mAP (0.995)</p>") in page
    # without labels neither the probe nor retrieval is plotted, and no best is named
    plain = [{**r, "probe_accuracy": None, "retrieval_map": None} for r in TIED]
    page = report_page(plain, None, None)
    assert page.count("data:image/png;base64,") == 4 and "no combination is named best" in page


def test_parse_values():
    assert parse_values("1500, 500,1000,500", "--vocab-size") == [500, 1000, 1500]
    with pytest.raises(VgrayError, match="at least one value"):
        parse_values(" , ", "--dim")


def test_without_labels_no_best_is_named(ray_session, data, tmp_path):
    out = str(tmp_path / "plain")
    result = invoke("sweep", data["features"], "--out", out, "--vocab-size", "3", "--window", "1,2",
                    "--dim", "4", *COMMON)
    assert "no best without --labels" in result.output
    rows = table(os.path.join(out, "sweep.csv"))
    assert len(rows) == 2 and all(r["probe_accuracy"] == "" for r in rows)
    assert ev.evaluate(combo(out, 3, 2, 4))["intrinsic"]["held_out"] is None
