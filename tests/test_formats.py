"""Corpora as they ship (issue 22): one synthetic corpus written with each format's own writer
(numpy, h5py, webdataset's TarWriter, pyarrow, torch.save) gives the same tokens, co-occurrence
and vectors; a broken member of each is a recorded skip with its reason; a container that
cannot be opened is one line; a `.pt` that holds anything but a tensor is never unpickled."""

import glob
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.synth import make_corpus

from helpers import assert_same_results, tokens_of, upload_tree

h5py = pytest.importorskip("h5py")
wds = pytest.importorskip("webdataset")
torch = pytest.importorskip("torch")

TRAIN_IDS: list[str] = []  # the corpus's train_ids.json, once written
ARGS = ["--vocab-size", "5", "--dim", "4", "--epochs", "30", "--shard-clips", "120",
        "--workers", "2", "-q"]


def streams_of(features):
    """id -> {"rgb": array, "flow": array} of an .npy two-stream FEATURES."""
    out = {}
    for path in sorted(glob.glob(os.path.join(features, "*_rgb.npy"))):
        vid = os.path.basename(path)[: -len("_rgb.npy")]
        out[vid] = {"rgb": np.load(path), "flow": np.load(path.replace("_rgb.npy", "_flow.npy"))}
    return out


def write_hdf5(videos, path):  # MDVC's layout: {id}/i3d_features/rgb and .../flow
    with h5py.File(path, "w") as f:
        for vid, s in videos.items():
            f.create_dataset(f"{vid}/i3d_features/rgb", data=s["rgb"])
            f.create_dataset(f"{vid}/i3d_features/flow", data=s["flow"])
            f.create_dataset(f"{vid}/vggish_features", data=np.zeros((3, 2), np.float32))


def write_webdataset(videos, root, shards=2):
    os.makedirs(root)
    ids = sorted(videos)
    for n in range(shards):
        with wds.TarWriter(os.path.join(root, f"shard-{n:04d}.tar")) as sink:
            for vid in ids[n::shards]:
                sink.write({"__key__": vid, "rgb.npy": videos[vid]["rgb"],
                            "flow.npy": videos[vid]["flow"], "json": {"id": vid}})


