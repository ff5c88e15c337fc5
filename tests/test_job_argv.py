"""The command line a job on a cluster is given: every argument and option reproduced, and the
paths among them (named in cli.PATHS) as the cluster's nodes see them, found by name, not by
position. No Ray and no cluster: the submission itself is replaced by a recorder."""

import pytest
from typer.testing import CliRunner

from vgray.clusters import submit
from vgray.cli import PATHS, app


@pytest.fixture
def submitted(monkeypatch):
    jobs = []

    def record(address, argv, wait=True, echo=print, out=print):
        jobs.append(argv)
        return "raysubmit_test"

    monkeypatch.setattr(submit, "submit", record)
    return jobs


def submit_one(jobs, *argv):
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    assert len(jobs) == 1
    return jobs.pop(), result


def test_paths_are_rewritten_by_name_wherever_their_options_stand(submitted, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = "http://127.0.0.1:8265"  # a head on this machine: local paths become absolute
    for before in ([], ["--window", "3", "-k", "40"]):
        argv, _ = submit_one(submitted, "train", *before, "feats", "--hdf5-key", "feats",
                             "--train-ids", "ids.json", "-o", "run", "--strict", "--report",
                             "-q", "--address", here)
        # the value of --hdf5-key is spelt like FEATURES but is no path: left as it is
        assert argv[:2] == ["train", str(tmp_path / "feats")]
        assert argv[argv.index("--out") + 1] == str(tmp_path / "run")
        assert argv[argv.index("--train-ids") + 1] == str(tmp_path / "ids.json")
        assert argv[argv.index("--hdf5-key") + 1] == "feats"
        assert {"--strict", "--report", "-q"} <= set(argv) and "--address" not in argv
        assert argv[argv.index("--window") + 1] == ("3" if before else "5")

    argv, _ = submit_one(submitted, "sweep", "feats", "-o", "dir", "--labels", "labels.json",
                         "-k", "4,8", "--address", here)
    assert argv[:2] == ["sweep", str(tmp_path / "feats")]
    assert argv[argv.index("--labels") + 1] == str(tmp_path / "labels.json")
    assert argv[argv.index("--out") + 1] == str(tmp_path / "dir")
    assert argv[argv.index("--vocab-size") + 1] == "4,8" and "--train-ids" not in argv

    for command in ("assign", "embed"):
        argv, _ = submit_one(submitted, command, "model", "feats", "--out", "o", "--workers",
                             "2", "--address", here)
        assert argv[:3] == [command, str(tmp_path / "model"), str(tmp_path / "feats")]
        assert argv[argv.index("--out") + 1] == str(tmp_path / "o")
        assert argv[argv.index("--workers") + 1] == "2"


def test_a_remote_cluster_is_told_of_each_path_once(submitted):
    argv, result = submit_one(submitted, "train", "/data/feats", "-o", "s3://bucket/run",
                              "--train-ids", "/data/ids.json", "--address", "http://10.1.2.3:8265")
    assert argv[:2] == ["train", "/data/feats"] and "s3://bucket/run" in argv
    notes = [x for x in result.output.splitlines() if x.startswith("note:")]
    assert [n.split()[1] for n in notes] == ["/data/feats", "/data/ids.json"]
    assert PATHS == {"run", "features", "out", "train_ids", "labels"}


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_the_jobs_commands_say_in_one_line_that_the_cluster_cannot_be_reached(command):
    """(They are run against a real cluster in test_jobs.py, in the cluster tier.)"""
    result = CliRunner().invoke(app, ["jobs", command, "raysubmit_x",
                                      "--address", "http://127.0.0.1:9"])  # nothing listens there
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: cannot reach the Ray Jobs API at http://127.0.0.1:9: Failed to connect to Ray at "
        "address: http://127.0.0.1:9."]
