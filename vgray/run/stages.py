"""The stages of a run, each a function of (job, what to do): scan, vocabularies, tokenise and
count, reduce, embed; and the records every command ends with (skipped.jsonl, the stage lines).

A stage builds its units (units.py), runs them on the job's workers, shows progress and returns
the records; the commands (train.py, sweep.py, apply.py) decide which units a stage still has to
run and where the outputs go, so that `vgray train` and `vgray sweep` are two compositions of the
same stages. The driver holds video metadata and small results, never the corpus.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import ray

from ..files import fs
from ..config import TrainConfig
from ..features.corpus import Corpus, Listing, Reading, Skip, Video, assemble, total_clips
from ..clusters.cluster import usage_line
from ..errors import VgrayError
from ..clusters.live import get_with_progress
from ..rundir.manifest import Counts, CorpusRecord
from .pool import MAX_ATTEMPTS, RETRIABLE
from ..progress import Progress, plural
from ..features.readers import list_videos
from .resume import Check, Summary, fingerprint, outputs_of
from ..rundir.store import RunDir, write_text
from .units import (Count, EmbedUnit, Reduced, ReduceUnit, SampleUnit, Scanned, ScanUnit,
                    ShardStats, TokenizeUnit, Vocabulary, first_skip, totals)

if TYPE_CHECKING:  # a stage is handed its job; it never makes one
    from .job import Job

log = logging.getLogger("vgray")


def strict_failure(skip: dict) -> VgrayError:
    """What --strict fails with on the first unusable video."""
    return VgrayError(f"{skip['video_id']}: {skip['reason']} ({skip['path']}) [--strict]")


# ---------------------------------------------------------------------------------------------
# scan

# A scan unit: at most this many videos of the listing (2 header reads each on object storage,
# IO_THREADS in flight: about 2 s a unit at 30 ms a request), at least SCAN_CHUNK_MIN, and some
# 4 units per CPU between, so that every worker reads.
SCAN_CHUNK_MAX = 2000
SCAN_CHUNK_MIN = 64


def scan_chunks(entries: list, cpus: int) -> list[list]:
    """The listing cut into contiguous chunks for the workers to read."""
    size = max(SCAN_CHUNK_MIN, min(SCAN_CHUNK_MAX, -(-len(entries) // max(1, 4 * cpus))))
    return [entries[at:at + size] for at in range(0, len(entries), size)]


def listed(features: str, streams: str, strict: bool, train_ids: list[str] | None = None,
           follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
    """FEATURES as one listing has it, with what can be refused from the names alone: no
    FEATURES, no video in it, no file for any training id, a skip under --strict. It needs no
    cluster: a command lists FEATURES before Ray starts, so that these refusals are instant."""
    listing = list_videos(features, streams, train_ids, follow_symlinks, reading)
    if strict and listing.skips:
        raise strict_skip(listing.skips[0])
    if not listing.entries:
        raise VgrayError(f"no usable videos in {features}"
                         + (f" (first problem: {listing.skips[0].reason})" if listing.skips
                            else ""))
    if listing.wanted is not None and not listing.containers and not any(e.video_id in listing.wanted
                                              for e in listing.entries):
        raise VgrayError("none of the --train-ids has usable features (none has a file in "
                         "FEATURES)")
    return listing


def enough_training_clips(corpus: Corpus, vocab_size: int) -> None:
    """Refused once the scan has counted them, before any clip is sampled: fewer training
    videos or clips than the words asked for."""
    if not corpus.train_videos:
        raise VgrayError("none of the --train-ids has usable features")
    clips = total_clips(corpus.train_videos)
    if clips < vocab_size:
        raise VgrayError(f"--vocab-size {vocab_size} needs at least that many training clips, "
                         f"FEATURES has {clips:,}")


def strict_skip(s: Skip) -> VgrayError:
    return strict_failure({"video_id": s.video_id, "reason": s.reason, "path": s.path})


def scan(job: Job, features: str, streams: str, *, strict: bool = False,
         train_ids: list[str] | None = None, rgb_dim: int | None = None, flow_dim: int | None = None, follow_symlinks: bool = False,
         scanned: Check | None = None, workers: int | None = None,
         listing: Listing | None = None, reading: Reading | None = None) -> Corpus:
    """FEATURES listed by the driver (or the `listing` it already made), its headers read by the
    job's workers a chunk of the listing at a time (or as the no-op check already `scanned` it:
    FEATURES is scanned once per command), recorded in the manifest as the corpus of the run and
    returned: the later stages are handed it."""
    t = time.perf_counter() - (scanned.scan_seconds if scanned else 0.0)
    corpus = scanned.corpus if scanned else None
    where = []
    if corpus is None:
        listing = listing or list_videos(features, streams, train_ids, follow_symlinks, reading)
        chunks = scan_chunks(listing.entries, int(job.workers.capacity.cpus()))
        found: dict[int, list] = {}
        progress = Progress(job.echo, "scan", len(listing.entries), "videos") if chunks else None

        def on_done(k, result: Scanned, finished):
            found[k] = result.found
            where.append(("scan", result.where))
            progress.advance(len(result.found))

        if chunks:
            job.run_units("scan", workers, list(range(len(chunks))), lambda actor, k:
                          actor.scan.remote(ScanUnit(k, chunks[k], streams)), on_done)
            progress.close()
        corpus = assemble(listing, [f for k in range(len(chunks)) for f in found[k]], rgb_dim,
                          flow_dim)
        del listing, chunks, found
    if strict and corpus.skips:
        raise strict_skip(corpus.skips[0])
    if not corpus.videos:
        raise VgrayError(f"no usable videos in {features}"
                         + (f" (first problem: {corpus.skips[0].reason})" if corpus.skips else ""))
    made_from = fingerprint(corpus)
    before = job.manifest.corpus.fingerprint if job.manifest.corpus else None
    if before is not None and before != made_from:
        raise VgrayError(f"FEATURES {features} changed since {job.run.root} was started; "
                         "use another --out (or delete it to start over)")
    job.manifest.corpus = CorpusRecord(
        corpus.layout, videos=len(corpus.videos), clips=total_clips(corpus.videos),
        train_videos=len(corpus.train_videos), rgb_dim=corpus.rgb_dim, flow_dim=corpus.flow_dim,
        skipped_at_scan=len(corpus.skips), missing_train_ids=len(corpus.missing_train_ids),
        fingerprint=made_from, listing=corpus.listing)
    job.finish_stage("scan", time.perf_counter() - t, where or None, videos=len(corpus.videos),
                     skipped=len(corpus.skips))
    job.echo(f"scan: {len(corpus.videos)} videos, {len(corpus.skips)} skipped"
             + (f", {len(corpus.missing_train_ids)} training ids without files"
                if corpus.missing_train_ids else "") + f" ({time.perf_counter() - t:.1f} s)")
    return corpus


# ---------------------------------------------------------------------------------------------
# vocabularies

def fit_vocabularies(job: Job, configs: list[TrainConfig], corpus: Corpus,
                     shards: list[list[Video]], save) -> None:
    """Shard workers sample the training clips once; k-means fits each config's vocabulary on
    its sample, one after the other; save(cfg, fit, where) as each is fitted.

    One config (`vgray train`) samples with its own probability. Several (`vgray sweep`) sample
    with the largest and keep each clip's draw: a config's sample is then exactly the clips
    `vgray train` with its settings would draw (draw < its own probability), in the same order."""
    first = configs[0]
    train_clips = total_clips(corpus.train_videos)
    chance = [min(1.0, c.sample_size / train_clips) for c in configs]
    draws = len(configs) > 1
    train_shards = [[v for v in s if corpus.is_train(v.video_id)] for s in shards]
    train_shards = [s for s in train_shards if s]
    left = list(range(len(configs)))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        ordered, where = _sample(job, first, train_shards, chance=max(chance), draws=draws)
        try:
            while left:
                n = left[0]
                result = _fit_one(job, configs[n], ordered, below=chance[n] if draws else None,
                                  where=where)
                thin = thin_sample_warning(result.figures["sample_clips"], configs[n].vocab_size,
                                           sampled=chance[n] < 1)
                if thin:
                    log.warning(thin)
                save(configs[n], result, where)
                where = []  # the sampling is counted once, with the first fit
                left.pop(0)
            return
        except RETRIABLE as e:  # a sample was lost with its node: draw it again
            if attempt == MAX_ATTEMPTS:
                raise VgrayError(f"k-means failed {attempt} times; last: {type(e).__name__}") from e
            log.warning("k-means sample lost (%s); sampling again", type(e).__name__)


def _sample(job: Job, first: TrainConfig, train_shards: list[list[Video]], *, chance: float,
            draws: bool) -> tuple[list, list]:
    """Every training shard sampled once by the workers (each clip kept with probability
    `chance`): the samples' object refs in shard order (not finish order), then, with `draws`,
    each kept clip's draw; and where the sampling ran."""
    samples, kept, where = {}, {}, []
    progress = Progress(job.echo, "vocab: sampling", sum(map(total_clips, train_shards)), "clips")

    def on_done(k, stats: ShardStats, finished):
        if first.strict and stats.skips:
            raise strict_failure(stats.skips[0])
        where.append(("sample", stats.where))
        progress.advance(total_clips(train_shards[k]))

    def submit(actor, k):
        unit = SampleUnit(k, train_shards[k], chance, first.seed, draws)
        if draws:
            samples[k], kept[k], stats = actor.sample.options(num_returns=3).remote(unit)
        else:
            samples[k], stats = actor.sample.options(num_returns=2).remote(unit)
        return stats

    job.run_units("vocab", first.workers, list(range(len(train_shards))), submit, on_done)
    progress.close()
    order = range(len(train_shards))
    return [samples[k] for k in order] + ([kept[k] for k in order] if draws else []), where


