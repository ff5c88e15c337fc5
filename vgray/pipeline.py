"""The stages of a run on Ray: shard actors, reducers, the GloVe actor and the embedding fan-out.

This is the only module that talks to Ray. The driver holds video metadata and small results
(centroids, vectors, per-shard stats), never the corpus: shard actors load features in blocks of
`batch_clips` clips and write their outputs themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from . import __version__, cooccur, fs
from .config import TrainConfig
from .corpus import Corpus, Skip, Video, load_clips, load_rows, read_train_ids, scan
from .embed import concat, embed
from .errors import BadVideo, VgrayError
from .store import (COOCCUR_SCHEMA, PARTIAL_SCHEMA, TOKENS_SCHEMA, WORK, RunDir, RunLock, atomic_path,
                    load_npy, parquet_rows, read_table, read_tokens, save_npy, shard_name,
                    tokens_table, write_table, write_text)
from .model import load_run
from .live import Reporter, get_with_progress, start_board
from .progress import Progress
from .vocab import Codebook, KMeans

log = logging.getLogger("vgray")


# ---------------------------------------------------------------------------------------------
# Pure helpers (no Ray)

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


def sample_mask(video_id: str, frames: int, probability: float, seed: int) -> np.ndarray:
    """Which clips of a video go into the k-means sample: a per-video seeded draw, so the sample
    does not depend on how videos are sharded or which worker loads them."""
    if probability >= 1.0:
        return np.ones(frames, dtype=bool)
    rng = np.random.default_rng([seed, zlib.crc32(video_id.encode("utf-8"))])
    return rng.random(frames) < probability


def resolve_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise VgrayError("--device cuda, but this worker has no CUDA device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _use_all_cores() -> None:
    """torch and numpy's BLAS on every core of this worker (Ray sets OMP_NUM_THREADS=1)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    threadpool_limits(max(1, os.cpu_count() or 1))


def _clips(videos: list[Video]) -> int:
    return sum(v.frames for v in videos)


def partial_paths(run: RunDir, shard: int, reducers: int) -> list[str]:
    """The partial co-occurrence files of one shard, one per reducer."""
    return [run.path(WORK, "cooccur", f"{shard_name(shard)}-{r:03d}.parquet") for r in range(reducers)]


def tokenize(videos: list[Video], codebook: Codebook, streams: str, batch_clips: int,
             device: str):
    """(video, int32 tokens or the BadVideo that stopped it) for each video, in order.

    Short videos are gathered into blocks of about `batch_clips` clips so each product is one
    large matmul; a video longer than that is loaded and assigned block by block on its own, so
    memory stays bounded by `batch_clips` whatever T is."""
    import torch

    def words(block: np.ndarray) -> np.ndarray:
        labels, _ = codebook.nearest(torch.from_numpy(block).to(device))
        return labels.to(torch.int32).cpu().numpy()

    pending, rows = [], 0  # (video, clips or BadVideo)

    def flush():
        loaded = [b for _, b in pending if not isinstance(b, BadVideo)]
        labels = words(np.concatenate(loaded)) if loaded else np.zeros(0, np.int32)
        at = 0
        for v, b in pending:
            if isinstance(b, BadVideo):
                yield v, b
            else:
                yield v, labels[at:at + len(b)]
                at += len(b)
        pending.clear()

    for v in videos:
        if v.frames > batch_clips:
            yield from flush()
            rows = 0
            try:
                yield v, np.concatenate([words(load_clips(v, streams, s, min(s + batch_clips, v.frames)))
                                         for s in range(0, v.frames, batch_clips)])
            except BadVideo as e:
                yield v, e
            continue
        try:
            block = load_clips(v, streams, 0, v.frames)
        except BadVideo as e:
            block = e
        pending.append((v, block))
        rows += 0 if isinstance(block, BadVideo) else len(block)
        if rows >= batch_clips:
            yield from flush()
            rows = 0
    yield from flush()


# ---------------------------------------------------------------------------------------------
# Ray pieces

