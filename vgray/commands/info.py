"""`vgray info RUN`: what a RUN holds, from its manifest and one listing per output directory
(no feature file is read, Ray is not started): what made it and with which settings, its
corpus, each stage's state and time, and where its outputs are, with their sizes."""

from __future__ import annotations

from ..files import fs
from ..errors import VgrayError
from ..progress import plural
from ..rundir.store import TRAIN_STAGES, RunDir

# What each output of a RUN is, in the order shown (directories end in /).
OUTPUTS = (("vocab/", "the visual vocabulary (centroids.npy)"),
           ("tokens/", "visual words per clip (Parquet)"),
           ("cooccur/", "co-occurrence counts (Parquet)"),
           ("glove/", "GloVe vectors (vectors.npy)"),
           ("embeddings/", "per-clip Visual GloVe embeddings (BMT's audio stream)"),
           ("concat/", "features + embeddings (what MDVC reads)"),
           ("tokens.parquet", "visual words per clip"),
           ("skipped.jsonl", "every input not used, and why"),
           ("report/", "the HTML report"))


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def describe(run_dir: str) -> list[str]:
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if manifest is None:
        raise VgrayError(f"{run.root} is no vgray RUN (it has no manifest.json)")
    lines = [f"{run.root}: vgray {manifest.command}, {manifest.status}"
             + (f", made by vgray {manifest.made_by}" if manifest.made_by else "")]
    if manifest.features:
        lines.append(f"features: {manifest.features}")
    if manifest.run:
        lines.append(f"model: {manifest.run}")
    settings = {k: v for k, v in manifest.settings.items()
                if k not in ("features", "run") and v is not None}
    if settings:
        lines.append("settings: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                               for k, v in settings.items()))
    corpus = manifest.corpus
    if corpus:
        widths = ", ".join(f"{s} {d}" for s, d in (("rgb", corpus.rgb_dim),
                                                   ("flow", corpus.flow_dim)) if d is not None)
        lines.append(f"corpus: {corpus.videos:,} videos, {corpus.clips:,} "
                     f"clips ({corpus.train_videos:,} for training), {corpus.layout}"
                     f" layout, D: {widths or '?'}; {corpus.skipped_at_scan:,} skipped "
                     "at the scan")
    stages = manifest.stages
    named = [s for s in TRAIN_STAGES if s in stages] + [s for s in stages if s not in TRAIN_STAGES]
    if named:
        lines.append("stages: " + ", ".join(
            f"{s} {stages[s].status} ({stages[s].seconds or 0:.1f} s)" for s in named))
    if manifest.command == "sweep":
        combos = sorted(n for n in fs.listdir(run.root) if RunDir(run.path(n)).read_manifest())
        lines.append(f"combinations: {len(combos)} ({', '.join(combos)}), each a RUN")
    if manifest.command == "assign":
        tokens = {n: v for n, v in fs.files(run.root).items() if n.endswith(".npy")}
        lines.append(f"{run.video_tokens('{id}')}: {plural(len(tokens), 'file')}, "
                     f"{size_text(sum(v or 0 for v in tokens.values()))}: visual words per video")
    for name, what in OUTPUTS:
        path = run.path(name.rstrip("/"))
        if name.endswith("/"):
            files = fs.files(path)
            if not files:
                continue
            total = sum(v or 0 for v in files.values())
            lines.append(f"{path}/: {plural(len(files), 'file')}, {size_text(total)}: {what}")
        elif fs.exists(path):
            lines.append(f"{path}: {size_text(fs.size(path))}: {what}")
    return lines