def _fit_one(job: Job, cfg: TrainConfig, ordered: list, *, below: float | None, where: list):
    """k-means of one config on the sample (`below`: its own probability, where the sample was
    drawn with a larger one), on the trainer, its progress drawn live."""
    job.workers.ask_for_trainer("vocab: k-means")

    def fit(actor):
        board = job.workers.board()
        return get_with_progress(actor.kmeans.remote(cfg.to_dict(), board, *ordered, below=below),
                                 board, job.echo)

    return job.workers.on_trainer("kmeans", fit, where)


# faiss's min_points_per_centroid: with fewer clips per word, k-means places words on a handful
# of clips each, and GloVe then fits counts that unseen videos do not share.
MIN_CLIPS_PER_WORD = 39


def thin_sample_warning(clips: int, words: int, sampled: bool = False) -> str | None:
    """One line when k-means fitted `words` words on fewer than MIN_CLIPS_PER_WORD clips each (as
    faiss warns), None otherwise; `sampled`: the clips were drawn from more (--kmeans-sample)."""
    if clips >= MIN_CLIPS_PER_WORD * words:
        return None
    what, fix = ("clips in the k-means sample", "a smaller --vocab-size or a larger "
                 "--kmeans-sample") if sampled else ("training clips", "a smaller --vocab-size")
    return (f"warning: {clips:,} {what} for {words:,} words ({clips // words} per word); k-means "
            f"wants at least {MIN_CLIPS_PER_WORD} per word: consider {fix}")