# A worker lost with its node is restarted (elsewhere) and its calls are retried: every call is
# idempotent, its files are written atomically and its marker last.
@ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)
class ShardWorker:
    """Loads a shard's features in bounded blocks: samples clips, assigns words, counts pairs."""

    def __init__(self, streams: str, batch_clips: int, device: str,
                 centroids_path: str | None = None):
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)  # one core per actor; also keeps results thread-independent
        threadpool_limits(1)
        self.streams = streams
        self.batch_clips = batch_clips
        self.device = device
        self.codebook = None
        if centroids_path is not None:  # state comes from the constructor so a restart has it
            c = torch.from_numpy(load_npy(centroids_path, np.float32, 2)).to(device)
            self.codebook = Codebook(c)

    def sample(self, videos: list[Video], probability: float, seed: int):
        rows, skips = [], []
        for v in videos:
            mask = sample_mask(v.video_id, v.frames, probability, seed)
            try:
                picked = [load_clips(v, self.streams, s, min(s + self.batch_clips, v.frames))
                          [mask[s:s + self.batch_clips]]
                          for s in range(0, v.frames, self.batch_clips)]
            except BadVideo as e:
                skips.append(Skip(v.video_id, v.rgb_path, str(e)).to_dict())
                continue
            rows.extend(picked)
        dim = videos[0].stream_dim(self.streams)
        sample = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        return sample, skips

    def assign(self, out: str, shard: int, videos: list[Video], train: list[bool],
               tokens_part: str, counts: dict | None, tokens_dir: str | None) -> dict:
        """Tokens of a shard -> tokens part (+ per-video .npy); partial counts of its
        training videos -> one file per reducer; then the shard's marker."""
        t0 = time.perf_counter()
        run = RunDir(out)
        ids, seqs, trained, skips = [], [], [], []
        is_train = {v.video_id: t for v, t in zip(videos, train)}
        for v, tokens in tokenize(videos, self.codebook, self.streams, self.batch_clips, self.device):
            if isinstance(tokens, BadVideo):
                skips.append(Skip(v.video_id, v.rgb_path, str(tokens)).to_dict())
                continue
            ids.append(v.video_id)
            seqs.append(tokens)
            if is_train[v.video_id]:
                trained.append(tokens)
            if tokens_dir is not None:
                save_npy(fs.join(tokens_dir, f"{v.video_id}.npy"), tokens)
        write_table(tokens_part, tokens_table(ids, seqs))
        pairs = 0
        if counts is not None:
            i, j, s = cooccur.count(trained, counts["vocab_size"], counts["window"])
            pairs = len(i)
            for r, rows in enumerate(cooccur.partition(i, counts["reducers"])):
                table = pa.table([i[rows], j[rows], s[rows]], schema=PARTIAL_SCHEMA)
                write_table(partial_paths(run, shard, counts["reducers"])[r], table)
        stats = {"shard": shard, "node": ray.get_runtime_context().get_node_id(),
                 "videos": len(ids), "clips": int(sum(len(t) for t in seqs)),
                 "train_videos": len(trained), "pairs": pairs, "skips": skips,
                 "seconds": round(time.perf_counter() - t0, 3)}
        run.mark("assign", shard, stats)
        return stats


@ray.remote(num_cpus=1)
class GloveTrainer:
    """The one actor that trains GloVe (placed on a GPU node when the cluster has GPUs)."""

    def fit(self, out: str, config: dict, board=None) -> dict:
        from .glove import GloVe

        _use_all_cores()
        cfg = TrainConfig(**config)
        device = resolve_device(cfg.device)
        run = RunDir(out)
        t0 = time.perf_counter()
        table = pa.concat_tables([read_table(p, schema=COOCCUR_SCHEMA)
                                  for p in run.files("cooccur", suffix=".parquet")])
        i, j, x = (table.column(c).to_numpy() for c in ("i", "j", "x"))
        report = Reporter(board)
        model = GloVe(cfg.dim, cfg.x_max, cfg.alpha, cfg.epochs, cfg.learning_rate, cfg.seed,
                      device).fit(i, j, x, cfg.vocab_size, on_epoch=lambda e, value: report(
                          "glove", e, cfg.epochs, "epochs", f"loss {value:.5g}"))
        report.flush()
        np_state = {"w": model.w_, "w_context": model.w_context_, "b": model.b_,
                    "b_context": model.b_context_}
        with atomic_path(run.path("glove", "state.npz")) as tmp:
            np.savez(tmp, **np_state)
        write_text(run.path("glove", "loss.csv"),
                   "epoch,loss\n" + "".join(f"{e},{v!r}\n" for e, v in enumerate(model.loss_)))
        save_npy(run.path("glove", "vectors.npy"), model.vectors_)
        return {"device": device, "nonzeros": int(len(x)), "epochs": cfg.epochs,
                "initial_loss": model.loss_[0], "final_loss": model.loss_[-1],
                "train_seconds": round(time.perf_counter() - t0, 3)}



