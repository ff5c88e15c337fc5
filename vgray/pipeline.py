"""The stages of a run on Ray: the shard workers (sampling, assignment, reduce, embedding,
kept from the first stage to the end), k-means and GloVe on one of them or on the GPU worker,
and the run's bookkeeping.

What the cluster can provide, asking its autoscaler, placing the GPU stages and the retrying
actor pool live in cluster.py. The driver holds video metadata and small results (centroids,
vectors, per-shard stats), never the corpus: shard actors load features in blocks of
`batch_clips` clips and write their outputs themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
import zlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from . import __version__, cooccur, fs
from .cluster import (MAX_ATTEMPTS, RETRIABLE, Capacity, Demand, GpuPlan, Pool, actor_start,
                      avoiding, capacity, connect, here, node_usage, on_one_actor, pick_device,
                      plan_gpu, usage_by_type, usage_line)
from .config import TrainConfig
from .corpus import Corpus, Skip, Video, load_clips, load_rows, read_train_ids, scan
from .embed import concat, embed
from .errors import BadVideo, VgrayError
from .store import (COOCCUR_SCHEMA, PARTIAL_SCHEMA, TOKENS_SCHEMA, WORK, RunDir, RunLock, atomic_path,
                    load_npy, parquet_rows, read_table, read_tokens, save_npy, shard_name,
                    tokens_table, write_table, write_text)
from .model import load_run
from .resume import Summary, complete_train, fingerprint, make_shards, train_settings
from .live import Reporter, get_with_progress, start_board
from .progress import Progress

if TYPE_CHECKING:  # the driver does not import torch (see _versions)
    from .vocab import Codebook

log = logging.getLogger("vgray")


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


# The GPU worker: a ShardWorker given the GPU and no CPU (it may share a node whose CPUs shard
# workers hold); a lost one is replaced off the lost node, within --gpu-wait (on_one_actor).
GPU_WORKER = {"num_cpus": 0, "num_gpus": 1}


@contextlib.contextmanager
def _all_cores():
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


def _clips(videos: list[Video]) -> int:
    return sum(v.frames for v in videos)


def partial_paths(run: RunDir, shard: int, reducers: int) -> list[str]:
    """The partial co-occurrence files of one shard, one per reducer."""
    return [run.path(WORK, "cooccur", f"{shard_name(shard)}-{r:03d}.parquet") for r in range(reducers)]


def tokenize(videos: list[Video], codebooks: list[Codebook], streams: str, batch_clips: int,
             device: str):
    """(video, [int32 tokens per codebook] or the BadVideo that stopped it) for each video, in
    order; the features are read once whatever the number of codebooks (`vgray sweep` tokenises
    with every vocabulary in one pass).

    Short videos are gathered into blocks of about `batch_clips` clips so each product is one
    large matmul; a video longer than that is loaded and assigned block by block on its own, so
    memory stays bounded by `batch_clips` whatever T is."""
    import torch

    def words(block: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(block).to(device)
        return [book.nearest(x)[0].to(torch.int32).cpu().numpy() for book in codebooks]

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

    for v in videos:
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

# A lost worker is not restarted by Ray (a restart that cannot be placed would hold its call
# hostage): the pool replaces it and runs its unit again on another worker; every call is
# idempotent, its files are written atomically and its marker last.
@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class ShardWorker:
    """A run's worker, long-lived: it samples clips, assigns words and counts pairs, merges counts
    and embeds, shard after shard and stage after stage, on one core; k-means and GloVe run on
    one of them with every core of its node (or on the GPU worker: the same class given a GPU).

    One process per worker for the whole run: torch is imported, its thread pools are set up
    and (on a GPU) CUDA is initialised once, not once per stage."""

    def __init__(self, streams: str, batch_clips: int, device: str = "cpu",
                 centroids_path: str | None = None, submitted: float | None = None,
                 backend: str = "auto"):
        import torch
        from threadpoolctl import threadpool_limits

        self._born = actor_start(submitted or time.time())
        torch.set_num_threads(1)  # one core per actor; also keeps results thread-independent
        threadpool_limits(1)
        self.streams = streams
        self.batch_clips = batch_clips
        self.device = device  # cpu; auto or cuda for the GPU worker
        self.backend = backend  # torch: the products of the GPU path, on whatever device
        self._codebooks: dict = {}  # path -> Codebook, the vocabularies of this run
        self._last_book = None
        self._compute = None
        if centroids_path is not None:  # a missing vocabulary fails at the start
            self.codebook(centroids_path)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def compute_device(self) -> tuple[str, str | None]:
        """Where this worker computes: cuda when it was given a GPU that torch can use."""
        if self._compute is None:
            self._compute = pick_device(self.device)
        return self._compute

    def codebook(self, path: str) -> Codebook:
        """The vocabulary at `path`, loaded once per worker (on its GPU, if it computes there)."""
        import torch

        if path not in self._codebooks:
            device, _ = self.compute_device()
            from .vocab import Codebook

            c = torch.from_numpy(load_npy(path, np.float32, 2)).to(device)
            self._codebooks[path] = Codebook(c, use_numpy=self.backend != "torch")
        self._last_book = self._codebooks[path]
        return self._last_book

    def _began(self) -> float:
        """When this call's work began: the actor's start for its first call (starting it is
        work on the node too), else now."""
        began, self._born = (self._born if self._born is not None else time.time()), None
        return began

    def sample(self, videos: list[Video], probability: float, seed: int, draws: bool = False):
        """(the sampled clips, {skips, where}) of a shard's training videos; with `draws`,
        (clips, their draws, {skips, where}): a smaller vocabulary's sample is then the clips
        whose draw is below its own probability (see clip_draws)."""
        began = self._began()
        rows, kept, skips = [], [], []
        for v in videos:
            u = clip_draws(v.video_id, v.frames, seed) if draws else None
            mask = sample_mask(v.video_id, v.frames, probability, seed, u)
            try:
                picked = [load_clips(v, self.streams, s, min(s + self.batch_clips, v.frames))
                          [mask[s:s + self.batch_clips]]
                          for s in range(0, v.frames, self.batch_clips)]
            except BadVideo as e:
                skips.append(Skip(v.video_id, v.rgb_path, str(e)).to_dict())
                continue
            rows.extend(picked)
            if draws:
                kept.append(u[mask])
        dim = videos[0].stream_dim(self.streams)
        sample = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        info = {"skips": skips, "where": here(began)}
        if draws:
            return sample, np.concatenate(kept) if kept else np.zeros(0), info
        return sample, info

    def assign(self, out: str, shard: int, videos: list[Video], train: list[bool],
               tokens_part: str, counts: dict | None, tokens_dir: str | None,
               centroids_path: str | None = None) -> dict:
        """Tokens of a shard -> tokens part (+ per-video .npy); partial counts of its
        training videos -> one file per reducer; then the shard's marker."""
        t0, began = time.perf_counter(), self._began()
        run = RunDir(out)
        book = self.codebook(centroids_path) if centroids_path else self._last_book
        device = str(book.centers.device)
        ids, seqs, trained, skips = [], [], [], []
        is_train = {v.video_id: t for v, t in zip(videos, train)}
        for v, tokens in tokenize(videos, [book], self.streams, self.batch_clips, device):
            if isinstance(tokens, BadVideo):
                skips.append(Skip(v.video_id, v.rgb_path, str(tokens)).to_dict())
                continue
            tokens = tokens[0]
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
        where = here(began)
        stats = {"shard": shard, "node": where["node"], "device": device.split(":")[0],
                 "videos": len(ids), "clips": int(sum(len(t) for t in seqs)),
                 "train_videos": len(trained), "pairs": pairs, "skips": skips,
                 "seconds": round(time.perf_counter() - t0, 3), "where": where}
        run.mark("assign", shard, stats)
        return stats

    def sweep_assign(self, *args) -> dict:
        """`vgray sweep`: one shard tokenised with several vocabularies (see sweep.assign_shard)."""
        from .sweep import assign_shard

        return assign_shard(self, *args)

    def sweep_reduce(self, *args) -> dict:
        """`vgray sweep`: one partition's counts per distance merged, windows derived."""
        from .sweep import reduce_partition

        return reduce_partition(self, *args)

    def reduce(self, out: str, partition: int, shards: int, reducers: int, vocab_size: int,
               window: int) -> dict:
        """Exact sum of every shard's partial counts for rows i with i mod R == partition."""
        began = self._began()
        run = RunDir(out)
        parts = []
        for k in range(shards):
            t = read_table(partial_paths(run, k, reducers)[partition], schema=PARTIAL_SCHEMA)
            parts.append(tuple(t.column(c).to_numpy() for c in ("i", "j", "s")))
        i, j, s = cooccur.merge(parts, vocab_size)
        table = pa.table([i, j, cooccur.weights(s, window)], schema=COOCCUR_SCHEMA)
        write_table(run.path("cooccur", f"part-{partition:05d}.parquet"), table)
        return {"partition": partition, "nonzeros": int(len(i)), "where": here(began)}

    def embed(self, out: str, shard: int, videos: list[Video], tokens_part: str,
              vectors: np.ndarray, batch_clips: int) -> dict:
        """Embeddings and concatenations of one shard's videos, written block by block."""
        t0, began = time.perf_counter(), self._began()
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
                 "seconds": round(time.perf_counter() - t0, 3), "where": here(began)}
        run.mark("embed", shard, stats)
        return stats

    def kmeans(self, config: dict, board, *samples: np.ndarray, below: float | None = None
               ) -> dict:
        """k-means on the concatenated sample (in shard order, so independent of the workers);
        seeding and iterations are posted to `board` as they go. With `below`, `samples` is the
        shards' clips then their draws, and the sample is the clips whose draw is below it."""
        from .vocab import KMeans

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
        with _all_cores():
            model = KMeans(cfg.vocab_size, cfg.kmeans_iters, cfg.seed, device).fit(
                list(samples), progress=report)
        report.flush()
        return {"centroids": model.cluster_centers_, "inertia": model.inertia_,
                "inertia_per_clip": model.inertia_ / clips, "sample_clips": int(clips),
                "iterations": model.n_iter_, "device": device, "device_note": note,
                "precision": model.precision_,
                "kmeans_seconds": round(time.perf_counter() - t0, 3), "where": here(began)}

    def glove(self, out: str, config: dict, board=None) -> dict:
        """GloVe on the merged counts of RUN; writes glove/."""
        from .glove import GloVe

        began = self._began()
        cfg = TrainConfig(**config)
        device, note = pick_device(cfg.device)
        run = RunDir(out)
        t0 = time.perf_counter()
        table = pa.concat_tables([read_table(p, schema=COOCCUR_SCHEMA)
                                  for p in run.files("cooccur", suffix=".parquet")])
        i, j, x = (table.column(c).to_numpy() for c in ("i", "j", "x"))
        report = Reporter(board)
        with _all_cores():
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
        return {"device": device, "device_note": note, "nonzeros": int(len(x)),
                "epochs": cfg.epochs, "initial_loss": model.loss_[0],
                "final_loss": model.loss_[-1],
                "train_seconds": round(time.perf_counter() - t0, 3), "where": here(began)}


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

