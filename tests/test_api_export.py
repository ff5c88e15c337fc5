"""The Python API (VisualGlove) and the exports, against the files of a trained run."""

import glob
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vgray import VisualGlove
from vgray.cli import app
from vgray.errors import VgrayError
from vgray.rundir.store import read_tokens
from vgray.commands.synth import make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(vocab_size=6, dim=4, epochs=40, shard_clips=80)


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    info = make_corpus(str(root / "c"), videos=16, dim=8, words=6, topics=2, flow=True, flow_dim=4)
    out = str(root / "run")
    model = VisualGlove.train(info["features"], out, **SETTINGS)
    tokens = read_tokens(sorted(glob.glob(os.path.join(out, "tokens", "part-*.parquet"))))
    return {"features": info["features"], "run": out, "model": model, "tokens": tokens, "root": root}


def test_train_mirrors_the_cli(run, tmp_path):
    cli_out = str(tmp_path / "cli")
    result = CliRunner().invoke(app, ["train", run["features"], "--out", cli_out, "--vocab-size", "6",
                                      "--dim", "4", "--epochs", "40", "--shard-clips", "80", "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(VisualGlove.load(cli_out).vectors, run["model"].vectors)


def test_tokens_and_embed_equal_the_run(run):
    model = VisualGlove.load(run["run"])
    assert (model.vocab_size, model.dim, model.feature_dim, model.streams) == (6, 4, 8, "rgb")
    for vid, want in run["tokens"].items():
        clips = np.load(os.path.join(run["features"], f"{vid}_rgb.npy"))
        assert np.array_equal(model.tokens(clips), want)
        np.testing.assert_array_equal(model.embed(clips),
                                      np.load(os.path.join(run["run"], "embeddings", f"{vid}.npy")))


def test_most_similar_is_cosine_order(run):
    model = run["model"]
    v = model.vectors / np.linalg.norm(model.vectors, axis=1, keepdims=True)
    for word in range(model.vocab_size):
        got = model.most_similar(word, k=3)
        cos = v @ v[word]
        cos[word] = -np.inf
        assert [w for w, _ in got] == list(np.argsort(-cos, kind="stable")[:3])
        np.testing.assert_allclose([c for _, c in got], np.sort(cos)[::-1][:3], rtol=1e-5)


def test_bad_use_is_one_clear_error(run):
    model = run["model"]
    with pytest.raises(VgrayError, match=r"features must be \[T, 8\]"):
        model.tokens(np.zeros((3, 5), np.float32))
    with pytest.raises(VgrayError, match="NaN"):
        model.embed(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(VgrayError, match="floating point"):
        model.tokens(np.zeros((2, 8), np.int64))
    with pytest.raises(VgrayError, match=r"word must be in \[0, 6\)"):
        model.most_similar(6)
    with pytest.raises(VgrayError, match="not a vgray train run"):
        VisualGlove.load(str(run["root"]))


def parse_lines(lines, dim):
    words, rows = [], []
    for line in lines:
        name, *values = line.rstrip("\n").split(" ")
        assert len(values) == dim
        words.append(name)
        rows.append([float(v) for v in values])
    return words, np.array(rows, np.float32)


def export(run, fmt, out, progress=None):
    result = CliRunner().invoke(app, ["export", run["run"], "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    if progress is not None:
        progress.extend(result.stderr.splitlines())
    return result.stdout.split()


def test_glove_text_and_word2vec(run, tmp_path):
    vectors = run["model"].vectors
    (txt,) = export(run, "glove-text", tmp_path / "g")
    words, rows = parse_lines(open(txt).readlines(), 4)
    assert words == [f"w{k}" for k in range(6)]
    np.testing.assert_allclose(rows, vectors, rtol=1e-7)
    (w2v,) = export(run, "word2vec", tmp_path / "w")
    lines = open(w2v).readlines()
    assert lines[0] == "6 4\n" and parse_lines(lines[1:], 4)[0] == words
    gensim = pytest.importorskip("gensim.models")
    kv = gensim.KeyedVectors.load_word2vec_format(w2v, binary=False)
    np.testing.assert_allclose(kv["w3"], vectors[3], rtol=1e-6)


def test_projector(run, tmp_path):
    vectors_tsv, metadata_tsv = export(run, "projector", tmp_path / "p")
    rows = np.loadtxt(vectors_tsv, delimiter="\t", dtype=np.float32)
    np.testing.assert_allclose(rows, run["model"].vectors, rtol=1e-7)
    meta = [line.rstrip("\n").split("\t") for line in open(metadata_tsv)]
    assert meta[0] == ["word", "clips"] and len(meta) == 7
    counts = np.bincount(np.concatenate(list(run["tokens"].values())), minlength=6)
    assert [int(c) for _, c in meta[1:]] == counts.tolist()


def test_parquet_has_every_clip(run, tmp_path, monkeypatch):
    monkeypatch.setenv("VGRAY_PROGRESS_EVERY", "0")
    lines = []
    (path,) = export(run, "parquet", tmp_path / "q", progress=lines)
    shards = len(glob.glob(os.path.join(run["run"], "tokens", "part-*.parquet")))
    assert lines[-1].startswith(f"export: {shards}/{shards} shards (100%)")
    table = pq.read_table(path)
    assert table.schema.field("embedding").type.list_size == 4
    assert table.num_rows == sum(len(t) for t in run["tokens"].values())
    df = table.to_pydict()
    emb = np.array(df["embedding"], np.float32)
    np.testing.assert_array_equal(emb, run["model"].vectors[np.array(df["token"])])
    for vid, want in run["tokens"].items():
        rows = [k for k, v in enumerate(df["video_id"]) if v == vid]
        assert [df["clip"][k] for k in rows] == list(range(len(want)))
        assert [df["token"][k] for k in rows] == want.tolist()


def test_unknown_format_is_one_line(run, tmp_path):
    result = CliRunner().invoke(app, ["export", run["run"], "--format", "csv", "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith(
        "error: Invalid value for '--format' / '-f': 'csv' is not one of 'glove-text', ")
    assert result.output.count("\n") == 1


def test_readme_python_example_runs(ray_session, tmp_path, monkeypatch, capsys):
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"<!-- example: python-api -->\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "(" in printed and os.path.exists(tmp_path / "example-run" / "manifest.json")
