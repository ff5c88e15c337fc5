"""The worker that runs on a node: a thin, warm host for the units of every stage.

One `ShardWorker` process serves a whole run: torch is imported, its thread pools are set up and
(on a GPU) CUDA is initialised once, not once per stage. It samples clips, tokenises a shard with
a list of vocabularies and counts its pairs, merges counts, embeds, and fits k-means or GloVe with
every core of its node (or on its GPU). It knows units (units.py), never commands: `vgray train`
and `vgray sweep` hand it different units of the same kinds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import threading
import time
import zlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray

from ..algo import cooccur
from ..files import fs, s3
from ..clusters.cluster import actor_start, here, pick_device
from ..config import TrainConfig
from ..features.corpus import IO_THREADS, RGB_SUFFIX, Skip, Video
from ..features.npyfile import load_rows
from ..features.readers import load_clips, probe, stream_rows
from ..algo.embed import concat, embed
from ..algo.nearest import NumpyCodebook
from ..errors import BadVideo, VgrayError
from ..clusters.live import Reporter
from ..rundir.store import (COOCCUR_SCHEMA, PARTIAL_SCHEMA, RunDir, atomic_path, clips_table,
                            distance_table, load_npy, read_distance_table, read_table, read_tokens,
                            save_npy, tokens_table, write_table, write_text)
from .units import (Count, EmbedUnit, Fit, Reduced, ReduceUnit, SampleUnit, Scanned, ScanUnit,
                    ShardStats, TokenizeUnit)

if TYPE_CHECKING:  # the driver does not import torch
    from ..algo.vocab import Codebook

# The GPU worker: a ShardWorker given the GPU and no CPU (it may share a node whose CPUs shard
# workers hold); a lost one is replaced off the lost node, within --gpu-wait (pool.on_one_actor).
GPU_WORKER = {"num_cpus": 0, "num_gpus": 1}


# ---------------------------------------------------------------------------------------------
# Pure helpers (no Ray)

def clip_draws(video_id: str, frames: int, seed: int) -> np.ndarray:
    """One uniform draw in [0, 1) per clip of a video, seeded by the video: clip t goes into a
    k-means sample of probability p when draw t < p. The same draws serve every p, so the sample
    of a smaller vocabulary is exactly a subset of a larger one's (what `vgray sweep` uses)."""
    return np.random.default_rng([seed, zlib.crc32(video_id.encode("utf-8"))]).random(frames)


def sample_mask(video_id: str, frames: int, probability: float, seed: int,
                draws: np.ndarray | None = None) -> np.ndarray:
    """Which clips of a video go into the k-means sample: a per-video seeded draw (`draws`, if
    already drawn), so the sample does not depend on how videos are sharded or which worker
    loads them."""
    if probability >= 1.0:
        return np.ones(frames, dtype=bool)
    return (clip_draws(video_id, frames, seed) if draws is None else draws) < probability


@contextlib.contextmanager
def all_cores():
    """torch and numpy's BLAS on every core of this worker's node for the block (a shard worker
    otherwise computes on one core; Ray sets OMP_NUM_THREADS=1)."""
    import torch
    from threadpoolctl import threadpool_limits

    before, cores = torch.get_num_threads(), max(1, os.cpu_count() or 1)
    torch.set_num_threads(cores)
    try:
        with threadpool_limits(cores):
            yield
    finally:
        torch.set_num_threads(before)


def prefetch(videos: list[Video], load, batch_clips: int, remote: bool | None = None):
    """(video, load(video) or the BadVideo it raised) for each video, in order. On object storage
    (`remote`: by default, where the videos are) up to IO_THREADS loads are in flight ahead of
    the caller (its next videos arrive while it computes), within about 2 x batch_clips clips
    held; local files are read one by one (the reads are CPU-bound there). A fault of the
    storage is raised, never yielded."""
    def attempt(v):
        try:
            return load(v)
        except BadVideo as e:
            return e

    if remote is None:
        remote = bool(videos) and fs.is_uri(videos[0].rgb_path)
    if not remote:
        for v in videos:
            yield v, attempt(v)
        return
    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as threads:
        queue, held = collections.deque(), 0
        for v in videos:
            cost = min(v.frames, batch_clips)
            while queue and (len(queue) >= IO_THREADS or held + cost > 2 * batch_clips):
                done, future = queue.popleft()
                held -= min(done.frames, batch_clips)
                yield done, future.result()
            queue.append((v, threads.submit(attempt, v)))
            held += cost
        while queue:
            done, future = queue.popleft()
            yield done, future.result()


