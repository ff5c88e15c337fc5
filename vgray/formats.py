"""The containers FEATURES may ship in, besides one `.npy` per video and stream: one HDF5 file
(a group per video), WebDataset `.tar` shards, Parquet files (a row per video) and one `.pt`
tensor per video. Each format is read here behind the same three steps as `.npy` (corpus.py):

- list (the driver): the entries to probe, from one listing. For `.pt` these are files, as for
  `.npy`; for a container they are its parts: an HDF5 file's groups (its metadata is read), a
  directory's tar shards or Parquet files (nothing is opened);
- probe (the workers): each entry's videos, their T and D, and where their rows are;
- rows (every pass): rows [start, stop) of one stream as float32, checked finite.

A Video's `source` names its format and `rgb_key`/`flow_key` where its streams are inside the
container (an HDF5 dataset path, a tar member's data offset, a Parquet row). Memory stays bounded
by the block size: HDF5 and tar members are read by row range, a `.pt` tensor is memory-mapped,
a Parquet row is read from its row group alone (the last row group read is kept per process, as
a shard's videos come in order). Nothing is ever unpickled: `.pt` files are loaded with
`torch.load(weights_only=True)`, and anything but one plain 2-D float tensor is a recorded skip.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import io
import tarfile
import threading

import numpy as np

from . import fs
from .errors import BadVideo, StorageError, VgrayError, first_line
from .npyfile import finite

NPY, HDF5, WEBDATASET, PARQUET, PT = "npy", "hdf5", "webdataset", "parquet", "pt"
FORMATS = (NPY, HDF5, WEBDATASET, PARQUET, PT)
HDF5_SUFFIXES = (".h5", ".hdf5")
CONTAINER_SUFFIX = {WEBDATASET: ".tar", PARQUET: ".parquet", PT: ".pt", NPY: ".npy"}


def detect(root: str, forced: str | None = None) -> str:
    """The format of FEATURES: --format if given, else an HDF5 file by its suffix, else the
    directory's files (.npy first, then .pt, .tar, .parquet: the first that is there)."""
    if forced is not None:
        if forced not in FORMATS:
            raise VgrayError(f"--format must be one of {', '.join(FORMATS)}, got {forced!r}")
        return forced
    if root.lower().endswith(HDF5_SUFFIXES) and not fs.isdir(root):
        return HDF5
    if not fs.isdir(root):
        raise VgrayError(f"FEATURES {root} is not a directory")
    names = list(fs.files(root))
    for fmt in (NPY, PT, WEBDATASET, PARQUET):
        if any(n.endswith(CONTAINER_SUFFIX[fmt]) for n in names):
            return fmt
    return NPY


