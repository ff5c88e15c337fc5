"""Unit tests of vgray.features.corpus: scanning a FEATURES directory and loading clips safely (no Ray)."""

import json
import os

import numpy as np
import pytest

from vgray.features.corpus import SINGLE_STREAM, TWO_STREAM, read_train_ids
from vgray.features.npyfile import load_rows, read_header
from vgray.features.readers import load_clips, scan
from vgray.errors import BadVideo, VgrayError

RGB_D, FLOW_D = 8, 4


# ---------------------------------------------------------------------------------------------
# helpers

def save(path, array):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    np.save(str(path), array, allow_pickle=False)


def feats(frames, dim, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(frames, dim)).astype(dtype)


def good_video(root, vid, frames=6, rgb_dim=RGB_D, flow_dim=FLOW_D, seed=0):
    """A usable two-stream video; returns its (rgb, flow) arrays."""
    rgb = feats(frames, rgb_dim, seed)
    flow = None if flow_dim is None else feats(frames, flow_dim, seed + 100)
    save(os.path.join(root, f"{vid}_rgb.npy"), rgb)
    if flow is not None:
        save(os.path.join(root, f"{vid}_flow.npy"), flow)
    return rgb, flow


def good_dir(tmp_path, n=3):
    root = str(tmp_path / "features")
    for k in range(n):
        good_video(root, f"good{k}", frames=5 + k, seed=k)
    return root


GOOD = {"good0", "good1", "good2"}


def skip_of(corpus, vid):
    """The one Skip of `vid`, after checking the video itself is not used."""
    assert vid not in {v.video_id for v in corpus.videos}
    found = [s for s in corpus.skips if s.video_id == vid]
    assert len(found) == 1, corpus.skips
    assert found[0].reason.strip()
    return found[0]


def assert_good_kept(corpus, good=GOOD):
    assert {v.video_id for v in corpus.videos} == set(good)


# ---------------------------------------------------------------------------------------------
# unreadable inputs become skips

def _garbage(path):
    with open(path, "wb") as f:
        f.write(np.random.default_rng(7).bytes(300))


def _empty(path):
    open(path, "wb").close()


def _truncated(path):
    np.save(path, feats(10, RGB_D))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-13])


def _truncated_header(path):
    np.save(path, feats(10, RGB_D))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:30])


def _directory(path):
    os.makedirs(path)


@pytest.mark.parametrize("make, reason", [
    (_garbage, "not a valid .npy file"),
    (_empty, "not a valid .npy file"),
    (_truncated, "truncated"),
    (_truncated_header, "not a valid .npy file"),
    (_directory, "unreadable file"),
], ids=["garbage", "empty", "truncated", "truncated-header", "directory"])
def test_unreadable_rgb_file_is_skipped(tmp_path, make, reason):
    root = good_dir(tmp_path)
    make(os.path.join(root, "x_rgb.npy"))
    corpus = scan(root, "rgb")
    assert reason in skip_of(corpus, "x").reason
    assert skip_of(corpus, "x").path == os.path.join(root, "x_rgb.npy")
    assert_good_kept(corpus)


def test_unreadable_flow_file_skips_the_video(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, "x_rgb.npy"), feats(6, RGB_D))
    _garbage(os.path.join(root, "x_flow.npy"))
    corpus = scan(root, "rgb")  # even when only rgb is clustered: a video is used whole
    skip = skip_of(corpus, "x")
    assert skip.reason.startswith("flow: not a valid .npy file")
    assert skip.path == os.path.join(root, "x_flow.npy")
    assert_good_kept(corpus)


