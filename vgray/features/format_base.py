"""What every format's reader shares: the protocol of the three steps (list, probe, rows), the
record of a stream a probe found (`Found`) and the Video or Skip it makes (`paired`), the listing
of a directory of per-video files or of containers, and the reads of a file on object storage by
range (`RangedFile`, the process's `BlockCache`). One module per format implements the protocol
(format_npy.py, format_hdf5.py, format_webdataset.py, format_parquet.py, format_pt.py); the
registry (formats.py) is the one list of them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import threading
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..files import fs
from .corpus import (SINGLE_STREAM, TWO_STREAM, Entry, Listing, Reading, Skip, Video, id_problem,
                     listing_fingerprint, outside_root, wanted_ids)
from ..errors import BadVideo, VgrayError
from .npyfile import NpyHeader, finite


@runtime_checkable
class FeatureReader(Protocol):
    """One input format, read in three steps. `listing` (the driver): the entries to probe, from
    one listing of FEATURES; `probe` (the workers): an entry's videos with their T, D and where
    their rows are, or the Skip saying why not; `rows` (every pass): rows [start, stop) of one
    stream as float32, checked finite. A fault of the storage is raised (StorageError), never a
    Skip; nothing is ever unpickled."""

    name: str  # what --format calls it
    shipped: str  # how FEATURES ships in it, as --format's help says
    # entries are containers (tar shards, Parquet files) whose videos only the probe finds; they
    # are probed one after the other, and an id may be in two of them
    container: bool
    npy_files: bool  # its videos are .npy files that other tools (BMT) read as they are

    def detects(self, root: str, names: list[str] | None) -> bool:
        """Whether FEATURES is in this format: `names`, the files of the directory `root` (None
        where `root` is no directory)."""
        ...

    def fingerprint(self, root: str, *, follow_symlinks: bool = False,
                    reading: Reading | None = None) -> str:
        """The listing fingerprint of FEATURES (corpus.listing_fingerprint): no file is opened."""
        ...

    def listing(self, root: str, streams: str, *, train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
        """FEATURES from one listing: the entries to probe and what is skipped by name alone."""
        ...

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        """Every video of one entry, each a Video or the Skip saying why not; `whole`: on object
        storage a small file may be read whole and checked (Video.checked)."""
        ...

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        """Rows [start, stop) of one stream of a video as float32, checked finite (BadVideo)."""
        ...


class Found(NamedTuple):
    """One stream of a video as a probe found it: its file, (T, D), and where its rows are in
    the file (a key inside a container, or the .npy header whose offset says it)."""

    path: str
    shape: tuple[int, int]
    key: str | None = None
    header: NpyHeader | None = None


def paired(vid: str, rgb: Found, flow: Found | None, streams: str, source: str) -> Video | Skip:
    """The Video of a stream pair of known shapes, or the Skip saying why the pair is unusable."""
    if flow is None:
        if streams != "rgb":
            return Skip(vid, rgb.path, f"no flow stream, but --streams {streams} needs one")
        return Video(vid, rgb.path, None, rgb.shape[0], rgb.shape[1], None, source, rgb.header,
                     rgb_key=rgb.key)
    if flow.shape[0] != rgb.shape[0]:
        return Skip(vid, flow.path, f"rgb has T = {rgb.shape[0]} clips but flow has "
                                    f"T = {flow.shape[0]}")
    return Video(vid, rgb.path, flow.path, rgb.shape[0], rgb.shape[1], flow.shape[1], source,
                 rgb.header, flow.header, rgb_key=rgb.key, flow_key=flow.key)


def stream_of(video: Video, stream: str) -> Found:
    """Where one stream of a listed video is: its file, (T, D), key and header."""
    if stream == "rgb":
        return Found(video.rgb_path, (video.frames, video.rgb_dim), video.rgb_key,
                     video.rgb_header)
    return Found(video.flow_path, (video.frames, video.flow_dim), video.flow_key,
                 video.flow_header)


def has_suffix(names: list[str] | None, suffix: str) -> bool:
    """Whether a directory (its file names; None: no directory) holds a file of this suffix."""
    return names is not None and any(n.endswith(suffix) for n in names)


def directory_fingerprint(root: str, suffix: str, *, follow_symlinks: bool = False,
                          reading: Reading | None = None) -> str:
    """The listing fingerprint of a directory FEATURES: its files of this suffix."""
    if not fs.isdir(root):
        raise VgrayError(f"FEATURES {root} is not a directory")
    return listing_fingerprint(fs.files(root), follow_symlinks, suffix, reading)


# ---------------------------------------------------------------------------------------------
# Listing a directory: files per video and stream, or containers

OUTSIDE = "symlink to a file outside FEATURES (--follow-symlinks uses it)"


def list_stream_files(root: str, streams: str, source: str, suffix: str, *,
                      train_ids: list[str] | None = None, follow_symlinks: bool = False,
                      reading: Reading | None = None) -> Listing:
    """A directory of files per video and stream ({id}_rgb + {id}_flow, or {id} alone, with
    this suffix) from one listing (on object storage one request per 1,000 files; no file is
    opened): the videos to probe, and the files skipped by their names alone. Ids that could
    not safely name output files, ids equal but for case, and (unless follow_symlinks) symlinks
    to files outside FEATURES are skipped with their reason."""
    if not fs.isdir(root):
        raise VgrayError(f"FEATURES {root} is not a directory")
    sizes = fs.files(root)  # one listing: names and sizes (no request per file for its size)
    names = sorted(n for n in sizes if n.endswith(suffix))
    layout = TWO_STREAM if any(n.endswith("_rgb" + suffix) for n in names) else SINGLE_STREAM
    if layout == SINGLE_STREAM and streams != "rgb":
        raise VgrayError(f"--streams {streams} needs {{id}}_flow{suffix} files, but FEATURES "
                         f"has the single-stream layout ({{id}}{suffix})")
    skips: list[Skip] = []
    rgb, flow = _by_stream(root, names, suffix, layout == TWO_STREAM, follow_symlinks, skips)
    for vid in sorted(set(flow) - set(rgb)):
        skips.append(Skip(vid, fs.join(root, flow[vid]), "flow file without an rgb file"))
    entries = _entries(root, sizes, rgb, flow, source, skips)
    found = {e.video_id for e in entries} | (set(flow) - set(rgb))
    return Listing(root, layout, entries, skips, wanted_ids(train_ids, skips), found,
                   listing_fingerprint(sizes, follow_symlinks, suffix, reading))


def _by_stream(root: str, names: list[str], suffix: str, two: bool, follow_symlinks: bool,
               skips: list[Skip]) -> tuple[dict[str, str], dict[str, str]]:
    """id -> file name of the rgb and of the flow files; a name that fits neither (in the
    two-stream layout) and a symlink out of FEATURES are skips."""
    rgb_suffix, flow_suffix = "_rgb" + suffix, "_flow" + suffix
    rgb: dict[str, str] = {}
    flow: dict[str, str] = {}
    for name in names:
        path = fs.join(root, name)
        if not follow_symlinks and outside_root(path, root):
            stem = name[: -len(suffix)]
            for end in (rgb_suffix, flow_suffix) if two else ():
                stem = name[: -len(end)] if name.endswith(end) else stem
            skips.append(Skip(stem, path, OUTSIDE))
            continue
        if not two:
            rgb[name[: -len(suffix)]] = name
        elif name.endswith(rgb_suffix):
            rgb[name[: -len(rgb_suffix)]] = name
        elif name.endswith(flow_suffix):
            flow[name[: -len(flow_suffix)]] = name
        else:
            skips.append(Skip(name[: -len(suffix)], path,
                              f"not named {{id}}{rgb_suffix} or {{id}}{flow_suffix} in a "
                              "two-stream FEATURES"))
    return rgb, flow


def _entries(root: str, sizes: dict, rgb: dict[str, str], flow: dict[str, str], source: str,
             skips: list[Skip]) -> list[Entry]:
    """An Entry per video with an rgb file, in id order; ids that cannot name output files, or
    that collide but for case, are skips (both their files)."""
    seen: dict[str, str] = {}
    entries = []
    for vid in sorted(rgb):
        problem = id_problem(vid)
        if problem is None and vid.casefold() in seen:
            problem = (f"id differs from {seen[vid.casefold()]!r} only in case (their outputs "
                       "would collide on a case-insensitive filesystem)")
        fname = flow.get(vid)
        if problem is not None:
            skips.append(Skip(vid, fs.join(root, rgb[vid]), problem))
            if fname is not None:
                skips.append(Skip(vid, fs.join(root, fname), problem))
            continue
        seen[vid.casefold()] = vid
        entries.append(Entry(vid, fs.join(root, rgb[vid]), sizes.get(rgb[vid]), source,
                             None if fname is None else fs.join(root, fname),
                             None if fname is None else sizes.get(fname)))
    return entries


def list_containers(root: str, source: str, suffix: str, *, train_ids: list[str] | None = None,
                    follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
    """A directory of containers (WebDataset tar shards, Parquet files): one entry per file,
    nothing opened; its videos are found by the probe (a tar has no index), and so is the
    layout."""
    sizes = fs.files(root)
    skips: list[Skip] = []
    entries = []
    for name in sorted(n for n in sizes if n.endswith(suffix)):
        path = fs.join(root, name)
        if not follow_symlinks and outside_root(path, root):
            skips.append(Skip(name, path, OUTSIDE))
            continue
        entries.append(Entry(name, path, sizes[name], source, reading=reading, container=True))
    return Listing(root, TWO_STREAM, entries, skips, wanted_ids(train_ids, skips), set(),
                   listing_fingerprint(sizes, follow_symlinks, suffix, reading),
                   layout_probed=True)


# ---------------------------------------------------------------------------------------------
# Reading by range: files on object storage as seekable files, rows as checked float32

class FilesReader:
    """A format that is one file per video and stream ({id}_rgb / {id}_flow, or {id} alone),
    ending in `suffix`: detected by those files, listed and fingerprinted from one listing."""

    suffix = ""
    container = False

    def detects(self, root: str, names: list[str] | None) -> bool:
        return has_suffix(names, self.suffix)

    def fingerprint(self, root: str, *, follow_symlinks: bool = False,
                    reading: Reading | None = None) -> str:
        return directory_fingerprint(root, self.suffix, follow_symlinks=follow_symlinks,
                                     reading=reading)

    def listing(self, root: str, streams: str, *, train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
        return list_stream_files(root, streams, self.name, self.suffix, train_ids=train_ids,
                                 follow_symlinks=follow_symlinks, reading=reading)


class ContainersReader(FilesReader):
    """A format that is a directory of container files ending in `suffix`, each holding many
    videos: listed as the containers (nothing opened), probed one container at a time."""

    container = True

    def listing(self, root: str, streams: str, *, train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
        return list_containers(root, self.name, self.suffix, train_ids=train_ids,
                               follow_symlinks=follow_symlinks, reading=reading)


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
    """A block as C-contiguous float32; BadVideo on NaN/inf (as npyfile.load_rows)."""
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