# ---------------------------------------------------------------------------------------------
# tokenise and count, reduce

def tokenize(job: Job, shards: list[list[Video]], units: dict[int, TokenizeUnit],
             workers: int | None, strict: bool) -> dict[int, list[ShardStats]]:
    """Every unit on the workers (the GPU worker helps where its GPU computes and a unit has a
    vocabulary to tokenise with): shard -> one record per vocabulary of its unit."""
    done: dict[int, list[ShardStats]] = {}
    if not units:
        return done
    progress = Progress(job.echo, "assign", sum(total_clips(shards[k]) for k in units), "clips")

    def on_done(k, stats: list[ShardStats], finished):
        if strict and first_skip(stats):
            raise strict_failure(first_skip(stats))
        done[k] = stats
        progress.advance(total_clips(shards[k]))

    fresh = any(v.tokenize for u in units.values() for v in u.vocabularies)
    job.run_units("assign", workers, sorted(units),
                  lambda actor, k: actor.tokenize.remote(units[k]), on_done, gpu=fresh)
    progress.close()
    return done


def assign(job: Job, shards: list[list[Video]], cfg: TrainConfig, centroids: str,
           count: Count | None, *, corpus: Corpus, per_video: bool = False
           ) -> tuple[list[ShardStats], int]:
    """The assign stage of one RUN: every shard not yet done is tokenised with one vocabulary
    (and, with `count`, its training pairs counted); the stage's figures from every shard's
    record. Returns every shard's record and how many shards this invocation tokenised. A shard
    whose partial counts are gone is redone while the merge still needs them. With `per_video`
    (vgray assign), each video's tokens also go to RUN/{id}.npy and the shards' tokens parts are
    staged under the work folder."""
    run = job.run
    t = time.perf_counter()
    marked = run.done_shards("assign")
    if count is not None:
        merged = {r for r in range(count.reducers) if fs.exists(run.part("cooccur", r))}
        if len(merged) < count.reducers:  # partials are deleted once merged
            partials = run.partials_listed()
            marked = {k for k in marked if all((k, r) in partials for r in range(count.reducers))}
    units = {k: TokenizeUnit(k, shards[k], [corpus.is_train(v.video_id) for v in shards[k]],
                             [Vocabulary(run.root, centroids,
                                         run.tokens_part(k, staged=per_video), count=count)],
                             run.root if per_video else None)
             for k in range(len(shards)) if k not in marked}
    done = tokenize(job, shards, units, cfg.workers, cfg.strict)
    stats = records(run, "assign", len(shards), {k: s[0] for k, s in done.items()})
    figures = totals(stats)
    job.finish_stage("assign", time.perf_counter() - t, [("assign", s.where) for s in stats],
                     **figures)
    job.echo(f"assign: {figures['clips']:,} clips tokenised ({time.perf_counter() - t:.1f} s)"
             if units else f"assign: {figures['clips']:,} clips tokenised by an earlier run (reused)")
    return stats, len(units)


