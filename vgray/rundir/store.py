"""The run directory: atomic writes, Parquet tables, completion markers, the manifest, and a
finished RUN loaded for use (below both the model and the stages).

Every file is written under a temporary name in its final directory and renamed when complete,
so a crash never leaves a partial file under a final name. A shard of work is done when its
marker exists (written last); a re-run only does the shards whose markers are missing, found
from one listing of the stage's markers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..files import fs
from ..errors import VgrayError
from .manifest import Manifest

MANIFEST = "manifest.json"
# The stages of a complete `vgray train` RUN, in the order they run (and are shown).
TRAIN_STAGES = ("scan", "vocab", "assign", "cooccur", "glove", "embed")
WORK = ".work"  # shard markers and partial counts; kept so that a re-run can resume

TOKENS_SCHEMA = pa.schema([("video_id", pa.string()), ("tokens", pa.list_(pa.int32()))])
COOCCUR_SCHEMA = pa.schema([("i", pa.int32()), ("j", pa.int32()), ("x", pa.float64())])
PARTIAL_SCHEMA = pa.schema([("i", pa.int32()), ("j", pa.int32()), ("s", pa.int64())])


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary local path; it becomes `path` only if the block succeeds (a rename
    beside it locally, one upload for a URI: an object appears only when complete)."""
    if fs.is_uri(path):
        ext = os.path.splitext(fs.basename(path))[1]
        with tempfile.TemporaryDirectory(prefix="vgray-") as tmpdir:
            tmp = os.path.join(tmpdir, "part" + ext)
            yield tmp
            fs.upload(tmp, path)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(os.path.dirname(path), f".{base}.tmp-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)


def load_npy(path: str, dtype=None, ndim: int | None = None) -> np.ndarray:
    """Load a model array safely and check what it is before use."""
    try:
        array = np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise VgrayError(f"cannot load {path}: {e}") from None
    if ndim is not None and array.ndim != ndim:
        raise VgrayError(f"{path} should be {ndim}-D, is {array.ndim}-D")
    if dtype is not None and array.dtype != dtype:
        raise VgrayError(f"{path} should be {np.dtype(dtype)}, is {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise VgrayError(f"{path} holds non-finite values (NaN or inf): the model is corrupt")
    return array


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path: str, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str):
    return json.loads(fs.read_bytes(path).decode("utf-8"))


def copy_file(source: str, target: str) -> None:
    """`target` becomes a copy of `source`, atomically: a hard link where both are local files
    on one file system (a later atomic write to either replaces its name, never the shared
    content), else a copy."""
    if not fs.is_uri(source) and not fs.is_uri(target):
        with atomic_path(target) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        return
    write_bytes(target, fs.read_bytes(source))


def distance_table(i: np.ndarray, j: np.ndarray, c: np.ndarray) -> pa.Table:
    """Per-distance co-occurrence counts (cooccur.count_by_distance): columns i, j, d1..dW."""
    return pa.table({"i": pa.array(i, pa.int32()), "j": pa.array(j, pa.int32()),
                     **{f"d{d + 1}": pa.array(c[:, d], pa.int64()) for d in range(c.shape[1])}})


def read_distance_table(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = read_table(path)
    width = len(t.column_names) - 2
    c = np.stack([t.column(f"d{d + 1}").to_numpy() for d in range(width)], axis=1) if len(t) else \
        np.zeros((0, width), np.int64)
    return t.column("i").to_numpy(), t.column("j").to_numpy(), c.astype(np.int64, copy=False)


def write_table(path: str, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _parquet_source(path: str):
    """A local path as it is; a URI's bytes in one read (the run's tables are small)."""
    return pa.BufferReader(fs.read_bytes(path)) if fs.is_uri(path) else path


def read_table(path: str, schema: pa.Schema | None = None) -> pa.Table:
    return pq.read_table(_parquet_source(path), schema=schema)


def parquet_row_count(path: str) -> int:
    """Rows in a Parquet file, from its footer."""
    return pq.ParquetFile(_parquet_source(path)).metadata.num_rows


def tokens_table(video_ids: list[str], tokens: list[np.ndarray]) -> pa.Table:
    offsets = np.zeros(len(tokens) + 1, dtype=np.int32)
    np.cumsum([len(t) for t in tokens], out=offsets[1:])
    flat = np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.Table.from_arrays([pa.array(video_ids, pa.string()), column], schema=TOKENS_SCHEMA)


def clips_schema(dim: int) -> pa.Schema:
    """A row per clip: its video, its place in the video, its word and that word's vector."""
    return pa.schema([("video_id", pa.string()), ("clip", pa.int32()), ("token", pa.int32()),
                      ("embedding", pa.list_(pa.float32(), dim))])


def clips_table(video_ids: list[str], tokens: list[np.ndarray], vectors: np.ndarray) -> pa.Table:
    """The clips of these videos (tokens per video) as rows of clips_schema."""
    dim = vectors.shape[1]
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    flat = np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, np.int32)
    ids = np.repeat(np.array(video_ids, dtype=object), lengths)
    clip = (np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]) if len(lengths)
            else np.zeros(0, np.int32))
    emb = pa.FixedSizeListArray.from_arrays(
        pa.array(np.asarray(vectors, np.float32)[flat].reshape(-1)), dim)
    return pa.table([pa.array(ids, pa.string()), pa.array(clip), pa.array(flat), emb],
                    schema=clips_schema(dim))