def tokenize(videos: list[Video], codebooks: list[Codebook | NumpyCodebook], streams: str,
             batch_clips: int):
    """(video, [int32 tokens per codebook] or the BadVideo that stopped it) for each video, in
    order; the features are read once whatever the number of codebooks (`vgray sweep` tokenises
    with every vocabulary in one pass).

    Short videos are gathered into blocks of about `batch_clips` clips so each product is one
    large matmul; a video longer than that is loaded and assigned block by block on its own, so
    memory stays bounded by `batch_clips` whatever T is."""
    def words(block: np.ndarray) -> list[np.ndarray]:
        return [book.words(block) for book in codebooks]

    pending, rows = [], 0  # (video, clips or BadVideo)

    def flush():
        loaded = [b for _, b in pending if not isinstance(b, BadVideo)]
        labels = words(np.concatenate(loaded)) if loaded else [np.zeros(0, np.int32)] * len(codebooks)
        at = 0
        for v, b in pending:
            if isinstance(b, BadVideo):
                yield v, b
            else:
                yield v, [t[at:at + len(b)] for t in labels]
                at += len(b)
        pending.clear()

    def whole(v: Video):  # a long video is read block by block below, not ahead
        return None if v.frames > batch_clips else load_clips(v, streams, 0, v.frames)

    for v, block in prefetch(videos, whole, batch_clips):
        if v.frames > batch_clips:
            yield from flush()
            rows = 0
            try:
                blocks = [words(load_clips(v, streams, s, min(s + batch_clips, v.frames)))
                          for s in range(0, v.frames, batch_clips)]
                yield v, [np.concatenate([b[c] for b in blocks]) for c in range(len(codebooks))]
            except BadVideo as e:
                yield v, e
            continue
        pending.append((v, block))
        rows += 0 if isinstance(block, BadVideo) else len(block)
        if rows >= batch_clips:
            yield from flush()
            rows = 0
    yield from flush()


def count_shard(run: RunDir, shard: int, trained: list[np.ndarray], count: Count) -> int:
    """The pairs of a shard's training videos, one partial file per reducer; returns how many
    (i, j) it holds."""
    if count.by_distance:
        i, j, c = cooccur.count_by_distance(trained, count.vocab_size, count.window)
        table = lambda rows: distance_table(i[rows], j[rows], c[rows])  # noqa: E731
    else:
        i, j, s = cooccur.count(trained, count.vocab_size, count.window)
        table = lambda rows: pa.table([i[rows], j[rows], s[rows]], schema=PARTIAL_SCHEMA)  # noqa: E731
    for r, rows in enumerate(cooccur.partition(i, count.reducers)):
        write_table(run.partial(shard, r), table(rows))
    return int(len(i))


def reduce_partition(unit: ReduceUnit) -> int:
    """Every shard's partials of one partition summed exactly, and written (see ReduceUnit);
    returns the merged non-zeros."""
    run, count, r = RunDir(unit.root), unit.count, unit.partition
    if not count.by_distance:
        parts = []
        for k in range(unit.shards):
            t = read_table(run.partial(k, r), schema=PARTIAL_SCHEMA)
            parts.append(tuple(t.column(c).to_numpy() for c in ("i", "j", "s")))
        i, j, s = cooccur.merge(parts, count.vocab_size)
        table = pa.table([i, j, cooccur.weights(s, count.window)], schema=COOCCUR_SCHEMA)
        write_table(run.part("cooccur", r), table)
        return int(len(i))
    merged = run.part("bydistance", r)
    if unit.merge:
        parts = [read_distance_table(run.partial(k, r)) for k in range(unit.shards)]
        i, j, c = cooccur.merge_by_distance(parts, count.vocab_size)
        write_table(merged, distance_table(i, j, c))
    else:
        i, j, c = read_distance_table(merged)
    for window, roots in unit.targets:
        wi, wj, s = cooccur.at_window(i, j, c, window)
        table = pa.table([wi, wj, cooccur.weights(s, window)], schema=COOCCUR_SCHEMA)
        for root in roots:
            write_table(RunDir(root).part("cooccur", r), table)
    return int(len(i))


