"""The shape of the package, read from its own source: imports go one way (no circle, not even
through an import inside a function), no module takes another's private names, no module
outgrows ~600 lines, and the stages' records and units behave as the stages rely on."""

import ast
import os

import pytest

from vgray.store import RunDir
from vgray.units import ShardStats, first_skip, totals

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vgray")
MAX_LINES = 600


def imports():
    """module -> {(imported module, name or None)} for every import anywhere in the module."""
    modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py")}
    found = {}
    for m in modules:
        tree = ast.parse(open(os.path.join(PACKAGE, m + ".py")).read())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import fs, stages
                    edges |= {(a.name, None) for a in node.names if a.name in modules}
                elif node.module in modules:
                    edges |= {(node.module, a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vgray."):
                edges |= {(node.module.split(".")[1], a.name) for a in node.names}
        found[m] = {(t, n) for t, n in edges if t != m and t != "__init__"}
    return found


def test_no_import_circle():
    graph = {m: {t for t, _ in e} for m, e in imports().items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for t in graph.get(todo.pop(), ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert circles == []


def test_no_private_names_across_modules():
    taken = sorted(f"{m} takes {n} from {t}" for m, e in imports().items() for t, n in e
                   if n and n.startswith("_") and not n.startswith("__"))
    assert taken == []


def test_no_module_over_the_limit():
    sizes = {f: open(os.path.join(PACKAGE, f)).read().count("\n")
             for f in os.listdir(PACKAGE) if f.endswith(".py")}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_the_model_reaches_the_run_side_through_train_only():
    """`VisualGlove.train` is the one arrow from the model to the run side; loading a RUN lives
    below both."""
    edges = imports()
    assert {t for t, _ in edges["model"]} == {"errors", "store", "train", "config", "vocab"}
    for light in ("store", "resume", "sweeptable", "units", "corpus", "config", "formats",
                  "format_base", "format_npy", "format_hdf5", "format_webdataset",
                  "format_parquet", "format_pt", "readers", "manifest"):
        assert not {t for t, _ in edges[light]} & {"job", "stages", "train", "sweep", "worker",
                                                   "pool", "model"}


def test_shard_stats_round_trip_and_totals():
    a = ShardStats(0, videos=3, clips=40, train_videos=2, pairs=7,
                   skips=[{"video_id": "x", "path": "p", "reason": "bad"}], seconds=1.5,
                   device="cpu", where={"node": "n1", "span": [0, 1]})
    record = a.to_dict()
    assert record["node"] == "n1"  # as markers have always named it
    assert ShardStats.from_dict({**record, "from_a_newer_vgray": 1}) == a
    b = ShardStats(1, videos=2, clips=10)
    assert totals([a, b]) == {"shards": 2, "videos": 5, "clips": 50, "skipped": 1}
    assert first_skip([b, a]) == a.skips[0] and first_skip([b]) is None


def test_completion_is_read_from_one_listing(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.done_shards("assign") == set() and run.partials_listed() == set()
    for k in (0, 2, 11):
        run.mark("assign", k, ShardStats(k).to_dict())
    os.makedirs(os.path.dirname(run.partial(0, 0)))
    for shard, partition in ((0, 0), (0, 1), (2, 1)):
        open(run.partial(shard, partition), "wb").close()
    # a write in progress is not a marker, nor a partial
    open(os.path.join(os.path.dirname(run.marker("assign", 0)), ".00005.tmp-ab12.json"), "w").close()
    open(os.path.join(os.path.dirname(run.partial(0, 0)), ".00003-000.tmp-ab12.parquet"), "w").close()
    assert run.done_shards("assign") == {0, 2, 11}
    assert run.partials_listed() == {(0, 0), (0, 1), (2, 1)}


@pytest.mark.parametrize("name", ["units", "resume", "sweeptable", "store", "config", "readers",
                                  "manifest"])
def test_light_modules_import_without_ray_or_torch(name):
    import subprocess
    import sys

    code = (f"import sys, vgray.{name}; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
