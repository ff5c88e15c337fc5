"""Find the videos of a FEATURES directory and load their clip features safely.

Two-stream layout: `{id}_rgb.npy` with an optional `{id}_flow.npy`. Single-stream layout (no
`*_rgb.npy` at all): every `{id}.npy` is one video. Arrays are `[T, D]` of a float dtype.
The driver lists FEATURES (`list_videos`: names and sizes, one request per 1,000 files on object
storage, no file opened); the headers are read where the work runs (`probe`, a chunk of the
listing at a time on the shard workers), and `assemble` makes the Corpus of what they found.
On object storage a header costs one request, and a file of up to WHOLE_FILE_BYTES is read
whole in that request and checked (`Video.checked`): the later passes then read only the
streams they use. Arrays are memory-mapped (locally) or read in row blocks (one ranged read at
the offset the scan found), so a worker's memory is bounded by the block size, never by a
video's length; a fault of the storage is a StorageError, never a skip.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import formats, fs
from .errors import BadVideo, StorageError, VgrayError

RGB_SUFFIX = "_rgb.npy"
FLOW_SUFFIX = "_flow.npy"
NPY_SUFFIX = ".npy"
TWO_STREAM = "two-stream"
SINGLE_STREAM = "single-stream"
# Reads in flight per process on object storage: a request costs tens of milliseconds there,
# so a few dozen in flight keep a stage bound by bandwidth, not latency (S3 allows ~5,500 GETs a
# second per prefix; 64 per worker x 64 workers stays below it at 30 ms per request).
IO_THREADS = 64
HEADER_BYTES = 4096  # read with the header: every .npy header vgray meets fits (~128 bytes)
# On object storage a file up to this size is read whole by the scan's one request: at a cloud's
# ~30 ms per request and ~50-100 MB/s per connection, 1 MiB more costs less than another round
# trip, and the whole file checked there spares every later pass the read of a stream it does not
# use (a two-stream video's flow, clustering rgb) - with the default --streams rgb, a video costs
# 2 requests fewer.
WHOLE_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class NpyHeader:
    shape: tuple
    fortran_order: bool
    dtype: np.dtype
    offset: int


@dataclass(frozen=True, slots=True)
class Video:
    """One video: its id, the files of its streams, its clip count T and widths D, and (once
    scanned) the headers of its files, so that a block is read without reading them again;
    `checked`: every stream was read whole by the scan and holds only finite values (a pass then
    reads only the streams it uses). Slotted: the driver holds one per video of the corpus."""

    video_id: str
    rgb_path: str
    flow_path: str | None
    frames: int
    rgb_dim: int
    flow_dim: int | None
    rgb_header: NpyHeader | None = field(default=None, compare=False, repr=False)
    flow_header: NpyHeader | None = field(default=None, compare=False, repr=False)
    checked: bool = field(default=False, compare=False, repr=False)
    # where the streams are inside a container (formats.py): its format and each stream's key
    source: str = field(default="npy", compare=False, repr=False)
    rgb_key: str | None = field(default=None, compare=False, repr=False)
    flow_key: str | None = field(default=None, compare=False, repr=False)

    def stream_dim(self, streams: str) -> int:
        return {"rgb": self.rgb_dim, "flow": self.flow_dim or 0,
                "rgb+flow": self.rgb_dim + (self.flow_dim or 0)}[streams]


def total_clips(videos: list[Video]) -> int:
    """Clips of these videos, all together."""
    return sum(v.frames for v in videos)


@dataclass(frozen=True)
class Skip:
    """An input that was not used, and why."""

    video_id: str
    path: str | None
    reason: str

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "path": self.path, "reason": self.reason}


@dataclass
class Corpus:
    """The usable videos of FEATURES (sorted by id) and the inputs skipped while scanning."""

    root: str
    layout: str
    videos: list[Video]
    skips: list[Skip] = field(default_factory=list)
    rgb_dim: int | None = None
    flow_dim: int | None = None
    train_ids: set[str] | None = None  # None: every video trains
    missing_train_ids: list[str] = field(default_factory=list)
    listing: str | None = None  # listing_fingerprint of FEATURES as it was scanned

    def is_train(self, video_id: str) -> bool:
        return self.train_ids is None or video_id in self.train_ids

    @property
    def train_videos(self) -> list[Video]:
        return [v for v in self.videos if self.is_train(v.video_id)]


def _read(path: str, start: int, length: int) -> bytes:
    """Bytes of a file; a missing or unreadable file is a BadVideo, a fault of the storage (on
    a URI) a StorageError."""
    try:
        return fs.read_range(path, start, length)
    except StorageError:
        raise
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None


def read_header(path: str, size: int | None = None) -> NpyHeader:
    """Read and check a `.npy` header without reading (or unpickling) the array: one read of
    its first HEADER_BYTES (`size`, the file's size, as the listing gave it; else it is asked)."""
    if size is None:
        size = _size(path)
    head = _read(path, 0, HEADER_BYTES)
    return parse_header(head, size, lambda need: _read(path, 0, need))


def _size(path: str) -> int:
    try:
        return fs.size(path)
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except StorageError:
        raise
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None


def parse_header(head: bytes, size: int, more=None) -> NpyHeader:
    """The header of a `.npy` file of `size` bytes from its first bytes `head`, checked (a 2-D
    float array, not truncated); more(n) gives the first n bytes where the header is longer."""
    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise BadVideo(f"unsupported .npy format version {version[0]}.{version[1]}")
        if version == (2, 0) and len(head) >= 12 and more is not None:
            need = 12 + int.from_bytes(head[8:12], "little")  # a header longer than was read
            if need > len(head) and size >= need:
                f = io.BytesIO(more(need))
                np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    except BadVideo:
        raise
    except Exception as e:  # numpy raises ValueError/SyntaxError/... on garbage headers
        raise BadVideo(f"not a valid .npy file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if dtype.hasobject:
        raise BadVideo("object array (would need unpickling); refused")
    if dtype.kind != "f" or dtype.fields is not None:
        raise BadVideo(f"dtype {dtype} is not a floating-point type")
    if len(shape) != 2:
        raise BadVideo(f"expected a 2-D [T, D] array, got shape {tuple(shape)}")
    frames, dim = shape
    if frames == 0:
        raise BadVideo("no clips (T = 0)")
    if dim == 0:
        raise BadVideo("zero-width features (D = 0)")
    expected = offset + frames * dim * dtype.itemsize
    if size < expected:
        raise BadVideo(f"truncated: {size} bytes, the header declares {expected}")
    return NpyHeader(tuple(shape), bool(fortran), _canonical(dtype), offset)


@functools.lru_cache(maxsize=64)
def _dtype(text: str) -> np.dtype:
    return np.dtype(text)


def _canonical(dtype: np.dtype) -> np.dtype:
    """One dtype object per kind of float (the driver holds a header per file of the corpus)."""
    return _dtype(dtype.str)


def all_finite(data: bytes, head: NpyHeader) -> bool:
    """Whether a whole `.npy` file's array (its bytes `data`) holds only values finite in
    float32, as load_rows requires of every block."""
    frames, dim = head.shape
    array = np.frombuffer(data, dtype=head.dtype, count=frames * dim, offset=head.offset)
    with np.errstate(over="ignore"):
        return bool(np.isfinite(array.astype(np.float32, copy=False)).all())


def load_rows(path: str, start: int = 0, stop: int | None = None,
              header: NpyHeader | None = None) -> np.ndarray:
    """Rows [start, stop) of a `.npy` file as C-contiguous float32; raise BadVideo on NaN/inf.

    Local files are memory-mapped; on object storage only the rows' byte range is fetched, in
    one request where the `header` (as the scan read it) is given."""
    try:
        if fs.is_uri(path):
            block = _read_remote_rows(path, start, stop, header or read_header(path))
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
                block = np.array(array[start:stop], dtype=np.float32, order="C")  # a copy, not the map
    except (BadVideo, StorageError):
        raise
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None
    except (ValueError, EOFError) as e:  # the file changed since its header was read
        raise BadVideo(f"not a valid .npy file: {e}") from None
    if not np.isfinite(block).all():
        bad = int(np.argmax(~np.isfinite(block).all(axis=1))) + start
        raise BadVideo(f"non-finite value (NaN or inf, or beyond float32's range) in clip {bad}")
    return block


def _read_remote_rows(path: str, start: int, stop: int | None, head: NpyHeader) -> np.ndarray:
    frames, dim = head.shape
    stop = frames if stop is None else min(stop, frames)
    item = head.dtype.itemsize
    if head.fortran_order:  # columns are contiguous: the whole array has to be read
        want = frames * dim * item
        data = _read(path, head.offset, want)
        if len(data) < want:
            raise BadVideo(f"truncated: {head.offset + len(data)} bytes, the header declares "
                           f"{head.offset + want}")
        array = np.frombuffer(data, dtype=head.dtype).reshape((dim, frames)).T[start:stop]
    else:
        want = (stop - start) * dim * item
        data = _read(path, head.offset + start * dim * item, want)
        if len(data) < want:
            raise BadVideo(f"truncated: the file ends before clip {stop} (changed since it "
                           "was scanned?)")
        array = np.frombuffer(data, dtype=head.dtype).reshape((stop - start, dim))
    with np.errstate(over="ignore"):
        return np.array(array, dtype=np.float32, order="C")


def stream_rows(video: Video, stream: str, start: int = 0, stop: int | None = None
                ) -> np.ndarray:
    """Rows [start, stop) of one stream of a video, whatever its format."""
    path = video.rgb_path if stream == "rgb" else video.flow_path
    header = video.rgb_header if stream == "rgb" else video.flow_header
    key = video.rgb_key if stream == "rgb" else video.flow_key
    if video.source == formats.NPY:
        return load_rows(path, start, stop, header)
    if video.source == formats.WEBDATASET:  # an .npy member at its offset in the tar
        rows = _read_remote_rows(path, start, stop, header)
        return formats.checked(rows, start)
    if video.source == formats.HDF5:
        return formats.h5_rows(path, key, start, stop)
    if video.source == formats.PT:
        return formats.pt_rows(path, start, stop)
    return formats.parquet_rows(path, key, stream, start, stop)


def load_clips(video: Video, streams: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Clips [start, stop) of the features that are clustered: rgb, flow, or both side by side.

    Every stream of the video is read and checked, clustered or not: a video is used whole or
    skipped whole. A stream the scan already read whole and checked (`Video.checked`) is not
    read again where it is not clustered.
    """
    if streams == "rgb":
        rgb = stream_rows(video, "rgb", start, stop)
        if video.flow_path is not None and not video.checked:
            stream_rows(video, "flow", start, stop)
        return rgb
    if video.flow_path is None:
        raise BadVideo(f"no flow file, but --streams {streams} needs one")
    flow = stream_rows(video, "flow", start, stop)
    if streams == "flow":
        return flow
    return np.concatenate([stream_rows(video, "rgb", start, stop), flow], axis=1)


@dataclass(frozen=True)
class Reading:
    """How FEATURES is read: its format (None: detected, formats.detect) and, for HDF5, the
    keys of the datasets in each video's group (--hdf5-key, --hdf5-flow-key)."""

    format: str | None = None
    hdf5_key: str | None = None
    hdf5_flow_key: str | None = None


def reading_of(manifest: dict, features: str | None = None) -> Reading:
    """How a RUN read its FEATURES (its config, or for `vgray embed`/`assign` its own record);
    for another FEATURES than the RUN's, the format is detected."""
    if features is not None and fs.normalize(features) != manifest.get("features"):
        return Reading()
    given = manifest.get("reading") or manifest.get("config") or {}
    return Reading(given.get("input_format"), given.get("hdf5_key"), given.get("hdf5_flow_key"))


def listing_fingerprint(sizes: dict[str, int | None], follow_symlinks: bool = False,
                        suffix: str = NPY_SUFFIX, reading: Reading | None = None) -> str:
    """What one listing of FEATURES says of it: every feature file's name and size (a file
    added, removed, renamed or of another length changes it), under the scan's own settings."""
    h = hashlib.sha256(b"follow-symlinks" if follow_symlinks else b"")
    if reading is not None and reading != Reading():
        h.update(repr(reading).encode())
    for name in sorted(n for n in sizes if n.endswith(suffix)):
        h.update(f"\0{name}\0{sizes[name]}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def list_features(root: str, follow_symlinks: bool = False, reading: Reading | None = None
                  ) -> str:
    """The listing fingerprint of FEATURES, from one listing: no file is opened (the no-op
    check of a run at a million videos reads no header)."""
    fmt = formats.detect(root, reading.format if reading else None)
    if fmt == formats.HDF5:
        return _hdf5_fingerprint(root, reading)
    if not fs.isdir(root):
        raise VgrayError(f"FEATURES {root} is not a directory")
    return listing_fingerprint(fs.files(root), follow_symlinks, formats.CONTAINER_SUFFIX[fmt],
                               reading)


def _hdf5_fingerprint(path: str, reading: Reading | None) -> str:
    info = fs.stat(path)
    if info is None:
        raise VgrayError(f"FEATURES {path} does not exist")
    return listing_fingerprint({fs.basename(path): info["size"]}, False, "", reading)


def read_train_ids(path: str) -> list[str]:
    """Training ids from a JSON list, or the keys of a JSON object (ActivityNet `train.json`)."""
    try:
        data = json.loads(fs.read_bytes(path).decode("utf-8"))
    except OSError as e:
        raise VgrayError(f"cannot read --train-ids {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VgrayError(f"--train-ids {path} is not valid JSON: {e}") from None
    ids = list(data.keys()) if isinstance(data, dict) else data
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise VgrayError(f"--train-ids {path} must be a JSON list of ids or an object keyed by id")
    return ids


MAX_ID_BYTES = 200  # output names add at most a few characters to the id; file names stop at 255


def id_problem(video_id: str) -> str | None:
    """Why an id cannot name output files (it could escape --out or collide), or None."""
    if not video_id:
        return "empty video id"
    if video_id.startswith("."):
        return "id starts with '.' (hidden or relative path)"
    if "/" in video_id or "\\" in video_id:
        return "id contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        return "id contains a control character"
    if len(video_id.encode("utf-8", "surrogateescape")) > MAX_ID_BYTES:
        return f"id longer than {MAX_ID_BYTES} bytes"
    return None


def _outside(path: str, root: str) -> bool:
    """Whether a local path is a symlink whose target lies outside root."""
    if fs.is_uri(path) or not os.path.islink(path):
        return False
    target, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([target, base]) != base


def _mode(values: list[int]) -> int | None:
    if not values:
        return None
    counts = collections.Counter(values)
    # Most common width; ties go to the smaller width so the choice never depends on file order.
    return min(counts, key=lambda d: (-counts[d], d))


@dataclass(frozen=True, slots=True)
class Entry:
    """A video as one listing of FEATURES has it: its files and their sizes, nothing read. In
    an HDF5 file it is a group (`key`); a WebDataset tar shard or a Parquet file is one entry
    for all its videos (`container`, video_id its name), found by the probe."""

    video_id: str
    rgb_path: str
    rgb_size: int | None
    flow_path: str | None = None
    flow_size: int | None = None
    source: str = "npy"
    key: str | None = None
    reading: Reading | None = None
    container: bool = False


@dataclass
class Listing:
    """What one listing of FEATURES says: its layout, the videos whose headers are to be read
    (sorted by id), what is already skipped, the training ids asked for and the fingerprint."""

    root: str
    layout: str
    entries: list[Entry]
    skips: list[Skip]
    wanted: set[str] | None
    found: set[str]  # every id with a file, usable or not (for the missing training ids)
    fingerprint: str
    source: str = "npy"  # the format (formats.py); a container's ids are known once probed

    @property
    def containers(self) -> bool:
        return any(e.container for e in self.entries)


def _wanted(train_ids: list[str] | None, skips: list[Skip]) -> set[str] | None:
    if train_ids is None:
        return None
    wanted = set()
    for tid in train_ids:
        problem = id_problem(tid)
        if problem is None:
            wanted.add(tid)
        else:
            skips.append(Skip(tid, None, f"training id rejected: {problem}"))
    return wanted


def list_videos(root: str, streams: str = "rgb", train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
    """FEATURES from one listing (on object storage one request per 1,000 files; no file is
    opened): the videos to probe, and the files skipped by their names alone. Ids that could
    not safely name output files, ids equal but for case, and (unless follow_symlinks) symlinks
    to files outside FEATURES are skipped with their reason. An HDF5 FEATURES is one file whose
    groups are listed; WebDataset and Parquet FEATURES list their container files."""
    fmt = formats.detect(root, reading.format if reading else None)
    if fmt == formats.HDF5:
        return _list_hdf5(root, streams, train_ids, reading)
    if fmt in (formats.WEBDATASET, formats.PARQUET):
        return _list_containers(root, fmt, streams, train_ids, follow_symlinks, reading)
    ext = formats.CONTAINER_SUFFIX[fmt]
    rgb_suffix, flow_suffix = "_rgb" + ext, "_flow" + ext
    if not fs.isdir(root):
        raise VgrayError(f"FEATURES {root} is not a directory")
    sizes = fs.files(root)  # one listing: names and sizes (no request per file for its size)
    names = sorted(n for n in sizes if n.endswith(ext))
    layout = TWO_STREAM if any(n.endswith(rgb_suffix) for n in names) else SINGLE_STREAM
    if layout == SINGLE_STREAM and streams != "rgb":
        raise VgrayError(f"--streams {streams} needs {{id}}_flow{ext} files, but FEATURES has "
                         f"the single-stream layout ({{id}}{ext})")
    skips: list[Skip] = []
    rgb: dict[str, str] = {}
    flow: dict[str, str] = {}
    for name in names:
        path = fs.join(root, name)
        if not follow_symlinks and _outside(path, root):
            stem = name[: -len(ext)]
            for suffix in (rgb_suffix, flow_suffix) if layout == TWO_STREAM else ():
                stem = name[: -len(suffix)] if name.endswith(suffix) else stem
            skips.append(Skip(stem, path, "symlink to a file outside FEATURES (--follow-symlinks "
                                          "uses it)"))
            continue
        if layout == SINGLE_STREAM:
            rgb[name[: -len(ext)]] = name
        elif name.endswith(rgb_suffix):
            rgb[name[: -len(rgb_suffix)]] = name
        elif name.endswith(flow_suffix):
            flow[name[: -len(flow_suffix)]] = name
        else:
            skips.append(Skip(name[: -len(ext)], path,
                              f"not named {{id}}{rgb_suffix} or {{id}}{flow_suffix} in a "
                              "two-stream FEATURES"))
    for vid in sorted(set(flow) - set(rgb)):
        skips.append(Skip(vid, fs.join(root, flow[vid]), "flow file without an rgb file"))
    seen: dict[str, str] = {}
    entries = []
    for vid in sorted(rgb):  # ids that cannot name output files, or that collide but for case
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
        entries.append(Entry(vid, fs.join(root, rgb[vid]), sizes.get(rgb[vid]),
                             None if fname is None else fs.join(root, fname),
                             None if fname is None else sizes.get(fname), fmt))
    found = {e.video_id for e in entries} | (set(flow) - set(rgb))
    wanted = _wanted(train_ids, skips)
    return Listing(root, layout, entries, skips, wanted, found,
                   listing_fingerprint(sizes, follow_symlinks, ext, reading), fmt)


def _list_hdf5(path: str, streams: str, train_ids: list[str] | None,
               reading: Reading | None) -> Listing:
    """An HDF5 file's groups, one per video (its metadata is read here, no dataset)."""
    fingerprint = _hdf5_fingerprint(path, reading)
    reading = reading or Reading(formats.HDF5)
    h5py = formats.need_h5py()
    try:
        names = sorted(formats.h5_file(path).keys())
    except VgrayError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises many kinds on a broken file
        raise VgrayError(f"cannot read the HDF5 file {path}: {e}") from None
    skips: list[Skip] = []
    entries = []
    for name in names:
        item = formats.h5_file(path).get(name)
        if not isinstance(item, h5py.Group):
            skips.append(Skip(name, f"{path}#{name}", "not a group (one group per video)"))
            continue
        problem = id_problem(name)
        if problem is not None:
            skips.append(Skip(name, f"{path}#{name}", problem))
            continue
        entries.append(Entry(name, path, None, None, None, formats.HDF5, name, reading))
    two = reading.hdf5_flow_key is not None or streams != "rgb"
    found = {e.video_id for e in entries}
    return Listing(path, TWO_STREAM if two else SINGLE_STREAM, entries, skips,
                   _wanted(train_ids, skips), found, fingerprint, formats.HDF5)


def _list_containers(root: str, fmt: str, streams: str, train_ids: list[str] | None,
                     follow_symlinks: bool, reading: Reading | None) -> Listing:
    """A directory of WebDataset tar shards or Parquet files: one entry per container; its
    videos are found by the probe (a tar has no index)."""
    ext = formats.CONTAINER_SUFFIX[fmt]
    sizes = fs.files(root)
    skips: list[Skip] = []
    entries = []
    for name in sorted(n for n in sizes if n.endswith(ext)):
        path = fs.join(root, name)
        if not follow_symlinks and _outside(path, root):
            skips.append(Skip(name, path, "symlink to a file outside FEATURES (--follow-symlinks "
                                          "uses it)"))
            continue
        entries.append(Entry(name, path, sizes[name], None, None, fmt, None, reading, True))
    return Listing(root, TWO_STREAM, entries, skips, _wanted(train_ids, skips), set(),
                   listing_fingerprint(sizes, follow_symlinks, ext, reading), fmt)





def _stream(path: str, size: int | None, whole: bool) -> tuple[NpyHeader, bool]:
    """A stream file's header, and whether the file was read whole and found finite: on object
    storage one request either way (the whole file where it is small)."""
    if size is None:
        size = _size(path)
    if whole and size <= WHOLE_FILE_BYTES:
        data = _read(path, 0, size)  # shorter than listed: the file changed, told as truncated
        head = parse_header(data[:HEADER_BYTES], len(data), lambda need: data[:need])
        return head, all_finite(data, head)
    return read_header(path, size), False


def probe_one(entry: Entry, streams: str, whole: bool = False) -> Video | Skip:
    """The Video of a listed entry from its headers, or the Skip saying why it cannot be used;
    with `whole`, small files are read whole and checked (Video.checked)."""
    if entry.source == formats.HDF5:
        return _probe_hdf5(entry, streams)
    if entry.source == formats.PT:
        return _probe_pt(entry, streams)
    vid = entry.video_id
    try:
        head, rgb_ok = _stream(entry.rgb_path, entry.rgb_size, whole)
    except BadVideo as e:
        return Skip(vid, entry.rgb_path, str(e))
    fdim, fhead, flow_ok = None, None, True
    if entry.flow_path is not None:
        try:
            fhead, flow_ok = _stream(entry.flow_path, entry.flow_size, whole)
        except BadVideo as e:
            return Skip(vid, entry.flow_path, f"flow: {e}")
        if fhead.shape[0] != head.shape[0]:
            return Skip(vid, entry.flow_path, f"rgb has T = {head.shape[0]} clips but flow has "
                                              f"T = {fhead.shape[0]}")
        fdim = fhead.shape[1]
    elif streams != "rgb":
        return Skip(vid, entry.rgb_path, f"no flow file, but --streams {streams} needs one")
    return Video(vid, entry.rgb_path, entry.flow_path, head.shape[0], head.shape[1], fdim, head,
                 fhead, rgb_ok and flow_ok)


def _paired(vid: str, rgb_path: str, flow_path: str | None, rgb: tuple, flow: tuple | None,
            streams: str, source: str, keys: tuple = (None, None), headers: tuple = (None, None)
            ) -> Video | Skip:
    """The Video of a stream pair of known shapes, or the Skip saying why the pair is unusable."""
    if flow is None:
        if streams != "rgb":
            return Skip(vid, rgb_path, f"no flow stream, but --streams {streams} needs one")
        return Video(vid, rgb_path, None, rgb[0], rgb[1], None, headers[0], None, False, source,
                     keys[0], None)
    if flow[0] != rgb[0]:
        return Skip(vid, flow_path, f"rgb has T = {rgb[0]} clips but flow has T = {flow[0]}")
    return Video(vid, rgb_path, flow_path, rgb[0], rgb[1], flow[1], headers[0], headers[1],
                 False, source, keys[0], keys[1])


def _probe_hdf5(entry: Entry, streams: str) -> Video | Skip:
    reading = entry.reading or Reading(formats.HDF5)
    vid, where = entry.video_id, f"{entry.rgb_path}#{entry.key}"
    try:
        group = formats.h5_file(entry.rgb_path)[entry.key]
        rgb_key, flow_key = formats.h5_streams(group, reading.hdf5_key, reading.hdf5_flow_key)
        rgb = formats.h5_shape(entry.rgb_path, f"{entry.key}/{rgb_key}")
        flow = None
        if flow_key is not None:
            if flow_key not in group:
                return Skip(vid, where, f"flow: no {flow_key!r} in the group")
            flow = formats.h5_shape(entry.rgb_path, f"{entry.key}/{flow_key}")
    except BadVideo as e:
        return Skip(vid, where, str(e))
    return _paired(vid, entry.rgb_path, entry.rgb_path if flow else None, rgb, flow, streams,
                   formats.HDF5, (f"{entry.key}/{rgb_key}",
                                  f"{entry.key}/{flow_key}" if flow else None))


def _probe_pt(entry: Entry, streams: str) -> Video | Skip:
    vid = entry.video_id
    try:
        rgb = formats.pt_shape(entry.rgb_path)
    except BadVideo as e:
        return Skip(vid, entry.rgb_path, str(e))
    flow = None
    if entry.flow_path is not None:
        try:
            flow = formats.pt_shape(entry.flow_path)
        except BadVideo as e:
            return Skip(vid, entry.flow_path, f"flow: {e}")
    return _paired(vid, entry.rgb_path, entry.flow_path, rgb, flow, streams, formats.PT)


def probe_container(entry: Entry, streams: str) -> list[Video | Skip]:
    """Every video of a WebDataset tar shard (read front to back once) or a Parquet file (row
    group by row group), each a Video or the Skip saying why not."""
    if entry.source == formats.WEBDATASET:
        return _probe_tar(entry, streams)
    return _probe_parquet(entry, streams)


def _probe_tar(entry: Entry, streams: str) -> list[Video | Skip]:
    path = entry.rgb_path
    try:
        members = formats.tar_members(path)
    except BadVideo as e:
        return [Skip(entry.video_id, path, str(e))]
    found: list[Video | Skip] = []
    for key in sorted(members):
        problem = id_problem(key)
        where = f"{path}#{key}"
        if problem is not None:
            found.append(Skip(key, where, problem))
            continue
        heads, shapes = {}, {}
        try:
            for stream in ("rgb", "flow"):
                if stream in members[key]:
                    offset, size, first = members[key][stream]
                    if offset < 0:
                        raise BadVideo(f"{key}.{stream}.npy is in the shard twice")
                    h = parse_header(first, size)
                    heads[stream] = NpyHeader(h.shape, h.fortran_order, h.dtype, h.offset + offset)
                    shapes[stream] = h.shape
        except BadVideo as e:
            found.append(Skip(key, where, f"{stream}: {e}" if stream == "flow" else str(e)))
            continue
        if "rgb" not in shapes:
            found.append(Skip(key, where, "flow member without an rgb member"))
            continue
        found.append(_paired(key, path, path if "flow" in shapes else None, shapes["rgb"],
                             shapes.get("flow"), streams, formats.WEBDATASET,
                             headers=(heads["rgb"], heads.get("flow"))))
    return found


def _probe_parquet(entry: Entry, streams: str) -> list[Video | Skip]:
    import pyarrow.parquet as pq

    path = entry.rgb_path
    try:
        meta = pq.ParquetFile(formats.open_file(path) if fs.is_uri(path) else path)
        names = meta.schema_arrow.names
    except StorageError:
        raise
    except (OSError, ValueError) as e:
        return [Skip(entry.video_id, path, f"unreadable Parquet file: {e}")]
    if "video_id" not in names or "rgb" not in names:
        return [Skip(entry.video_id, path, "not a table of one row per video (video_id, rgb "
                                           "[, flow]); a per-clip table as `vgray export` "
                                           "writes is not read")]
    found: list[Video | Skip] = []
    for group in range(meta.num_row_groups):
        try:
            table = formats.parquet_group(path, group)
        except BadVideo as e:
            found.append(Skip(entry.video_id, path, str(e)))
            continue
        ids = table.column("video_id").to_pylist()
        for row, vid in enumerate(ids):
            where = f"{group}:{row}"
            if not isinstance(vid, str) or id_problem(vid) is not None:
                found.append(Skip(str(vid), f"{path}#{where}",
                                  id_problem(vid) if isinstance(vid, str) else "no video_id"))
                continue
            try:
                rgb = formats.list_rows(table.column("rgb")[row].values, "rgb").shape
                flow = None
                if "flow" in names and table.column("flow")[row].is_valid:
                    flow = formats.list_rows(table.column("flow")[row].values, "flow").shape
            except BadVideo as e:
                found.append(Skip(vid, f"{path}#{where}", str(e)))
                continue
            found.append(_paired(vid, path, path if flow else None, rgb, flow, streams,
                                 formats.PARQUET, (where, where if flow else None)))
    return found


def probe(entries: list[Entry], streams: str, on_video=None) -> list[Video | Skip]:
    """probe_one of each entry, in order. On object storage a header read is a round trip:
    IO_THREADS are kept in flight, and small files are read whole and checked. Local reads are
    CPU-bound (~50 us each) and go one by one. on_video() follows each."""
    if entries and entries[0].container:
        found = []
        for entry in entries:
            found.extend(probe_container(entry, streams))
            if on_video is not None:
                on_video()
        return found
    remote = bool(entries) and fs.is_uri(entries[0].rgb_path)
    found = []
    with concurrent.futures.ThreadPoolExecutor(IO_THREADS if remote else 1) as threads:
        each = threads.map(lambda e: probe_one(e, streams, True), entries) if remote else \
            (probe_one(e, streams) for e in entries)
        for result in each:
            found.append(result)
            if on_video is not None:
                on_video()
    return found


def assemble(listing: Listing, found: list[Video | Skip], rgb_dim: int | None = None,
             flow_dim: int | None = None) -> Corpus:
    """The Corpus of what the probes found (in the listing's order). `rgb_dim`/`flow_dim` are
    the widths a trained RUN expects; without them the most common width per stream (over
    training videos) is the corpus width."""
    wanted, skips = listing.wanted, list(listing.skips)
    candidates, first = [], {}
    for result in found:
        if isinstance(result, Video) and listing.containers:  # an id in two containers
            if result.video_id in first:
                skips.append(Skip(result.video_id, result.rgb_path, "duplicate id: also in "
                                  f"{first[result.video_id]} (the first one is used)"))
                continue
            first[result.video_id] = result.rgb_path
        (candidates if isinstance(result, Video) else skips).append(result)
    if listing.containers:
        candidates.sort(key=lambda v: v.video_id)
        listing.found.update(v.video_id for v in found)
    pool = [v for v in candidates if wanted is None or v.video_id in wanted] or candidates
    whose = "the RUN has" if rgb_dim is not None or flow_dim is not None else "the corpus has"
    if rgb_dim is None:
        rgb_dim = _mode([v.rgb_dim for v in pool])
    if flow_dim is None:
        flow_dim = _mode([v.flow_dim for v in pool if v.flow_dim is not None])
    videos = []
    for v in candidates:
        if v.rgb_dim != rgb_dim:
            skips.append(Skip(v.video_id, v.rgb_path, f"D = {v.rgb_dim} but {whose} "
                                                      f"D = {rgb_dim} (rgb)"))
        elif v.flow_dim is not None and v.flow_dim != flow_dim:
            skips.append(Skip(v.video_id, v.flow_path, f"D = {v.flow_dim} but {whose} "
                                                       f"D = {flow_dim} (flow)"))
        else:
            videos.append(v)
    missing = sorted(wanted - listing.found) if wanted is not None else []
    skips.sort(key=lambda s: (s.video_id, s.path or ""))
    layout = listing.layout
    if listing.source != formats.NPY and listing.source != formats.PT:  # known once probed
        layout = TWO_STREAM if any(v.flow_path for v in videos) else SINGLE_STREAM
    return Corpus(listing.root, layout, videos, skips, rgb_dim, flow_dim, wanted, missing,
                  listing.fingerprint)


def scan(
    root: str,
    streams: str = "rgb",
    train_ids: list[str] | None = None,
    rgb_dim: int | None = None,
    flow_dim: int | None = None,
    follow_symlinks: bool = False,
    on_video=None,
    reading: Reading | None = None,
) -> Corpus:
    """FEATURES listed and every header read in this process (list_videos, probe, assemble);
    everything unusable becomes a Skip. A run reads the headers on its workers instead
    (stages.scan). on_video(done, total) follows the header reads."""
    listing = list_videos(root, streams, train_ids, follow_symlinks, reading)
    total, done = len(listing.entries), 0

    def each() -> None:
        nonlocal done
        done += 1
        if on_video is not None:
            on_video(done, total)

    return assemble(listing, probe(listing.entries, streams, each), rgb_dim, flow_dim)