def write_concat(target: str, source, emb: np.ndarray, two_streams: bool,
                 batch_clips: int, header=None) -> None:
    """[features, emb] of one stream, read and written in blocks (bounded memory for long
    videos); the output keeps the input's name ({id}_rgb.npy, {id}_flow.npy or {id}.npy).
    `source`: the stream's .npy file, or rows(start, stop) of a stream in a container.

    The .npy header goes first, then each block's bytes with plain writes (a memory map of the
    output would keep every written page in this process's resident memory)."""
    frames = emb.shape[0]
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        for start in range(0, frames, batch_clips):
            stop = min(start + batch_clips, frames)
            rows = (source(start, stop) if callable(source) else
                    load_rows(source, start, stop, header))
            block = concat(rows, emb[start:stop], two_streams)
            if start == 0:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (frames, block.shape[1])})
            f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())


# ---------------------------------------------------------------------------------------------
# The actor

# A lost worker is not restarted by Ray (a restart that cannot be placed would hold its call
# hostage): the pool replaces it and runs its unit again on another worker; every call is
# idempotent, its files are written atomically and its marker last.
def _import_torch() -> None:
    import torch  # noqa: F401


@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class ShardWorker:
    """A run's worker, long-lived: it samples clips, tokenises and counts, merges counts and
    embeds, unit after unit and stage after stage, on one core; k-means and GloVe run on one of
    them with every core of its node (or on the GPU worker: the same class given a GPU)."""

    def __init__(self, streams: str, batch_clips: int, device: str = "cpu",
                 centroids_path: str | None = None, submitted: float | None = None,
                 backend: str = "auto", *, torch_now: bool = False):
        from threadpoolctl import threadpool_limits

        self._born = actor_start(submitted or time.time())
        # torch takes 1.8 CPU-seconds to import. A CPU worker tokenises, counts and embeds in
        # numpy, so it imports torch only when it fits k-means or GloVe (_torch). The GPU worker
        # and the worker meant to fit (`torch_now`) load it in a thread while the scan runs.
        self._torch_loading, self._torch_ready = None, False
        if device != "cpu" or torch_now:
            self._torch_loading = threading.Thread(target=_import_torch, daemon=True)
            self._torch_loading.start()
        threadpool_limits(1)  # one core per actor; also keeps results thread-independent
        self.streams = streams
        self.batch_clips = batch_clips
        self.device = device  # cpu; auto or cuda for the GPU worker
        self.backend = backend  # torch: the products of the GPU path, on whatever device
        self._codebooks: dict = {}  # path -> Codebook, the vocabularies of this run
        self._compute = None
        if centroids_path is not None:  # a missing vocabulary fails at the start
            self.codebook(centroids_path)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _torch(self) -> None:
        """torch, imported (or its loading waited for) before the first call that computes in
        it; then one core for its products too (set on the thread that computes, which is where
        OpenMP reads it)."""
        if self._torch_ready:
            return
        if self._torch_loading is not None:
            self._torch_loading.join()
            self._torch_loading = None
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
        self._torch_ready = True

    def compute_device(self) -> tuple[str, str | None]:
        """Where this worker computes: cuda when it was given a GPU that torch can use."""
        if self._compute is None:
            self._compute = pick_device(self.device)
        return self._compute

    def codebook(self, path: str) -> Codebook | NumpyCodebook:
        """The vocabulary at `path`, loaded once per worker (on its GPU, if it computes there;
        in numpy alone on a CPU worker, which then needs no torch)."""
        if path in self._codebooks:
            return self._codebooks[path]
        centers = load_npy(path, np.float32, 2)
        if self.device == "cpu" and self.backend != "torch":
            book = NumpyCodebook(centers)
        else:
            self._torch()
            import torch

            from ..algo.vocab import Codebook

            device, _ = self.compute_device()
            book = Codebook(torch.from_numpy(centers).to(device), use_numpy=self.backend != "torch")
        self._codebooks[path] = book
        return book

    def _began(self) -> float:
        """When this call's work began: the actor's start for its first call (starting it is
        work on the node too), else now."""
        began, self._born = (self._born if self._born is not None else time.time()), None
        return began

    def scan(self, unit: ScanUnit) -> Scanned:
        """The headers of a chunk of the listing (IO_THREADS in flight on object storage, small
        files read whole and checked): a Video or a Skip per entry."""
        began, retried = self._began(), s3.retries()
        found = probe(unit.entries, unit.streams)
        return Scanned(unit.chunk, found, here(began), s3.retries() - retried)

    def sample(self, unit: SampleUnit):
        """(the sampled clips, ShardStats) of a shard's training videos; with unit.draws,
        (clips, their draws, ShardStats): a smaller vocabulary's sample is then the clips whose
        draw is below its own probability (see clip_draws)."""
        began, retried = self._began(), s3.retries()
        rows, kept, skips = [], [], []

        def picked(v: Video):
            u = clip_draws(v.video_id, v.frames, unit.seed) if unit.draws else None
            mask = sample_mask(v.video_id, v.frames, unit.probability, unit.seed, u)
            clips = [load_clips(v, self.streams, s, min(s + self.batch_clips, v.frames))
                     [mask[s:s + self.batch_clips]] for s in range(0, v.frames, self.batch_clips)]
            return clips, (u[mask] if unit.draws else None)

        for v, found in prefetch(unit.videos, picked, self.batch_clips):
            if isinstance(found, BadVideo):
                skips.append(Skip(v.video_id, v.rgb_path, str(found)).to_dict())
                continue
            rows.extend(found[0])
            if unit.draws:
                kept.append(found[1])
        dim = unit.videos[0].stream_dim(self.streams)
        sample = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        stats = ShardStats(unit.shard, len(unit.videos) - len(skips), len(sample), skips=skips,
                           where=here(began), retries=s3.retries() - retried)
        if unit.draws:
            return sample, np.concatenate(kept) if kept else np.zeros(0), stats
        return sample, stats

    def tokenize(self, unit: TokenizeUnit) -> list[ShardStats]:
        """A shard read once and tokenised with each of its vocabularies that has `tokenize`
        (the others' tokens are read back); each vocabulary's tokens part, partial counts (where
        it has a `count`) and marker go under its root, the marker last. One record per
        vocabulary, in order."""
        t0, began, retried = time.perf_counter(), self._began(), s3.retries()
        fresh = [v for v in unit.vocabularies if v.tokenize]
        books = [self.codebook(v.centroids) for v in fresh]
        device = books[0].device if books else "cpu"
        is_train = {v.video_id: flag for v, flag in zip(unit.videos, unit.train)}
        ids, seqs, skips = [], [[] for _ in fresh], []
        per_video = None if unit.tokens_dir is None else RunDir(unit.tokens_dir)
        if fresh:
            for v, tokens in tokenize(unit.videos, books, self.streams, self.batch_clips):
                if isinstance(tokens, BadVideo):
                    skips.append(Skip(v.video_id, v.rgb_path, str(tokens)).to_dict())
                    continue
                ids.append(v.video_id)
                for seq, words in zip(seqs, tokens):
                    seq.append(words)
                if per_video is not None:
                    save_npy(per_video.video_tokens(v.video_id), tokens[0])
        records, fresh_seqs = [], iter(seqs)
        for vocab in unit.vocabularies:
            run = RunDir(vocab.root)
            old = None
            if vocab.tokenize:
                v_ids, v_seqs, v_skips = ids, next(fresh_seqs), skips
                write_table(vocab.tokens_part, tokens_table(v_ids, v_seqs))
            else:
                tokens = read_tokens([vocab.tokens_part])
                v_ids, v_seqs = list(tokens), list(tokens.values())
                old = ShardStats.from_dict(run.read_marker("assign", unit.shard))
                v_skips = old.skips
            trained = [s for vid, s in zip(v_ids, v_seqs) if is_train[vid]]
            pairs, window = (old.pairs, old.count_window) if old else (0, None)
            if vocab.count is not None:
                pairs = count_shard(run, unit.shard, trained, vocab.count)
                window = vocab.count.window if vocab.count.by_distance else None
            stats = ShardStats(unit.shard, len(v_ids), int(sum(len(s) for s in v_seqs)),
                               len(trained), pairs, v_skips,
                               round(time.perf_counter() - t0, 3), device, window,
                               here(began), s3.retries() - retried)
            run.mark("assign", unit.shard, stats.to_dict())
            records.append(stats)
        return records

    def reduce(self, unit: ReduceUnit) -> Reduced:
        """One partition of one vocabulary's counts, merged exactly (see ReduceUnit)."""
        began, retried = self._began(), s3.retries()
        nonzeros = reduce_partition(unit)
        return Reduced(unit.partition, nonzeros, here(began), s3.retries() - retried)

    def embed(self, unit: EmbedUnit, vectors: np.ndarray) -> ShardStats:
        """Embeddings and concatenations of one shard's videos, written block by block; then
        the shard's marker."""
        t0, began, retried = time.perf_counter(), self._began(), s3.retries()
        run = RunDir(unit.root)
        tokens = read_tokens([run.tokens_part(unit.shard)])
        written, clips, skips = 0, 0, []
        if unit.layout == "parquet":  # the tokens are all it needs: no feature is read
            todo = [v.video_id for v in unit.videos if v.video_id in tokens]
            write_table(run.embeddings_part(unit.shard),
                        clips_table(todo, [tokens[v] for v in todo], vectors))
            stats = ShardStats(unit.shard, len(todo), sum(len(tokens[v]) for v in todo),
                               seconds=round(time.perf_counter() - t0, 3), where=here(began),
                               retries=s3.retries() - retried)
            run.mark("embed", unit.shard, stats.to_dict())
            return stats

        def write(v: Video) -> int:
            """The video's concatenations, then its embeddings (written last: a video whose
            embeddings exist is done)."""
            emb = embed(tokens[v.video_id], vectors)
            # The output keeps the input's name ({id}_rgb.npy, {id}_flow.npy or {id}.npy); a
            # video of another format is named as the .npy layout would name it.
            named_by_stream = v.flow_path is not None or v.rgb_path.endswith(RGB_SUFFIX)
            for stream, path in (("rgb", v.rgb_path), ("flow", v.flow_path)):
                if path is None:
                    continue
                target = run.concat(v.video_id, stream if named_by_stream else None)
                write_concat(target, lambda a, b, s=stream: stream_rows(v, s, a, b), emb,
                             v.flow_path is not None, unit.batch_clips)
            save_npy(run.embedding(v.video_id), emb)
            return len(emb)

        # Videos skipped at assignment are recorded there; on object storage the reads and
        # writes of the next videos are in flight while one is written.
        todo = [v for v in unit.videos if v.video_id in tokens]
        remote = fs.is_uri(run.root) or any(fs.is_uri(v.rgb_path) for v in todo[:1])
        for v, done in prefetch(todo, write, unit.batch_clips, remote):
            if isinstance(done, BadVideo):  # the file changed since it was assigned
                skips.append(Skip(v.video_id, v.rgb_path, str(done)).to_dict())
                continue
            written, clips = written + 1, clips + done
        stats = ShardStats(unit.shard, written, clips, skips=skips,
                           seconds=round(time.perf_counter() - t0, 3), where=here(began),
                           retries=s3.retries() - retried)
        run.mark("embed", unit.shard, stats.to_dict())
        return stats

    def kmeans(self, config: dict, board, *samples: np.ndarray, below: float | None = None
               ) -> Fit:
        """k-means on the concatenated sample (in shard order, so independent of the workers);
        seeding and iterations are posted to `board` as they go. With `below`, `samples` is the
        shards' clips then their draws, and the sample is the clips whose draw is below it."""
        self._torch()
        from ..algo.vocab import KMeans

        began = self._began()
        cfg = TrainConfig(**config)
        if below is not None:
            half = len(samples) // 2
            # Where every draw is below (the largest K), the shard's clips are used in place.
            samples = tuple(c if (d < below).all() else c[d < below]
                            for c, d in zip(samples[:half], samples[half:]))
        device, note = pick_device(cfg.device)
        clips = sum(len(s) for s in samples)  # the parts are used in place, never concatenated
        if clips < cfg.vocab_size:
            raise VgrayError(f"--vocab-size {cfg.vocab_size} needs at least that many training "
                             f"clips in the k-means sample, got {clips}")
        t0 = time.perf_counter()
        report = Reporter(board)
        with all_cores():
            model = KMeans(cfg.vocab_size, max_iter=cfg.kmeans_iters, seed=cfg.seed,
                           device=device).fit(list(samples), progress=report)
        report.flush()
        return Fit({"inertia": model.inertia_, "inertia_per_clip": model.inertia_ / clips,
                    "sample_clips": int(clips), "iterations": model.n_iter_, "device": device,
                    "device_note": note, "precision": model.precision_,
                    "kmeans_seconds": round(time.perf_counter() - t0, 3)},
                   here(began), model.cluster_centers_)

    def glove(self, root: str, config: dict, board=None) -> Fit:
        """GloVe on the merged counts of the RUN at `root`; writes its glove/."""
        self._torch()
        from ..algo.glove import GloVe

        began = self._began()
        cfg = TrainConfig(**config)
        device, note = pick_device(cfg.device)
        run = RunDir(root)
        t0 = time.perf_counter()
        table = pa.concat_tables([read_table(p, schema=COOCCUR_SCHEMA)
                                  for p in run.files("cooccur", suffix=".parquet")])
        i, j, x = (table.column(c).to_numpy() for c in ("i", "j", "x"))
        report = Reporter(board)
        with all_cores():
            model = GloVe(cfg.dim, x_max=cfg.x_max, alpha=cfg.alpha, epochs=cfg.epochs,
                          learning_rate=cfg.learning_rate, seed=cfg.seed, device=device,
                          tol=cfg.glove_tol).fit(i, j, x, cfg.vocab_size, on_epoch=lambda e, value: report(
                              "glove", e, cfg.epochs, "epochs", f"loss {value:.5g}"))
        report.flush()
        state = {"w": model.w_, "w_context": model.w_context_, "b": model.b_,
                 "b_context": model.b_context_}
        with atomic_path(run.path("glove", "state.npz")) as tmp:
            np.savez(tmp, **state)
        write_text(run.path("glove", "loss.csv"),
                   "epoch,loss\n" + "".join(f"{e},{v!r}\n" for e, v in enumerate(model.loss_)))
        save_npy(run.path("glove", "vectors.npy"), model.vectors_)
        return Fit({"device": device, "device_note": note, "nonzeros": int(len(x)),
                    # epochs run; stopped: "converged" (before max_epochs) or "epochs"
                    "epochs": model.n_epochs_, "max_epochs": cfg.epochs,
                    "stopped": model.stop_reason_, "initial_loss": model.loss_[0],
                    # the saved state's J: the lowest of every epoch's, at kept_epoch
                    "final_loss": model.loss_[model.best_epoch_],
                    "kept_epoch": model.best_epoch_, "last_loss": model.loss_[-1],
                    "train_seconds": round(time.perf_counter() - t0, 3)}, here(began))