@ray.remote(num_cpus=1)
def fit_vocabulary(config: dict, board, *samples: np.ndarray) -> dict:
    """k-means on the concatenated sample (in shard order, so independent of the workers);
    seeding and iterations are posted to `board` as they go."""
    _use_all_cores()
    cfg = TrainConfig(**config)
    device = resolve_device(cfg.device)
    clips = sum(len(s) for s in samples)  # the parts are used in place, never concatenated
    if clips < cfg.vocab_size:
        raise VgrayError(f"--vocab-size {cfg.vocab_size} needs at least that many training clips "
                         f"in the k-means sample, got {clips}")
    t0 = time.perf_counter()
    report = Reporter(board)
    model = KMeans(cfg.vocab_size, cfg.kmeans_iters, cfg.seed, device).fit(list(samples),
                                                                           progress=report)
    report.flush()
    return {"centroids": model.cluster_centers_, "inertia": model.inertia_,
            "inertia_per_clip": model.inertia_ / clips, "sample_clips": int(clips),
            "iterations": model.n_iter_, "device": device, "precision": model.precision_,
            "kmeans_seconds": round(time.perf_counter() - t0, 3)}


@ray.remote(num_cpus=1)
def reduce_partition(out: str, partition: int, shards: int, reducers: int, vocab_size: int,
                     window: int) -> dict:
    """Exact sum of every shard's partial counts for rows i with i mod R == partition."""
    run = RunDir(out)
    paths = [partial_paths(run, k, reducers)[partition] for k in range(shards)]
    parts = []
    for path in paths:
        t = read_table(path, schema=PARTIAL_SCHEMA)
        parts.append(tuple(t.column(c).to_numpy() for c in ("i", "j", "s")))
    i, j, s = cooccur.merge(parts, vocab_size)
    table = pa.table([i, j, cooccur.weights(s, window)], schema=COOCCUR_SCHEMA)
    write_table(run.path("cooccur", f"part-{partition:05d}.parquet"), table)
    return {"partition": partition, "nonzeros": int(len(i))}


@ray.remote(num_cpus=1)
def embed_shard(out: str, shard: int, videos: list[Video], tokens_part: str,
                vectors: np.ndarray, batch_clips: int) -> dict:
    """Embeddings and concatenations of one shard's videos, written block by block."""
    t0 = time.perf_counter()
    run = RunDir(out)
    tokens = read_tokens([tokens_part])
    written, skips = 0, []
    for v in videos:
        if v.video_id not in tokens:
            continue  # skipped at assignment, recorded there
        emb = embed(tokens[v.video_id], vectors)
        try:
            for source in filter(None, (v.rgb_path, v.flow_path)):
                _write_concat(run.path("concat", fs.basename(source)), source, emb,
                              v.flow_path is not None, batch_clips)
        except BadVideo as e:  # the file changed since it was assigned
            skips.append(Skip(v.video_id, v.rgb_path, str(e)).to_dict())
            continue
        save_npy(run.path("embeddings", f"{v.video_id}.npy"), emb)
        written += 1
    stats = {"shard": shard, "videos": written, "skips": skips,
             "seconds": round(time.perf_counter() - t0, 3)}
    run.mark("embed", shard, stats)
    return stats


def _write_concat(target: str, source: str, emb: np.ndarray, two_streams: bool,
                  batch_clips: int) -> None:
    """[features, emb] of one stream file, read and written in blocks (bounded memory for long
    videos); the output keeps the input's name ({id}_rgb.npy, {id}_flow.npy or {id}.npy).

    The .npy header goes first, then each block's bytes with plain writes (a memory map of the
    output would keep every written page in this process's resident memory)."""
    frames = emb.shape[0]
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        for start in range(0, frames, batch_clips):
            stop = min(start + batch_clips, frames)
            block = concat(load_rows(source, start, stop), emb[start:stop], two_streams)
            if start == 0:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (frames, block.shape[1])})
            f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())


# ---------------------------------------------------------------------------------------------
# The driver

def connect(address: str | None = None) -> None:
    """Use the Ray already initialised in this process; else attach to `address` (or the
    RAY_ADDRESS that a Ray job runs with); else start an embedded local Ray, never picking up
    some other cluster that happens to run on this machine."""
    if ray.is_initialized():
        return
    env = os.environ.get("RAY_ADDRESS", "")
    address = address or (env if env and not env.startswith(("http://", "https://")) else "local")
    kwargs = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True, **kwargs)


