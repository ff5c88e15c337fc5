"""Facts that once had several copies have one: a default, a threshold, the stage order, the
one line of an exception. Each test would fail if a second copy drifted back in."""

import ast
import inspect
import os

import numpy as np

from vgray.config import TrainConfig
from vgray.errors import first_line
from vgray.commands.evaluate import TINY, dead_and_tiny, usage_measures
from vgray.rundir.store import TRAIN_STAGES

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vgray")


def sources():
    """Dotted module name -> source, for every module of the package."""
    root = os.path.dirname(PACKAGE)
    return {os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, "."):
            open(os.path.join(d, f)).read()
            for d, _, files in os.walk(PACKAGE) for f in sorted(files) if f.endswith(".py")}


def test_glove_trains_with_the_runs_defaults():
    """`GloVe()` (documented in docs/python.md) trains as `vgray train` does: x_max was 100
    there and 20 in the run's settings."""
    from vgray.algo.glove import GloVe

    model = GloVe()
    assert model.x_max == TrainConfig().x_max == 20.0
    shared = {"dim", "x_max", "alpha", "epochs", "learning_rate", "seed"}
    defaults = {k: p.default for k, p in inspect.signature(GloVe).parameters.items()
                if k in shared}
    assert defaults == {k: getattr(TrainConfig(), k) for k in shared}


def test_a_dead_word_is_not_also_tiny():
    """The report's usage figure counted every dead word again as tiny."""
    from vgray.commands.report import usage_title

    counts = np.array([0, 0, 1, 100, 100, 100, 100, 100])  # mean 62.6: 1 is tiny, 0 is dead
    dead, tiny = dead_and_tiny(counts)
    assert dead.tolist() == [0, 1] and tiny.tolist() == [2]
    assert usage_title(counts) == "vocabulary usage: 2 dead, 1 tiny words"
    tokens = {"a": np.repeat(np.arange(8), counts)}
    measures = usage_measures(tokens, 8)
    assert (measures["dead_words"], measures["tiny_words"]) == (2, 1)
    # the threshold is a share of the mean, on its edge not tiny
    assert dead_and_tiny(np.array([TINY * 10, 20 - TINY * 10]))[1].tolist() == []  # mean 10


def test_the_tiny_threshold_and_the_stage_order_are_spelt_once():
    spelt = {m: s for m, s in sources().items()
             if "0.1 * counts" in s or '"scan", "vocab", "assign"' in s}
    assert sorted(spelt) == ["vgray.rundir.store"]
    assert TRAIN_STAGES == ("scan", "vocab", "assign", "cooccur", "glove", "embed")


def test_first_line_of_an_exception():
    assert first_line(ValueError("bad header\nTraceback: ...")) == "bad header"
    assert first_line(OSError("\n  refused by the host  \nmore")) == "refused by the host"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n")) == "RuntimeError"


def test_first_line_has_one_copy():
    """Every module takes the one line of an exception from errors.first_line."""
    copies = []
    for module, source in sources().items():
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "attr", None) == "splitlines"
                    and isinstance(node.slice, ast.Constant) and node.slice.value == 0):
                copies.append(module)
            if isinstance(node, ast.FunctionDef) and "first_line" in node.name:
                copies.append(f"{module}.{node.name}")
    assert sorted(copies) == ["vgray.errors", "vgray.errors.first_line"]
