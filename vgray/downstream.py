"""`vgray check RUN --for bmt|mdvc`: can that dense-captioning model read RUN as it is?

What each model's loader reads (the Visual GloVe authors' forks of both):

- **BMT** reads two streams. Video: the raw `{video_features_path}/{id}_rgb.npy` and
  `{id}_flow.npy`, `--d_vid` wide each (1024 for I3D). Audio: `{audio_features_path}/{id}.npy`,
  `--d_aud` wide, the slot Visual GloVe fills with RUN/embeddings. A missing audio file is not
  an error there: the stream is silently filled with zeros.
- **MDVC** reads `{video_features_path}/{id}_rgb.npy` and `{id}_flow.npy`, both required, and
  asserts a width of 1152 = 1024 + 128 (RUN/concat), and `{audio_features_path}/{id}.npy`,
  asserted 128 wide (RUN/embeddings).

Every check reads `.npy` headers only. Problems are reported one line per kind, naming the first
file and its width, with the number of files like it (or one line per file, `every=True`).
"""

from __future__ import annotations

import collections
import dataclasses

from . import fs
from .corpus import TWO_STREAM, read_header, scan
from .errors import BadVideo, VgrayError
from .store import RunDir

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
            return f"{name} can read it: {self.flags} ({self.videos} videos)"
        return (f"{name} cannot read it as it is: {len(self.problems)} problems in "
                f"{self.videos} videos")


def check(run_dir: str, model: str, features: str | None = None) -> Report:
    """Check RUN (a `vgray train` or `vgray embed` output) against `model`'s loader, for every
    video of FEATURES (default: the corpus RUN was made from)."""
    if model not in MODELS:
        raise VgrayError(f"--for must be one of {', '.join(MODELS)}, got {model!r}")
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if manifest is None or manifest.get("command") not in ("train", "embed"):
        raise VgrayError(f"{run_dir} is not a run of vgray train or vgray embed (no manifest.json)")
    if manifest.get("stages", {}).get("embed", {}).get("status") != "done":
        raise VgrayError(f"{run_dir} has no embeddings (stage embed not done); make them with "
                         "vgray train (same settings and --out) or vgray embed")
    if parquet_layout(manifest):
        raise VgrayError(PARQUET_LINE)
    features = fs.normalize(features or manifest["features"])
    corpus = scan(features)
    skipped = {s["video_id"]: s["reason"] for s in run.skips()}
    problems: list[tuple[str, str, str]] = []

    def add(kind: str, path: str, message: str) -> None:
        problems.append((kind, path, message))

    for s in corpus.skips:
        add("features unusable", s.path or features, f"{s.reason}; neither model can use {s.video_id}")
    widths: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def header(kind: str, path: str, why: str) -> tuple | None:
        """(T, width) of an .npy, or None with the problem recorded."""
        if not fs.exists(path):
            vid = fs.basename(path).rsplit(".", 1)[0].removesuffix("_rgb").removesuffix("_flow")
            reason = f" (skipped by vgray: {skipped[vid]})" if vid in skipped else ""
            add(f"{kind} missing", path, f"missing; {why}{reason}")
            return None
        try:
            shape = read_header(path).shape
        except BadVideo as e:
            add(f"{kind} unreadable", path, str(e))
            return None
        widths[kind][shape[1]] += 1
        return shape

    single = corpus.layout != TWO_STREAM
    if single:
        add("layout", features, f"single-stream layout ({{id}}.npy); {model.upper()} reads "
            "{id}_rgb.npy and {id}_flow.npy")
    for v in ([] if single else corpus.videos):
        frames = {}
        audio = header("audio", run.path("embeddings", f"{v.video_id}.npy"),
                       "BMT fills its audio stream with zeros for it, silently" if model == "bmt"
                       else "MDVC fails on it")
        if audio is not None:
            frames[run.path("embeddings", f"{v.video_id}.npy")] = audio[0]
        if model == "bmt":
            streams = [("rgb", v.rgb_path), ("flow", v.flow_path or fs.join(
                features, f"{v.video_id}_flow.npy"))]
            for stream, path in streams:
                got = header(f"video {stream}", path, "BMT's video stream needs it")
                if got is not None:
                    frames[path] = got[0]
        else:
            for stream in ("rgb", "flow"):
                path = run.path("concat", f"{v.video_id}_{stream}.npy")
                got = header(f"concat {stream}", path, "MDVC needs it"
                             + ("; the corpus has no flow features" if stream == "flow"
                                and v.flow_path is None else ""))
                if got is None:
                    continue
                frames[path] = got[0]
                if got[1] != MDVC_VIDEO:
                    add(f"concat {stream} width", path, f"width {got[1]}, MDVC asserts "
                        f"{MDVC_VIDEO} ({I3D} + {MDVC_AUDIO})")
            if audio is not None and audio[1] != MDVC_AUDIO:
                add("audio width", run.path("embeddings", f"{v.video_id}.npy"),
                    f"width {audio[1]}, MDVC asserts {MDVC_AUDIO}")
        if len(set(frames.values())) > 1:
            first = min(frames, key=frames.get)
            add("unequal T", first, "T " + ", ".join(
                f"{fs.basename(p)} {t}" for p, t in frames.items()) + ": the streams of a video "
                "must have one T")
    if model == "bmt":
        for kind in ("audio", "video rgb", "video flow"):
            if len(widths[kind]) > 1:
                add(f"{kind} widths", run.root if kind == "audio" else features,
                    f"{kind} files of several widths {sorted(widths[kind])}; BMT takes one "
                    f"--d_{'aud' if kind == 'audio' else 'vid'}")
        if widths["video rgb"] and widths["video flow"] and \
                set(widths["video rgb"]) != set(widths["video flow"]):
            add("video widths", features, f"rgb is {sorted(widths['video rgb'])} wide, flow "
                f"{sorted(widths['video flow'])}; BMT's --d_vid is one width for both")
    d_vid = next(iter(widths["video rgb"]), I3D)
    d_aud = next(iter(widths["audio"]), MDVC_AUDIO)
    flags = (f"--video_features_path {features} --audio_features_path "
             f"{run.path('embeddings')} --d_vid {d_vid} --d_aud {d_aud}" if model == "bmt" else
             f"--video_features_path {run.path('concat')} --audio_features_path "
             f"{run.path('embeddings')}")
    return Report(model, len(corpus.videos), problems, flags)