def _versions() -> dict:
    import pyarrow
    import torch

    return {"vgray": __version__, "vgray_location": os.path.dirname(os.path.abspath(__file__)),
            "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__}


def _digest(ids: list[str] | None) -> str | None:
    """A short fingerprint of a list of training ids (the list itself may be long)."""
    if ids is None:
        return None
    import hashlib

    return f"{len(set(ids))} ids, sha256 " + hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()[:16]


def _fingerprint(corpus: Corpus) -> str:
    h = zlib.crc32(corpus.layout.encode())
    for v in corpus.videos:
        h = zlib.crc32(f"{v.video_id}|{v.frames}|{v.rgb_dim}|{v.flow_dim}".encode(), h)
    for s in corpus.skips:
        h = zlib.crc32(f"{s.video_id}|{s.reason}".encode(), h)
    return f"{h:08x}"


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


class Job:
    """One invocation over one output directory: scans, shards, runs stages, keeps the manifest."""

    def __init__(self, out: str, echo=None):
        self.run = RunDir(out)
        self.echo = echo or (lambda message: None)
        self.t0 = time.perf_counter()
        self.work: dict[str, int] = {}
        self.manifest: dict = {}
        self.lock = RunLock(self.run.root)
        self._board = None

    def board(self):
        """The actor that a long remote task posts its progress to: started on first use,
        emptied for each task."""
        if self._board is None:
            self._board = start_board()
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._board.clear.remote(), timeout=10)
        return self._board

    def __enter__(self) -> "Job":
        self._created = not fs.is_uri(self.run.root) and not os.path.exists(self.run.root)
        return self

    def __exit__(self, kind, *exc) -> None:
        if self._board is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._board)
        self.lock.release()
        if kind is not None and self._created:  # a run that failed before writing anything
            with contextlib.suppress(OSError):    # leaves no empty --out behind
                os.rmdir(self.run.root)

    # --- manifest -------------------------------------------------------------------------
    def open(self, header: dict, must_match: dict) -> None:
        """Start or resume: a RUN in use by another vgray, or made with other result-changing
        settings, is refused."""
        self.lock.acquire()
        old = self.run.read_manifest()
        if old is not None:
            for key, value in must_match.items():
                before = old.get("settings", {}).get(key)
                if before != value:
                    flag = "--" + key.replace("_", "-")
                    raise VgrayError(
                        f"{self.run.root} was made with {flag} {before!r}, this run asks for "
                        f"{value!r}; use another --out (or delete it to start over)")
            self.manifest = old
        else:
            self.manifest = {"settings": must_match, "stages": {}}
        self.manifest.update(header)
        self.manifest["versions"] = _versions()
        self.manifest["status"] = "running"  # first saved once FEATURES has been scanned

    def save(self) -> None:
        self.run.write_manifest(self.manifest)

    def stage_done(self, name: str) -> bool:
        return self.manifest["stages"].get(name, {}).get("status") == "done"

    def invalidate(self, *paths: str) -> None:
        """Remove outputs (and markers) made from state that is being recomputed."""
        for path in paths:
            _remove_tree(path)

    def finish_stage(self, name: str, seconds: float, **figures) -> None:
        self.manifest["stages"][name] = {"status": "done", "seconds": round(seconds, 3), **figures}
        self.save()

    # --- scanning -------------------------------------------------------------------------
    def scan(self, features: str, streams: str, strict: bool, train_ids: list[str] | None = None,
             rgb_dim: int | None = None, flow_dim: int | None = None,
             follow_symlinks: bool = False) -> Corpus:
        t = time.perf_counter()
        progress = None

        def on_video(done: int, total: int) -> None:
            nonlocal progress
            progress = progress or Progress(self.echo, "scan", total, "videos")
            progress.advance(1)

        corpus = scan(features, streams, train_ids, rgb_dim, flow_dim, follow_symlinks, on_video)
        if progress is not None:
            progress.close()
        if strict and corpus.skips:
            s = corpus.skips[0]
            raise VgrayError(f"{s.video_id}: {s.reason} ({s.path}) [--strict]")
        if not corpus.videos:
            raise VgrayError(f"no usable videos in {features}"
                             + (f" (first problem: {corpus.skips[0].reason})" if corpus.skips else ""))
        fingerprint = _fingerprint(corpus)
        before = self.manifest.get("corpus", {}).get("fingerprint")
        if before is not None and before != fingerprint:
            raise VgrayError(f"FEATURES {features} changed since {self.run.root} was started; "
                             "use another --out (or delete it to start over)")
        self.manifest["corpus"] = {
            "layout": corpus.layout, "videos": len(corpus.videos),
            "clips": int(sum(v.frames for v in corpus.videos)),
            "train_videos": len(corpus.train_videos), "rgb_dim": corpus.rgb_dim,
            "flow_dim": corpus.flow_dim, "skipped_at_scan": len(corpus.skips),
            "missing_train_ids": len(corpus.missing_train_ids), "fingerprint": fingerprint}
        self.finish_stage("scan", time.perf_counter() - t, videos=len(corpus.videos),
                          skipped=len(corpus.skips))
        self.echo(f"scan: {len(corpus.videos)} videos, {len(corpus.skips)} skipped"
                  + (f", {len(corpus.missing_train_ids)} training ids without files"
                     if corpus.missing_train_ids else "") + f" ({time.perf_counter() - t:.1f} s)")
        self.corpus = corpus
        return corpus

    # --- stages ---------------------------------------------------------------------------
    def assign(self, shards: list[list[Video]], cfg: TrainConfig, centroids_path: str,
               tokens_part, counts: dict | None, tokens_dir: str | None = None,
               need_partials: bool = False) -> None:
        """Shard actors tokenise every video; with `counts`, also partial co-occurrence."""
        def done(k: int) -> bool:
            # Partial counts are deleted once merged; a shard whose partials are gone is redone
            # if the merge has to run again.
            return self.run.done("assign", k) and (not need_partials or all(
                fs.exists(p) for p in partial_paths(self.run, k, counts["reducers"])))

        todo = [k for k in range(len(shards)) if not done(k)]
        self.work["assign_shards"] = len(todo)
        t = time.perf_counter()
        if todo:
            corpus = self.corpus

            def submit(actor, k):
                return actor.assign.remote(
                    self.run.root, k, shards[k], [corpus.is_train(v.video_id) for v in shards[k]],
                    tokens_part(k), counts, tokens_dir)

            progress = Progress(self.echo, "assign", sum(_clips(shards[k]) for k in todo), "clips")

            def on_done(k, stats, finished):
                if cfg.strict and stats["skips"]:
                    s = stats["skips"][0]
                    raise VgrayError(f"{s['video_id']}: {s['reason']} ({s['path']}) [--strict]")
                progress.advance(_clips(shards[k]))

            run_on_actors(lambda: ShardWorker.remote(cfg.streams, cfg.batch_clips, "cpu",
                                                     centroids_path),
                          min(_workers(cfg), len(todo)), todo, submit, on_done)
            progress.close()
        markers = [self.run.read_marker("assign", k) for k in range(len(shards))]
        clips = sum(m["clips"] for m in markers)
        self.finish_stage("assign", time.perf_counter() - t, shards=len(shards),
                          videos=sum(m["videos"] for m in markers), clips=clips,
                          skipped=sum(len(m["skips"]) for m in markers))
        self.echo(f"assign: {clips} clips tokenised ({time.perf_counter() - t:.1f} s)")

    def embed(self, shards: list[list[Video]], vectors: np.ndarray, tokens_part,
              batch_clips: int) -> None:
        todo = [k for k in range(len(shards)) if not self.run.done("embed", k)]
        self.work["embed_shards"] = len(todo)
        t = time.perf_counter()
        if todo:
            ref = ray.put(vectors)
            shard_of = {embed_shard.remote(self.run.root, k, shards[k], tokens_part(k), ref,
                                           batch_clips): k for k in todo}
            pending = list(shard_of)
            progress = Progress(self.echo, "embed", sum(len(shards[k]) for k in todo), "videos")
            while pending:
                ready, pending = ray.wait(pending)
                ray.get(ready)
                progress.advance(len(shards[shard_of[ready[0]]]))
            progress.close()
        markers = [self.run.read_marker("embed", k) for k in range(len(shards))]
        videos = sum(m["videos"] for m in markers)
        self.finish_stage("embed", time.perf_counter() - t, shards=len(shards), videos=videos,
                          skipped=sum(len(m["skips"]) for m in markers))
        self.echo(f"embed: {videos} videos ({time.perf_counter() - t:.1f} s)")

    # --- the end --------------------------------------------------------------------------
    def finish(self, shards: list[list[Video]], embedded: bool) -> Summary:
        """Write skipped.jsonl (every input not used, and why) and close the manifest."""
        skips = [s.to_dict() for s in self.corpus.skips]
        for stage in ("assign", "embed") if embedded else ("assign",):
            for k in range(len(shards)):
                skips.extend(self.run.read_marker(stage, k)["skips"])
        skips.extend({"video_id": vid, "path": None, "reason": "training id has no feature files"}
                     for vid in self.corpus.missing_train_ids)
        skips.sort(key=lambda s: (s["video_id"], s["path"] or ""))
        write_text(self.run.path("skipped.jsonl"), "".join(json.dumps(s) + "\n" for s in skips))
        stage = self.manifest["stages"]["embed" if embedded else "assign"]
        seconds = time.perf_counter() - self.t0
        self.manifest["status"] = "complete"
        self.manifest["counts"] = {"videos": stage["videos"], "skipped": len(skips),
                                   "clips": self.manifest["stages"]["assign"]["clips"]}
        self.manifest["last_invocation"] = {"seconds": round(seconds, 3), "work": self.work}
        self.save()
        return Summary(self.run.root, stage["videos"], self.manifest["counts"]["clips"],
                       len(skips), seconds, dict(self.work))


