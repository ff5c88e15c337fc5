"""Embedding rules and the run directory's atomic writes."""

import os

import numpy as np
import pytest

from vgray.algo.embed import concat, embed
from vgray.rundir.store import atomic_path, read_tokens, tokens_table, write_table


def test_embed_and_concat_rules():
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    tokens = np.array([3, 0, 3], dtype=np.int32)
    emb = embed(tokens, vectors)
    assert emb.dtype == np.float32 and np.array_equal(emb, vectors[[3, 0, 3]])
    rgb = np.ones((3, 2), np.float64)
    one = concat(rgb, emb, two_streams=False)
    assert one.dtype == np.float32 and np.array_equal(one, np.hstack([rgb, emb]))
    half = concat(rgb, emb, two_streams=True)
    assert np.array_equal(half[:, 2:] * 2, emb)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            np.save(tmp, np.zeros(3))
            assert os.path.exists(tmp) and not target.exists()
            raise RuntimeError("crash")
    assert os.listdir(tmp_path / "a") == []
    with atomic_path(str(target)) as tmp:
        np.save(tmp, np.zeros(3))
    assert os.listdir(tmp_path / "a") == ["x.npy"]


def test_tokens_table_round_trip(tmp_path):
    tokens = [np.array([1, 2, 3], np.int32), np.array([], np.int32), np.array([7], np.int32)]
    write_table(str(tmp_path / "t.parquet"), tokens_table(["a", "b", "c"], tokens))
    back = read_tokens([str(tmp_path / "t.parquet")])
    assert list(back) == ["a", "b", "c"]
    for want, got in zip(tokens, back.values()):
        assert got.dtype == np.int32 and np.array_equal(want, got)


def test_paths_and_uris(tmp_path):
    from vgray.files import fs
    from vgray.rundir.store import RunDir

    assert fs.normalize(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert fs.normalize("s3://bucket/run/") == "s3://bucket/run"
    assert fs.join("s3://bucket/run", "glove", "vectors.npy") == "s3://bucket/run/glove/vectors.npy"
    assert RunDir("s3://b/r").path("tokens") == "s3://b/r/tokens"
    run = RunDir(f"file://{tmp_path}/run")
    run.mark("assign", 3, {"ok": 1})
    assert run.done("assign", 3) and run.read_marker("assign", 3) == {"ok": 1}
    assert run.files(".work", "assign", suffix=".json") == [str(tmp_path / "run" / ".work" / "assign" / "00003.json")]
    assert fs.listdir(str(tmp_path / "missing")) == []
