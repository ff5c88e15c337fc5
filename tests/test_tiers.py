"""The fast tier (`-m "not slow and not cluster and not s3"`) runs every command of the CLI: read
from the test modules as they are written (their markers, and what their tests and the fixtures
they use run), so that it holds whichever tests a run selects."""

import ast
import glob
import os

import typer

from vgray.cli import app

HERE = os.path.dirname(os.path.abspath(__file__))
TIERS = {"slow", "cluster", "s3"}  # the markers the fast tier leaves out


def commands() -> set[tuple[str, ...]]:
    """Every command of the app, as the words that name it: ("train",), ("jobs", "status")..."""
    def walk(command, path: tuple[str, ...]):
        if hasattr(command, "commands"):  # a group (typer's own click, or click)
            for name, sub in command.commands.items():
                yield from walk(sub, path + (name,))
        else:
            yield path

    return set(walk(typer.main.get_command(app), ()))


def marks(decorators: list[ast.expr]) -> set[str]:
    """The names of the `pytest.mark.X` among decorators (or a pytestmark's value)."""
    found = set()
    for node in decorators:
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute)
                    and sub.value.attr == "mark"):
                found.add(sub.attr)
    return found


def fully_marked(fn: ast.FunctionDef) -> set[str]:
    """A test's own markers; those of a parametrize's cases count only where every case has
    them (one fast case puts the test in the fast tier)."""
    own = set()
    for node in fn.decorator_list:
        call = node if isinstance(node, ast.Call) else None
        if call and isinstance(call.func, ast.Attribute) and call.func.attr == "parametrize":
            cases = call.args[1].elts if len(call.args) > 1 and hasattr(call.args[1], "elts") else []
            per_case = [marks([c]) if isinstance(c, ast.Call) else set() for c in cases]
            if per_case:
                own |= set.intersection(*per_case)
        else:
            own |= marks([node])
    return own


def parametrized(fn: ast.FunctionDef) -> dict[str, list[str]]:
    """Argument name -> the strings a `pytest.mark.parametrize` gives it."""
    values: dict[str, list[str]] = {}
    for node in fn.decorator_list:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "parametrize" and len(node.args) > 1
                and isinstance(node.args[0], ast.Constant) and hasattr(node.args[1], "elts")):
            continue
        names = [n.strip() for n in node.args[0].value.split(",")]
        for case in node.args[1].elts:
            if isinstance(case, ast.Call):  # pytest.param(...)
                case = ast.Tuple(elts=case.args) if len(names) > 1 else case.args[0]
            parts = case.elts if len(names) > 1 and hasattr(case, "elts") else [case]
            for name, part in zip(names, parts):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    values.setdefault(name, []).append(part.value)
    return values


def words_run(fn: ast.FunctionDef) -> set[tuple[str, ...]]:
    """The strings, one or two in a row, that a list, a tuple or a call's arguments hold (a
    parametrized argument standing for each of its values): what a test passes to
    `cli(...)`, `CliRunner().invoke(app, [...])` or a subprocess's argv."""
    given = parametrized(fn)
    looped = {id(node.iter) for node in ast.walk(fn) if isinstance(node, ast.For)}
    runs = set()
    for node in ast.walk(fn):
        if id(node) in looped:  # `for name in ("train", "demo")`: names looked for, not run
            continue
        items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else (
            node.args if isinstance(node, ast.Call) else [])
        words = [[i.value] if isinstance(i, ast.Constant) and isinstance(i.value, str)
                 else given.get(i.id, []) if isinstance(i, ast.Name) else [] for i in items]
        for k, these in enumerate(words):
            nexts = words[k + 1] if k + 1 < len(words) else []
            runs |= {(w,) for w in these} | {(w, v) for w in these for v in nexts}
    return runs


def fast_tier_runs() -> dict[tuple[str, ...], list[str]]:
    """Words run -> the fast-tier tests that run them, themselves or through their fixtures."""
    fixtures, tests = {}, []
    for path in sorted(glob.glob(os.path.join(HERE, "*.py"))):
        if os.path.basename(path) == os.path.basename(__file__):
            continue  # the words above are this check's own
        tree = ast.parse(open(path).read())
        module_marks = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                    for t in node.targets):
                module_marks |= marks([node.value])
        scopes = [(node, module_marks) for node in tree.body]
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                scopes += [(sub, module_marks | marks(node.decorator_list)) for sub in node.body]
        for node, outer in scopes:
            if not isinstance(node, ast.FunctionDef):
                continue
            if any("fixture" in ast.unparse(d) for d in node.decorator_list):
                fixtures[node.name] = node
            elif node.name.startswith("test_") and not (outer | fully_marked(node)) & TIERS:
                tests.append((f"{os.path.basename(path)}::{node.name}", node))

    def reach(fn: ast.FunctionDef, seen: set[str]) -> set[tuple[str, ...]]:
        runs = words_run(fn)
        for arg in fn.args.args:
            if arg.arg in fixtures and arg.arg not in seen:
                seen.add(arg.arg)
                runs |= reach(fixtures[arg.arg], seen)
        return runs

    by_words: dict[tuple[str, ...], list[str]] = {}
    for name, fn in tests:
        for words in reach(fn, set()):
            by_words.setdefault(words, []).append(name)
    return by_words


def test_the_fast_tier_runs_every_command():
    runs = fast_tier_runs()
    missing = sorted(" ".join(c) for c in commands() if c not in runs)
    assert not missing, f"commands no fast-tier test runs: {missing}"
    assert {("train",), ("jobs", "status"), ("demo",)} <= commands()  # the walk reads the app


def test_a_command_run_only_by_slow_tests_is_found():
    """What the check above would say if a command were run only in the slow tiers: the sweep
    resumed after a kill is a slow test, and it is not counted."""
    runs = fast_tier_runs()
    assert not any("test_killed_sweep_resumes_to_the_same_table" in t for ts in runs.values()
                   for t in ts)
    assert any("test_demo_recovers_planted_truth" in t for t in runs[("demo",)])
