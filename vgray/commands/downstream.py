"""`vgray check RUN --for bmt|mdvc`: can that dense-captioning model read RUN as it is?

What each model's loader reads (the Visual GloVe authors' forks of both):

- **BMT** reads two streams. Video: the raw `{video_features_path}/{id}_rgb.npy` and
  `{id}_flow.npy`, `--d_vid` wide each (1024 for I3D). Audio: `{audio_features_path}/{id}.npy`,
  `--d_aud` wide, the slot Visual GloVe fills with RUN/embeddings. A missing audio file is not
  an error there: the stream is silently filled with zeros.
- **MDVC** reads `{video_features_path}/{id}_rgb.npy` and `{id}_flow.npy`, both required, and
  asserts a width of 1152 = 1024 + 128 (RUN/concat), and `{audio_features_path}/{id}.npy`,
  asserted 128 wide (RUN/embeddings).

What the settings alone decide (the layout, the streams' widths, --dim) is `cannot_read`: train
and embed warn from it with a RUN's manifest, and `check` starts from it and adds what only the
files tell. Every check reads `.npy` headers only. Problems are reported one line per kind,
naming the first file and its width, with the number of files like it (or one line per file,
`every=True`).
"""

from __future__ import annotations

import collections
import dataclasses

from ..files import fs
from ..features import formats
from ..features.corpus import TWO_STREAM
from ..features.npyfile import read_header
from ..features.readers import scan
from ..errors import BadVideo, VgrayError
from ..rundir.manifest import Manifest
from ..progress import plural
from ..rundir.store import RunDir

MODELS = ("bmt", "mdvc")
I3D = 1024          # MDVC's hard-coded video width before the embedding
MDVC_AUDIO = 128    # MDVC's asserted audio width (= the paper's --dim)
MDVC_VIDEO = I3D + MDVC_AUDIO


