"""Every format probed where the work runs, and FEATURES scanned in one process.

The driver lists FEATURES (corpus.list_videos); the workers probe what it listed, a chunk at a
time (`probe`): an `.npy` entry by its headers (corpus.probe_npy), an HDF5 group by its
datasets' shapes, a `.pt` file by its tensor, a WebDataset shard read front to back once, a
Parquet file row group by row group (formats.py reads each format). Each video becomes a Video
that says where its rows are, or a Skip that says why it cannot be used. `scan` is the same in
one process (what `evaluate` and `check` use).
"""

from __future__ import annotations

import concurrent.futures

from . import formats, fs
from .corpus import (IO_THREADS, Corpus, Entry, Reading, Skip, Video, assemble, id_problem,
                     list_videos, probe_npy)
from .errors import BadVideo, StorageError, VgrayError
from .npyfile import NpyHeader, parse_header


def probe_video(entry: Entry, streams: str, whole: bool = False) -> Video | Skip:
    """The Video of one listed video (not a container), whatever its format."""
    if entry.source == formats.HDF5:
        return _probe_hdf5(entry, streams)
    if entry.source == formats.PT:
        return _probe_pt(entry, streams)
    return probe_npy(entry, streams, whole)


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
    members = formats.tar_members(path)  # a shard that cannot be read fails in one line
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
        raise VgrayError(f"cannot open the Parquet file {path}: {e}") from None
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
    """probe_video of each entry, in order. On object storage a header read is a round trip:
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
        each = threads.map(lambda e: probe_video(e, streams, True), entries) if remote else \
            (probe_video(e, streams) for e in entries)
        for result in each:
            found.append(result)
            if on_video is not None:
                on_video()
    return found


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