def _versions() -> dict:
    """Versions of what made a RUN (torch's read from its metadata: the driver never imports
    torch, which would cost it seconds at every start)."""
    import importlib.metadata

    import pyarrow

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"vgray": __version__, "vgray_location": os.path.dirname(os.path.abspath(__file__)),
            "python": platform.python_version(), "ray": ray.__version__,
            "torch": torch_version, "numpy": np.__version__, "pyarrow": pyarrow.__version__}


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
        self.capacity: Capacity | None = None
        self.demand: Demand | None = None
        self.gpu = GpuPlan(False, False, 0.0)  # train sets it; assign and embed use no GPU
        self.hold_gpu = False  # a GPU stage is still to come: keep asking for its node
        self.pool: Pool | None = None  # the run's shard workers (see start_workers)
        self.gpu_worker = None  # the worker given a GPU, kept from k-means to GloVe
        self.gpu_computes = False  # ... and its torch can use that GPU (it then assigns too)
        self._make_worker = None

    def board(self):
        """The actor that a long remote task posts its progress to: started on first use (or
        early, see start_workers), emptied for each task."""
        if self._board is None:
            self._board = start_board()
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._board.clear.remote(), timeout=10)
        return self._board

    def __enter__(self) -> "Job":
        self._created = not fs.is_uri(self.run.root) and not os.path.exists(self.run.root)
        self.capacity = capacity()
        self.demand = Demand(self.capacity)
        return self

    def __exit__(self, kind, *exc) -> None:
        self.release_gpu_worker()
        if self.pool is not None:
            self.pool.close()
        self.demand.clear()  # every node may go back once idle
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

    def finish_stage(self, name: str, seconds: float, where: list | None = None,
                     **figures) -> None:
        """Record a finished stage; `where` is [(kind of work, here() of it)] for its nodes."""
        stage = {"status": "done", "seconds": round(seconds, 3), **figures}
        if where is not None:
            stage["nodes"] = node_usage([(kind, w) for kind, w in where if w])
        self.manifest["stages"][name] = stage
        self.save()

    # --- the cluster ----------------------------------------------------------------------
    def start_workers(self, cfg: TrainConfig, gpu_now: bool = False, train: bool = False) -> None:
        """The run's shard workers, started as the first stage needs them and kept to the end.
        With `gpu_now` and a GPU plan, the GPU worker is asked for at once, so that its node
        boots, its process starts and torch loads while clips are sampled; with `train` (k-means
        or GloVe to come), the progress board starts now too, not when k-means waits for it."""
        def make(gpus: int = 0, avoid: tuple = ()):
            if gpus:
                return ShardWorker.options(**GPU_WORKER, **avoiding(avoid)).remote(
                    cfg.streams, cfg.batch_clips, cfg.device, None, time.time())
            return ShardWorker.options(**avoiding(avoid)).remote(
                cfg.streams, cfg.batch_clips, "cpu", None, time.time())

        self._make_worker = make
        self.pool = Pool(make)
        if gpu_now and self.gpu.request and self.gpu_worker is None:
            self.gpu_worker = make(1)
        if train and self._board is None:
            self._board = start_board()

    def release_gpu_worker(self) -> None:
        """Nothing of vgray stays on the GPU node once the GPU stages are over."""
        if self.gpu_worker is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.gpu_worker)
        self.gpu_worker, self.gpu_computes = None, False

    def workers(self, stage: str, requested: int | None, units: int) -> int:
        """Workers for `units` shards: --workers, else as many as the work needs up to the CPUs
        the cluster has or its autoscaler can add; the autoscaler is asked for them."""
        n = max(1, min(requested or int(self.capacity.cpus()), units))
        self.demand.ask(stage, cpus=max(n, len(self.pool)), gpu=self.hold_gpu)
        return n

    def run_shards(self, stage: str, requested: int | None, units: list[int], submit, on_done,
                   gpu: bool = False) -> None:
        """Every unit of a stage on the pool (grown to what the stage needs); with `gpu`, the
        GPU worker takes units too where its GPU computes."""
        n = self.workers(stage, requested, len(units))
        lent = [self.gpu_worker] if gpu and self.gpu_computes and self.gpu_worker else []
        if not self.pool.run(n, units, submit, on_done, extra=lent) and lent:
            self.gpu_worker, self.gpu_computes = None, False  # lost: GloVe asks for another

    def on_trainer(self, what: str, call, where: list) -> dict:
        """call(actor) for k-means or GloVe: on the GPU worker where the GPU plan says so (it is
        kept for the next GPU stage), else on a shard worker that then uses every core of its
        node (see on_one_actor for the wait and the retries); its node and those of attempts
        lost with their node are added to `where`."""
        def make(gpus, avoid):
            if gpus:
                if self.gpu_worker is None or avoid:
                    self.release_gpu_worker()
                    self.gpu_worker = self._make_worker(1, avoid)
                return self.gpu_worker
            return self.pool.take(avoid)  # alive, and off the nodes found lost

        def keep(actor, ok):
            if actor is self.gpu_worker:
                if not ok:
                    self.release_gpu_worker()
            elif ok:
                self.pool.give(actor)
            else:
                self.pool.discard(actor)

        lost = []
        try:
            result = on_one_actor(make, self.gpu, call, what, self.echo, lost, keep)
        finally:
            where += [(f"{what} (lost)", w) for w in lost]
        where.append((what, result.pop("where")))
        if self.gpu_worker is not None and result["device"] == "cuda":
            self.gpu_computes = True
        return result

    def fit_glove(self, root: str, cfg: TrainConfig, where: list) -> dict:
        """GloVe on the counts of the RUN at `root` (writes its glove/), on the trainer that
        on_trainer picks, its epochs shown live."""
        def fit(actor):
            board = self.board()
            return get_with_progress(actor.glove.remote(root, cfg.to_dict(), board), board,
                                     self.echo)

        return self.on_trainer("glove", fit, where)

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
        made_from = fingerprint(corpus)
        before = self.manifest.get("corpus", {}).get("fingerprint")
        if before is not None and before != made_from:
            raise VgrayError(f"FEATURES {features} changed since {self.run.root} was started; "
                             "use another --out (or delete it to start over)")
        self.manifest["corpus"] = {
            "layout": corpus.layout, "videos": len(corpus.videos),
            "clips": int(sum(v.frames for v in corpus.videos)),
            "train_videos": len(corpus.train_videos), "rgb_dim": corpus.rgb_dim,
            "flow_dim": corpus.flow_dim, "skipped_at_scan": len(corpus.skips),
            "missing_train_ids": len(corpus.missing_train_ids), "fingerprint": made_from}
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
                    tokens_part(k), counts, tokens_dir, centroids_path)

            progress = Progress(self.echo, "assign", sum(_clips(shards[k]) for k in todo), "clips")

            def on_done(k, stats, finished):
                if cfg.strict and stats["skips"]:
                    s = stats["skips"][0]
                    raise VgrayError(f"{s['video_id']}: {s['reason']} ({s['path']}) [--strict]")
                progress.advance(_clips(shards[k]))

            self.run_shards("assign", cfg.workers, todo, submit, on_done, gpu=True)
            progress.close()
        markers = [self.run.read_marker("assign", k) for k in range(len(shards))]
        clips = sum(m["clips"] for m in markers)
        self.finish_stage("assign", time.perf_counter() - t,
                          [("assign", m.get("where")) for m in markers], shards=len(shards),
                          videos=sum(m["videos"] for m in markers), clips=clips,
                          skipped=sum(len(m["skips"]) for m in markers))
        self.echo(f"assign: {clips} clips tokenised ({time.perf_counter() - t:.1f} s)")

    def embed(self, shards: list[list[Video]], vectors: np.ndarray, tokens_part,
              batch_clips: int, workers: int | None = None) -> None:
        todo = [k for k in range(len(shards)) if not self.run.done("embed", k)]
        self.work["embed_shards"] = len(todo)
        t = time.perf_counter()
        if todo:
            ref = ray.put(vectors)
            progress = Progress(self.echo, "embed", sum(len(shards[k]) for k in todo), "videos")
            self.run_shards(
                "embed", workers, todo,
                lambda actor, k: actor.embed.remote(self.run.root, k, shards[k], tokens_part(k),
                                                    ref, batch_clips),
                lambda k, stats, finished: progress.advance(len(shards[k])))
            progress.close()
        markers = [self.run.read_marker("embed", k) for k in range(len(shards))]
        videos = sum(m["videos"] for m in markers)
        self.finish_stage("embed", time.perf_counter() - t,
                          [("embed", m.get("where")) for m in markers], shards=len(shards),
                          videos=videos,
                          skipped=sum(len(m["skips"]) for m in markers))
        self.echo(f"embed: {videos} videos ({time.perf_counter() - t:.1f} s)")

    # --- the end --------------------------------------------------------------------------
    def finish(self, shards: list[list[Video]], embedded: bool) -> Summary:
        """Write skipped.jsonl (every input not used, and why) and close the manifest."""
        skips = skip_records(self.corpus, [self.run.read_marker(stage, k)["skips"]
                                           for stage in (("assign", "embed") if embedded else ("assign",))
                                           for k in range(len(shards))])
        write_skips(self.run.path("skipped.jsonl"), skips)
        stage = self.manifest["stages"]["embed" if embedded else "assign"]
        seconds = time.perf_counter() - self.t0
        self.manifest["status"] = "complete"
        self.manifest["counts"] = {"videos": stage["videos"], "skipped": len(skips),
                                   "clips": self.manifest["stages"]["assign"]["clips"]}
        self.manifest["last_invocation"] = {"seconds": round(seconds, 3), "work": self.work}
        self.demand.clear()  # the run's work is over: every node may go back once idle
        self.manifest["nodes"] = usage_by_type(self.manifest["stages"])
        self.manifest["cluster"] = {**self.capacity.to_dict(), "gpu": dataclasses.asdict(self.gpu),
                                    "asked": self.demand.history}
        self.save()
        if self.manifest["nodes"]:
            self.echo(usage_line(self.manifest["nodes"]))
        return Summary(self.run.root, stage["videos"], self.manifest["counts"]["clips"],
                       len(skips), seconds, dict(self.work))


