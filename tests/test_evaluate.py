"""`vgray evaluate`: intrinsic measures against brute force, the probe and retrieval against a
direct scikit-learn computation, a planted corpus's topics found, bad labels refused."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vgray.commands import evaluate as ev
from vgray.cli import app
from vgray.config import TrainConfig
from vgray.algo.glove import GloVe, loss

from helpers import brute_force, cooccur_of, tokens_of


@pytest.fixture(scope="module")
def run(ray_session, trained_run, tmp_path_factory):
    """A copy of the session's trained run (evaluate writes into RUN)."""
    out = str(tmp_path_factory.mktemp("evaluate") / "run")
    shutil.copytree(trained_run[0], out)
    return out


@pytest.fixture(scope="module")
def labels(corpus):
    """The labels.json synth wrote beside the features: each video's planted topic."""
    truth = pq.read_table(os.path.join(corpus["root"], "truth.parquet")).to_pydict()
    path = os.path.join(corpus["root"], "labels.json")
    topics = json.load(open(path))
    assert topics == dict(zip(truth["video_id"], truth["topic"]))
    return path, topics


def test_intrinsic_measures_against_brute_force(run, corpus):
    result = ev.evaluate(run)
    m = result["intrinsic"]
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert m["final_loss"] == manifest["stages"]["glove"]["final_loss"]
    assert m["inertia_per_clip"] == manifest["stages"]["vocab"]["inertia_per_clip"]

    tokens = tokens_of(run)
    counts = np.bincount(np.concatenate(list(tokens.values())), minlength=12)
    p = counts / counts.sum()
    assert m["perplexity"] == pytest.approx(np.exp(-sum(q * np.log(q) for q in p if q > 0)))
    assert m["dead_words"] == sum(c == 0 for c in counts)
    assert m["tiny_words"] == sum(0 < c < 0.1 * counts.mean() for c in counts)

    vectors = np.load(os.path.join(run, "glove", "vectors.npy"))
    co = cooccur_of(run)
    x = np.zeros((12, 12))
    x[co["i"], co["j"]] = co["x"]
    shares = []
    for w in range(12):
        cos = [np.dot(vectors[w], vectors[n]) / np.linalg.norm(vectors[w]) / np.linalg.norm(vectors[n])
               if n != w else -np.inf for n in range(12)]
        near = np.argsort(-np.array(cos), kind="stable")[:10]
        if x[w].sum() > 0:
            shares.append(x[w, near].sum() / x[w].sum())
    assert m["neighbour_share"] == pytest.approx(np.mean(shares))

    # Held out: the videos not in --train-ids, counted by brute force, J of the saved state.
    train = set(json.load(open(corpus["train_ids"])))
    held = [tokens[v] for v in sorted(tokens) if v not in train]
    assert held and m["held_out"]["videos"] == len(held)
    dense = brute_force(held, 12, 5)
    i, j = np.nonzero(dense)
    state = np.load(os.path.join(run, "glove", "state.npz"))
    want = loss([state[k] for k in ("w", "w_context", "b", "b_context")], (i, j, dense[i, j]),
                x_max=TrainConfig().x_max, alpha=0.75)
    assert m["held_out"]["loss"] == pytest.approx(want, rel=1e-9)
    assert m["held_out"]["nonzeros"] == len(i)
    # J at initialization: of the state the fit started from (a fit of 0 epochs keeps it).
    start = GloVe(dim=8, x_max=TrainConfig().x_max, epochs=0, seed=0).fit(
        co["i"], co["j"], co["x"], 12)
    assert start.best_epoch_ == 0
    assert start.loss(co["i"], co["j"], co["x"]) == pytest.approx(
        manifest["stages"]["glove"]["initial_loss"], rel=1e-4)
    assert m["held_out"]["initial_loss"] == pytest.approx(start.loss(i, j, dense[i, j]), rel=1e-9)
    assert m["held_out"]["loss"] < m["held_out"]["initial_loss"]  # the planted topics generalise
    assert "overfitting" not in "\n".join(ev.lines(result))
    assert json.load(open(os.path.join(run, "evaluation.json")))["intrinsic"] == json.loads(
        json.dumps(m))


def test_probe_and_retrieval_against_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    y = np.repeat(np.array(["a", "b", "c"]), [7, 6, 5])
    x = rng.normal(size=(18, 4)) + (y == "a")[:, None] * 1.5
    got = ev.probe_accuracy(x, y, seed=0)
    scores = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        scaler = StandardScaler().fit(x[tr])
        model = LogisticRegression(max_iter=2000).fit(scaler.transform(x[tr]), y[tr])
        scores.append(np.mean(model.predict(scaler.transform(x[te])) == y[te]))
    assert got == pytest.approx(np.mean(scores))

    aps = []
    for q in range(18):
        sims = np.array([np.dot(x[q], x[o]) / np.linalg.norm(x[q]) / np.linalg.norm(x[o])
                         for o in range(18) if o != q])
        rel = np.array([y[o] == y[q] for o in range(18) if o != q])
        aps.append(average_precision_score(rel, sims))
    assert ev.retrieval_map(x, y) == pytest.approx(np.mean(aps))