class RangedFile(io.RawIOBase):
    """A file on object storage as a seekable binary file: each read is one ranged GET (through
    fs.read_range, with its retries), so h5py, tarfile and pyarrow read only what they need."""

    def __init__(self, path: str, size: int | None = None):
        self.path, self.pos = path, 0
        self.size = fs.size(path) if size is None else size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        data = fs.read_range(self.path, self.pos, want)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class BlockCache:
    """Aligned blocks of files on object storage, shared by the threads of a process and kept
    least-recently-used first out: at most `blocks` of `block` bytes (64 MiB by default). HDF5
    reads its metadata (object headers, B-tree nodes) in small pieces scattered through the
    file, each thread opens the file itself, and every stage reads it again: through this cache
    each block costs one ranged GET per process while it is held, not one per read. h5py reads
    under a lock of its own, one read at a time, so a block fetched for it starts fetching the
    next `ahead` blocks in the background (videos are read in file order)."""

    def __init__(self, block: int = 2 << 20, blocks: int = 32, ahead: int = 3):
        self.block, self.blocks, self.ahead = block, blocks, ahead
        self.pool = None  # the threads that read ahead, started on first use
        self.lock, self.size_lock = threading.Lock(), threading.Lock()
        self.data: collections.OrderedDict = collections.OrderedDict()
        self.fetching: dict = {}  # (path, index) -> Event of the thread fetching it
        self.sizes: dict[str, int] = {}

    def size(self, path: str) -> int:
        """The file's size: asked once per process (the threads that open it at once wait)."""
        with self.size_lock:
            if path not in self.sizes:
                self.sizes[path] = fs.size(path)
            return self.sizes[path]

    def get(self, path: str, index: int, size: int) -> bytes:
        """Block `index` of the file; the blocks after it are read ahead once it is had (never
        after a failed read, so a storage that is down costs no extra requests)."""
        data = self._get(path, index, size)
        if self.ahead:
            self._read_ahead(path, index, size)
        return data

    def _get(self, path: str, index: int, size: int) -> bytes:
        key = (path, index)
        while True:
            with self.lock:
                if key in self.data:
                    self.data.move_to_end(key)
                    return self.data[key]
                waiting = self.fetching.get(key)
                if waiting is None:
                    mine = self.fetching[key] = threading.Event()
                    break
            waiting.wait()  # another thread is fetching it: use its block (or try again)
        return self._fetch(path, index, size, key, mine)

    def _read_ahead(self, path: str, index: int, size: int) -> None:
        last = (size - 1) // self.block
        with self.lock:
            todo = [(i, threading.Event())
                    for i in range(index + 1, min(index + self.ahead, last) + 1)
                    if (path, i) not in self.data and (path, i) not in self.fetching]
            for i, event in todo:
                self.fetching[(path, i)] = event
            if todo and self.pool is None:
                self.pool = concurrent.futures.ThreadPoolExecutor(self.ahead, "vgray-ahead")
        for i, event in todo:
            # a block it fails to read is read again by the thread that needs it (and its
            # error is reported there)
            self.pool.submit(self._fetch, path, i, size, (path, i), event, True)

    def _fetch(self, path: str, index: int, size: int, key: tuple, mine: threading.Event,
               quiet: bool = False) -> bytes | None:
        try:
            start = index * self.block
            data = fs.read_range(path, start, min(self.block, size - start))
            with self.lock:
                self.data[key] = data
                while len(self.data) > self.blocks:
                    self.data.popitem(last=False)
            return data
        except Exception:
            if quiet:
                return None
            raise
        finally:
            with self.lock:
                del self.fetching[key]
            mine.set()


BLOCKS = BlockCache()


