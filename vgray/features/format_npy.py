"""`.npy` files, one per video and stream: `{id}_rgb.npy` with an optional `{id}_flow.npy`, or
`{id}.npy` alone. The driver lists them (names and sizes, one request per 1,000 files on object
storage, no file opened); a probe reads their headers where the work runs. On object storage a
header costs one request, and a file of up to WHOLE_FILE_BYTES is read whole in that request and
checked (`Video.checked`): the later passes then read only the streams they use. Rows are
memory-mapped (locally) or read in row blocks (one ranged read at the offset the probe found),
so a worker's memory is bounded by the block size, never by a video's length.
"""

from __future__ import annotations

import numpy as np

from .corpus import WHOLE_FILE_BYTES, Entry, Skip, Video
from ..errors import BadVideo
from .format_base import FilesReader, stream_of
from .npyfile import (HEADER_BYTES, NpyHeader, all_finite, file_size, load_rows, parse_header,
                      read_at, read_header)


class NpyReader(FilesReader):
    """The reader of `.npy` files per video and stream (format_base.FeatureReader)."""

    name = "npy"
    shipped = ".npy files per video and stream"
    suffix = ".npy"
    npy_files = True

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        return [probe_npy(entry, streams, whole)]

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        found = stream_of(video, stream)
        return load_rows(found.path, start, stop, found.header)


READER = NpyReader()


def npy_stream(path: str, size: int | None, whole: bool) -> tuple[NpyHeader, bool]:
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
    used; with `whole`, small files are read whole and checked (Video.checked)."""
    vid = entry.video_id
    try:
        head, rgb_ok = npy_stream(entry.rgb_path, entry.rgb_size, whole)
    except BadVideo as e:
        return Skip(vid, entry.rgb_path, str(e))
    fdim, fhead, flow_ok = None, None, True
    if entry.flow_path is not None:
        try:
            fhead, flow_ok = npy_stream(entry.flow_path, entry.flow_size, whole)
        except BadVideo as e:
            return Skip(vid, entry.flow_path, f"flow: {e}")
        if fhead.shape[0] != head.shape[0]:
            return Skip(vid, entry.flow_path, f"rgb has T = {head.shape[0]} clips but flow has "
                                              f"T = {fhead.shape[0]}")
        fdim = fhead.shape[1]
    elif streams != "rgb":
        return Skip(vid, entry.rgb_path, f"no flow file, but --streams {streams} needs one")
    return Video(vid, entry.rgb_path, entry.flow_path, head.shape[0], head.shape[1], fdim,
                 entry.source, head, fhead, rgb_ok and flow_ok)
