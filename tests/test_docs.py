"""The README and the docs site: the strict mkdocs build, the CLI reference generated from the
Typer app, every relative link and anchor, and the code examples still executed somewhere."""

import glob
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.md")
CLI_PAGE = os.path.join(DOCS, "cli.md")
GENERATE_CLI = [sys.executable, "-m", "typer", "vgray.cli", "utils", "docs", "--name", "vgray",
                "--title", "CLI reference", "--output"]
# Each marked example and the test that executes it (the marker is how that test finds it).
EXECUTED = {"python-api": "tests/test_api_export.py", "python-stages": "tests/test_docs.py"}
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)


def markdown_files():
    return [README] + sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def env():
    # This checkout's vgray, not another copy an editable install may point at.
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "NO_MKDOCS_2_WARNING": "1"}


def test_readme_is_short():
    assert len(open(README, encoding="utf-8").read()) <= 12_000


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    for module in ("mkdocs", "material", "pymdownx"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # the snippet include of benchmarks/README.md was expanded, not printed as a directive
    page = open(tmp_path / "site" / "benchmarks" / "index.html", encoding="utf-8").read()
    assert "One script per measured claim" in page and "--8&lt;--" not in page


def test_cli_reference_is_what_the_generator_gives(tmp_path):
    out = tmp_path / "cli.md"
    done = subprocess.run(GENERATE_CLI + [str(out)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    fresh = out.read_text(encoding="utf-8")
    committed = open(CLI_PAGE, encoding="utf-8").read()
    assert "## `vgray train`" in fresh and "--vocab-size" in fresh
    assert committed == fresh, ("docs/cli.md differs from the Typer app; regenerate it with: "
                                + " ".join(["python"] + GENERATE_CLI[1:] + ["docs/cli.md"]))


def without_code(text):
    """The text with fenced blocks and inline code blanked (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "``", text)


def slugs(path):
    """Every anchor a heading of a Markdown file gets, as GitHub and Python-Markdown spell it."""
    found = set()
    raw = open(path, encoding="utf-8").read()
    raw = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", raw, flags=re.S | re.M)
    if path.endswith("benchmarks.md"):  # the page is benchmarks/README.md, included
        raw += open(os.path.join(ROOT, "benchmarks", "README.md"), encoding="utf-8").read()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", raw, re.M):
        title = re.sub(r"<[^>]+>", "", m.group(1)).replace("`", "")
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
        github = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        ascii_ = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
        toc = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_).strip().lower())
        found |= {github, toc}
    return found


def links(path):
    text = without_code(open(path, encoding="utf-8").read())
    for m in re.finditer(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield m.group(1)
    for m in re.finditer(r'^--8<-- "([^"]+)"', open(path, encoding="utf-8").read(), re.M):
        yield "/" + m.group(1)  # a snippet include, from the repository root


def test_every_relative_link_resolves():
    broken = []
    for path in markdown_files():
        for target in links(path):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            if file.startswith("/"):
                resolved = os.path.join(ROOT, file.lstrip("/"))
            else:
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = f"{os.path.relpath(path, ROOT)}: {target}"
            if not os.path.exists(resolved):
                broken.append(f"{where} (no {os.path.relpath(resolved, ROOT)})")
            elif anchor and resolved.endswith(".md") and anchor not in slugs(resolved):
                broken.append(f"{where} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_readme_links_into_every_docs_page():
    readme = open(README, encoding="utf-8").read()
    pages = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "*.md"))}
    pages -= {"docs/benchmarks.md"}  # the README links benchmarks/README.md itself
    assert pages and not {p for p in pages if f"({p})" not in readme and f"({p}#" not in readme}


def examples():
    found = []
    for path in markdown_files():
        for name, code in EXAMPLE.findall(open(path, encoding="utf-8").read()):
            found.append((os.path.relpath(path, ROOT), name, code))
    return found


def test_every_example_is_executed_and_copies_agree():
    found = examples()
    assert {"python-api", "python-stages"} <= {name for _, name, _ in found}
    in_readme = {name: code for path, name, code in found if path == "README.md"}
    assert "python-api" in in_readme  # tests/test_api_export.py runs the README's copy
    for path, name, code in found:
        assert name in EXECUTED, f"{path}: example {name!r} is run by no test"
        runner = open(os.path.join(ROOT, EXECUTED[name]), encoding="utf-8").read()
        assert f"example: {name}" in runner, f"{EXECUTED[name]} no longer finds example {name!r}"
        if name in in_readme:
            assert code == in_readme[name], f"{path}: example {name!r} differs from the README's"


def test_stages_example_imports():
    # example: python-stages
    (code,) = [code for _, name, code in examples() if name == "python-stages"]
    names = {}
    exec(compile(code, "docs/python.md", "exec"), names)
    assert {"KMeans", "assign", "count", "weights", "GloVe", "train"} <= set(names)