def skip_records(corpus: Corpus, found: list[list[dict]]) -> list[dict]:
    """Every input not used, and why: the scan's skips, those the workers `found` (one list per
    marker) and training ids without files; sorted as skipped.jsonl holds them."""
    skips = [s.to_dict() for s in corpus.skips]
    for records in found:
        skips.extend(records)
    skips.extend({"video_id": vid, "path": None, "reason": "training id has no feature files"}
                 for vid in corpus.missing_train_ids)
    return sorted(skips, key=lambda s: (s["video_id"], s["path"] or ""))


def write_skips(path: str, skips: list[dict]) -> None:
    """skipped.jsonl; left alone when its content is unchanged (sync tools copy what changes)."""
    text = "".join(json.dumps(s) + "\n" for s in skips)
    if not fs.exists(path) or fs.read_bytes(path) != text.encode("utf-8"):
        write_text(path, text)


def vocab_line(cfg: TrainConfig, result: dict, seconds: float) -> str:
    return (f"vocab: K={cfg.vocab_size} on {result['sample_clips']} clips, inertia/clip "
            f"{result['inertia_per_clip']:.4g}, {result['iterations']} iterations, "
            f"{_device_line(result)} ({seconds:.1f} s)")


def glove_line(what: str, result: dict, seconds: float) -> str:
    return (f"{what}: {result['epochs']} epochs on {result['nonzeros']} non-zeros, loss "
            f"{result['initial_loss']:.4g} -> {result['final_loss']:.4g}, "
            f"{_device_line(result)} ({seconds:.1f} s)")