def test_the_planted_topics_are_found(run, corpus, labels):
    path, topics = labels
    result = CliRunner().invoke(app, ["evaluate", run, corpus["features"], "--labels", path])
    assert result.exit_code == 0, result.output
    assert "probe accuracy" in result.output and "visual_glove" in result.output
    lab = json.load(open(os.path.join(run, "evaluation.json")))["labels"]
    assert lab["videos"] == 60 and lab["classes"] == 3 and lab["unlabelled_videos"] == 0
    reps = lab["representations"]
    assert set(reps) == {"visual_glove", "bag_of_words", "raw", "raw+visual_glove"}
    assert reps["visual_glove"]["probe_accuracy"] >= 0.9 > 2 * lab["chance"] - 0.1
    assert reps["visual_glove"]["retrieval_map"] > lab["chance"] + 0.3


def test_videos_without_a_label_are_left_out_and_counted(run, labels, tmp_path):
    _, topics = labels
    some = dict(list(sorted(topics.items()))[:45])
    path = tmp_path / "some.json"
    path.write_text(json.dumps(some))
    out = str(tmp_path / "eval.json")
    result = CliRunner().invoke(app, ["evaluate", run, "--labels", str(path), "--out", out])
    assert result.exit_code == 0, result.output
    lab = json.load(open(out))["labels"]
    assert lab["videos"] == 45 and lab["unlabelled_videos"] == 15
    assert set(lab["representations"]) == {"visual_glove", "bag_of_words"}
    assert "15 without a label left out" in result.output


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"v_nope": 1, "v_other": 2}', "2 ids of --labels are not videos of"),
    (None, "a probe needs at least 2"),
])
def test_bad_labels_fail_in_one_line(run, labels, tmp_path, content, message):
    _, topics = labels
    if content is None:  # one class only
        content = json.dumps({v: "same" for v in topics})
    path = tmp_path / "labels.json"
    path.write_text(content)
    result = CliRunner().invoke(app, ["evaluate", run, "--labels", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_the_report_shows_the_evaluation(run, labels):
    from vgray.commands.report import report

    path, _ = labels
    assert CliRunner().invoke(app, ["evaluate", run, "--labels", path, "-q"]).exit_code == 0
    page = open(report(run), encoding="utf-8").read()
    assert "<h2>Evaluation</h2>" in page and "visual_glove" in page and "held-out J" in page


def test_a_lost_train_ids_file_skips_only_the_held_out_loss(run, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    manifest = json.load(open(os.path.join(copy, "manifest.json")))
    manifest["train_ids_file"] = str(tmp_path / "moved.json")
    json.dump(manifest, open(os.path.join(copy, "manifest.json"), "w"))
    result = CliRunner().invoke(app, ["evaluate", copy])
    assert result.exit_code == 0, result.output
    held = json.load(open(os.path.join(copy, "evaluation.json")))["intrinsic"]["held_out"]
    assert held["loss"] is None and "cannot read --train-ids" in held["skipped"]
    assert "held-out J - (cannot read --train-ids" in result.output


def test_an_overfit_run_is_said_to_be_one(ray_session, corpus, tmp_path, caplog):
    """K = 100 on 990 training clips: k-means warns of too few clips per word, GloVe keeps the
    epoch of lowest J and says which, evaluate says the held-out J got worse than at init."""
    out = str(tmp_path / "overfit")
    result = CliRunner().invoke(app, ["train", corpus["features"], "--out", out, "--train-ids",
                                      corpus["train_ids"], "--vocab-size", "100", "--dim", "16",
                                      "--epochs", "600", "--learning-rate", "0.1",
                                      "--shard-clips", "200"])
    assert result.exit_code == 0, result.output
    train = set(json.load(open(corpus["train_ids"])))
    clips = sum(len(t) for v, t in tokens_of(out).items() if v in train)
    assert clips < 39 * 100
    assert (f"warning: {clips:,} training clips for 100 words ({clips // 100} per word); k-means "
            "wants at least 39 per word: consider a smaller --vocab-size") in caplog.messages

    fit = json.load(open(os.path.join(out, "manifest.json")))["stages"]["glove"]
    curve = np.loadtxt(os.path.join(out, "glove", "loss.csv"), delimiter=",", skiprows=1)[:, 1]
    assert fit["kept_epoch"] == int(np.argmin(curve)) < 600 and fit["final_loss"] == curve.min()
    # The lowest J still gains more than --glove-tol over 50 epochs: every epoch runs.
    assert fit["stopped"] == "epochs" and fit["epochs"] == fit["max_epochs"] == len(curve) - 1
    # The stage's summary line (progress lines "glove: N/600 epochs (…%)" may come before it).
    line = next(x for x in result.output.splitlines() if x.startswith("glove: 600 epochs"))
    assert line.startswith("glove: 600 epochs (reached --epochs) on ")
    assert (f"loss {curve[0]:.4g} -> {curve.min():.4g} (last epoch {curve[-1]:.4g}), kept epoch "
            f"{fit['kept_epoch']} of 600 (lowest J)") in line

    shown = CliRunner().invoke(app, ["evaluate", out])
    assert shown.exit_code == 0, shown.output
    held = json.load(open(os.path.join(out, "evaluation.json")))["intrinsic"]["held_out"]
    assert held["loss"] > held["initial_loss"]
    assert (f"  the held-out J is worse than at initialization ({held['loss']:.4g} > "
            f"{held['initial_loss']:.4g}): the vectors fit the counts of the training videos and "
            "not those of unseen videos (overfitting)") in shown.output.splitlines()

    from vgray.commands.report import report

    page = open(report(out), encoding="utf-8").read()
    assert (f"{curve[0]:.4g} → {curve.min():.4g} (kept epoch {fit['kept_epoch']}, of lowest J; "
            f"last epoch {curve[-1]:.4g})") in page and "(overfitting)" in page
