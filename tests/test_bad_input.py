"""Bad inputs end to end: `vgray train` on Ray skips every unusable video, records why, and
writes nothing for it; --strict fails with one line; a missing FEATURES is one line too."""

import glob
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.rundir.store import read_tokens
from vgray.commands.synth import make_corpus

RGB_D, FLOW_D = 8, 4
T = 8  # clips of each bad video

ARGS = ["--vocab-size", "6", "--dim", "4", "--epochs", "20", "--shard-clips", "60",
        "--workers", "2", "-q"]


class _Marker:
    """Unpickling this object creates a file (a stand-in for arbitrary code execution)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _save(features, name, array, allow_pickle=False):
    np.save(os.path.join(features, name), array, allow_pickle=allow_pickle)


def _add_bad_videos(features, marker):
    """One unusable video per case; returns {video_id: distinctive substring of its reason}."""
    rng = np.random.default_rng(3)
    # Bad videos built from a good one's features, so that only the planted defect is wrong.
    rgb = np.load(os.path.join(features, "v_00000_rgb.npy"))[:T]
    flow = np.load(os.path.join(features, "v_00000_flow.npy"))[:T]
    assert rgb.shape == (T, RGB_D) and flow.shape == (T, FLOW_D)

    def with_flow(vid):
        _save(features, f"{vid}_flow.npy", flow)

    with open(os.path.join(features, "bad_garbage_rgb.npy"), "wb") as f:
        f.write(rng.bytes(500))
    with_flow("bad_garbage")

    _save(features, "bad_truncated_rgb.npy", rgb)
    path = os.path.join(features, "bad_truncated_rgb.npy")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-10])
    with_flow("bad_truncated")

    pickled = np.empty((T, RGB_D), dtype=object)
    pickled[:] = 0.0
    pickled[0, 0] = _Marker(str(marker))
    _save(features, "bad_pickle_rgb.npy", pickled, allow_pickle=True)
    with_flow("bad_pickle")

    _save(features, "bad_3d_rgb.npy", rgb.reshape(T, 2, RGB_D // 2))
    with_flow("bad_3d")

    _save(features, "bad_empty_rgb.npy", np.zeros((0, RGB_D), np.float32))
    _save(features, "bad_empty_flow.npy", np.zeros((0, FLOW_D), np.float32))

    _save(features, "bad_width_rgb.npy", np.concatenate([rgb, rgb[:, :3]], axis=1))
    with_flow("bad_width")

    _save(features, "bad_int_rgb.npy", (rgb * 100).astype(np.int32))
    with_flow("bad_int")

    nan_rgb = rgb.copy()
    nan_rgb[5, 2] = np.nan
    _save(features, "bad_nan_rgb_rgb.npy", nan_rgb)
    with_flow("bad_nan_rgb")

    inf_flow = flow.copy()
    inf_flow[6, 1] = np.inf
    _save(features, "bad_inf_flow_rgb.npy", rgb)  # rgb is fine, flow is not
    _save(features, "bad_inf_flow_flow.npy", inf_flow)

    _save(features, "bad_length_rgb.npy", rgb)
    _save(features, "bad_length_flow.npy", flow[:T - 1])

    _save(features, "bad_flow_only_flow.npy", flow)

    return {
        "bad_garbage": "not a valid .npy file",
        "bad_truncated": "truncated",
        "bad_pickle": "object",
        "bad_3d": "2-D",
        "bad_empty": "T = 0",
        "bad_width": f"D = {RGB_D + 3} but the corpus has D = {RGB_D}",
        "bad_int": "not a floating-point type",
        "bad_nan_rgb": "non-finite",
        "bad_inf_flow": "non-finite",
        "bad_length": f"rgb has T = {T} clips but flow has T = {T - 1}",
        "bad_flow_only": "flow file without an rgb file",
    }


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    info = make_corpus(str(root / "corpus"), videos=20, dim=RGB_D, words=6, topics=2, flow=True,
                       flow_dim=FLOW_D, min_clips=6, max_clips=12)
    features = info["features"]
    good = sorted(n[: -len("_rgb.npy")] for n in os.listdir(features) if n.endswith("_rgb.npy"))
    assert len(good) == 20
    marker = root / "unpickled-marker"
    bad = _add_bad_videos(features, marker)
    train_ids = root / "train_ids.json"
    train_ids.write_text(json.dumps(good + ["v_missing"]))
    return {"root": root, "features": features, "good": good, "bad": bad,
            "marker": marker, "train_ids": str(train_ids)}


@pytest.fixture(scope="module")
def trained(ray_session, bad_corpus):
    out = str(bad_corpus["root"] / "run")
    result = CliRunner().invoke(app, ["train", bad_corpus["features"], "--out", out,
                                      "--train-ids", bad_corpus["train_ids"], *ARGS])
    return {"out": out, "result": result, **bad_corpus}


def _skipped(out):
    with open(os.path.join(out, "skipped.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_succeeds_and_reports_the_skips(trained):
    result = trained["result"]
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    last = result.stdout.strip().splitlines()[-1]
    expected = len(trained["bad"]) + 1  # + the training id without files
    assert f"skipped {expected} " in last, last
    assert f"embedded {len(trained['good'])} videos" in last, last


def test_skipped_jsonl_has_one_record_per_bad_video(trained):
    assert trained["result"].exit_code == 0, trained["result"].output
    records = _skipped(trained["out"])
    ids = [r["video_id"] for r in records]
    assert sorted(ids) == sorted([*trained["bad"], "v_missing"]), records  # once each
    by_id = {r["video_id"]: r for r in records}
    for vid, needle in trained["bad"].items():
        reason = by_id[vid]["reason"]
        assert isinstance(reason, str) and reason.strip(), by_id[vid]
        assert needle in reason, (vid, reason)
        assert by_id[vid]["path"] and os.path.basename(by_id[vid]["path"]).startswith(vid)
    assert "object" in by_id["bad_pickle"]["reason"]
    assert "non-finite" in by_id["bad_nan_rgb"]["reason"]
    assert "non-finite" in by_id["bad_inf_flow"]["reason"]
    assert "no feature files" in by_id["v_missing"]["reason"]
    assert by_id["v_missing"]["path"] is None


def test_nothing_is_written_for_bad_videos(trained):
    out = trained["out"]
    assert trained["result"].exit_code == 0, trained["result"].output
    for vid in [*trained["bad"], "v_missing"]:
        assert not glob.glob(os.path.join(out, "embeddings", f"{vid}.npy")), vid
        assert not glob.glob(os.path.join(out, "concat", f"{vid}_*.npy")), vid
        assert not glob.glob(os.path.join(out, "concat", f"{vid}.npy")), vid
    tokens = read_tokens(sorted(glob.glob(os.path.join(out, "tokens", "*.parquet"))))
    assert sorted(tokens) == trained["good"]
    assert not trained["marker"].exists(), "a pickled feature file was unpickled"


def test_every_good_video_is_embedded(trained):
    out = trained["out"]
    assert trained["result"].exit_code == 0, trained["result"].output
    for vid in trained["good"]:
        frames = np.load(os.path.join(trained["features"], f"{vid}_rgb.npy")).shape[0]
        emb = np.load(os.path.join(out, "embeddings", f"{vid}.npy"))
        assert emb.shape == (frames, 4) and emb.dtype == np.float32
        assert np.isfinite(emb).all()
        for stream in ("rgb", "flow"):
            assert os.path.exists(os.path.join(out, "concat", f"{vid}_{stream}.npy")), (vid, stream)
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["videos"] == len(trained["good"])
    assert manifest["counts"]["skipped"] == len(trained["bad"]) + 1


def _error_lines(result):
    return [line for line in result.output.splitlines() if line.strip()]


def test_strict_fails_with_one_line(ray_session, bad_corpus):
    out = str(bad_corpus["root"] / "strict-run")
    result = CliRunner().invoke(app, ["train", bad_corpus["features"], "--out", out,
                                      "--train-ids", bad_corpus["train_ids"], "--strict", *ARGS])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "[--strict]" in lines[0]
    assert any(vid in lines[0] for vid in bad_corpus["bad"]), lines[0]
    assert not os.path.exists(os.path.join(out, "embeddings"))
    assert not bad_corpus["marker"].exists()


def test_nonexistent_features_fails_with_one_line(ray_session, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "no-such-dir"),
                                      "--out", str(tmp_path / "run"), *ARGS])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "no-such-dir" in lines[0] and "not a directory" in lines[0]


def test_kmeans_sample_uses_a_video_whole_or_not_at_all(ray_session, tmp_path):
    import ray

    from vgray.features.readers import scan
    from vgray.run.units import SampleUnit
    from vgray.run.worker import ShardWorker

    flow = np.ones((5, FLOW_D), np.float32)
    flow[2, 0] = np.inf
    _save(str(tmp_path), "x_rgb.npy", np.ones((5, RGB_D), np.float32))
    _save(str(tmp_path), "x_flow.npy", flow)
    corpus = scan(str(tmp_path), "rgb")
    worker = ShardWorker.remote("rgb", 8192, "cpu")
    try:
        sample, info = ray.get(list(worker.sample.options(num_returns=2).remote(
            SampleUnit(0, corpus.videos, 1.0, 0))))
    finally:
        ray.kill(worker)
    assert [s["video_id"] for s in info.skips] == ["x"]
    assert len(sample) == 0


def test_a_mistyped_features_does_not_poison_the_out_dir(ray_session, tmp_path):
    out = str(tmp_path / "run")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "typo"), "--out", out, *ARGS])
    assert result.exit_code == 1 and "not a directory" in result.output
    empty = tmp_path / "features"  # exists, so this run gets as far as scanning it
    empty.mkdir()
    result = CliRunner().invoke(app, ["train", str(empty), "--out", out, *ARGS])
    assert result.exit_code == 1
    assert "no usable videos" in result.output, result.output


def test_a_second_train_on_the_same_out_is_refused(ray_session, tmp_path):
    from vgray.rundir.store import RunLock

    info = make_corpus(str(tmp_path / "c"), videos=6, dim=8, words=4, topics=2)
    out = str(tmp_path / "run")
    os.makedirs(out)
    holder = RunLock(out)
    holder.acquire()  # as a vgray that is running on this --out holds it
    try:
        result = CliRunner().invoke(app, ["train", info["features"], "--out", out, *ARGS])
        assert result.exit_code == 1
        assert result.output.count("\n") == 1 and "is in use by another vgray (pid" in result.output
        assert not os.path.exists(os.path.join(out, "manifest.json"))
    finally:
        holder.release()
    result = CliRunner().invoke(app, ["train", info["features"], "--out", out, *ARGS])
    assert result.exit_code == 0, result.output