class CachedFile(RangedFile):
    """A RangedFile whose reads are served from the process's BlockCache."""

    def __init__(self, path: str, cache: BlockCache = BLOCKS):
        self.cache = cache
        super().__init__(path, cache.size(path))

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        view, done, block = memoryview(buffer).cast("B"), 0, self.cache.block
        while done < want:
            at = self.pos + done
            data = self.cache.get(self.path, at // block, self.size)
            piece = data[at % block: at % block + want - done]
            if not piece:
                break
            view[done: done + len(piece)] = piece
            done += len(piece)
        self.pos += done
        return done


def open_file(path: str, buffer: int = 1 << 20):
    """A local file, or one on object storage read in ranged requests of `buffer` bytes."""
    if fs.is_uri(path):
        return io.BufferedReader(RangedFile(path), buffer_size=buffer)
    return open(path, "rb")


def checked(block: np.ndarray, start: int) -> np.ndarray:
    """A block as C-contiguous float32; BadVideo on NaN/inf (as corpus.load_rows)."""
    with np.errstate(over="ignore"):
        block = np.array(block, dtype=np.float32, order="C")
    if block.ndim != 2:
        raise BadVideo(f"expected a 2-D [T, D] array, got shape {block.shape}")
    return finite(block, start)


def float_shape(shape: tuple, dtype: np.dtype, what: str) -> tuple[int, int]:
    """(T, D) of a stream, or BadVideo saying why it is no [T, D] float array."""
    if dtype.kind != "f":
        raise BadVideo(f"{what}: dtype {dtype} is not a floating-point type")
    if len(shape) != 2:
        raise BadVideo(f"{what}: expected a 2-D [T, D] array, got shape {tuple(shape)}")
    if shape[0] == 0:
        raise BadVideo(f"{what}: no clips (T = 0)")
    if shape[1] == 0:
        raise BadVideo(f"{what}: zero-width features (D = 0)")
    return int(shape[0]), int(shape[1])


# ---------------------------------------------------------------------------------------------
# HDF5: one file, a group per video

def need_h5py():
    try:
        import h5py
    except ImportError:
        raise VgrayError("reading HDF5 needs h5py: pip install 'vgray[hdf5]'") from None
    return h5py


_OPEN = threading.local()


def h5_file(path: str):
    """The HDF5 file, opened once per thread (locally, or through pyarrow on object storage)."""
    files = getattr(_OPEN, "h5", None)
    if files is None:
        files = _OPEN.h5 = {}
    if path not in files:
        h5py = need_h5py()
        try:
            files[path] = h5py.File(CachedFile(path) if fs.is_uri(path) else path, "r")
        except StorageError:
            raise
        except OSError as e:
            raise VgrayError(f"cannot open the HDF5 file {path}: {e}") from None
    return files[path]


def h5_streams(group, key: str | None, flow_key: str | None) -> tuple[str, str | None]:
    """The dataset paths (inside a video's group) of its rgb and flow streams: --hdf5-key (a
    dataset, or a group holding `rgb` and `flow` datasets as MDVC's I3D file has them) and
    --hdf5-flow-key; without --hdf5-key, the group's one 2-D float dataset."""
    h5py = need_h5py()
    if key is None:
        found = [name for name, item in group.items()
                 if isinstance(item, h5py.Dataset) and item.ndim == 2 and item.dtype.kind == "f"]
        if len(found) != 1:
            raise BadVideo(f"{len(found)} 2-D float datasets in the group "
                           f"({', '.join(sorted(group)) or 'none'}); choose one with --hdf5-key")
        return found[0], flow_key
    item = group.get(key)
    if item is None:
        raise BadVideo(f"no {key!r} in the group (it has {', '.join(sorted(group)) or 'nothing'})")
    if isinstance(item, h5py.Group):  # MDVC: {id}/i3d_features/rgb and .../flow
        if "rgb" not in item:
            raise BadVideo(f"the group {key!r} has no 'rgb' dataset")
        return f"{key}/rgb", flow_key or (f"{key}/flow" if "flow" in item else None)
    return key, flow_key


def h5_rows(path: str, dataset: str, start: int, stop: int | None) -> np.ndarray:
    try:
        data = h5_file(path)[dataset]
        return checked(data[start:stop], start)
    except (BadVideo, StorageError, VgrayError):
        raise
    except (OSError, KeyError, ValueError) as e:
        raise BadVideo(f"unreadable dataset {dataset}: {e}") from None


def h5_shape(path: str, dataset: str) -> tuple[int, int]:
    try:
        item = h5_file(path)[dataset]
        return float_shape(item.shape, item.dtype, dataset)
    except (BadVideo, StorageError, VgrayError):
        raise
    except (OSError, KeyError, ValueError, AttributeError) as e:
        raise BadVideo(f"unreadable dataset {dataset}: {e}") from None


# ---------------------------------------------------------------------------------------------
# WebDataset: .tar shards of {key}.npy, or {key}.rgb.npy + {key}.flow.npy

def tar_members(path: str) -> dict[str, dict[str, tuple[int, int, bytes]]]:
    """key -> stream -> (data offset, size, the member's first bytes) of a tar shard's `.npy`
    members, read front to back in one stream (never extracted); other members are ignored."""
    found: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    try:
        raw = open_file(path, 8 << 20)  # on object storage: front to back in 8 MiB requests
        with raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".npy"):
                    continue
                base = member.name.rsplit("/", 1)[-1][: -len(".npy")]
                key, stream = base, "rgb"
                for suffix in (".rgb", ".flow"):
                    if base.endswith(suffix):
                        key, stream = base[: -len(suffix)], suffix[1:]
                head = tar.extractfile(member).read(min(member.size, 4096))
                if stream in found.get(key, {}):  # the same key twice in one shard: neither
                    found[key][stream] = (-1, 0, b"")  # is taken for the other (a skip)
                    continue
                found.setdefault(key, {})[stream] = (member.offset_data, member.size, head)
    except StorageError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise VgrayError(f"cannot read the tar shard {path}: {e}") from None
    return found