def read_tokens(paths: list[str]) -> dict[str, np.ndarray]:
    """video_id -> int32 tokens from token Parquet files."""
    out: dict[str, np.ndarray] = {}
    for path in paths:
        table = read_table(path, schema=TOKENS_SCHEMA)
        column = table.column("tokens").combine_chunks()
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
        offsets = column.offsets.to_numpy()
        for k, vid in enumerate(table.column("video_id").to_pylist()):
            out[vid] = flat[offsets[k]:offsets[k + 1]]
    return out


def shard_name(index: int) -> str:
    return f"{index:05d}"


class RunDir:
    """Paths of one run directory, and its markers."""

    def __init__(self, root: str):
        self.root = fs.normalize(root)

    def path(self, *parts: str) -> str:
        return fs.join(self.root, *parts)

    def files(self, *parts: str, suffix: str = "") -> list[str]:
        """Sorted paths of the files in a directory of the run whose names end with suffix."""
        folder = self.path(*parts)
        return [fs.join(folder, n) for n in sorted(fs.listdir(folder))
                if n.endswith(suffix) and not n.startswith(".")]

    def part(self, folder: str, partition: int) -> str:
        """Partition r of a reduced table: cooccur/part-r, bydistance/part-r."""
        return self.path(folder, f"part-{partition:05d}.parquet")

    def tokens_part(self, shard: int, *, staged: bool = False) -> str:
        """A shard's tokens: tokens/part-{shard}.parquet; `staged`, under the work folder (vgray
        assign merges them into one tokens.parquet)."""
        name = f"part-{shard_name(shard)}.parquet"
        return self.path(WORK, "tokens", name) if staged else self.path("tokens", name)

    def tokens_parts(self) -> list[str]:
        """Every shard's tokens part there is, sorted."""
        return self.files("tokens", suffix=".parquet")

    def video_tokens(self, video_id: str) -> str:
        """One video's tokens as vgray assign writes them: {id}.npy."""
        return self.path(f"{video_id}.npy")

    @property
    def embeddings_dir(self) -> str:
        return self.path("embeddings")

    @property
    def concat_dir(self) -> str:
        return self.path("concat")

    def embedding(self, video_id: str) -> str:
        """One video's embeddings (--embeddings files): embeddings/{id}.npy."""
        return self.path("embeddings", f"{video_id}.npy")

    def embeddings_part(self, shard: int | None = None) -> str:
        """A shard's embeddings table (--embeddings parquet): embeddings/part-{shard}.parquet;
        without a shard, the pattern of every part."""
        return self.path("embeddings", f"part-{'*' if shard is None else shard_name(shard)}"
                                       ".parquet")

    def concat(self, video_id: str, stream: str | None) -> str:
        """One stream's features and embeddings side by side: concat/{id}_{stream}.npy, or
        concat/{id}.npy for a video named without a stream (stream None: the single-stream
        layout, or a container's video without flow)."""
        return self.path("concat", f"{video_id}.npy" if stream is None
                         else f"{video_id}_{stream}.npy")

    def partial(self, shard: int, partition: int) -> str:
        """One shard's partial counts for one reducer (deleted once merged)."""
        return self.path(WORK, "cooccur", f"{shard_name(shard)}-{partition:03d}.parquet")

    def partials_listed(self) -> set[tuple[int, int]]:
        """(shard, partition) of every partial count file there is, from one listing."""
        found = set()
        for n in fs.listdir(self.path(WORK, "cooccur")):
            stem, _, ext = n.partition(".")
            shard, _, partition = stem.partition("-")
            if ext == "parquet" and shard.isdigit() and partition.isdigit():
                found.add((int(shard), int(partition)))
        return found

    def marker(self, stage: str, shard: int) -> str:
        return self.path(WORK, stage, shard_name(shard) + ".json")

    def done(self, stage: str, shard: int) -> bool:
        return fs.exists(self.marker(stage, shard))

    def done_shards(self, stage: str) -> set[int]:
        """The shards of a stage whose markers exist, from one listing of its marker folder (on
        object storage one request, not one per shard)."""
        names = fs.listdir(self.path(WORK, stage))
        return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}

    def mark(self, stage: str, shard: int, stats: dict) -> None:
        write_json(self.marker(stage, shard), stats)

    def read_marker(self, stage: str, shard: int) -> dict:
        return read_json(self.marker(stage, shard))

    @property
    def manifest_path(self) -> str:
        return self.path(MANIFEST)

    def read_manifest(self) -> Manifest | None:
        """The RUN's manifest (None where there is none); one line if it is unreadable or a
        field of it is wrong."""
        try:
            data = read_json(self.manifest_path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise VgrayError(f"{self.manifest_path} is unreadable: {e}") from None
        try:
            return Manifest.from_dict(data)
        except VgrayError as e:
            raise VgrayError(f"{self.manifest_path} is unreadable: {e}") from None

    def skips(self) -> list[dict]:
        """The records of RUN/skipped.jsonl (none if it is not there)."""
        path = self.path("skipped.jsonl")
        if not fs.exists(path):
            return []
        return [json.loads(line) for line in fs.read_bytes(path).decode("utf-8").splitlines()
                if line.strip()]

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.manifest_path, manifest.to_dict())


