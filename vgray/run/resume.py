"""What a run is and whether it is already complete, decided without Ray and without torch.

A re-run of a finished `vgray train` must cost one listing of FEATURES and nothing else: it
reads no header (at a million videos on object storage that would be hours), starts no Ray,
imports no torch and rewrites no file (a sync tool would copy a rewritten file again). The
pieces that define a run's identity (its shards, its settings, the corpus and listing
fingerprints) live here, so the fast check and the stages cannot disagree about them. Where the
check had to scan (a RUN of an earlier vgray), what it scanned is handed on to the run
(`Check.corpus`): FEATURES is scanned once per command.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field

from ..files import fs
from ..config import TrainConfig
from ..features.corpus import Corpus, Video, read_train_ids
from ..features.readers import features_fingerprint, scan
from ..errors import StorageError
from ..rundir.manifest import Grid, Manifest
from ..progress import Progress
from ..rundir.store import TRAIN_STAGES, RunDir
from ..rundir.sweeptable import VARIED, SweepSummary, best_of, name, read_rows


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
class Check:
    """What the no-op check found: the summary of an output that is already complete (nothing
    to do), else FEATURES as the check scanned it, if it got that far (the run uses it instead
    of scanning again)."""

    summary: "Summary | SweepSummary | None" = None
    corpus: Corpus | None = None
    scan_seconds: float = 0.0


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
    outputs: tuple = ()  # where the per-video outputs are (outputs_of)

    def line(self, what: str = "embedded") -> str:
        into = f" into {' and '.join(self.outputs)}" if self.outputs else ""
        return (f"{what} {self.videos} videos ({self.clips} clips){into}, skipped "
                f"{self.skipped} (see {fs.join(self.out, 'skipped.jsonl')}), manifest "
                f"{fs.join(self.out, 'manifest.json')}, {self.seconds:.1f} s")


def outputs_of(run: RunDir, manifest: Manifest) -> tuple:
    """Where a finished command's per-video outputs are, as its summary line names them."""
    if manifest.command == "assign":
        return (run.video_tokens("{id}"), run.path("tokens.parquet"))
    if manifest.embeddings_layout == "parquet":
        return (run.embeddings_part(),)
    return (run.embeddings_dir + "/", run.concat_dir + "/")


def check_train(features: str, out: str, config: TrainConfig, train_ids: str | None,
                echo=None) -> Check:
    """Whether RUN already holds everything this `vgray train` would make (Check.summary), else
    what the check learnt on the way (then the run resumes whatever is missing). Reads only:
    FEATURES is scanned, RUN's manifest, markers and outputs are looked up, nothing is written.

    "Everything" is what the stages themselves check before skipping one: a complete manifest
    made with the same settings from the same corpus, every shard's markers, the vocabulary,
    counts and vectors."""
    t0 = time.perf_counter()
    run = RunDir(fs.normalize(out))
    try:
        manifest = run.read_manifest()
    except StorageError:  # a fault of the storage is said at once, in one line
        raise
    except Exception:  # noqa: BLE001 - anything unreadable: the run says what is wrong
        return Check()
    if not manifest or manifest.status != "complete" or manifest.command != "train":
        return Check()
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    if manifest.settings_with_added() != train_settings(config, features, ids):
        return Check()
    if not all(manifest.stage_done(s) for s in TRAIN_STAGES) or manifest.counts is None:
        return Check()
    outputs = [run.path("vocab", "centroids.npy"), run.path("glove", "vectors.npy"),
               run.path("skipped.jsonl")]
    outputs += [run.part("cooccur", r) for r in range(config.reducers)]
    if not all(fs.exists(p) for p in outputs):  # looked up before the (longer) scan
        return Check()
    counts, made_from = manifest.counts, manifest.corpus
    listed = made_from.listing if made_from else None
    if listed is not None:
        # FEATURES as one listing says it is, as it was when RUN was made: no header is read.
        if config.strict and counts.skipped:
            return Check()  # the run fails with the reason
        if features_fingerprint(features, config.follow_symlinks, config.reading()) != listed:
            return Check()
        shards, corpus, seconds = manifest.stages["assign"].shards, None, 0.0
        if shards is None:
            return Check()
    else:  # a RUN of an earlier vgray: FEATURES is scanned, and handed on if there is work
        corpus, seconds = scan_corpus(features, config, ids, echo)
        scanned = Check(corpus=corpus, scan_seconds=seconds)
        if config.strict and corpus.skips or not corpus.videos or not corpus.train_videos:
            return scanned  # the run fails with the reason
        if (made_from.fingerprint if made_from else None) != fingerprint(corpus):
            return scanned
        shards = len(make_shards(corpus.videos, config.shard_clips))
    if any(len(run.done_shards(stage) & set(range(shards))) < shards
           for stage in ("assign", "embed")):
        return Check(corpus=corpus, scan_seconds=seconds)
    if echo is not None:
        echo(f"{run.root} is complete: nothing to do")
    return Check(Summary(run.root, counts.videos, counts.clips, counts.skipped,
                         time.perf_counter() - t0, {"vocab": 0, "assign_shards": 0,
                                                    "reduce_parts": 0, "glove": 0,
                                                    "embed_shards": 0},
                         {k: manifest.stages[k] for k in ("vocab", "cooccur", "glove")},
                         outputs_of(run, manifest)), corpus, seconds)


