"""The shard worker's tokenizer: short videos gathered into one matmul, long ones block by block,
bad ones reported in place; every token is the exact nearest word."""

import os
import subprocess
import sys

import numpy as np
import pytest

from vgray.features.readers import scan
from vgray.errors import BadVideo
from vgray.run.worker import tokenize
from vgray.rundir.store import save_npy
from vgray.algo.nearest import NumpyCodebook
from vgray.algo.vocab import Codebook


@pytest.mark.parametrize("batch_clips", [1, 5, 16, 1000])
def test_tokens_match_brute_force_in_order(tmp_path, batch_clips):
    rng = np.random.default_rng(batch_clips)
    centroids = rng.normal(size=(9, 6)).astype(np.float32)
    lengths = [3, 40, 1, 7, 2, 25, 4, 4]
    features = {}
    for n, t in enumerate(lengths):
        features[f"v{n}"] = x = rng.normal(size=(t, 6)).astype(np.float32)
        save_npy(os.path.join(tmp_path, f"v{n}_rgb.npy"), x)
    videos = scan(str(tmp_path)).videos
    os.remove(os.path.join(tmp_path, "v3_rgb.npy"))  # gone after the scan: reported, in place
    smaller = centroids[:4] + 0.5  # a second vocabulary, tokenised in the same pass
    # a CPU shard worker's torch-free book beside the torch Codebook of the trainer and the API
    got = list(tokenize(videos, [NumpyCodebook(centroids), Codebook(smaller)], "rgb", batch_clips))
    assert [v.video_id for v, _ in got] == [v.video_id for v in videos]
    for v, tokens in got:
        if v.video_id == "v3":
            assert isinstance(tokens, BadVideo)
            continue
        x = features[v.video_id].astype(np.float64)
        for book, words in zip((centroids, smaller), tokens):
            want = ((x[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
            assert words.dtype == np.int32 and np.array_equal(words, want)


def test_the_gpu_path_gives_the_cpu_path_tokens(tmp_path):
    """The nearest-word products a GPU worker takes (torch, float32; TF32 off on CUDA), run here
    on CPU tensors, give exactly the tokens of the CPU path (numpy's BLAS)."""
    rng = np.random.default_rng(7)
    centroids = (rng.random((64, 48)) * 4).astype(np.float32)
    for n in range(12):  # clips near the words, as real features are
        words = rng.integers(0, 64, size=int(rng.integers(5, 90)))
        x = centroids[words] + rng.normal(scale=0.7, size=(len(words), 48)).astype(np.float32)
        save_npy(os.path.join(tmp_path, f"v{n:02d}_rgb.npy"), x.astype(np.float32))
    videos = scan(str(tmp_path)).videos
    cpu = {v: t for v, t in tokenize(videos, [NumpyCodebook(centroids), Codebook(centroids)],
                                     "rgb", 100)}
    assert all(np.array_equal(a, b) for a, b in cpu.values())  # shard worker and Codebook agree
    book = Codebook(centroids, use_numpy=False)
    assert not book.numpy
    gpu_path = {v: t[0] for v, t in tokenize(videos, [book], "rgb", 100)}
    assert cpu.keys() == gpu_path.keys()
    assert all(np.array_equal(cpu[v][0], gpu_path[v]) for v in cpu)


def test_a_cpu_shard_worker_tokenises_without_torch(tmp_path):
    """A CPU shard worker loads a vocabulary and tokenises in numpy alone: only the worker that
    fits k-means or GloVe imports torch (1.8 CPU-seconds each). A fresh process, as a worker is."""
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(5, 4)).astype(np.float32)
    save_npy(str(tmp_path / "centroids.npy"), centroids)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    save_npy(str(tmp_path / "f" / "v_rgb.npy"), x)
    code = f"""
import sys
import numpy as np
from vgray.features.readers import scan
from vgray.run.worker import ShardWorker, tokenize
cls = ShardWorker.__ray_metadata__.modified_class
worker = cls.__new__(cls)
cls.__init__(worker, "rgb", 100)
book = worker.codebook({str(tmp_path / "centroids.npy")!r})
[(video, (words,))] = tokenize(scan({str(tmp_path / "f")!r}).videos, [book], "rgb", 100)
np.save({str(tmp_path / "words.npy")!r}, words)
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
    want = ((x[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(np.load(tmp_path / "words.npy"), want)
