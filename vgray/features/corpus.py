"""The videos of FEATURES as the readers find them, and the Corpus they make.

A listing of FEATURES (readers.list_videos, by the reader of its format) gives an Entry per
video or container to probe; a probe (where the work runs) gives a Video that says where its
rows are, or a Skip that says why it cannot be used; `assemble` makes the Corpus of what the
probes found. Two-stream layout: `{id}_rgb` with an optional `{id}_flow`; single-stream layout
(no `*_rgb` at all): every `{id}` is one video. Arrays are `[T, D]` of a float dtype. Nothing
here reads a feature: this module is what every format's reader shares.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from dataclasses import dataclass, field

from ..files import fs
from ..errors import VgrayError
from .npyfile import NpyHeader

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
    source: str = field(compare=False, repr=False)  # its format (formats.py), which reads it
    rgb_header: NpyHeader | None = field(default=None, compare=False, repr=False)
    flow_header: NpyHeader | None = field(default=None, compare=False, repr=False)
    checked: bool = field(default=False, compare=False, repr=False)
    # where the streams are inside a container: each stream's key
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


def outside_root(path: str, root: str) -> bool:
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
    source: str  # its format (formats.py), which probes it
    flow_path: str | None = None
    flow_size: int | None = None
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
    layout_probed: bool = False  # the layout is known once probed (from the videos found)

    @property
    def containers(self) -> bool:
        return any(e.container for e in self.entries)


def wanted_ids(train_ids: list[str] | None, skips: list[Skip]) -> set[str] | None:
    """The training ids asked for (None: every video trains); one that cannot name output files
    is a skip."""
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
    if listing.layout_probed:
        layout = TWO_STREAM if any(v.flow_path for v in videos) else SINGLE_STREAM
    return Corpus(listing.root, layout, videos, skips, rgb_dim, flow_dim, wanted, missing,
                  listing.fingerprint)