@dataclasses.dataclass
class Report:
    model: str
    videos: int
    problems: list[tuple[str, str, str]]  # (kind, file, message)
    flags: str

    def ok(self) -> bool:
        return not self.problems

    def lines(self, every: bool = False) -> list[str]:
        if every:
            return [f"{path}: {message}" for _, path, message in self.problems]
        by_kind: dict[str, list] = collections.OrderedDict()
        for kind, path, message in self.problems:
            by_kind.setdefault(kind, []).append((path, message))
        out = []
        for items in by_kind.values():
            path, message = items[0]
            more = f" (and {len(items) - 1} more files like it)" if len(items) > 1 else ""
            out.append(f"{path}: {message}{more}")
        return out

    def verdict(self) -> str:
        name = self.model.upper()
        if self.ok():
            return f"{name} can read it: {self.flags} ({plural(self.videos, 'video')})"
        return (f"{name} cannot read it as it is: {plural(len(self.problems), 'problem')} in "
                f"{plural(self.videos, 'video')}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides, before any file is read, whether BMT and MDVC can read a RUN: the layout
    and the widths of the video features, and the embeddings' width (--dim); None: unknown."""
    layout: str | None
    rgb_dim: int | None
    flow_dim: int | None
    dim: int | None


def run_dim(manifest: Manifest) -> int | None:
    """--dim of a RUN; for a `vgray embed` output, that of the model's own RUN."""
    if manifest.config is not None:
        return manifest.config.dim
    model = RunDir(manifest.run).read_manifest() if manifest.run else None
    return model.config.dim if model is not None and model.config is not None else None


def run_settings(manifest: Manifest) -> Settings | None:
    """The Settings of a RUN from its manifest alone (None where it does not record them)."""
    corpus, dim = manifest.corpus, run_dim(manifest)
    if not corpus or dim is None:
        return None
    return Settings(corpus.layout, corpus.rgb_dim, corpus.flow_dim, dim)


def cannot_read(settings: Settings) -> dict[str, list[str]]:
    """Why BMT and MDVC cannot read a RUN of these settings, whatever its files: model -> the
    reasons, empty where the settings fit that model."""
    two, flow = settings.layout == TWO_STREAM, settings.flow_dim
    rgb, dim = settings.rgb_dim, settings.dim
    bmt, mdvc = [], []
    if not two:
        bmt.append("the single-stream layout ({id}.npy); BMT reads {id}_rgb.npy and "
                   "{id}_flow.npy")
        mdvc.append("the single-stream layout gives concat/{id}.npy, MDVC reads {id}_rgb.npy "
                    "and {id}_flow.npy")
    elif flow is None:
        bmt.append("without flow features there is no {id}_flow.npy, which BMT's video stream "
                   "reads")
        mdvc.append("without flow features there is no concat/{id}_flow.npy")
    elif rgb is not None and rgb != flow:
        bmt.append(f"rgb is {rgb} wide, flow {flow}; BMT's --d_vid is one width for both (its "
                   "loader asserts that rgb and flow have one shape)")
    if two and dim is not None:
        for stream, width in (("rgb", rgb), ("flow", flow)):
            if width is not None and width + dim != MDVC_VIDEO:
                mdvc.append(f"concat {stream} is {width} + {dim} = {width + dim} wide, MDVC "
                            f"asserts {MDVC_VIDEO}")
    if dim is not None and dim != MDVC_AUDIO:
        mdvc.append(f"embeddings are {dim} wide (--dim), MDVC asserts {MDVC_AUDIO}")
    return {"bmt": bmt, "mdvc": mdvc}


def check(run_dir: str, model: str, features: str | None = None) -> Report:
    """Check RUN (a `vgray train` or `vgray embed` output) against `model`'s loader, for every
    video of FEATURES (default: the corpus RUN was made from)."""
    run, manifest = _embedded_run(run_dir, model)
    features = fs.normalize(features or manifest.features)
    reading = manifest.reading_for(features)
    reader = formats.reader_of(features, reading.format)
    corpus = scan(features, reading=reading)
    found = _Found(skipped={s["video_id"]: s["reason"] for s in run.skips()})
    # First what the settings decide, as train's warning says it (for RUN's own corpus the scan
    # finds the layout and widths its manifest records); BMT's reasons are about the videos of
    # FEATURES, MDVC's about RUN's concatenations and embeddings.
    dim = run_dim(manifest)
    for n, reason in enumerate(cannot_read(Settings(corpus.layout, corpus.rgb_dim,
                                                    corpus.flow_dim, dim))[model]):
        found.add(f"settings {n}", features if model == "bmt" else run.root, reason)
    if model == "bmt" and not reader.npy_files:
        found.add("settings format", features, f"FEATURES is {reader.name}; BMT reads its video stream "
                  "from {id}_rgb.npy and {id}_flow.npy files (MDVC reads RUN's concat/, which is .npy)")
    for s in corpus.skips:
        found.add("features unusable", s.path or features,
                  f"{s.reason}; neither model can use {s.video_id}")
    single = corpus.layout != TWO_STREAM  # said by the settings: no file to look for
    for v in ([] if single or (model == "bmt" and not reader.npy_files) else corpus.videos):
        _check_video(found, v, model, run=run, corpus=corpus, features=features, dim=dim)
    if model == "bmt":
        for kind in ("audio", "video rgb", "video flow"):
            if len(found.widths[kind]) > 1:
                found.add(f"{kind} widths", run.root if kind == "audio" else features,
                          f"{kind} files of several widths {sorted(found.widths[kind])}; BMT takes "
                          f"one --d_{'aud' if kind == 'audio' else 'vid'}")
    d_vid = next(iter(found.widths["video rgb"]), I3D)
    d_aud = next(iter(found.widths["audio"]), MDVC_AUDIO)
    flags = (f"--video_features_path {features} --audio_features_path "
             f"{run.embeddings_dir} --d_vid {d_vid} --d_aud {d_aud}" if model == "bmt" else
             f"--video_features_path {run.concat_dir} --audio_features_path "
             f"{run.embeddings_dir}")
    return Report(model, len(corpus.videos), found.problems, flags)


def _embedded_run(run_dir: str, model: str) -> tuple[RunDir, dict]:
    """RUN and its manifest, refused unless `model` is known and RUN has per-video embeddings."""
    if model not in MODELS:
        raise VgrayError(f"--for must be one of {', '.join(MODELS)}, got {model!r}")
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if manifest is None or manifest.command not in ("train", "embed"):
        raise VgrayError(f"{run_dir} is not a run of vgray train or vgray embed (no manifest.json)")
    if not manifest.stage_done("embed"):
        raise VgrayError(f"{run_dir} has no embeddings (stage embed not done); make them with "
                         "vgray train (same settings and --out) or vgray embed")
    if parquet_layout(manifest):
        raise VgrayError(PARQUET_LINE)
    return run, manifest


class _Found:
    """The problems found so far, (kind, file, message) each, and the widths of the .npy files
    read, by kind; `skipped`: video id -> why vgray skipped it."""

    def __init__(self, *, skipped: dict[str, str]):
        self.skipped = skipped
        self.problems: list[tuple[str, str, str]] = []
        self.widths: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, kind: str, path: str, message: str) -> None:
        self.problems.append((kind, path, message))

    def header(self, kind: str, path: str, why: str) -> tuple | None:
        """(T, width) of an .npy, or None with the problem recorded."""
        if not fs.exists(path):
            vid = fs.basename(path).rsplit(".", 1)[0].removesuffix("_rgb").removesuffix("_flow")
            reason = f" (skipped by vgray: {self.skipped[vid]})" if vid in self.skipped else ""
            self.add(f"{kind} missing", path, f"missing; {why}{reason}")
            return None
        try:
            shape = read_header(path).shape
        except BadVideo as e:
            self.add(f"{kind} unreadable", path, str(e))
            return None
        self.widths[kind][shape[1]] += 1
        return shape