# Failures of the machinery, not of vgray's code: the shard is run again on a fresh actor.
_RETRIABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
              ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
              ray.exceptions.NodeDiedError)
MAX_ATTEMPTS = 4


def run_on_actors(make_actor, n: int, shards: list[int], submit, on_done) -> None:
    """Run every shard on a pool of n actors; a shard whose actor or node is lost is run again
    on a fresh actor (its outputs are idempotent), up to MAX_ATTEMPTS times.

    Shards go only to actors that have started: actors that cannot be placed yet (more workers
    than CPUs, or a cluster waiting for its autoscaler) hold no work hostage, join when they
    can, and are dropped when everything is done."""
    starting: dict = {}  # readiness ref -> actor

    def start():
        actor = make_actor()
        starting[actor.__ray_ready__.remote()] = actor

    for _ in range(n):
        start()
    idle, queue, attempts, inflight, finished, failed_starts = [], list(shards), {}, {}, 0, 0
    try:
        while queue or inflight:
            while idle and queue:
                actor, k = idle.pop(), queue.pop(0)
                inflight[submit(actor, k)] = (actor, k)
            [ref], _ = ray.wait(list(inflight) + list(starting), num_returns=1)
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                except _RETRIABLE as e:
                    failed_starts += 1
                    if failed_starts > MAX_ATTEMPTS:  # e.g. its constructor fails every time
                        last = [line for line in str(e).splitlines() if line.strip()][-1:]
                        raise VgrayError("shard workers fail to start: "
                                         + (last[0].strip() if last else type(e).__name__)) from None
                    log.warning("a shard worker was lost while starting (%s)", type(e).__name__)
                    start()
                    continue
                idle.append(actor)
                continue
            actor, k = inflight.pop(ref)
            try:
                stats = ray.get(ref)
            except _RETRIABLE as e:
                attempts[k] = attempts.get(k, 1) + 1
                if attempts[k] > MAX_ATTEMPTS:
                    raise VgrayError(f"shard {k} failed {MAX_ATTEMPTS} times; last: "
                                     f"{type(e).__name__}") from e
                log.warning("shard %d lost (%s); running it again", k, type(e).__name__)
                ray.kill(actor)
                start()
                queue.append(k)
                continue
            idle.append(actor)
            finished += 1
            on_done(k, stats, finished)
    finally:
        for actor in idle + [a for a, _ in inflight.values()] + list(starting.values()):
            ray.kill(actor)