def scan_corpus(features: str, config: TrainConfig, ids: list[str] | None, echo=None
                ) -> tuple[Corpus, float]:
    """FEATURES as a run of these settings scans it (progress shown with `echo`), and the
    seconds it took."""
    t, progress = time.perf_counter(), None

    def on_video(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or Progress(echo, "scan", total, "videos")
        progress.advance(1)

    corpus = scan(features, config.streams, ids, follow_symlinks=config.follow_symlinks,
                  reading=config.reading(),
                  on_video=on_video)
    if progress is not None:
        progress.close()
    return corpus, time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# `vgray sweep`: whether a sweep is complete (its table and ranking: sweeptable.py)

def sweep_settings(config: TrainConfig, features: str, ids: list[str] | None) -> dict:
    """The settings a sweep DIR must have been made with to be resumed (all but the varied)."""
    return {k: v for k, v in train_settings(config, features, ids).items() if k not in VARIED}


def digest_file(path: str | None) -> str | None:
    """What a labels file held (its evaluations are redone when it changes)."""
    if path is None:
        return None
    return hashlib.sha256(fs.read_bytes(fs.normalize(path))).hexdigest()[:16]


def check_sweep(features: str, out: str, *, vocab_sizes: list[int], windows: list[int],
                dims: list[int], config: TrainConfig, train_ids: str | None = None,
                labels: str | None = None, echo=None) -> Check:
    """Whether DIR already holds everything this `vgray sweep` would make (Check.summary), else
    what the check learnt on the way. Like check_train, it reads only: no Ray, no torch, no file
    written."""
    t0 = time.perf_counter()
    run = RunDir(fs.normalize(out))
    try:
        manifest = run.read_manifest()
    except StorageError:
        raise
    except Exception:  # noqa: BLE001 - the sweep says what is wrong
        return Check()
    if not manifest or manifest.status != "complete" or manifest.command != "sweep":
        return Check()
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    grid = Grid(sorted(set(vocab_sizes)), sorted(set(windows)), sorted(set(dims)))
    labels_file = fs.normalize(labels) if labels else None
    if (manifest.settings_with_added() != sweep_settings(config, features, ids)
            or manifest.grid != grid or manifest.labels_file != labels_file):
        return Check()
    key = digest_file(labels) if labels else None
    combos = [name(k, w, d) for k in grid.vocab_size for w in grid.window for d in grid.dim]
    evaluated = manifest.evaluated or {}
    if any(c not in evaluated or evaluated[c].labels != key for c in combos):
        return Check()
    outputs = [run.path(p) for p in ("sweep.csv", "report.html", "skipped.jsonl")]
    outputs += [run.path(c, p) for c in combos
                for p in ("manifest.json", "glove/vectors.npy", "evaluation.json")]
    if not all(fs.exists(p) for p in outputs):
        return Check()
    rows = read_rows(fs.read_bytes(run.path("sweep.csv")).decode("utf-8"))
    if [name(*(r[k] for k in VARIED)) for r in rows] != combos:
        return Check()
    made_from = manifest.corpus
    listed = made_from.listing if made_from else None
    corpus, seconds = None, 0.0
    if listed is not None:  # one listing, no header read
        if features_fingerprint(features, config.follow_symlinks, config.reading()) != listed:
            return Check()
    else:  # a sweep of an earlier vgray
        corpus, seconds = scan_corpus(features, config, ids, echo)
        if (made_from.fingerprint if made_from else None) != fingerprint(corpus):
            return Check(corpus=corpus, scan_seconds=seconds)
    ranked_by = manifest.best.by if manifest.best else None
    # Chosen again from the table, as the sweep chooses: a sweep of an earlier vgray named the
    # first of a tie.
    best_row = best_of(rows, ranked_by)
    if echo is not None:
        echo(f"{run.root} is complete: nothing to do")
    return Check(SweepSummary(run.root, rows, best_row, ranked_by, time.perf_counter() - t0,
                              {"vocab": 0, "assign_shards": 0, "reduce_parts": 0, "glove": 0,
                               "evaluate": 0}), corpus, seconds)