class _Marker:
    """Unpickling this object creates a file (a stand-in for arbitrary code execution)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _object_array(marker):
    array = np.empty((4, RGB_D), dtype=object)
    array[:] = 0.0
    array[0, 0] = _Marker(str(marker))
    return array


def test_object_array_is_refused_and_never_unpickled(tmp_path):
    # Positive control: this file really does run code when it is unpickled.
    control = tmp_path / "control.npy"
    control_marker = tmp_path / "control-marker"
    np.save(str(control), _object_array(control_marker), allow_pickle=True)
    np.load(str(control), allow_pickle=True)
    assert control_marker.exists()

    root = good_dir(tmp_path)
    marker = tmp_path / "marker"
    path = os.path.join(root, "x_rgb.npy")
    np.save(path, _object_array(marker), allow_pickle=True)
    corpus = scan(root, "rgb")
    assert "object" in skip_of(corpus, "x").reason
    assert_good_kept(corpus)
    assert not marker.exists()
    with pytest.raises(BadVideo):
        read_header(path)
    with pytest.raises(BadVideo):
        load_rows(path)
    with pytest.raises(BadVideo):
        load_rows(path, 0, 2)
    assert not marker.exists()


def test_object_flow_array_is_refused_and_never_unpickled(tmp_path):
    root = good_dir(tmp_path)
    marker = tmp_path / "marker"
    save(os.path.join(root, "x_rgb.npy"), feats(4, RGB_D))
    np.save(os.path.join(root, "x_flow.npy"), _object_array(marker), allow_pickle=True)
    corpus = scan(root, "rgb+flow")
    assert "object" in skip_of(corpus, "x").reason
    assert_good_kept(corpus)
    assert not marker.exists()


@pytest.mark.parametrize("make", [
    _garbage, _truncated, _truncated_header,
    _empty,
], ids=["garbage", "truncated", "truncated-header", "empty"])
def test_load_rows_of_an_unreadable_file_raises_bad_video(tmp_path, make):
    # A file may change after it was scanned; load_rows must still fail as BadVideo.
    path = str(tmp_path / "x_rgb.npy")
    make(path)
    with pytest.raises(BadVideo):
        load_rows(path, 0, 2)


# ---------------------------------------------------------------------------------------------
# wrong shapes and dtypes become skips

@pytest.mark.parametrize("array, reason", [
    (np.zeros(6, np.float32), "expected a 2-D [T, D] array, got shape (6,)"),
    (np.zeros((6, 2, 4), np.float32), "expected a 2-D [T, D] array, got shape (6, 2, 4)"),
    (np.zeros((), np.float32), "expected a 2-D"),
    (np.zeros((0, RGB_D), np.float32), "no clips (T = 0)"),
    (np.zeros((6, 0), np.float32), "D = 0"),
    (np.zeros((6, RGB_D), np.int64), "is not a floating-point type"),
    (np.zeros((6, RGB_D), np.int32), "is not a floating-point type"),
    (np.zeros((6, RGB_D), np.bool_), "is not a floating-point type"),
    (np.zeros((6, RGB_D), np.complex64), "is not a floating-point type"),
    (np.zeros((6, RGB_D), [("a", np.float32)]), "is not a floating-point type"),
], ids=["1-D", "3-D", "0-D", "T=0", "D=0", "int64", "int32", "bool", "complex", "structured"])
def test_wrong_shape_or_dtype_is_skipped(tmp_path, array, reason):
    root = good_dir(tmp_path)
    save(os.path.join(root, "x_rgb.npy"), array)
    corpus = scan(root, "rgb")
    assert reason in skip_of(corpus, "x").reason
    assert_good_kept(corpus)


@pytest.mark.parametrize("array, reason", [
    (np.zeros((6, 2, FLOW_D), np.float32), "flow: expected a 2-D"),
    (np.zeros((6, FLOW_D), np.int16), "flow: dtype int16 is not a floating-point type"),
], ids=["3-D", "int"])
def test_wrong_flow_shape_or_dtype_skips_the_video(tmp_path, array, reason):
    root = good_dir(tmp_path)
    save(os.path.join(root, "x_rgb.npy"), feats(6, RGB_D))
    save(os.path.join(root, "x_flow.npy"), array)
    corpus = scan(root, "rgb")
    assert reason in skip_of(corpus, "x").reason
    assert_good_kept(corpus)


def test_wrong_rgb_width_is_skipped(tmp_path):
    root = good_dir(tmp_path)
    good_video(root, "x", rgb_dim=RGB_D + 3)
    corpus = scan(root, "rgb")
    assert corpus.rgb_dim == RGB_D
    reason = skip_of(corpus, "x").reason
    assert f"D = {RGB_D + 3} but the corpus has D = {RGB_D} (rgb)" in reason
    assert_good_kept(corpus)


def test_wrong_flow_width_is_skipped(tmp_path):
    root = good_dir(tmp_path)
    good_video(root, "x", flow_dim=FLOW_D + 1)
    corpus = scan(root, "rgb+flow")
    assert corpus.flow_dim == FLOW_D
    skip = skip_of(corpus, "x")
    assert f"D = {FLOW_D + 1} but the corpus has D = {FLOW_D} (flow)" in skip.reason
    assert skip.path.endswith("x_flow.npy")
    assert_good_kept(corpus)


def test_majority_width_is_taken_over_training_videos(tmp_path):
    root = str(tmp_path / "features")
    for k in range(3):
        good_video(root, f"wide{k}", rgb_dim=RGB_D + 2, seed=k)
    good_video(root, "narrow", rgb_dim=RGB_D)
    corpus = scan(root, "rgb", train_ids=["narrow"])
    assert corpus.rgb_dim == RGB_D
    assert [v.video_id for v in corpus.videos] == ["narrow"]
    assert {s.video_id for s in corpus.skips} == {"wide0", "wide1", "wide2"}


def test_rgb_flow_length_mismatch_is_skipped(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, "x_rgb.npy"), feats(6, RGB_D))
    save(os.path.join(root, "x_flow.npy"), feats(5, FLOW_D))
    corpus = scan(root, "rgb")
    assert "rgb has T = 6 clips but flow has T = 5" in skip_of(corpus, "x").reason
    assert_good_kept(corpus)


def test_flow_without_rgb_is_skipped(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, "x_flow.npy"), feats(6, FLOW_D))
    corpus = scan(root, "rgb+flow")
    skip = skip_of(corpus, "x")
    assert "flow file without an rgb file" in skip.reason
    assert skip.path == os.path.join(root, "x_flow.npy")
    assert_good_kept(corpus)


def test_stray_npy_in_two_stream_directory_is_skipped(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, "foo.npy"), feats(6, RGB_D))
    corpus = scan(root, "rgb")
    assert corpus.layout == TWO_STREAM
    skip = skip_of(corpus, "foo")
    assert "not named {id}_rgb.npy or {id}_flow.npy" in skip.reason
    assert skip.path == os.path.join(root, "foo.npy")
    assert_good_kept(corpus)


def test_non_npy_files_are_ignored_and_hidden_ones_skipped(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, ".hidden_rgb.npy"), feats(6, RGB_D))
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not a video")
    corpus = scan(root, "rgb")
    assert_good_kept(corpus)
    assert [(s.video_id, s.reason) for s in corpus.skips] == [
        (".hidden", "id starts with '.' (hidden or relative path)")]


# ---------------------------------------------------------------------------------------------
# NaN / inf: the header is fine, loading refuses

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("stream", ["rgb", "flow"])
def test_non_finite_values_are_refused_when_loaded(tmp_path, value, stream):
    root = good_dir(tmp_path)
    rgb, flow = feats(6, RGB_D), feats(6, FLOW_D)
    (rgb if stream == "rgb" else flow)[3, 1] = value
    save(os.path.join(root, "x_rgb.npy"), rgb)
    save(os.path.join(root, "x_flow.npy"), flow)
    corpus = scan(root, "rgb+flow")
    assert "x" in {v.video_id for v in corpus.videos}  # only the header is read when scanning
    video = next(v for v in corpus.videos if v.video_id == "x")
    path = video.rgb_path if stream == "rgb" else video.flow_path
    with pytest.raises(BadVideo, match="non-finite") as info:
        load_rows(path)
    assert "clip 3" in str(info.value)
    with pytest.raises(BadVideo, match="non-finite"):
        load_rows(path, 2, 5)
    np.testing.assert_array_equal(load_rows(path, 0, 3), (rgb if stream == "rgb" else flow)[:3])
    for streams in ("rgb+flow", stream):
        with pytest.raises(BadVideo, match="non-finite"):
            load_clips(video, streams)


# ---------------------------------------------------------------------------------------------
# layouts and ids

def test_id_strips_only_the_final_suffix(tmp_path):
    root = str(tmp_path / "features")
    rgb = feats(5, RGB_D)
    flow = feats(5, FLOW_D, seed=1)
    save(os.path.join(root, "v_a_rgb_b_rgb.npy"), rgb)
    save(os.path.join(root, "v_a_rgb_b_flow.npy"), flow)
    save(os.path.join(root, "v_flow_x_rgb.npy"), rgb)
    corpus = scan(root, "rgb")
    assert corpus.layout == TWO_STREAM
    assert [v.video_id for v in corpus.videos] == ["v_a_rgb_b", "v_flow_x"]
    video = corpus.videos[0]
    assert video.rgb_path == os.path.join(root, "v_a_rgb_b_rgb.npy")
    assert video.flow_path == os.path.join(root, "v_a_rgb_b_flow.npy")
    assert corpus.videos[1].flow_path is None
    assert corpus.skips == []


def test_single_stream_layout(tmp_path):
    root = str(tmp_path / "features")
    arrays = {vid: feats(4 + k, RGB_D, seed=k) for k, vid in enumerate(["b", "a", "c_flow"])}
    for vid, array in arrays.items():
        save(os.path.join(root, f"{vid}.npy"), array)
    corpus = scan(root)
    assert corpus.layout == SINGLE_STREAM
    assert [v.video_id for v in corpus.videos] == ["a", "b", "c_flow"]  # sorted by id
    assert corpus.skips == [] and corpus.rgb_dim == RGB_D and corpus.flow_dim is None
    for v in corpus.videos:
        assert v.flow_path is None and v.flow_dim is None
        assert v.frames == len(arrays[v.video_id]) and v.rgb_dim == RGB_D
        np.testing.assert_array_equal(load_clips(v, "rgb"), arrays[v.video_id])
        with pytest.raises(BadVideo, match="no flow file"):
            load_clips(v, "rgb+flow")


def test_single_stream_layout_skips_bad_files(tmp_path):
    root = str(tmp_path / "features")
    save(os.path.join(root, "a.npy"), feats(4, RGB_D))
    save(os.path.join(root, "b.npy"), np.zeros((4, RGB_D), np.int8))
    save(os.path.join(root, "c.npy"), feats(4, RGB_D + 1))
    corpus = scan(root)
    assert [v.video_id for v in corpus.videos] == ["a"]
    assert "not a floating-point type" in skip_of(corpus, "b").reason
    assert "but the corpus has D" in skip_of(corpus, "c").reason


@pytest.mark.parametrize("streams", ["flow", "rgb+flow"])
def test_flow_streams_on_single_stream_layout_is_an_error(tmp_path, streams):
    root = str(tmp_path / "features")
    save(os.path.join(root, "a.npy"), feats(4, RGB_D))
    with pytest.raises(VgrayError, match="single-stream"):
        scan(root, streams)


def test_nonexistent_features_is_an_error(tmp_path):
    with pytest.raises(VgrayError, match="is not a directory"):
        scan(str(tmp_path / "nope"))
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(VgrayError, match="is not a directory"):
        scan(str(path))


@pytest.mark.parametrize("streams", ["rgb+flow", "flow"])
def test_video_without_flow_is_skipped_when_flow_is_clustered(tmp_path, streams):
    root = good_dir(tmp_path)
    good_video(root, "x", flow_dim=None)
    corpus = scan(root, streams)
    assert f"no flow file, but --streams {streams} needs one" in skip_of(corpus, "x").reason
    assert_good_kept(corpus)
    # ...while with --streams rgb the flow file is optional
    corpus = scan(root, "rgb")
    assert_good_kept(corpus, GOOD | {"x"})
    assert next(v for v in corpus.videos if v.video_id == "x").flow_path is None


# ---------------------------------------------------------------------------------------------
# loading

@pytest.mark.parametrize("convert", [
    lambda a: a.astype(np.float16),
    lambda a: a.astype(np.float64),
    lambda a: np.asfortranarray(a),
    lambda a: np.asfortranarray(a.astype(np.float64)),
    lambda a: a.astype(">f4"),
    lambda a: a.astype(">f8"),
    lambda a: a.astype("<f4"),
], ids=["float16", "float64", "fortran", "fortran-float64", "big-endian-f4", "big-endian-f8",
        "little-endian-f4"])
def test_float_variants_load_as_c_contiguous_float32(tmp_path, convert):
    root = str(tmp_path / "features")
    source = feats(9, RGB_D)
    array = convert(source)
    save(os.path.join(root, "x_rgb.npy"), array)
    header = read_header(os.path.join(root, "x_rgb.npy"))
    assert header.shape == (9, RGB_D)
    corpus = scan(root)
    assert corpus.skips == []
    (video,) = corpus.videos
    assert (video.frames, video.rgb_dim) == (9, RGB_D)
    expected = array.astype(np.float32)
    for start, stop in [(0, None), (2, 7), (8, 9)]:
        got = load_rows(video.rgb_path, start, stop)
        assert got.dtype == np.float32 and got.dtype.byteorder in ("=", "<", "|")
        assert got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, expected[start:stop])
        got_clips = load_clips(video, "rgb", start, stop)
        assert got_clips.dtype == np.float32 and got_clips.flags.c_contiguous
        np.testing.assert_array_equal(got_clips, expected[start:stop])
    np.testing.assert_allclose(load_rows(video.rgb_path), source,
                               rtol=1e-3 if array.dtype.itemsize == 2 else 0)


def test_load_rows_returns_a_copy_not_the_map(tmp_path):
    path = str(tmp_path / "x_rgb.npy")
    save(path, feats(4, RGB_D))
    block = load_rows(path)
    block[:] = 0  # must not write through to the file
    np.testing.assert_array_equal(np.load(path), feats(4, RGB_D))


def test_load_clips_concatenates_rgb_then_flow(tmp_path):
    root = str(tmp_path / "features")
    rgb, flow = good_video(root, "x", frames=7)
    (video,) = scan(root, "rgb+flow").videos
    assert video.stream_dim("rgb+flow") == RGB_D + FLOW_D
    both = load_clips(video, "rgb+flow")
    assert both.shape == (7, RGB_D + FLOW_D) and both.dtype == np.float32
    assert both.flags.c_contiguous
    np.testing.assert_array_equal(both, np.concatenate([rgb, flow], axis=1))
    np.testing.assert_array_equal(load_clips(video, "rgb+flow", 2, 5),
                                  np.concatenate([rgb[2:5], flow[2:5]], axis=1))
    np.testing.assert_array_equal(load_clips(video, "rgb"), rgb)
    np.testing.assert_array_equal(load_clips(video, "flow", 1, 3), flow[1:3])


def test_explicit_rgb_dim_overrides_the_majority(tmp_path):
    root = good_dir(tmp_path)  # three videos of width RGB_D
    good_video(root, "x", rgb_dim=RGB_D + 3)
    corpus = scan(root, "rgb", rgb_dim=RGB_D + 3)
    assert corpus.rgb_dim == RGB_D + 3
    assert [v.video_id for v in corpus.videos] == ["x"]
    for vid in GOOD:
        assert f"D = {RGB_D} but the RUN has D = {RGB_D + 3} (rgb)" in skip_of(corpus, vid).reason


def test_explicit_flow_dim_overrides_the_majority(tmp_path):
    root = good_dir(tmp_path)
    good_video(root, "x", flow_dim=FLOW_D + 1)
    corpus = scan(root, "rgb+flow", flow_dim=FLOW_D + 1)
    assert corpus.flow_dim == FLOW_D + 1
    assert [v.video_id for v in corpus.videos] == ["x"]


# ---------------------------------------------------------------------------------------------
# training ids

def _write(tmp_path, text):
    path = tmp_path / "train.json"
    path.write_text(text)
    return str(path)


def test_read_train_ids_from_a_list(tmp_path):
    assert read_train_ids(_write(tmp_path, '["b", "a", "c"]')) == ["b", "a", "c"]
    assert read_train_ids(_write(tmp_path, "[]")) == []


def test_read_train_ids_from_an_object_keyed_by_id(tmp_path):
    data = {"v_1": {"duration": 1.0, "annotations": []}, "v_0": {"subset": "training"}}
    assert read_train_ids(_write(tmp_path, json.dumps(data))) == ["v_1", "v_0"]


@pytest.mark.parametrize("text", ['"v_1"', "42", "null", "true", "[1, 2]", '["a", 1]',
                                  '["a", ["b"]]', '[null]', "{not json", ""],
                         ids=["string", "number", "null", "bool", "ints", "mixed", "nested",
                              "list-of-null", "invalid", "empty"])
def test_read_train_ids_rejects_other_json(tmp_path, text):
    with pytest.raises(VgrayError, match="--train-ids"):
        read_train_ids(_write(tmp_path, text))


def test_read_train_ids_missing_file(tmp_path):
    with pytest.raises(VgrayError, match="cannot read --train-ids"):
        read_train_ids(str(tmp_path / "nope.json"))


def test_training_ids_without_files_are_missing(tmp_path):
    root = good_dir(tmp_path)
    save(os.path.join(root, "flowonly_flow.npy"), feats(5, FLOW_D))
    _garbage(os.path.join(root, "broken_rgb.npy"))
    ids = ["good0", "good2", "ghost", "another_ghost", "flowonly", "broken"]
    corpus = scan(root, "rgb", ids)
    assert corpus.missing_train_ids == ["another_ghost", "ghost"]
    assert corpus.train_ids == set(ids)
    assert_good_kept(corpus)  # non-training videos are still used (embedded)
    assert [v.video_id for v in corpus.train_videos] == ["good0", "good2"]
    assert corpus.is_train("good0") and not corpus.is_train("good1")
    # files that exist but are unusable are skips, not missing ids
    assert {s.video_id for s in corpus.skips} == {"flowonly", "broken"}


def test_without_training_ids_every_video_trains(tmp_path):
    corpus = scan(good_dir(tmp_path), "rgb")
    assert corpus.train_ids is None and corpus.missing_train_ids == []
    assert {v.video_id for v in corpus.train_videos} == GOOD


def test_skips_are_sorted_and_serialisable(tmp_path):
    root = good_dir(tmp_path)
    _garbage(os.path.join(root, "z_rgb.npy"))
    save(os.path.join(root, "a_flow.npy"), feats(5, FLOW_D))
    save(os.path.join(root, "m_rgb.npy"), np.zeros((0, RGB_D), np.float32))
    corpus = scan(root, "rgb")
    assert [s.video_id for s in corpus.skips] == ["a", "m", "z"]
    for s in corpus.skips:
        record = json.loads(json.dumps(s.to_dict()))
        assert set(record) == {"video_id", "path", "reason"} and record["reason"]


def test_scan_reports_every_header_read_in_order(corpus):
    seen = []
    found = scan(os.path.join(corpus["root"], "features"), "rgb+flow",
                 on_video=lambda done, total: seen.append((done, total)))
    n = len(found.videos) + len({s.video_id for s in found.skips})
    assert seen == [(k, n) for k in range(1, n + 1)]
