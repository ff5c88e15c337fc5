"""FEATURES read through the reader of its format (formats.py), in three steps: the driver lists
it (`list_videos`), the workers probe what it listed a chunk at a time (`probe`: each video a
Video that says where its rows are, or a Skip that says why it cannot be used), and every pass
reads rows (`stream_rows`, `load_clips`). `scan` is the same in one process (what `evaluate` and
`check` use). Nothing here knows a format: each is asked of its reader.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from . import formats
from ..files import fs
from .corpus import IO_THREADS, Corpus, Entry, Listing, Reading, Skip, Video, assemble
from ..errors import BadVideo


def list_videos(root: str, streams: str = "rgb", train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
    """FEATURES from one listing by its format's reader (on object storage one request per
    1,000 files; no feature is read): the entries to probe, and what is skipped by name alone.
    Ids that could not safely name output files, ids equal but for case, and (unless
    follow_symlinks) symlinks to files outside FEATURES are skipped with their reason. An HDF5
    FEATURES is one file whose groups are listed; WebDataset and Parquet FEATURES list their
    container files."""
    reader = formats.reader_of(root, reading.format if reading else None)
    return reader.listing(root, streams, train_ids=train_ids, follow_symlinks=follow_symlinks,
                          reading=reading)


def features_fingerprint(root: str, follow_symlinks: bool = False,
                         reading: Reading | None = None) -> str:
    """The listing fingerprint of FEATURES, from one listing: no file is opened (the no-op
    check of a run at a million videos reads no header)."""
    reader = formats.reader_of(root, reading.format if reading else None)
    return reader.fingerprint(root, follow_symlinks=follow_symlinks, reading=reading)


def probe(entries: list[Entry], streams: str, on_video=None) -> list[Video | Skip]:
    """Every video of these entries, in order, each probed by its format's reader. Containers
    are read one after the other. Otherwise, on object storage a header read is a round trip:
    IO_THREADS are kept in flight, and small files are read whole and checked; local reads are
    CPU-bound (~50 us each) and go one by one. on_video() follows each entry."""
    found: list[Video | Skip] = []
    if entries and formats.reader(entries[0].source).container:
        for entry in entries:
            found.extend(formats.reader(entry.source).probe(entry, streams))
            if on_video is not None:
                on_video()
        return found
    remote = bool(entries) and fs.is_uri(entries[0].rgb_path)

    def each(entry: Entry) -> list[Video | Skip]:
        return formats.reader(entry.source).probe(entry, streams, whole=remote)

    with concurrent.futures.ThreadPoolExecutor(IO_THREADS if remote else 1) as threads:
        for result in (threads.map(each, entries) if remote else map(each, entries)):
            found.extend(result)
            if on_video is not None:
                on_video()
    return found


def stream_rows(video: Video, stream: str, start: int = 0, stop: int | None = None
                ) -> np.ndarray:
    """Rows [start, stop) of one stream of a video, by its format's reader."""
    return formats.reader(video.source).rows(video, stream, start, stop)


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


def scan(root: str, streams: str = "rgb", train_ids: list[str] | None = None, *,
         rgb_dim: int | None = None, flow_dim: int | None = None, follow_symlinks: bool = False,
         on_video=None, reading: Reading | None = None) -> Corpus:
    """FEATURES listed and every video probed in this process (list_videos, probe, assemble);
    everything unusable becomes a Skip. A run probes on its workers instead (stages.scan).
    on_video(done, total) follows the probes."""
    listing = list_videos(root, streams, train_ids, follow_symlinks, reading)
    total, done = len(listing.entries), 0

    def each() -> None:
        nonlocal done
        done += 1
        if on_video is not None:
            on_video(done, total)

    return assemble(listing, probe(listing.entries, streams, each), rgb_dim, flow_dim)