def reduce(job: Job, units: list[ReduceUnit], workers: int | None) -> list[Reduced]:
    """Every reduce unit on the workers, with the partitions' progress."""
    done: list[Reduced] = []
    if not units:
        return done
    progress = Progress(job.echo, "cooccur: reduce", len(units), "partitions")

    def on_done(n, result: Reduced, finished):
        done.append(result)
        progress.advance(1)

    job.run_units("reduce", workers, list(range(len(units))),
                  lambda actor, n: actor.reduce.remote(units[n]), on_done)
    progress.close()
    return done


# ---------------------------------------------------------------------------------------------
# embed

def embed(job: Job, shards: list[list[Video]], vectors: np.ndarray, *, batch_clips: int,
          workers: int | None = None, layout: str = "files") -> tuple[list[ShardStats], int]:
    """Embeddings and concatenations of every shard not yet embedded (per video, or with layout
    parquet a table per shard); the stage's figures from every shard's record. Returns every
    shard's record and how many shards this invocation embedded."""
    run = job.run
    marked = run.done_shards("embed")
    todo = [k for k in range(len(shards)) if k not in marked]
    t = time.perf_counter()
    done: dict[int, ShardStats] = {}
    if todo:
        ref = ray.put(vectors)
        progress = Progress(job.echo, "embed", sum(len(shards[k]) for k in todo), "videos")

        def on_done(k, stats: ShardStats, finished):
            done[k] = stats
            progress.advance(len(shards[k]))

        job.run_units("embed", workers, todo, lambda actor, k: actor.embed.remote(
            EmbedUnit(run.root, k, shards[k], batch_clips, layout), ref), on_done)
        progress.close()
    stats = records(run, "embed", len(shards), done)
    figures = totals(stats)
    job.finish_stage("embed", time.perf_counter() - t, [("embed", s.where) for s in stats],
                     shards=figures["shards"], videos=figures["videos"],
                     skipped=figures["skipped"])
    job.echo(f"embed: {figures['videos']} videos ({time.perf_counter() - t:.1f} s)")
    return stats, len(todo)


