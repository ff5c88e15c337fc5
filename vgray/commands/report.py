"""`vgray report RUN`: RUN/report/index.html (self-contained: it opens offline, images inline)
and the same figures as PNGs beside it.

- the GloVe loss curve (glove/loss.csv);
- vocabulary usage: clips per word, sorted, dead (unused) and tiny (< 10% of the mean) words
  flagged;
- a 2-D map of the vocabulary (t-SNE up to 2,000 words, PCA beyond), coloured by usage;
- nearest neighbours of a sample of words: cosine on the vectors, and the share of the word's
  co-occurrence mass that each neighbour has;
- corpus figures: videos, clips, skipped by reason, stage timings from the manifest.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json

import numpy as np

from ..files import fs
from ..rundir.manifest import CorpusRecord, Manifest, Stage
from .evaluate import TINY, dead_and_tiny, lines
from .export import usage, word_name
from ..rundir.store import COOCCUR_SCHEMA, RunDir, load_run, read_table, write_bytes, write_text

TSNE_MAX_WORDS = 2000
SAMPLE_WORDS = 12
NEIGHBOURS = 5


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _loss_figure(run: RunDir):
    import matplotlib.pyplot as plt

    text = fs.read_bytes(run.path("glove", "loss.csv")).decode("utf-8").splitlines()[1:]
    epochs, loss = zip(*((int(e), float(v)) for e, v in (line.split(",") for line in text if line)))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(epochs, loss, color="#1f77b4")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("J (GloVe loss)")
    ax.set_title("GloVe loss")
    ax.grid(alpha=0.3)
    return _png(fig), loss


def _loss_fact(curve, kept: int | None) -> str:
    """J at init -> J of the saved state; which epoch that is when it is not the last."""
    if kept is None or kept == len(curve) - 1:
        return f"{curve[0]:.4g} → {curve[-1]:.4g}"
    return (f"{curve[0]:.4g} → {curve[kept]:.4g} (kept epoch {kept}, of lowest J; last epoch "
            f"{curve[-1]:.4g})")


def usage_title(counts: np.ndarray) -> str:
    """The usage figure's title: its dead and tiny words (a dead word is not counted as tiny)."""
    dead, tiny = dead_and_tiny(counts)
    return f"vocabulary usage: {len(dead)} dead, {len(tiny)} tiny words"


def _usage_figure(counts: np.ndarray):
    import matplotlib.pyplot as plt

    order = np.sort(counts)[::-1]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(np.arange(len(order)), np.maximum(order, 0.5), width=1.0, color="#2ca02c")
    ax.set_yscale("log")
    ax.set_xlabel("visual words, most used first")
    ax.set_ylabel("clips")
    ax.set_title(usage_title(counts))
    return _png(fig)


def _map_figure(vectors: np.ndarray, counts: np.ndarray, *, seed: int = 0):
    import matplotlib.pyplot as plt

    k = len(vectors)
    if k < 3:
        xy, how = np.c_[np.arange(k), np.zeros(k)], "index"
    elif k <= TSNE_MAX_WORDS:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (k - 1) // 3)))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)
        how = "t-SNE"
    else:
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, how = centred @ vt[:2].T, "PCA"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=np.log10(counts + 1), cmap="viridis", s=14)
    fig.colorbar(points, ax=ax, label="log10(clips + 1)")
    ax.set_title(f"visual vocabulary ({how} of the GloVe vectors)")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig), how


def _neighbours(vectors: np.ndarray, counts: np.ndarray, run: RunDir) -> list[tuple[int, list]]:
    """(word, [(neighbour, cosine, share of the word's co-occurrence mass)]) for a sample."""
    k = len(vectors)
    mass = collections.defaultdict(dict)
    total = np.zeros(k)
    words = [int(w) for w in np.argsort(-counts, kind="stable")[:SAMPLE_WORDS] if counts[w] > 0]
    wanted = set(words)
    for part in run.files("cooccur", suffix=".parquet"):
        t = read_table(part, schema=COOCCUR_SCHEMA)
        i, j, x = (t.column(c).to_numpy() for c in ("i", "j", "x"))
        total += np.bincount(i, weights=x, minlength=k)
        keep = np.isin(i, list(wanted))
        for a, b, v in zip(i[keep].tolist(), j[keep].tolist(), x[keep].tolist()):
            mass[a][b] = v
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = []
    for w in words:
        cos = unit @ unit[w]
        cos[w] = -np.inf
        near = np.argsort(-cos, kind="stable")[:NEIGHBOURS]
        rows.append((w, [(int(n), float(cos[n]), mass[w].get(int(n), 0.0) / total[w] if total[w] else 0.0)
                         for n in near]))
    return rows


def _where(stage: Stage) -> str:
    """The nodes a stage ran on, by type, and its device where it has one."""
    from ..clusters.cluster import node_label

    types = collections.Counter(node_label(n) for n in (stage.nodes or {}).values())
    where = ", ".join(f"{n} × {t}" for t, n in sorted(types.items()))
    return where + (f" ({stage.device})" if stage.device else "")