def _check_video(found: _Found, v, model: str, *, run: RunDir, corpus, features: str,
                 dim: int | None) -> None:
    """The files `model` reads for video v: there, readable, of the widths it takes, of one T."""
    frames = {}
    audio = found.header("audio", run.embedding(v.video_id),
                         "BMT fills its audio stream with zeros for it, silently" if model == "bmt"
                         else "MDVC fails on it")
    if audio is not None:
        frames[run.embedding(v.video_id)] = audio[0]
    no_flow = corpus.flow_dim is None  # said by the settings: no video has a flow file
    if model == "bmt":
        streams = [("rgb", v.rgb_path), ("flow", v.flow_path or fs.join(
            features, f"{v.video_id}_flow.npy"))]
        for stream, path in streams[:1] if no_flow else streams:
            got = found.header(f"video {stream}", path, "BMT's video stream needs it")
            if got is not None:
                frames[path] = got[0]
    else:
        frames.update(_check_concat(found, v, corpus=corpus, run=run, dim=dim))
        if audio is not None and audio[1] not in (MDVC_AUDIO, dim):
            found.add("audio width", run.embedding(v.video_id),
                      f"width {audio[1]}, MDVC asserts {MDVC_AUDIO}")
    if len(set(frames.values())) > 1:
        first = min(frames, key=frames.get)
        found.add("unequal T", first, "T " + ", ".join(
            f"{fs.basename(p)} {t}" for p, t in frames.items()) + ": the streams of a video "
            "must have one T")


def _check_concat(found: _Found, v, *, corpus, run: RunDir, dim: int | None) -> dict[str, int]:
    """MDVC's video stream of video v, RUN's concatenations: path -> T of those read."""
    frames = {}
    for stream in ("rgb",) if corpus.flow_dim is None else ("rgb", "flow"):
        path = run.concat(v.video_id, stream)
        got = found.header(f"concat {stream}", path, "MDVC needs it"
                           + ("; the video has no flow features" if stream == "flow"
                              and v.flow_path is None else ""))
        if got is None:
            continue
        frames[path] = got[0]
        # A width the settings give is said once, by them; a file of another is named.
        width = corpus.rgb_dim if stream == "rgb" else corpus.flow_dim
        if got[1] != MDVC_VIDEO and (dim is None or got[1] != width + dim):
            found.add(f"concat {stream} width", path, f"width {got[1]}, MDVC asserts "
                      f"{MDVC_VIDEO} ({I3D} + {MDVC_AUDIO})")
    return frames


PARQUET_LINE = ("the embeddings of this RUN are Parquet tables (--embeddings parquet), with no "
                "concat/; BMT and MDVC read per-video files (--embeddings files)")


def parquet_layout(manifest: Manifest) -> bool:
    return manifest.config is not None and manifest.config.embeddings == "parquet"


def mdvc_warning(run_dir: str) -> str | None:
    """One line when the settings of a finished RUN (from its manifest, by `cannot_read`) make
    outputs MDVC or BMT cannot read; None when they fit both."""
    manifest = RunDir(run_dir).read_manifest()
    if manifest is None:
        return None
    if parquet_layout(manifest):
        return "warning: " + PARQUET_LINE
    settings = run_settings(manifest)
    if settings is None:
        return None
    reasons = cannot_read(settings)
    if not reasons["mdvc"] and not reasons["bmt"]:
        return None
    said = [f"{name} cannot read this RUN as it is: " + "; ".join(reasons[model])
            for model, name in (("mdvc", "MDVC"), ("bmt", "BMT")) if reasons[model]]
    if not reasons["bmt"]:
        said.append(f"BMT can (--d_vid {settings.rgb_dim} --d_aud {settings.dim})")
    return "warning: " + ". ".join(said) + "; see vgray check."