def train(features: str, out: str, config: TrainConfig, train_ids: str | None = None,
          echo=None) -> Summary:
    """Every stage of `vgray train`: scan, vocab, assign + partial counts, reduce, GloVe, embed."""
    done = complete_train(features, out, config, train_ids, echo)
    if done is not None:  # nothing to do: no Ray, no file written
        return done
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    connect()
    with Job(out, echo) as job:
        return _train(job, features, config, train_ids, ids)


def _train(job: "Job", features: str, config: TrainConfig, train_ids: str | None,
           ids: list[str] | None) -> Summary:
    settings = train_settings(config, features, ids)
    job.open({"command": "train", "features": features,
              "train_ids_file": fs.normalize(train_ids) if train_ids else None,
              "config": config.to_dict()}, settings)
    run, cfg = job.run, config
    job.gpu = plan_gpu(cfg.device, job.capacity, cfg.gpu_wait)  # fails here if cuda cannot be had
    corpus = job.scan(features, cfg.streams, cfg.strict, ids, follow_symlinks=cfg.follow_symlinks)
    if not corpus.train_videos:
        raise VgrayError("none of the --train-ids has usable features")
    shards = make_shards(corpus.videos, cfg.shard_clips)
    # From the vocabulary to GloVe the run keeps asking for a GPU node: it boots while clips are
    # sampled, and is not given back and launched again between k-means and GloVe.
    job.hold_gpu = job.gpu.request and not job.stage_done("glove")
    centroids_path = run.path("vocab", "centroids.npy")
    # k-means to run: its GPU worker is asked for now (else GloVe asks when it starts).
    vocab_left = not (job.stage_done("vocab") and fs.exists(centroids_path))
    job.start_workers(cfg, gpu_now=vocab_left, train=vocab_left or not job.stage_done("glove"))

    _vocab_stage(job, cfg, corpus, shards, centroids_path)
    tokens_part = lambda k: run.path("tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
    _cooccur_stages(job, cfg, shards, centroids_path, tokens_part)
    _glove_stage(job, cfg)
    job.hold_gpu = False
    job.release_gpu_worker()
    vectors = load_npy(run.path("glove", "vectors.npy"), np.float32, 2)
    job.embed(shards, vectors, tokens_part, cfg.batch_clips, cfg.workers)
    summary = job.finish(shards, embedded=True)
    summary.figures = {k: job.manifest["stages"][k] for k in ("vocab", "cooccur", "glove")}
    return summary


def _device_line(result: dict) -> str:
    """Where a GPU stage computed; why not on the GPU it was given is a warning of its own."""
    if result.get("device_note"):
        log.warning("%s; it ran on CPU", result["device_note"])
        return f"on {result['device']} (its GPU is not usable by torch)"
    return f"on {result['device']}"


def _vocab_stage(job: Job, cfg: TrainConfig, corpus: Corpus, shards: list[list[Video]],
                 centroids_path: str) -> None:
    """Shard actors sample training clips; one k-means actor fits the codebook."""
    job.work["vocab"] = 0
    if job.stage_done("vocab") and fs.exists(centroids_path):
        return
    # Whatever was computed from an earlier vocabulary must not be mixed with the new one.
    job.invalidate(job.run.path(WORK), job.run.path("cooccur"), job.run.path("glove"))
    t = time.perf_counter()

    def save(cfg: TrainConfig, result: dict, where: list) -> None:
        save_npy(centroids_path, result.pop("centroids"))
        job.work["vocab"] = 1
        job.finish_stage("vocab", time.perf_counter() - t, where, **result)
        job.echo(vocab_line(cfg, result, time.perf_counter() - t))

    fit_vocabularies(job, [cfg], corpus, shards, save)


def fit_vocabularies(job: Job, configs: list[TrainConfig], corpus: Corpus,
                     shards: list[list[Video]], save) -> None:
    """Shard actors sample the training clips once; k-means fits each config's vocabulary on its
    sample, one after the other; save(cfg, result, where) as each is fitted.

    One config (`vgray train`) samples with its own probability. Several (`vgray sweep`) sample
    with the largest and keep each clip's draw: a config's sample is then exactly the clips
    `vgray train` with its settings would draw (draw < its own probability), in the same order."""
    first = configs[0]
    train_clips = sum(v.frames for v in corpus.train_videos)
    chance = [min(1.0, c.sample_size / train_clips) for c in configs]
    draws = len(configs) > 1
    train_shards = [[v for v in s if corpus.is_train(v.video_id)] for s in shards]
    train_shards = [s for s in train_shards if s]
    left = list(range(len(configs)))

    def on_done(k, info, finished):
        skips = info["skips"]
        if first.strict and skips:
            raise VgrayError(f"{skips[0]['video_id']}: {skips[0]['reason']} "
                             f"({skips[0]['path']}) [--strict]")
        where.append(("sample", info["where"]))
        progress.advance(_clips(train_shards[k]))

    for attempt in range(1, MAX_ATTEMPTS + 1):
        samples, kept, where = {}, {}, []
        progress = Progress(job.echo, "vocab: sampling", sum(map(_clips, train_shards)), "clips")

        def submit(actor, k):
            if draws:
                samples[k], kept[k], info = actor.sample.options(num_returns=3).remote(
                    train_shards[k], max(chance), first.seed, True)
            else:
                samples[k], info = actor.sample.options(num_returns=2).remote(
                    train_shards[k], chance[0], first.seed)
            return info

        job.run_shards("vocab", first.workers, list(range(len(train_shards))), submit, on_done)
        progress.close()
        order = range(len(train_shards))  # shard order, not finish order
        ordered = [samples[k] for k in order] + ([kept[k] for k in order] if draws else [])
        try:
            while left:
                n = left[0]
                job.demand.ask("vocab: k-means", cpus=len(job.pool), gpu=job.gpu.request)

                def fit(actor):
                    board = job.board()
                    return get_with_progress(actor.kmeans.remote(
                        configs[n].to_dict(), board, *ordered, below=chance[n] if draws else None),
                        board, job.echo)

                result = job.on_trainer("kmeans", fit, where)
                save(configs[n], result, where)
                where = []  # the sampling is counted once, with the first fit
                left.pop(0)
            return
        except RETRIABLE as e:  # a sample was lost with its node: draw it again
            if attempt == MAX_ATTEMPTS:
                raise VgrayError(f"k-means failed {attempt} times; last: {type(e).__name__}") from e
            log.warning("k-means sample lost (%s); sampling again", type(e).__name__)


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
    progress = Progress(job.echo, "cooccur: reduce", len(todo), "partitions")
    where = []

    def on_done(r, stats, finished):
        where.append(("reduce", stats["where"]))
        progress.advance(1)

    if todo:
        job.run_shards("reduce", cfg.workers, todo, lambda actor, r: actor.reduce.remote(
            run.root, r, len(shards), cfg.reducers, cfg.vocab_size, cfg.window), on_done)
    progress.close()
    nonzeros = sum(parquet_rows(p) for p in run.files("cooccur", suffix=".parquet"))
    _remove_tree(run.path(WORK, "cooccur"))  # partial counts are merged for good
    if todo or not job.stage_done("cooccur"):
        job.invalidate(run.path("glove"))
        job.finish_stage("cooccur", time.perf_counter() - t, where, nonzeros=nonzeros,
                         reducers=cfg.reducers)
    job.echo(f"cooccur: {nonzeros} non-zeros ({time.perf_counter() - t:.1f} s)")


def _glove_stage(job: Job, cfg: TrainConfig) -> None:
    """The GloVe actor trains on the merged counts and writes glove/."""
    job.work["glove"] = 0
    if job.stage_done("glove") and fs.exists(job.run.path("glove", "vectors.npy")):
        return
    job.invalidate(job.run.path(WORK, "embed"))  # embeddings of older vectors
    t = time.perf_counter()
    job.demand.ask("glove", cpus=len(job.pool), gpu=job.gpu.request)

    where = []
    result = job.fit_glove(job.run.root, cfg, where)
    job.work["glove"] = 1
    job.finish_stage("glove", time.perf_counter() - t, where, **result)
    job.echo(glove_line("glove", result, time.perf_counter() - t))


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
    job.start_workers(cfg)
    centroids_path = RunDir(run_dir).path("vocab", "centroids.npy")
    if command == "assign":
        tokens_part = lambda k: job.run.path(WORK, "tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
        job.assign(shards, cfg, centroids_path, tokens_part, None, tokens_dir=job.run.root)
        _merge_tokens([tokens_part(k) for k in range(len(shards))], job.run.path("tokens.parquet"))
        return job.finish(shards, embedded=False)
    tokens_part = lambda k: job.run.path("tokens", f"part-{shard_name(k)}.parquet")  # noqa: E731
    job.assign(shards, cfg, centroids_path, tokens_part, None)
    job.embed(shards, vectors, tokens_part, cfg.batch_clips, cfg.workers)
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
