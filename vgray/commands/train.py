"""`vgray train`: the stages composed over one RUN. Scan, vocabulary, tokenise + count, reduce,
GloVe, embed; each stage resumes what an earlier invocation left, and a recomputed stage voids
what was made from its older output.
"""

from __future__ import annotations

import time

import numpy as np

from ..files import fs
from ..run import stages
from ..config import TrainConfig
from ..features.corpus import Corpus, Video, read_train_ids
from ..run.job import Job
from ..rundir.manifest import Manifest
from ..run.resume import Check, Summary, check_train, make_shards, train_settings
from ..rundir.store import WORK, load_npy, parquet_row_count, save_npy
from ..run.units import Count, Fit, ReduceUnit, ShardStats


def train(features: str, out: str, config: TrainConfig, train_ids: str | None = None,
          echo=None, checked: Check | None = None) -> Summary:
    """Every stage of `vgray train`: scan, vocab, assign + partial counts, reduce, GloVe, embed.
    `checked` is what resume.check_train already found (FEATURES as it scanned it is not scanned
    again); without it the check runs here."""
    checked = checked or check_train(features, out, config, train_ids, echo)
    if checked.summary is not None:  # nothing to do: no Ray, no file written
        return checked.summary
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    with Job(out, echo, features) as job:
        return _train(job, features, config, train_ids, ids, checked)


def _train(job: Job, features: str, cfg: TrainConfig, train_ids: str | None,
           ids: list[str] | None, scanned: Check) -> Summary:
    settings = train_settings(cfg, features, ids)
    job.open(Manifest.for_train(cfg, features=features, settings=settings,
                                train_ids_file=fs.normalize(train_ids) if train_ids else None))
    # What the listing alone refuses is refused before Ray starts.
    listing = None if scanned.corpus else stages.listed(features, cfg.streams, cfg.strict, ids,
                                                          cfg.follow_symlinks, cfg.reading())
    job.workers.connect()
    run = job.run
    job.workers.plan_gpu(cfg, gpu_stages_left=not job.stage_done("glove"))
    centroids = run.path("vocab", "centroids.npy")
    # k-means to run: its GPU worker is asked for now (else GloVe asks when it starts).
    vocab_left = not (job.stage_done("vocab") and fs.exists(centroids))
    # The workers start first: they read the headers (the driver only lists FEATURES).
    job.workers.start(cfg, gpu_now=vocab_left, train=vocab_left or not job.stage_done("glove"))
    corpus = stages.scan(job, features, cfg.streams, strict=cfg.strict, train_ids=ids,
                         follow_symlinks=cfg.follow_symlinks, scanned=scanned,
                         workers=cfg.workers, listing=listing, reading=cfg.reading())
    stages.enough_training_clips(corpus, cfg.vocab_size)
    shards = make_shards(corpus.videos, cfg.shard_clips)

    _vocabulary(job, cfg, corpus, shards, centroids)
    assigned = _counts(job, cfg, corpus, shards, centroids)
    _glove(job, cfg)
    job.workers.gpu_stages_over()
    vectors = load_npy(run.path("glove", "vectors.npy"), np.float32, 2)
    embedded, embedded_now = stages.embed(job, shards, vectors, batch_clips=cfg.batch_clips,
                                          workers=cfg.workers, layout=cfg.embeddings)
    job.count("embed_shards", embedded_now)
    summary = stages.finish(job, assigned, embedded, corpus=corpus)
    summary.figures = {k: job.manifest.stages[k] for k in ("vocab", "cooccur", "glove")}
    return summary


def _vocabulary(job: Job, cfg: TrainConfig, corpus: Corpus, shards: list[list[Video]],
                centroids: str) -> None:
    """The codebook: shard workers sample training clips, one trainer fits k-means."""
    job.count("vocab", 0)
    if job.stage_done("vocab") and fs.exists(centroids):
        return
    # Whatever was computed from an earlier vocabulary must not be mixed with the new one.
    job.invalidate(job.run.path(WORK), job.run.path("cooccur"), job.run.path("glove"))
    t = time.perf_counter()

    def save(cfg: TrainConfig, fit: Fit, where: list) -> None:
        save_npy(centroids, fit.centroids)
        job.count("vocab")
        job.finish_stage("vocab", time.perf_counter() - t, where, **fit.figures)
        job.echo(stages.vocab_line(cfg, fit.figures, time.perf_counter() - t))

    stages.fit_vocabularies(job, [cfg], corpus, shards, save)


def _counts(job: Job, cfg: TrainConfig, corpus: Corpus, shards: list[list[Video]],
            centroids: str) -> list[ShardStats]:
    """Tokens and partial counts per shard, then R reducers merge the partials; returns the
    shards' assign records."""
    run = job.run
    count = Count(cfg.vocab_size, cfg.window, cfg.reducers)
    assigned, tokenised = stages.assign(job, shards, cfg, centroids, count, corpus=corpus)
    job.count("assign_shards", tokenised)
    t = time.perf_counter()
    todo = [r for r in range(cfg.reducers) if not fs.exists(run.part("cooccur", r))]
    job.count("reduce_parts", len(todo))
    done = stages.reduce(job, [ReduceUnit(run.root, r, len(shards), count) for r in todo],
                         cfg.workers)
    nonzeros = sum(parquet_row_count(p) for p in run.files("cooccur", suffix=".parquet"))
    fs.remove_tree(run.path(WORK, "cooccur"))  # partial counts are merged for good
    if todo or not job.stage_done("cooccur"):
        job.invalidate(run.path("glove"))
        job.finish_stage("cooccur", time.perf_counter() - t, [("reduce", d.where) for d in done],
                         nonzeros=nonzeros, reducers=cfg.reducers)
    job.echo(f"cooccur: {nonzeros} non-zeros ({time.perf_counter() - t:.1f} s)")
    return assigned


def _glove(job: Job, cfg: TrainConfig) -> None:
    """GloVe on the merged counts, on the GPU worker or a shard worker; writes glove/."""
    job.count("glove", 0)
    if job.stage_done("glove") and fs.exists(job.run.path("glove", "vectors.npy")):
        return
    job.invalidate(job.run.path(WORK, "embed"))  # embeddings of older vectors
    t = time.perf_counter()
    job.workers.ask_for_trainer("glove")
    where = []
    fit = job.workers.fit_glove(job.run.root, cfg, where)
    job.count("glove")
    job.finish_stage("glove", time.perf_counter() - t, where, **fit.figures)
    job.echo(stages.glove_line("glove", fit.figures, time.perf_counter() - t))