def write_parquet(videos, root, files=2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(root)
    ids = sorted(videos)
    kind = pa.list_(pa.list_(pa.float32()))
    for n in range(files):
        part = ids[n::files]
        table = pa.table({"video_id": part,
                          "rgb": pa.array([videos[v]["rgb"].tolist() for v in part], kind),
                          "flow": pa.array([videos[v]["flow"].tolist() for v in part], kind)})
        pq.write_table(table, os.path.join(root, f"part-{n}.parquet"), row_group_size=4)


def write_pt(videos, root):
    os.makedirs(root)
    for vid, s in videos.items():
        torch.save(torch.from_numpy(s["rgb"]), os.path.join(root, f"{vid}_rgb.pt"))
        torch.save(torch.from_numpy(s["flow"]), os.path.join(root, f"{vid}_flow.pt"))


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("forms")
    info = make_corpus(str(root / "npy"), videos=24, dim=8, words=5, topics=2, flow=True,
                       flow_dim=4, min_clips=10, max_clips=30, seed=5)
    videos = streams_of(info["features"])
    TRAIN_IDS.append(info["train_ids"])
    write_hdf5(videos, str(root / "corpus.h5"))
    write_webdataset(videos, str(root / "wds"))
    write_parquet(videos, str(root / "parquet"))
    write_pt(videos, str(root / "pt"))
    return {"root": root, "npy": info["features"], "hdf5": str(root / "corpus.h5"),
            "webdataset": str(root / "wds"), "parquet": str(root / "parquet"),
            "pt": str(root / "pt"), "videos": videos}


def train(features, out, *extra):
    """`vgray train`, with the corpus's training ids (found in every form as in .npy)."""
    ids = TRAIN_IDS[0] if TRAIN_IDS else None
    result = CliRunner().invoke(app, ["train", features, "--out", out, *ARGS, *extra,
                                      *(["--train-ids", ids] if ids and "--train-ids" not in extra
                                        else [])])
    assert result.exit_code == 0, result.output
    return json.load(open(os.path.join(out, "manifest.json")))


@pytest.fixture(scope="module")
def npy_run(ray_session, forms, tmp_path_factory):
    """The .npy corpus trained once: what every other form must give. Tests only read it."""
    base = str(tmp_path_factory.mktemp("npy-run") / "npy")
    return base, train(forms["npy"], base)


FORMS = (("hdf5", ["--hdf5-key", "i3d_features"]), ("webdataset", []), ("parquet", []),
         ("pt", []))


@pytest.fixture(scope="module")
def form_runs(ray_session, forms, tmp_path_factory):
    """Each other form trained once: form -> (RUN, its manifest). Tests only read them."""
    root = tmp_path_factory.mktemp("form-runs")
    return {fmt: (str(root / fmt), train(forms[fmt], str(root / fmt), *extra))
            for fmt, extra in FORMS}


def test_every_format_gives_the_same_run(ray_session, forms, npy_run, form_runs):
    base, m = npy_run
    assert m["corpus"]["videos"] == 24 and m["corpus"]["layout"] == "two-stream"
    for fmt, extra in FORMS:
        out, got = form_runs[fmt]
        assert got["corpus"]["videos"] == 24 and got["corpus"]["layout"] == "two-stream", fmt
        assert got["counts"]["skipped"] == 0, fmt
        assert_same_results(base, out)
        stamp = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
        train(forms[fmt], out, *extra)  # a complete RUN: nothing to do, nothing written
        assert os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == stamp, fmt
        # the outputs are those of the .npy run, whatever the input
        vid = sorted(forms["videos"])[0]
        for name in (f"embeddings/{vid}.npy", f"concat/{vid}_rgb.npy", f"concat/{vid}_flow.npy"):
            np.testing.assert_array_equal(np.load(os.path.join(base, name)),
                                          np.load(os.path.join(out, name)))


def test_embed_and_assign_read_every_format(ray_session, forms, npy_run, tmp_path):
    base, _ = npy_run
    vid = sorted(forms["videos"])[0]
    for fmt, extra in (("webdataset", []), ("hdf5", ["--hdf5-key", "i3d_features"])):
        out = str(tmp_path / f"embed-{fmt}")
        result = CliRunner().invoke(app, ["embed", base, forms[fmt], "--out", out, *extra])
        assert result.exit_code == 0, result.output
        for name in (f"embeddings/{vid}.npy", f"concat/{vid}_flow.npy"):
            np.testing.assert_array_equal(np.load(os.path.join(base, name)),
                                          np.load(os.path.join(out, name)))
        out = str(tmp_path / f"assign-{fmt}")
        result = CliRunner().invoke(app, ["assign", base, forms[fmt], "--out", out, *extra])
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(np.load(os.path.join(out, f"{vid}.npy")),
                                      tokens_of(base)[vid])


def test_check_and_evaluate_read_a_run_trained_on_hdf5(ray_session, forms, form_runs, tmp_path):
    """check reads it with the RUN's own keys (BMT cannot read FEATURES); evaluate reads it."""
    run, _ = form_runs["hdf5"]
    result = CliRunner().invoke(app, ["check", run, "--for", "bmt"])
    assert result.exit_code == 1 and "FEATURES is hdf5; BMT reads" in result.output
    labels = {v: str(int(v[-1]) % 2) for v in forms["videos"]}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    result = CliRunner().invoke(app, ["evaluate", run, forms["hdf5"], "--labels", str(path),
                                      "--out", str(tmp_path / "evaluation.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "evaluation.json").read_text())["labels"]


def test_the_format_is_detected_and_can_be_forced(forms, tmp_path):
    from vgray.features.formats import detect

    assert [detect(forms[f]) for f in ("npy", "hdf5", "webdataset", "parquet", "pt")] == [
        "npy", "hdf5", "webdataset", "parquet", "pt"]
    assert detect(forms["npy"], "pt") == "pt"


def test_broken_members_are_skips_with_their_reason(ray_session, forms, tmp_path):
    videos = dict(forms["videos"])
    ids = sorted(videos)
    bad = {ids[0]: {"rgb": videos[ids[0]]["rgb"].copy(), "flow": videos[ids[0]]["flow"]},
           ids[1]: {"rgb": videos[ids[1]]["rgb"], "flow": videos[ids[1]]["flow"][:-2]}}
    bad[ids[0]]["rgb"][3, 1] = np.nan
    broken = {**videos, **bad}
    write_hdf5(broken, str(tmp_path / "b.h5"))
    write_webdataset(broken, str(tmp_path / "wds"))
    write_parquet(broken, str(tmp_path / "pq"))
    write_pt(broken, str(tmp_path / "pt"))
    for name, extra in (("b.h5", ["--hdf5-key", "i3d_features"]), ("wds", []), ("pq", []),
                        ("pt", [])):
        out = str(tmp_path / f"run-{name}")
        m = train(str(tmp_path / name), out, *extra)
        skips = [json.loads(line) for line in open(os.path.join(out, "skipped.jsonl"))]
        reasons = {s["video_id"]: s["reason"] for s in skips}
        assert set(reasons) == {ids[0], ids[1]}, (name, reasons)
        assert "non-finite" in reasons[ids[0]] and "T = " in reasons[ids[1]], (name, reasons)
        assert m["counts"]["videos"] == 22


def test_a_pt_file_that_is_not_a_tensor_is_never_unpickled(ray_session, forms, tmp_path):
    root = tmp_path / "pt"
    root.mkdir()
    for vid, s in list(forms["videos"].items())[:6]:
        torch.save(torch.from_numpy(s["rgb"]), str(root / f"{vid}.pt"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"not": "a tensor"}, str(root / "dict.pt"))
    torch.save(Evil(), str(root / "evil.pt"))
    out = str(tmp_path / "run")
    m = train(str(root), out, "--vocab-size", "3")
    reasons = {json.loads(line)["video_id"]: json.loads(line)["reason"]
               for line in open(os.path.join(out, "skipped.jsonl"))}
    assert "holds a dict, not one tensor" in reasons["dict"]
    assert "weights_only=True, never unpickled" in reasons["evil"]
    assert not marker.exists() and m["counts"]["videos"] == 6


def test_a_container_that_cannot_be_opened_is_one_line(forms, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    result = CliRunner().invoke(app, ["train", str(bad), "--out", str(tmp_path / "r"), *ARGS])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: cannot open the HDF5 file {bad}")
    assert not (tmp_path / "r").exists()


def test_hdf5_without_h5py_is_one_line_with_the_hint(forms, tmp_path, monkeypatch):
    """h5py is an optional extra: without it an HDF5 FEATURES is one line naming the install,
    and --out is left as it was found."""
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError
    result = CliRunner().invoke(app, ["train", forms["hdf5"], "--out", str(tmp_path / "r"),
                                      "--hdf5-key", "i3d_features", *ARGS])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output == "error: reading HDF5 needs h5py: pip install 'vgray[hdf5]'\n"
    assert not (tmp_path / "r").exists()


def test_a_shard_that_cannot_be_read_is_one_line(ray_session, forms, tmp_path):
    import shutil

    for fmt, name in (("webdataset", "shard-0001.tar"), ("parquet", "part-1.parquet")):
        root = tmp_path / fmt
        shutil.copytree(forms[fmt], root)
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 3] + b"\x01" * 700)  # cut and garbled
        out = tmp_path / f"run-{fmt}"
        result = CliRunner().invoke(app, ["train", str(root), "--out", str(out), *ARGS])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: cannot ") and str(root / name) in result.output
        assert not out.exists()


def test_duplicate_ids_across_shards_are_reported(ray_session, forms, tmp_path):
    videos = forms["videos"]
    root = tmp_path / "wds"
    write_webdataset(videos, str(root))
    first = sorted(videos)[0]
    with wds.TarWriter(str(root / "shard-9999.tar")) as sink:  # the same id again
        sink.write({"__key__": first, "rgb.npy": videos[first]["rgb"],
                    "flow.npy": videos[first]["flow"]})
    out = str(tmp_path / "run")
    m = train(str(root), out)
    reasons = [json.loads(line) for line in open(os.path.join(out, "skipped.jsonl"))]
    assert [r["video_id"] for r in reasons] == [first]
    assert "duplicate id: also in" in reasons[0]["reason"] and m["counts"]["videos"] == 24


# The trains of test_every_container_reads_from_s3, all in one process (one start of Python,
# torch and Ray instead of one per format): each is `vgray train` as the CLI runs it.
FROM_S3 = """
import json, sys
from typer.testing import CliRunner
from vgray.cli import app
for argv in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, argv)
    print(json.dumps([result.exit_code, result.stdout, result.output]), flush=True)
"""
CONTAINERS = ["hdf5", "webdataset", "parquet", "pt"]


@pytest.fixture(scope="module")
def from_s3(s3, forms, npy_run, tmp_path_factory):
    """Every container uploaded to S3 and trained from there into a local RUN: format ->
    (RUN, exit code, stdout, stdout and stderr)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("from-s3")
    jobs = {}
    for fmt in CONTAINERS:
        local = forms[fmt]
        if fmt == "hdf5":
            with open(local, "rb") as src, s3["fs"].open_output_stream(
                    f"vgray-test/{fmt}/corpus.h5") as dst:
                dst.write(src.read())
            uri, extra = f"s3://vgray-test/{fmt}/corpus.h5", ["--hdf5-key", "i3d_features"]
        else:
            upload_tree(s3["fs"], local, f"vgray-test/{fmt}")
            uri, extra = f"s3://vgray-test/{fmt}", []
        jobs[fmt] = (str(root / fmt), ["train", uri, "--out", str(root / fmt), *ARGS, *extra,
                                       "--train-ids", TRAIN_IDS[0]])
    done = subprocess.run([sys.executable, "-c", FROM_S3, json.dumps([a for _, a in jobs.values()])],
                          env=s3["env"], capture_output=True, text=True, timeout=800)
    said = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert done.returncode == 0 and len(said) == len(jobs), done.stderr[-3000:]
    return {fmt: (out, *answer) for (fmt, (out, _)), answer in zip(jobs.items(), said)}


@pytest.mark.s3
@pytest.mark.parametrize("fmt", CONTAINERS)
def test_every_container_reads_from_s3(from_s3, npy_run, fmt):
    base, _ = npy_run
    out, code, stdout, output = from_s3[fmt]
    assert code == 0, output[-3000:]
    assert stdout.startswith("embedded 24 videos")
    assert_same_results(base, out)


def test_a_sweep_reads_a_container(ray_session, forms, tmp_path):
    out = str(tmp_path / "sweep")
    result = CliRunner().invoke(app, ["sweep", forms["hdf5"], "--out", out, "--hdf5-key",
                                      "i3d_features", "--vocab-size", "3,4", "--window", "2",
                                      "--dim", "2", "--epochs", "5", "--workers", "2", "-q"])
    assert result.exit_code == 0, result.output
    for combo in ("K3-w2-d2", "K4-w2-d2"):
        m = json.load(open(os.path.join(out, combo, "manifest.json")))
        assert m["stages"]["glove"]["status"] == "done"
    assert json.load(open(os.path.join(out, "manifest.json")))["corpus"]["videos"] == 24


def settled(cache) -> None:
    """Until no block of the cache is being read (ahead) any more."""
    import time

    for _ in range(500):
        with cache.lock:
            if not cache.fetching:
                return
        time.sleep(0.01)
    raise AssertionError("the blocks read ahead never arrived")


def test_the_block_cache_reads_each_block_once(monkeypatch):
    """HDF5 on object storage is read through a per-process cache of aligned blocks: any read
    (across block edges, from many threads at once) gives the file's bytes, each block costs one
    ranged request while it is held, and the cache holds at most its number of blocks."""
    import threading
    import time

    from vgray.features import format_base as formats

    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    requests, sizes = [], []
    monkeypatch.setattr(formats.fs, "read_range",
                        lambda path, start, n: requests.append(start) or data[start:start + n])
    monkeypatch.setattr(formats.fs, "size", lambda path: sizes.append(path) or len(data))
    cache = formats.BlockCache(block=1000, blocks=4, ahead=0)
    f = formats.CachedFile("s3://b/corpus.h5", cache)
    for start, n in ((0, 10), (995, 10), (2500, 1700), (9990, 50), (3000, 5)):
        f.seek(start)
        assert f.read(n) == data[start:start + n]
    f.seek(0, 2)
    assert f.read(5) == b""  # at the end
    assert sorted(requests) == [0, 1000, 2000, 3000, 4000, 9000]  # (995, 10) spans 0 and 1
    assert len(cache.data) == 4  # the oldest block went
    requests.clear()
    out = {}

    def read(n):
        g = formats.CachedFile("s3://b/corpus.h5", cache)
        g.seek(6000)
        out[n] = g.read(2000)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == data[6000:8000] for v in out.values()) and len(out) == 8
    assert sorted(requests) == [6000, 7000] and sizes == ["s3://b/corpus.h5"]  # one size asked
    # Threads that open the file at once ask its size once (as a scan's 64 threads do).
    sizes.clear()
    opening = formats.BlockCache(block=1000, blocks=4, ahead=0)
    monkeypatch.setattr(formats.fs, "size",
                        lambda path: sizes.append(path) or time.sleep(0.05) or len(data))
    opened = [threading.Thread(target=formats.CachedFile, args=("s3://b/x.h5", opening))
              for _ in range(8)]
    for t in opened:
        t.start()
    for t in opened:
        t.join()
    assert sizes == ["s3://b/x.h5"]
    # Reading ahead: a block read starts the next ones; a whole pass asks for each block once,
    # and a block whose read ahead failed is read again where it is needed.
    requests.clear()
    ahead = formats.BlockCache(block=1000, blocks=32, ahead=3)
    g = formats.CachedFile("s3://b/corpus.h5", ahead)
    assert g.read(10) == data[:10]
    settled(ahead)
    assert sorted(requests) == [0, 1000, 2000, 3000]
    assert g.read() == data[10:] and sorted(requests) == list(range(0, 10_000, 1000))
    failing = formats.BlockCache(block=1000, blocks=32, ahead=2)
    calls = []

    def flaky(path, start, n):
        calls.append(start)
        if calls.count(start) == 1 and start:
            raise OSError("connection reset")
        return data[start:start + n]

    monkeypatch.setattr(formats.fs, "read_range", flaky)
    h = formats.CachedFile("s3://b/corpus.h5", failing)
    assert h.read(10) == data[:10]
    settled(failing)
    assert h.read(2000) == data[10:2010] and calls.count(1000) == calls.count(2000) == 2


def test_the_registry_is_the_one_list_of_formats(tmp_path):
    """The formats are READERS' names and nothing else: TrainConfig's check, --format's choices
    and help, and detect() all give that list; each registered reader implements the protocol
    with its signatures."""
    import inspect

    import typer

    from vgray import config
    from vgray.features import formats
    from vgray.errors import SettingError, VgrayError
    from vgray.features.format_base import FeatureReader

    names = formats.FORMATS
    assert names == tuple(formats.READERS) and len(set(names)) == len(names) == 5
    assert config.INPUT_FORMATS == names
    for name in names:
        assert config.TrainConfig(input_format=name).input_format == name
    with pytest.raises(SettingError, match=f"--format must be one of {', '.join(names)}$"):
        config.TrainConfig(input_format="tfrecord")
    refused = CliRunner().invoke(app, ["train", str(tmp_path / "none"), "--out",
                                       str(tmp_path / "out"), "--format", "tfrecord"])
    assert refused.exit_code == 2 and not (tmp_path / "out").exists()
    assert "is not one of " + ", ".join(f"'{n}'" for n in names) + "." in refused.output
    train_cmd = typer.main.get_command(app).commands["train"]
    (option,) = [p for p in train_cmd.params if "--format" in p.opts]
    assert option.help.endswith(formats.described() + ".")
    assert all(f"{name}: {formats.READERS[name].shipped}" in option.help for name in names)
    # detect(): every registered format is found from what FEATURES is, and can be forced
    found = {}
    for name, reader in formats.READERS.items():
        if name == "hdf5":
            found[name] = formats.detect(str(tmp_path / "corpus.h5"))  # one file, by suffix
            continue
        root = tmp_path / name
        root.mkdir()
        (root / f"v1{reader.suffix}").write_bytes(b"")
        found[name] = formats.detect(str(root))
        assert formats.detect(str(root), "hdf5") == "hdf5"
    assert found == {name: name for name in names}
    with pytest.raises(VgrayError, match=f"must be one of {', '.join(names)}, got 'tfrecord'"):
        formats.detect(str(tmp_path), "tfrecord")
    # each reader is the protocol, method by method
    steps = ["detects", "fingerprint", "listing", "probe", "rows"]
    for reader in formats.READERS.values():
        assert isinstance(reader, FeatureReader), reader
        for step in steps:
            want = inspect.signature(getattr(FeatureReader, step))
            got = inspect.signature(getattr(type(reader), step))
            assert [(p.name, p.kind) for p in got.parameters.values()] == [
                (p.name, p.kind) for p in want.parameters.values()], (reader.name, step)
    # a Video or an Entry names its reader, and nothing else reads it
    assert formats.reader("parquet") is formats.READERS["parquet"]
    with pytest.raises(VgrayError, match="got 'csv'"):
        formats.reader("csv")
