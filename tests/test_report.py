"""`vgray report`: the HTML page and its PNGs, checked for content and rendered in headless
Chromium (Debian's `chromium`; .ci/run installs it, the test is skipped with the reason where it
is missing): the page loads with all its images and no console errors."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from vgray.cli import app
from vgray.commands.synth import make_corpus


@pytest.fixture(scope="module")
def reported(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    info = make_corpus(str(root / "c"), videos=20, dim=8, words=12, topics=3)
    run = str(root / "run")
    result = CliRunner().invoke(app, ["train", info["features"], "--out", run, "--vocab-size", "12",
                                      "--dim", "4", "--epochs", "60", "--report", "-q"])
    assert result.exit_code == 0, result.output
    return run


def test_report_files_and_content(reported):
    folder = os.path.join(reported, "report")
    assert sorted(os.listdir(folder)) == ["index.html", "loss.png", "usage.png", "vocabulary-map.png"]
    import matplotlib.image

    for name in ("loss.png", "usage.png", "vocabulary-map.png"):
        assert matplotlib.image.imread(os.path.join(folder, name)).shape[0] > 100
    page = open(os.path.join(folder, "index.html")).read()
    for heading in ("Corpus", "Skipped, by reason", "Stages", "GloVe loss", "Vocabulary usage",
                    "Vocabulary map", "Nearest neighbours"):
        assert f">{heading}<" in page
    assert page.count('src="data:image/png;base64,') == 3  # self-contained: opens offline
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "t-SNE" in page and re.search(r"w\d+ \(-?[01]\.\d\d, \d+\.\d%\)", page)
    # Where the stages ran and the node-seconds per node type (a local Ray's node has no type).
    assert ">Node-seconds by node type<" in page
    assert re.search(r"<tr><td>vocab</td><td>[\d.]+</td><td>1 × \(CPU 2\) \(cpu\)</td></tr>", page)
    assert re.search(r"<tr><td>\(CPU 2\)</td><td>1</td><td>\d+\.\d</td></tr>", page)


def test_report_command_rewrites_it(reported):
    os.remove(os.path.join(reported, "report", "usage.png"))
    result = CliRunner().invoke(app, ["report", reported])
    assert result.exit_code == 0 and result.output.strip().endswith("index.html")
    assert os.path.exists(os.path.join(reported, "report", "usage.png"))


def test_report_of_something_else_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("error: ")


def test_page_renders_in_headless_chromium(reported, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    index = os.path.join(reported, "report", "index.html")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", f"file://{index}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 of 3 images loaded" in done.stdout
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower() or "Uncaught" in line], console
    assert np.isfinite(float(re.search(r"GloVe loss</th><td>([\d.e+-]+)", done.stdout).group(1)))