# ---------------------------------------------------------------------------------------------
# records

def finish(job: Job, assigned: list[ShardStats], embedded: list[ShardStats] | None, *,
           corpus: Corpus) -> Summary:
    """Write skipped.jsonl (every input not used, and why: the scan's and those in the shards'
    records) and close the manifest."""
    run = job.run
    skips = skip_records(corpus, [s.skips for s in assigned + (embedded or [])])
    write_skips(run.path("skipped.jsonl"), skips)
    manifest = job.manifest
    stage = manifest.stages["embed" if embedded is not None else "assign"]
    manifest.counts = Counts(stage.videos, manifest.stages["assign"].clips, len(skips))
    seconds = job.complete(list(manifest.stages.values()))
    if manifest.placement.nodes:
        job.echo(usage_line(manifest.placement.nodes))
    return Summary(run.root, stage.videos, manifest.counts.clips, len(skips),
                   seconds, dict(job.work), outputs=outputs_of(run, manifest))


def records(run: RunDir, stage: str, shards: int, fresh: dict[int, ShardStats]
            ) -> list[ShardStats]:
    """Every shard's record of a stage: those this invocation made, the others' markers."""
    return [fresh[k] if k in fresh else ShardStats.from_dict(run.read_marker(stage, k))
            for k in range(shards)]


def skip_records(corpus: Corpus, found: list[list[dict]]) -> list[dict]:
    """Every input not used, and why: the scan's skips, those the workers `found` (one list per
    record) and training ids without files; sorted as skipped.jsonl holds them."""
    skips = [s.to_dict() for s in corpus.skips]
    for found_here in found:
        skips.extend(found_here)
    skips.extend({"video_id": vid, "path": None, "reason": "training id has no feature files"}
                 for vid in corpus.missing_train_ids)
    return sorted(skips, key=lambda s: (s["video_id"], s["path"] or ""))


def write_skips(path: str, skips: list[dict]) -> None:
    """skipped.jsonl; left alone when its content is unchanged (sync tools copy what changes)."""
    text = "".join(json.dumps(s) + "\n" for s in skips)
    if not fs.exists(path) or fs.read_bytes(path) != text.encode("utf-8"):
        write_text(path, text)


def device_line(figures: dict) -> str:
    """Where a GPU stage computed; why not on the GPU it was given is a warning of its own."""
    if figures.get("device_note"):
        log.warning("%s; it ran on CPU", figures["device_note"])
        return f"on {figures['device']} (its GPU is not usable by torch)"
    return f"on {figures['device']}"


def vocab_line(cfg: TrainConfig, figures: dict, seconds: float) -> str:
    return (f"vocab: K={cfg.vocab_size} on {figures['sample_clips']} clips, inertia/clip "
            f"{figures['inertia_per_clip']:.4g}, {plural(figures['iterations'], 'iteration')}, "
            f"{device_line(figures)} ({seconds:.1f} s)")


def glove_line(what: str, figures: dict, seconds: float) -> str:
    """The GloVe summary: how many epochs ran and why it stopped, J at init -> J of the saved
    state, and which epoch that is when it is not the last (the saved state is the epoch of
    lowest J)."""
    epochs, kept = figures["epochs"], figures.get("kept_epoch", figures["epochs"])
    which = "" if kept == epochs else (
        f" (last epoch {figures['last_loss']:.4g}), kept epoch {kept} of {epochs} (lowest J)")
    if figures.get("stopped") == "converged":
        ran = f"converged at epoch {epochs} of --epochs {figures['max_epochs']}"
    else:
        ran = f"{epochs} epochs" + (" (reached --epochs)" if "stopped" in figures else "")
    return (f"{what}: {ran} on {figures['nonzeros']} non-zeros, loss "
            f"{figures['initial_loss']:.4g} -> {figures['final_loss']:.4g}{which}, "
            f"{device_line(figures)} ({seconds:.1f} s)")
