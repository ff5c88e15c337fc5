"""RUN/manifest.json as typed records (vgray.rundir.manifest): a real RUN's manifest reads and writes
back unchanged, an older manifest reads with the fields it lacks at what its vgray did, and a
bad field is one line."""

import copy
import json
import os
import shutil

import pytest

from vgray.config import TrainConfig
from vgray.errors import VgrayError
from vgray.rundir.manifest import Manifest, Stage
from vgray.run.resume import check_train, train_settings
from vgray.rundir.store import RunDir

from helpers import ARGS


def manifest_json(run):
    with open(os.path.join(run, "manifest.json")) as f:
        return json.load(f)


def test_a_trained_runs_manifest_round_trips(trained_run):
    run, _ = trained_run
    data = manifest_json(run)
    m = RunDir(run).read_manifest()
    assert m.to_dict() == data
    assert list(m.to_dict()) == list(data)  # and in the order vgray writes its keys
    # what the readers see, typed
    assert m.command == "train" and m.status == "complete"
    assert m.config == TrainConfig(**data["config"])
    assert m.corpus.videos == data["corpus"]["videos"] and m.corpus.listing
    assert m.counts.clips == data["counts"]["clips"]
    assert m.stages["glove"].final_loss == data["stages"]["glove"]["final_loss"]
    assert m.stages["assign"].shards == data["stages"]["assign"]["shards"]
    assert all(m.stage_done(s) for s in ("scan", "vocab", "assign", "cooccur", "glove", "embed"))
    assert sum(u.nodes for u in m.placement.nodes.values()) >= 1
    assert m.placement.gpu == data["cluster"]["gpu"]
    assert m.retries_of("driver").requests == data["retries"]["driver"]["requests"]


def test_written_through_run_dir_unchanged(trained_run, tmp_path):
    run, _ = trained_run
    copy_dir = str(tmp_path / "run")
    os.makedirs(copy_dir)
    shutil.copy(os.path.join(run, "manifest.json"), copy_dir)
    target = RunDir(copy_dir)
    target.write_manifest(target.read_manifest())
    assert manifest_json(copy_dir) == manifest_json(run)


def older(data):
    """The manifest as a vgray before listing fingerprints, --embeddings, --format and
    --glove-tol wrote it."""
    old = copy.deepcopy(data)
    del old["corpus"]["listing"]
    for key in TrainConfig.ADDED:
        old["settings"].pop(key, None)
        old["config"].pop(key, None)
    for key in ("retries", "versions", "last_invocation", "nodes", "cluster"):
        old.pop(key)
    for stage in old["stages"].values():
        stage.pop("nodes", None)
    return old


def test_an_older_manifest_reads_with_the_defaults_of_its_time(trained_run, tmp_path):
    run, _ = trained_run
    m = Manifest.from_dict(older(manifest_json(run)))
    assert m.corpus.listing is None and m.placement is None and m.versions is None
    assert m.config.embeddings == "files" and m.config.glove_tol == TrainConfig.ADDED["glove_tol"]
    assert m.config.input_format is None and m.embeddings_layout == "files"
    made = m.settings_with_added()
    assert all(made[k] == v for k, v in TrainConfig.ADDED.items())
    assert made == train_settings(m.config, m.features, None) | {"train_ids": made["train_ids"]}


def test_an_older_run_is_still_recognised_complete(trained_run, corpus, tmp_path):
    """The no-op check reads an older manifest's settings at their old values: the RUN is
    complete (after a scan, as it has no listing fingerprint), not refused as changed."""
    run, _ = trained_run
    copy_dir = str(tmp_path / "run")
    shutil.copytree(run, copy_dir)
    with open(os.path.join(copy_dir, "manifest.json"), "w") as f:
        json.dump(older(manifest_json(run)), f)
    settings = dict(zip(ARGS[0:-1:2], ARGS[1:-1:2]))
    config = TrainConfig(vocab_size=int(settings["--vocab-size"]), dim=int(settings["--dim"]),
                         epochs=int(settings["--epochs"]),
                         shard_clips=int(settings["--shard-clips"]))
    checked = check_train(corpus["features"], copy_dir, config, corpus["train_ids"])
    assert checked.summary is not None and checked.corpus is not None


def test_a_sweep_combination_and_apply_manifest_round_trip():
    stage = {"status": "done", "seconds": 0.5, "videos": 3, "clips": 40, "skipped": 0}
    corpus = {"layout": "two-stream", "videos": 3, "clips": 40, "train_videos": 3, "rgb_dim": 8,
              "flow_dim": None, "skipped_at_scan": 0, "missing_train_ids": 0,
              "fingerprint": "0a0b0c0d", "listing": "00ff"}
    sweep = {"settings": {"seed": 0}, "stages": {"scan": stage}, "command": "sweep",
             "features": "/f", "train_ids_file": None,
             "config": {k: v for k, v in TrainConfig(vocab_size=6, kmeans_sample=8).to_dict().items()
                        if k not in ("vocab_size", "window", "dim")},
             "grid": {"vocab_size": [3, 6], "window": [2], "dim": [4]}, "labels_file": None,
             "status": "complete",
             "vocabularies": {"3": {"vocab": stage, "assign": stage, "counted_window": 2}},
             "corpus": corpus, "evaluated": {"K3-w2-d4": {"labels": None, "seconds": 1.0}},
             "best": None}
    m = Manifest.from_dict(sweep)
    assert m.to_dict() == sweep
    assert m.config.vocab_size == 6  # the grid's largest: valid beside --kmeans-sample 8
    assert m.vocabulary(3).counted_window == 2 and m.evaluated["K3-w2-d4"].labels is None
    apply = {"settings": {"run": "/r"}, "stages": {"scan": stage}, "command": "embed",
             "features": "/f", "run": "/r",
             "reading": {"input_format": "hdf5", "hdf5_key": "i3d", "hdf5_flow_key": None},
             "status": "running"}
    m = Manifest.from_dict(apply)
    assert m.to_dict() == apply and m.config is None
    assert m.reading_for("/f").format == "hdf5" and m.reading_for("/elsewhere").format is None


def test_a_stage_keeps_figures_it_does_not_know():
    record = {"status": "done", "nonzeros": 30, "reducers": 4, "derived_from_window": 2}
    stage = Stage.from_dict(record, "stages.cooccur.")
    assert stage.seconds is None and stage.to_dict() == record


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("command"), "manifest field command is missing"),
    (lambda d: d["corpus"].update(videos="many"), "manifest field corpus.videos should be int"),
    (lambda d: d["stages"]["glove"].pop("status"), "manifest field stages.glove.status is missing"),
    (lambda d: d.update(stages=[1, 2]), "manifest field stages should be dict"),
    (lambda d: d["config"].update(window=99), "manifest field config: --window must be between"),
    (lambda d: d["counts"].pop("clips"), "manifest field counts.clips is missing"),
])
def test_a_bad_field_is_one_line(trained_run, tmp_path, change, message):
    run, _ = trained_run
    data = manifest_json(run)
    change(data)
    with open(tmp_path / "manifest.json", "w") as f:
        json.dump(data, f)
    with pytest.raises(VgrayError) as e:
        RunDir(str(tmp_path)).read_manifest()
    text = str(e.value)
    assert message in text and "manifest.json is unreadable" in text and "\n" not in text
