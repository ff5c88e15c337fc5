"""Ids that could escape --out or collide, and symlinks out of FEATURES (no Ray)."""

import os

import numpy as np
import pytest

from vgray.features.corpus import id_problem
from vgray.features.readers import scan


def save(path, frames=4, dim=3):
    np.save(path, np.ones((frames, dim), np.float32), allow_pickle=False)


@pytest.mark.parametrize("vid,reason", [
    ("", "empty"), (".", "starts with '.'"), ("..", "starts with '.'"), (".hidden", "starts with '.'"),
    ("a\\b", "path separator"), ("a/b", "path separator"), ("a\x00b", "control character"),
    ("tab\there", "control character"), ("x" * 201, "longer than 200 bytes"),
])
def test_unsafe_ids_are_named(vid, reason):
    assert reason in id_problem(vid)


@pytest.mark.parametrize("vid", ["v_abc", "v_-x9Q_0", "ünïcode", "with space", "x" * 200, "a..b"])
def test_ordinary_ids_pass(vid):
    assert id_problem(vid) is None


def test_scan_skips_unsafe_and_case_colliding_ids(tmp_path):
    root = tmp_path / "features"
    root.mkdir()
    for vid in ["good", "Clip", "clip", "CLIP", ".sneaky", "", "back\\slash", "x" * 201]:
        save(root / f"{vid}_rgb.npy")
    save(root / "clip_flow.npy")
    corpus = scan(str(root), "rgb")
    assert sorted(v.video_id for v in corpus.videos) == ["CLIP", "good"]  # first of each case-class
    reasons = {(s.video_id, os.path.basename(s.path)): s.reason for s in corpus.skips}
    assert "only in case" in reasons[("Clip", "Clip_rgb.npy")]
    assert "only in case" in reasons[("clip", "clip_rgb.npy")]
    assert "only in case" in reasons[("clip", "clip_flow.npy")]  # its flow file goes with it
    assert "starts with '.'" in reasons[(".sneaky", ".sneaky_rgb.npy")]
    assert "empty video id" in reasons[("", "_rgb.npy")]
    assert "path separator" in reasons[("back\\slash", "back\\slash_rgb.npy")]
    assert "longer than" in reasons[("x" * 201, "x" * 201 + "_rgb.npy")]
    # every file is either used or skipped with its reason: nothing is dropped silently
    used = {os.path.basename(v.rgb_path) for v in corpus.videos}
    assert used | {os.path.basename(s.path) for s in corpus.skips} == set(os.listdir(root))


def test_training_ids_that_cannot_be_ids_are_rejected(tmp_path):
    root = tmp_path / "features"
    root.mkdir()
    save(root / "a_rgb.npy")
    save(root / "b_rgb.npy")
    corpus = scan(str(root), "rgb", train_ids=["a", "../b", "/etc/passwd", "", "b\x00"])
    assert [v.video_id for v in corpus.train_videos] == ["a"]
    rejected = {s.video_id: s.reason for s in corpus.skips if s.path is None}
    assert set(rejected) == {"../b", "/etc/passwd", "", "b\x00"}
    assert all(r.startswith("training id rejected") for r in rejected.values())


def test_symlinks_outside_features_need_follow_symlinks(tmp_path):
    root, elsewhere = tmp_path / "features", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    save(root / "inside_rgb.npy")
    save(elsewhere / "secret.npy")
    os.symlink(elsewhere / "secret.npy", root / "outside_rgb.npy")
    os.symlink(root / "inside_rgb.npy", root / "alias_rgb.npy")  # within FEATURES: fine
    corpus = scan(str(root), "rgb")
    assert sorted(v.video_id for v in corpus.videos) == ["alias", "inside"]
    (skip,) = corpus.skips
    assert skip.video_id == "outside" and "outside FEATURES" in skip.reason and "--follow-symlinks" in skip.reason
    followed = scan(str(root), "rgb", follow_symlinks=True)
    assert sorted(v.video_id for v in followed.videos) == ["alias", "inside", "outside"]