PARQUET_LINE = ("the embeddings of this RUN are Parquet tables (--embeddings parquet), with no "
                "concat/; BMT and MDVC read per-video files (--embeddings files)")


def parquet_layout(manifest: dict) -> bool:
    return (manifest.get("config") or {}).get("embeddings") == "parquet"


def mdvc_warning(run_dir: str) -> str | None:
    """One line when the settings of a finished RUN make outputs MDVC cannot read (from its
    manifest: the layout, the streams' widths and --dim); None when they fit."""
    run = RunDir(run_dir)
    manifest = run.read_manifest() or {}
    if parquet_layout(manifest):
        return "warning: " + PARQUET_LINE
    corpus = manifest.get("corpus", {})
    dim = (manifest.get("config") or {}).get("dim")
    if dim is None and manifest.get("run"):  # vgray embed: the model's own RUN says
        dim = ((RunDir(manifest["run"]).read_manifest() or {}).get("config") or {}).get("dim")
    if not corpus or dim is None:
        return None
    reasons = []
    if corpus.get("layout") != TWO_STREAM:
        reasons.append("the single-stream layout gives concat/{id}.npy, MDVC reads {id}_rgb.npy "
                       "and {id}_flow.npy")
    elif corpus.get("flow_dim") is None:
        reasons.append("without flow features there is no concat/{id}_flow.npy")
    for stream in ("rgb", "flow"):
        width = corpus.get(f"{stream}_dim")
        if width is not None and width + dim != MDVC_VIDEO and corpus.get("layout") == TWO_STREAM:
            reasons.append(f"concat {stream} is {width} + {dim} = {width + dim} wide, MDVC asserts "
                           f"{MDVC_VIDEO}")
    if dim != MDVC_AUDIO:
        reasons.append(f"embeddings are {dim} wide (--dim), MDVC asserts {MDVC_AUDIO}")
    if not reasons:
        return None
    return ("warning: MDVC cannot read this RUN as it is: " + "; ".join(reasons)
            + f". BMT can (--d_aud {dim}); see vgray check.")