# ---------------------------------------------------------------------------------------------
# .pt: one 2-D float tensor per file, never unpickled

@functools.lru_cache(maxsize=8)
def pt_tensor(path: str):
    """The file's tensor (memory-mapped locally), loaded with weights_only=True: anything but a
    plain tensor is refused, as is any pickled object."""
    import torch

    try:
        if fs.is_uri(path):
            value = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu",
                               weights_only=True)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except StorageError:
        raise
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        first = first_line(e)
        raise BadVideo(f"not a plain tensor file (loaded with weights_only=True, never "
                       f"unpickled): {first[:200]}") from None
    if not isinstance(value, torch.Tensor):
        raise BadVideo(f"holds a {type(value).__name__}, not one tensor")
    return value


def pt_shape(path: str) -> tuple[int, int]:
    tensor = pt_tensor(path)
    if not tensor.is_floating_point():
        raise BadVideo(f"dtype {tensor.dtype} is not a floating-point type")
    return float_shape(tuple(tensor.shape), np.dtype("float32"), "tensor")


def pt_rows(path: str, start: int, stop: int | None) -> np.ndarray:
    tensor = pt_tensor(path)
    return checked(tensor[start:stop].float().numpy(), start)


# ---------------------------------------------------------------------------------------------
# Parquet: a row per video (video_id, rgb [, flow]: lists of lists of float)

_ROW_GROUP = threading.local()


def parquet_group(path: str, group: int):
    """One row group of a Parquet file (the last one read is kept per thread)."""
    import pyarrow.parquet as pq

    kept = getattr(_ROW_GROUP, "kept", None)
    if kept is not None and kept[0] == (path, group):
        return kept[1]
    try:
        table = pq.ParquetFile(open_file(path) if fs.is_uri(path) else path
                               ).read_row_group(group)
    except StorageError:
        raise
    except (OSError, ValueError) as e:
        raise BadVideo(f"unreadable Parquet row group {group}: {e}") from None
    _ROW_GROUP.kept = ((path, group), table)
    return table


def parquet_rows(path: str, where: str, stream: str, start: int, stop: int | None
                 ) -> np.ndarray:
    group, row = (int(x) for x in where.split(":"))
    column = parquet_group(path, group).column(stream)
    return checked(list_rows(column[row].values, stream), 0)[start:stop]


def list_rows(value, what: str) -> np.ndarray:
    """A list (or fixed-size list) of lists of float as [T, D]; BadVideo if it is ragged."""
    import pyarrow as pa

    if value is None:
        raise BadVideo(f"{what}: null")
    inner = value.flatten() if hasattr(value, "flatten") else None
    if inner is None or not pa.types.is_floating(inner.type):
        raise BadVideo(f"{what}: not a list of lists of float")
    frames = len(value)
    if frames == 0:
        raise BadVideo(f"{what}: no clips (T = 0)")
    lengths = value.value_lengths() if hasattr(value, "value_lengths") else None
    if lengths is not None and len(set(lengths.to_pylist())) > 1:
        raise BadVideo(f"{what}: clips of different widths")
    if inner.null_count:
        raise BadVideo(f"{what}: a null value")
    dim = len(inner) // frames
    if dim == 0:
        raise BadVideo(f"{what}: zero-width features (D = 0)")
    return inner.to_numpy(zero_copy_only=False).reshape(frames, dim)