def _workers(cfg: TrainConfig) -> int:
    """Shard actors to start: --workers, or one per CPU the cluster has now."""
    return cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def _gpu_options(device: str) -> dict:
    """num_gpus=1 for the GPU stages when the cluster has GPUs (and --device allows them)."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if device == "cuda" and not has_gpu:
        raise VgrayError("--device cuda, but the Ray cluster has no GPU")
    return {"num_gpus": 1} if has_gpu and device != "cpu" else {}


def train(features: str, out: str, config: TrainConfig, train_ids: str | None = None,
          echo=None) -> Summary:
    """Every stage of `vgray train`: scan, vocab, assign + partial counts, reduce, GloVe, embed."""
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    connect()
    with Job(out, echo) as job:
        return _train(job, features, config, train_ids, ids)


def _train(job: "Job", features: str, config: TrainConfig, train_ids: str | None,
           ids: list[str] | None) -> Summary:
    settings = {k: getattr(config, k) for k in TrainConfig.RESULT_KEYS}
    settings.update(features=features, train_ids=_digest(ids))
    job.open({"command": "train", "features": features,
              "train_ids_file": fs.normalize(train_ids) if train_ids else None,
              "config": config.to_dict()}, settings)
    run, cfg = job.run, config
    corpus = job.scan(features, cfg.streams, cfg.strict, ids, follow_symlinks=cfg.follow_symlinks)
    if not corpus.train_videos:
        raise VgrayError("none of the --train-ids has usable features")
    shards = make_shards(corpus.videos, cfg.shard_clips)
    gpu = _gpu_options(cfg.device)

    centroids_path = run.path("vocab", "centroids.npy")
    _vocab_stage(job, cfg, corpus, shards, gpu, centroids_path)
    tokens_part = lambda k: run.path("tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
    _cooccur_stages(job, cfg, shards, centroids_path, tokens_part)
    _glove_stage(job, cfg, gpu)
    vectors = load_npy(run.path("glove", "vectors.npy"), np.float32, 2)
    job.embed(shards, vectors, tokens_part, cfg.batch_clips)
    summary = job.finish(shards, embedded=True)
    summary.figures = {k: job.manifest["stages"][k] for k in ("vocab", "cooccur", "glove")}
    return summary


def _vocab_stage(job: Job, cfg: TrainConfig, corpus: Corpus, shards: list[list[Video]],
                 gpu: dict, centroids_path: str) -> None:
    """Shard actors sample training clips; one k-means task fits the codebook."""
    job.work["vocab"] = 0
    if job.stage_done("vocab") and fs.exists(centroids_path):
        return
    # Whatever was computed from an earlier vocabulary must not be mixed with the new one.
    job.invalidate(job.run.path(WORK), job.run.path("cooccur"), job.run.path("glove"))
    t = time.perf_counter()
    probability = min(1.0, cfg.sample_size / sum(v.frames for v in corpus.train_videos))
    train_shards = [[v for v in s if corpus.is_train(v.video_id)] for s in shards]
    train_shards = [s for s in train_shards if s]

    def on_done(k, skips, finished):
        if cfg.strict and skips:
            raise VgrayError(f"{skips[0]['video_id']}: {skips[0]['reason']} "
                             f"({skips[0]['path']}) [--strict]")
        progress.advance(_clips(train_shards[k]))

    for attempt in range(1, MAX_ATTEMPTS + 1):
        samples = {}
        progress = Progress(job.echo, "vocab: sampling", sum(map(_clips, train_shards)), "clips")

        def submit(actor, k):
            samples[k], skips = actor.sample.options(num_returns=2).remote(
                train_shards[k], probability, cfg.seed)
            return skips

        # The actors are gone once this returns, which frees their CPUs for the k-means task.
        run_on_actors(lambda: ShardWorker.remote(cfg.streams, cfg.batch_clips, "cpu"),
                      min(_workers(cfg), len(train_shards)), list(range(len(train_shards))),
                      submit, on_done)
        progress.close()
        ordered = [samples[k] for k in range(len(train_shards))]  # shard order, not finish order
        try:
            board = job.board()
            result = get_with_progress(
                fit_vocabulary.options(**gpu).remote(cfg.to_dict(), board, *ordered), board,
                job.echo)
            break
        except _RETRIABLE as e:  # a sample was lost with its node: draw it again
            if attempt == MAX_ATTEMPTS:
                raise VgrayError(f"k-means failed {attempt} times; last: {type(e).__name__}") from e
            log.warning("k-means sample lost (%s); sampling again", type(e).__name__)
    save_npy(centroids_path, result.pop("centroids"))
    job.work["vocab"] = 1
    job.finish_stage("vocab", time.perf_counter() - t, **result)
    job.echo(f"vocab: K={cfg.vocab_size} on {result['sample_clips']} clips, inertia/clip "
             f"{result['inertia_per_clip']:.4g}, {result['iterations']} iterations "
             f"({time.perf_counter() - t:.1f} s)")


def _cooccur_stages(job: Job, cfg: TrainConfig, shards: list[list[Video]], centroids_path: str,
                    tokens_part) -> None:
    """Tokens and partial counts per shard (actors), then R reducers merge the partials."""
    run = job.run
    counts = {"vocab_size": cfg.vocab_size, "window": cfg.window, "reducers": cfg.reducers}
    todo = [r for r in range(cfg.reducers)
            if not fs.exists(run.path("cooccur", f"part-{r:05d}.parquet"))]
    job.assign(shards, cfg, centroids_path, tokens_part, counts, need_partials=bool(todo))
    t = time.perf_counter()
    job.work["reduce_parts"] = len(todo)
    pending = [reduce_partition.remote(run.root, r, len(shards), cfg.reducers, cfg.vocab_size,
                                       cfg.window) for r in todo]
    progress = Progress(job.echo, "cooccur: reduce", len(pending), "partitions")
    while pending:
        ready, pending = ray.wait(pending)
        ray.get(ready)
        progress.advance(len(ready))
    progress.close()
    nonzeros = sum(parquet_rows(p) for p in run.files("cooccur", suffix=".parquet"))
    _remove_tree(run.path(WORK, "cooccur"))  # partial counts are merged for good
    if todo or not job.stage_done("cooccur"):
        job.invalidate(run.path("glove"))
        job.finish_stage("cooccur", time.perf_counter() - t, nonzeros=nonzeros,
                         reducers=cfg.reducers)
    job.echo(f"cooccur: {nonzeros} non-zeros ({time.perf_counter() - t:.1f} s)")


def _glove_stage(job: Job, cfg: TrainConfig, gpu: dict) -> None:
    """The GloVe actor trains on the merged counts and writes glove/."""
    job.work["glove"] = 0
    if job.stage_done("glove") and fs.exists(job.run.path("glove", "vectors.npy")):
        return
    job.invalidate(job.run.path(WORK, "embed"))  # embeddings of older vectors
    t = time.perf_counter()
    trainer = GloveTrainer.options(**gpu).remote()
    board = job.board()
    result = get_with_progress(trainer.fit.remote(job.run.root, cfg.to_dict(), board), board,
                               job.echo)
    ray.kill(trainer)
    job.work["glove"] = 1
    job.finish_stage("glove", time.perf_counter() - t, **result)
    job.echo(f"glove: {result['epochs']} epochs on {result['nonzeros']} non-zeros, loss "
             f"{result['initial_loss']:.4g} -> {result['final_loss']:.4g} "
             f"({time.perf_counter() - t:.1f} s)")


def _remove_tree(path: str) -> None:
    fs.remove_tree(path)


def _apply(run_dir: str, features: str, out: str, command: str, workers: int | None,
           strict: bool, echo, follow_symlinks: bool = False) -> Summary:
    """`vgray assign` / `vgray embed`: a trained RUN applied to any corpus."""
    manifest, centroids, vectors = load_run(run_dir, need_vectors=command == "embed")
    features = fs.normalize(features)
    cfg = TrainConfig(**{**manifest["config"], "workers": workers, "strict": strict,
                         "follow_symlinks": follow_symlinks})
    connect()
    with Job(out, echo) as job:
        if job.run.root == RunDir(run_dir).root:
            raise VgrayError("--out must be another directory than RUN")
        return _apply_job(job, run_dir, features, command, cfg, strict, manifest, centroids,
                          vectors, follow_symlinks)


def _apply_job(job: "Job", run_dir: str, features: str, command: str, cfg: TrainConfig,
               strict: bool, manifest: dict, centroids: np.ndarray, vectors, follow_symlinks: bool
               ) -> Summary:
    job.open({"command": command, "features": features, "run": fs.normalize(run_dir)},
             {"run": fs.normalize(run_dir), "features": features, "streams": cfg.streams,
              "shard_clips": cfg.shard_clips})
    dims = manifest["corpus"]
    uses_rgb, uses_flow = cfg.streams != "flow", cfg.streams != "rgb"
    corpus = job.scan(features, cfg.streams, strict, None,
                      dims["rgb_dim"] if uses_rgb else None, dims["flow_dim"] if uses_flow else None,
                      follow_symlinks)
    width = corpus.videos[0].stream_dim(cfg.streams)
    if width != centroids.shape[1]:
        raise VgrayError(f"the vocabulary of {run_dir} is {centroids.shape[1]}-d, the corpus "
                         f"({cfg.streams}) is {width}-d")
    shards = make_shards(corpus.videos, cfg.shard_clips)
    centroids_path = RunDir(run_dir).path("vocab", "centroids.npy")
    if command == "assign":
        tokens_part = lambda k: job.run.path(WORK, "tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
        job.assign(shards, cfg, centroids_path, tokens_part, None, tokens_dir=job.run.root)
        _merge_tokens([tokens_part(k) for k in range(len(shards))], job.run.path("tokens.parquet"))
        return job.finish(shards, embedded=False)
    tokens_part = lambda k: job.run.path("tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
    job.assign(shards, cfg, centroids_path, tokens_part, None)
    job.embed(shards, vectors, tokens_part, cfg.batch_clips)
    return job.finish(shards, embedded=True)


def _merge_tokens(parts: list[str], target: str) -> None:
    """One tokens.parquet from the shards' parts, streamed part by part."""
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, TOKENS_SCHEMA) as writer:
            for part in parts:
                writer.write_table(read_table(part, schema=TOKENS_SCHEMA))


def assign(run_dir: str, features: str, out: str, workers: int | None = None,
           strict: bool = False, echo=None, follow_symlinks: bool = False) -> Summary:
    """Tokens of any corpus with a trained vocabulary: OUT/{id}.npy and OUT/tokens.parquet."""
    return _apply(run_dir, features, out, "assign", workers, strict, echo, follow_symlinks)


def embed_corpus(run_dir: str, features: str, out: str, workers: int | None = None,
                 strict: bool = False, echo=None, follow_symlinks: bool = False) -> Summary:
    """Embeddings and concatenations of any corpus with a trained model, laid out as in RUN."""
    return _apply(run_dir, features, out, "embed", workers, strict, echo, follow_symlinks)
