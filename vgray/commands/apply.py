"""`vgray assign` and `vgray embed`: a trained RUN applied to any corpus, composed of the same
stages as train (scan, tokenise, embed) over another output directory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq

from ..files import fs
from ..run import stages
from ..config import TrainConfig
from ..errors import VgrayError
from ..run.job import Job
from ..rundir.manifest import FeatureReading, Manifest
from ..run.resume import Summary, make_shards
from ..rundir.store import TOKENS_SCHEMA, RunDir, atomic_path, load_run, read_table


def assign(run_dir: str, features: str, out: str, *, workers: int | None = None,
           strict: bool = False, echo=None, follow_symlinks: bool = False,
           reading: dict | None = None) -> Summary:
    """Tokens of any corpus with a trained vocabulary: OUT/{id}.npy and OUT/tokens.parquet.
    `reading`: how FEATURES is read (input_format, hdf5_key, hdf5_flow_key; default detected)."""
    return _apply("assign", run_dir, features=features, out=out, echo=echo, options={
        "workers": workers, "strict": strict, "follow_symlinks": follow_symlinks,
        "embeddings": "files", **(reading or {})})


def embed_corpus(run_dir: str, features: str, out: str, *, workers: int | None = None,
                 strict: bool = False, echo=None, follow_symlinks: bool = False,
                 embeddings: str = "files", reading: dict | None = None) -> Summary:
    """Embeddings and concatenations of any corpus with a trained model, laid out as in RUN
    (embeddings "files"), or one per-clip table per shard and no concatenations ("parquet")."""
    return _apply("embed", run_dir, features=features, out=out, echo=echo, options={
        "workers": workers, "strict": strict, "follow_symlinks": follow_symlinks,
        "embeddings": embeddings, **(reading or {})})


def _apply(command: str, run_dir: str, *, features: str, out: str, echo, options: dict) -> Summary:
    """`command` with RUN's model on FEATURES into OUT; `options`: the settings of this run that
    are not RUN's (workers, strict, follow_symlinks, embeddings, how FEATURES is read)."""
    manifest, centroids, vectors = load_run(run_dir, need_vectors=command == "embed")
    features = fs.normalize(features)
    cfg = dataclasses.replace(manifest.config, **{"input_format": None, "hdf5_key": None,
                                                  "hdf5_flow_key": None, **options})
    if RunDir(out).root == RunDir(run_dir).root:
        raise VgrayError("--out must be another directory than RUN")
    with Job(out, echo, features) as job:
        return _apply_job(job, command, run_dir=run_dir, features=features, cfg=cfg,
                          manifest=manifest, centroids=centroids, vectors=vectors)


def _apply_job(job: Job, command: str, *, run_dir: str, features: str, cfg: TrainConfig,
               manifest: Manifest, centroids: np.ndarray, vectors: np.ndarray | None) -> Summary:
    settings = {"run": fs.normalize(run_dir), "features": features, "streams": cfg.streams,
                "shard_clips": cfg.shard_clips}
    if command == "embed":
        settings["embeddings"] = cfg.embeddings
    job.open(Manifest.for_apply(command, features=features, run=fs.normalize(run_dir),
                                reading=FeatureReading(cfg.input_format, cfg.hdf5_key,
                                                       cfg.hdf5_flow_key), settings=settings))
    dims = manifest.corpus
    uses_rgb, uses_flow = cfg.streams != "flow", cfg.streams != "rgb"
    # What the listing alone refuses is refused before Ray starts.
    listing = stages.listed(features, cfg.streams, cfg.strict, None, cfg.follow_symlinks,
                            cfg.reading())
    job.workers.connect()
    job.workers.start(cfg)  # they read the headers (the driver only lists FEATURES)
    corpus = stages.scan(job, features, cfg.streams, strict=cfg.strict,
                         rgb_dim=dims.rgb_dim if uses_rgb else None,
                         flow_dim=dims.flow_dim if uses_flow else None,
                         follow_symlinks=cfg.follow_symlinks, workers=cfg.workers,
                         listing=listing, reading=cfg.reading())
    width = corpus.videos[0].stream_dim(cfg.streams)
    if width != centroids.shape[1]:
        raise VgrayError(f"the vocabulary of {run_dir} is {centroids.shape[1]}-d, the corpus "
                         f"({cfg.streams}) is {width}-d")
    shards = make_shards(corpus.videos, cfg.shard_clips)
    vocabulary = RunDir(run_dir).path("vocab", "centroids.npy")
    if command == "assign":
        assigned, tokenised = stages.assign(job, shards, cfg, vocabulary, None, corpus=corpus,
                                            per_video=True)
        job.count("assign_shards", tokenised)
        merge_tokens([job.run.tokens_part(k, staged=True) for k in range(len(shards))],
                     job.run.path("tokens.parquet"))
        return stages.finish(job, assigned, None, corpus=corpus)
    assigned, tokenised = stages.assign(job, shards, cfg, vocabulary, None, corpus=corpus)
    job.count("assign_shards", tokenised)
    embedded, embedded_now = stages.embed(job, shards, vectors, batch_clips=cfg.batch_clips,
                                          workers=cfg.workers, layout=cfg.embeddings)
    job.count("embed_shards", embedded_now)
    return stages.finish(job, assigned, embedded, corpus=corpus)


def merge_tokens(parts: list[str], target: str) -> None:
    """One tokens.parquet from the shards' parts, streamed part by part."""
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, TOKENS_SCHEMA) as writer:
            for part in parts:
                writer.write_table(read_table(part, schema=TOKENS_SCHEMA))