def _evaluation_section(run: RunDir) -> str:
    """The measures of `vgray evaluate`, where RUN/evaluation.json exists."""
    path = run.path("evaluation.json")
    if not fs.exists(path):
        return ""
    result = json.loads(fs.read_bytes(path).decode("utf-8"))
    return ("<h2>Evaluation</h2><p>From <code>vgray evaluate</code> (evaluation.json).</p><pre>"
            + html.escape("\n".join(lines(result))) + "</pre>")


def report(run_dir: str) -> str:
    """Write RUN/report/ and return the path of its index.html."""
    import matplotlib

    matplotlib.use("Agg")
    manifest, _, vectors = load_run(run_dir, need_vectors=True)
    run = RunDir(run_dir)
    counts = usage(run, len(vectors))
    loss_png, curve = _loss_figure(run)
    usage_png = _usage_figure(counts)
    map_png, how = _map_figure(vectors, counts, seed=manifest.config.seed)
    images = {"loss.png": loss_png, "usage.png": usage_png, "vocabulary-map.png": map_png}
    for name, data in images.items():
        write_bytes(run.path("report", name), data)
    kept = manifest.stages["glove"].kept_epoch
    facts = _facts(manifest.corpus, vectors, counts, loss=_loss_fact(curve, kept))
    index = run.path("report", "index.html")
    write_text(index, _page(run, manifest, facts=facts, images=images, how=how,
                            neighbours=_neighbour_rows(vectors, counts, run)))
    return index


def _facts(corpus: CorpusRecord | None, vectors: np.ndarray, counts: np.ndarray, *, loss: str) -> list[tuple]:
    """The rows of the report's Corpus table: (what, value)."""
    dead, tiny = dead_and_tiny(counts)
    return [("videos", f"{corpus.videos if corpus else 0:,}"),
            ("clips", f"{corpus.clips if corpus else 0:,}"),
            ("visual words", f"{len(vectors):,}"), ("vector size", f"{vectors.shape[1]}"),
            ("GloVe loss", loss),
            ("dead words", ", ".join(map(word_name, dead[:50])) or "none"),
            (f"tiny words (< {TINY:.0%} of mean usage)", ", ".join(map(word_name, tiny[:50])) or "none")]


def _neighbour_rows(vectors: np.ndarray, counts: np.ndarray, run: RunDir) -> str:
    """The rows of the nearest-neighbours table."""
    return "".join(
        f"<tr><td>{word_name(w)} ({counts[w]:,} clips)</td><td>"
        + ", ".join(f"{word_name(n)} ({c:.2f}, {share:.1%})" for n, c, share in near) + "</td></tr>"
        for w, near in _neighbours(vectors, counts, run))


def _run_tables(run: RunDir, manifest: Manifest, facts: list[tuple]) -> str:
    """The Corpus section: its facts, the inputs skipped by reason, the stages and the nodes."""
    esc = html.escape
    skipped = collections.Counter(s["reason"] for s in run.skips())
    stages = manifest.stages
    by_type = manifest.placement.nodes if manifest.placement else {}
    return f"""<h2>Corpus</h2><table>{"".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)}</table>
<h3>Skipped, by reason</h3><table><tr><th>reason</th><th>inputs</th></tr>
{"".join(f"<tr><td>{esc(r)}</td><td>{n}</td></tr>" for r, n in skipped.most_common()) or "<tr><td>none</td><td>0</td></tr>"}</table>
<h3>Stages</h3><table><tr><th>stage</th><th>seconds</th><th>where</th></tr>
{"".join(f"<tr><td>{esc(s)}</td><td>{'' if v.seconds is None else v.seconds}</td><td>{esc(_where(v))}</td></tr>" for s, v in stages.items())}</table>
<h3>Node-seconds by node type</h3><table><tr><th>node type</th><th>nodes</th><th>node-seconds</th></tr>
{"".join(f"<tr><td>{esc(t)}</td><td>{u.nodes}</td><td>{u.node_seconds:.1f}</td></tr>" for t, u in by_type.items()) or "<tr><td>not recorded</td><td></td><td></td></tr>"}</table>"""


def _page(run: RunDir, manifest: Manifest, *, facts: list[tuple], images: dict[str, bytes], how: str,
          neighbours: str) -> str:
    """index.html: the run's tables, the figures inline, the neighbours and the evaluation."""
    esc = html.escape

    def img(name, alt):
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vgray report: {esc(fs.basename(run.root))}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>vgray report</h1><p>{esc(run.root)}</p>
{_run_tables(run, manifest, facts)}
<h2>GloVe loss</h2>{img("loss.png", "GloVe loss by epoch")}
<h2>Vocabulary usage</h2>{img("usage.png", "clips per visual word")}
<h2>Vocabulary map</h2>{img("vocabulary-map.png", f"{how} map of the visual vocabulary")}
<h2>Nearest neighbours</h2><p>Cosine on the vectors; in brackets, the cosine and the share of the
word's co-occurrence mass that the neighbour has.</p>
<table><tr><th>word</th><th>nearest words</th></tr>{neighbours}</table>
{_evaluation_section(run)}
<p id="images-ok"></p>
<script>
window.addEventListener("load", function () {{
  var imgs = document.images, ok = 0;
  for (var k = 0; k < imgs.length; k++) if (imgs[k].complete && imgs[k].naturalWidth > 0) ok++;
  document.getElementById("images-ok").textContent = ok + " of " + imgs.length + " images loaded";
}});
</script>
</body></html>
"""
