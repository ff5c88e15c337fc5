"""What a run is and whether it is already complete, decided without Ray and without torch.

A re-run of a finished `vgray train` must cost the scan and nothing else: it starts no Ray,
imports no torch and rewrites no file (a sync tool would copy a rewritten file again). The
pieces that define a run's identity (its shards, its settings, the corpus fingerprint) live here,
so the fast check and the pipeline cannot disagree about them.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field

from . import fs
from .config import TrainConfig
from .corpus import Corpus, Video, read_train_ids, scan
from .store import RunDir

# The stages of a complete `vgray train` RUN, in order.
TRAIN_STAGES = ("scan", "vocab", "assign", "cooccur", "glove", "embed")


def make_shards(videos: list[Video], shard_clips: int) -> list[list[Video]]:
    """Cut the sorted videos into contiguous shards of about `shard_clips` clips.

    Shards depend on the corpus and shard_clips only, never on the number of workers, so
    results and completion markers are the same however many workers run them.
    """
    shards, current, clips = [], [], 0
    for v in videos:
        if current and clips + v.frames > shard_clips:
            shards.append(current)
            current, clips = [], 0
        current.append(v)
        clips += v.frames
    if current:
        shards.append(current)
    return shards


def digest(ids: list[str] | None) -> str | None:
    """A short fingerprint of a list of training ids (the list itself may be long)."""
    if ids is None:
        return None
    return f"{len(set(ids))} ids, sha256 " + hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()[:16]


def fingerprint(corpus: Corpus) -> str:
    """What of FEATURES a RUN depends on: every video's id, length and widths, and every skip."""
    h = zlib.crc32(corpus.layout.encode())
    for v in corpus.videos:
        h = zlib.crc32(f"{v.video_id}|{v.frames}|{v.rgb_dim}|{v.flow_dim}".encode(), h)
    for s in corpus.skips:
        h = zlib.crc32(f"{s.video_id}|{s.reason}".encode(), h)
    return f"{h:08x}"


def train_settings(config: TrainConfig, features: str, ids: list[str] | None) -> dict:
    """The settings a RUN of `vgray train` must have been made with to be resumed."""
    settings = {k: getattr(config, k) for k in TrainConfig.RESULT_KEYS}
    settings.update(features=features, train_ids=digest(ids))
    return settings


@dataclass
class Summary:
    """What a command did: counts for its one-line summary, and where its outputs are."""

    out: str
    videos: int
    clips: int
    skipped: int
    seconds: float
    work: dict = field(default_factory=dict)  # units of work computed by this invocation
    figures: dict = field(default_factory=dict)

    def line(self, what: str = "embedded") -> str:
        return (f"{what} {self.videos} videos ({self.clips} clips), skipped {self.skipped} "
                f"(see {fs.join(self.out, 'skipped.jsonl')}), manifest "
                f"{fs.join(self.out, 'manifest.json')}, {self.seconds:.1f} s")


def complete_train(features: str, out: str, config: TrainConfig, train_ids: str | None,
                   echo=None) -> Summary | None:
    """The summary of RUN if it already holds everything this `vgray train` would make, else None
    (then the pipeline runs and resumes whatever is missing). Reads only: FEATURES is scanned,
    RUN's manifest, markers and outputs are looked up, and nothing is written.

    "Everything" is what the pipeline itself checks before skipping a stage: a complete
    manifest made with the same settings from the same corpus, every shard's markers, the
    vocabulary, counts and vectors."""
    t0 = time.perf_counter()
    run = RunDir(fs.normalize(out))
    try:
        manifest = run.read_manifest()
    except Exception:  # noqa: BLE001 - anything unreadable: the pipeline says what is wrong
        return None
    if not manifest or manifest.get("status") != "complete" or manifest.get("command") != "train":
        return None
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    if manifest.get("settings") != train_settings(config, features, ids):
        return None
    stages = manifest.get("stages", {})
    if any(stages.get(s, {}).get("status") != "done" for s in TRAIN_STAGES):
        return None
    outputs = [run.path("vocab", "centroids.npy"), run.path("glove", "vectors.npy"),
               run.path("skipped.jsonl")]
    outputs += [run.path("cooccur", f"part-{r:05d}.parquet") for r in range(config.reducers)]
    if not all(fs.exists(p) for p in outputs):  # looked up before the (longer) scan
        return None
    corpus = scan(features, config.streams, ids, follow_symlinks=config.follow_symlinks)
    if config.strict and corpus.skips or not corpus.videos or not corpus.train_videos:
        return None  # the pipeline fails with the reason
    if manifest.get("corpus", {}).get("fingerprint") != fingerprint(corpus):
        return None
    shards = make_shards(corpus.videos, config.shard_clips)
    markers = [run.marker(stage, k) for stage in ("assign", "embed") for k in range(len(shards))]
    if not all(fs.exists(p) for p in markers):
        return None
    counts = manifest["counts"]
    if echo is not None:
        echo(f"{run.root} is complete: nothing to do")
    return Summary(run.root, counts["videos"], counts["clips"], counts["skipped"],
                   time.perf_counter() - t0, {"vocab": 0, "assign_shards": 0, "reduce_parts": 0,
                                              "glove": 0, "embed_shards": 0},
                   {k: stages[k] for k in ("vocab", "cooccur", "glove")})

