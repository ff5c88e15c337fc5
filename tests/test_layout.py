"""The shape of the package, read from its own source: the layers are folders and import only
downwards (import-linter's contracts in pyproject.toml), no circle between modules (not even
through an import inside a function), no module takes another's private names, no module
outgrows ~600 lines, no function outgrows 60 lines or takes more than 6 positional parameters,
and the stages' records and units behave as the stages rely on."""

import ast
import os
import subprocess
import sys

import pytest

from vgray.rundir.store import RunDir
from vgray.run.units import ShardStats, first_skip, totals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "vgray")
MAX_LINES = 600


def modules() -> dict[str, str]:
    """Dotted name -> path of every module of the package (a package by its __init__)."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].split(os.sep)
                found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(root, f)
    return found


def imports():
    """module -> {(imported module, name or None)} for every import anywhere in the module."""
    mods = modules()
    found = {}
    for m, path in mods.items():
        package = m if path.endswith("__init__.py") else m.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").split(".")[0] == "vgray":
                    target = node.module
                else:
                    continue
                for a in node.names:
                    if f"{target}.{a.name}" in mods:  # from . import fs: the module itself
                        edges.add((f"{target}.{a.name}", None))
                    else:
                        edges.add((target, a.name))
            elif isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "vgray"}
        found[m] = {(t, n) for t, n in edges if t != m and t in mods and t != "vgray"}
    return found


def test_the_layers_import_only_downwards():
    """import-linter's contracts (pyproject.toml): the layers as folders, each importing only the
    ones below it; the model reaches the run side through `commands.train` only."""
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           " lint_imports_command()"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_module_is_in_a_layer():
    """A new module lands in a layer's folder (or is one of the few at the top), so the
    contracts above see it."""
    import tomllib

    config = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {n.strip() for layer in layers for n in layer.replace(":", "|").split("|")}
    outside = sorted(m for m in modules() if m != "vgray"
                     and not any(m == n or m.startswith(n + ".") for n in named))
    assert outside == []


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
    sizes = {m: open(p).read().count("\n") for m, p in modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


MAX_FUNCTION_LINES, MAX_POSITIONAL = 60, 6


def _is_command(node) -> bool:
    """A Typer command: its parameters are the command line's options, named by Typer."""
    return any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
               for d in node.decorator_list)


def test_functions_are_short_and_take_few_positional_parameters():
    """Every function reads at once (at most 60 lines), and past the first few parameters they
    are keyword-only (scikit-learn's `KMeans(n_clusters, *, ...)`); Typer's commands are exempt
    from the second rule."""
    long, wide = [], []
    for m, path in modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{m}.{node.name} (line {node.lineno})"
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(where)
            a = node.args
            positional = len(a.posonlyargs) + len(a.args)
            positional -= bool(a.args and a.args[0].arg in ("self", "cls"))
            if positional > MAX_POSITIONAL and not _is_command(node):
                wide.append(where)
    assert (long, wide) == ([], [])


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


@pytest.mark.parametrize("name", ["vgray.run.units", "vgray.run.resume", "vgray.rundir.sweeptable",
                                  "vgray.rundir.store", "vgray.rundir.manifest", "vgray.config",
                                  "vgray.features.readers"])
def test_light_modules_import_without_ray_or_torch(name):
    code = (f"import sys, {name}; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
