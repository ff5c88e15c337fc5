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
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import formats, fs
from .errors import BadVideo, VgrayError
from .npyfile import (HEADER_BYTES, NpyHeader, all_finite, file_size, finite, load_rows,
                      parse_header, read_at, read_header, read_rows_at)

RGB_SUFFIX = "_rgb.npy"
FLOW_SUFFIX = "_flow.npy"
NPY_SUFFIX = ".npy"
TWO_STREAM = "two-stream"
SINGLE_STREAM = "single-stream"
# Reads in flight per process on object storage: a request costs tens of milliseconds there,
# so a few dozen in flight keep a stage bound by bandwidth, not latency (S3 allows ~5,500 GETs a
# second per prefix; 64 per worker x 64 workers stays below it at 30 ms per request).
IO_THREADS = 64
# On object storage a file up to this size is read whole by the scan's one request: at a cloud's
# ~30 ms per request and ~50-100 MB/s per connection, 1 MiB more costs less than another round
# trip, and the whole file checked there spares every later pass the read of a stream it does not
# use (a two-stream video's flow, clustering rgb) - with the default --streams rgb, a video costs
# 2 requests fewer.
WHOLE_FILE_BYTES = 1 << 20


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


def stream_rows(video: Video, stream: str, start: int = 0, stop: int | None = None
                ) -> np.ndarray:
    """Rows [start, stop) of one stream of a video, whatever its format."""
    path = video.rgb_path if stream == "rgb" else video.flow_path
    header = video.rgb_header if stream == "rgb" else video.flow_header
    key = video.rgb_key if stream == "rgb" else video.flow_key
    if video.source == formats.NPY:
        return load_rows(path, start, stop, header)
    if video.source == formats.WEBDATASET:  # an .npy member at its offset in the tar
        return finite(read_rows_at(path, start, stop, header), start)
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


def features_fingerprint(root: str, follow_symlinks: bool = False, reading: Reading | None = None
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
        size = file_size(path)
    if whole and size <= WHOLE_FILE_BYTES:
        data = read_at(path, 0, size)  # shorter than listed: the file changed, told as truncated
        head = parse_header(data[:HEADER_BYTES], len(data), lambda need: data[:need])
        return head, all_finite(data, head)
    return read_header(path, size), False


def probe_npy(entry: Entry, streams: str, whole: bool = False) -> Video | Skip:
    """The Video of a listed `.npy` entry from its headers, or the Skip saying why it cannot be
    used; with `whole`, small files are read whole and checked (Video.checked). (Every other
    format is probed by readers.py.)"""
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