class RunLock:
    """One vgray invocation at a time per output directory: RUN/.lock.

    Locally the lock file is created atomically (O_EXCL) and names its host, pid and start. It is
    taken over when its process is gone (same host) or when its heartbeat (the file is touched
    every HEARTBEAT s while held) is older than STALE s, so a crashed run never leaves it stuck.
    On object storage there is no atomic create: the same check is best effort.
    """

    HEARTBEAT = 20.0
    STALE = 120.0

    def __init__(self, root: str):
        self.path = fs.join(root, ".lock")
        self._stop = None

    def _holder(self) -> tuple[dict, float] | None:
        """The lock's content and age in seconds, or None if there is no lock."""
        try:
            if fs.is_uri(self.path):
                info = fs.stat(self.path)
                if info is None:
                    return None
                age = time.time() - info["mtime"].timestamp() if info["mtime"] else 0.0
                data = fs.read_bytes(self.path)
            else:
                age = time.time() - os.path.getmtime(self.path)
                with open(self.path, "rb") as f:
                    data = f.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(data.decode("utf-8")), age
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}, age  # being written: held if fresh

    def _stale(self, holder: dict, age: float) -> bool:
        if age > self.STALE:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        body = json.dumps(me).encode("utf-8")
        for _ in range(3):
            held = self._holder()
            if held is not None:
                holder, age = held
                if not self._stale(holder, age):
                    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
                           if holder else "another process")
                    raise VgrayError(f"{fs.dirname(self.path)} is in use by another vgray "
                                     f"({who}); wait for it to end or stop it")
                self._remove_stale()
                continue
            if fs.is_uri(self.path):
                write_bytes(self.path, body)
                break
            fs.makedirs(fs.dirname(self.path))
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue  # someone else was faster: look again
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            break
        else:
            raise VgrayError(f"could not lock {self.path}")
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop, body), daemon=True).start()

    def _remove_stale(self) -> None:
        try:
            if fs.is_uri(self.path):
                fs.remove(self.path)
            else:  # rename first: of two processes taking over, only one succeeds
                aside = f"{self.path}.stale-{uuid.uuid4().hex}"
                os.rename(self.path, aside)
                os.remove(aside)
        except FileNotFoundError:
            pass

    def _beat(self, stop: threading.Event, body: bytes) -> None:
        while not stop.wait(self.HEARTBEAT):
            with contextlib.suppress(OSError):
                if fs.is_uri(self.path):
                    write_bytes(self.path, body)
                else:
                    os.utime(self.path)

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        with contextlib.suppress(OSError):
            if fs.is_uri(self.path):
                fs.remove(self.path)
            else:
                os.remove(self.path)


def load_run(run_dir: str, need_vectors: bool) -> tuple[Manifest, np.ndarray, np.ndarray | None]:
    """The manifest, centroids and (optionally) vectors of a finished RUN, checked before use."""
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    if manifest is not None and manifest.command == "sweep":
        raise VgrayError(f"{run_dir} is a vgray sweep: each combination in it is a RUN "
                         f"({run.path('K{K}-w{W}-d{D}')}; see {run.path('sweep.csv')})")
    if manifest is None or manifest.command != "train":
        raise VgrayError(f"{run_dir} is not a vgray train run (no manifest.json)")
    needed = ("vocab", "glove") if need_vectors else ("vocab",)
    missing = [s for s in needed if not manifest.stage_done(s)]
    if missing:
        raise VgrayError(f"{run_dir} is incomplete (stage {missing[0]} not done); finish it "
                         "with vgray train first")
    cfg = manifest.config
    if cfg is None:
        raise VgrayError(f"{run.manifest_path} is unreadable: manifest field config is missing")
    centroids = load_npy(run.path("vocab", "centroids.npy"), np.float32, 2)
    if centroids.shape[0] != cfg.vocab_size:
        raise VgrayError(f"{run.path('vocab', 'centroids.npy')} has {centroids.shape[0]} words, "
                         f"the manifest says {cfg.vocab_size}")
    vectors = None
    if need_vectors:
        vectors = load_npy(run.path("glove", "vectors.npy"), np.float32, 2)
        if vectors.shape != (cfg.vocab_size, cfg.dim):
            raise VgrayError(f"{run.path('glove', 'vectors.npy')} has shape {vectors.shape}, "
                             f"expected {(cfg.vocab_size, cfg.dim)}")
    return manifest, centroids, vectors
