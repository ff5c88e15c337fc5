"""Parquet files of a row per video: `video_id`, `rgb` [, `flow`], each stream a list of lists of
float. The driver lists the files (nothing opened); a probe reads a file row group by row group;
a video's rows are read from its row group alone (the last row group read is kept per thread,
as a shard's videos come in order), so memory is bounded by a row group.
"""

from __future__ import annotations

import threading

import numpy as np

from ..files import fs
from .corpus import Entry, Skip, Video, id_problem
from ..errors import BadVideo, StorageError, VgrayError
from .format_base import ContainersReader, Found, checked, open_file, paired, stream_of


class ParquetReader(ContainersReader):
    """The reader of Parquet files of a row per video (format_base.FeatureReader)."""

    name = "parquet"
    shipped = "Parquet files of a row per video"
    suffix = ".parquet"
    npy_files = False

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        return probe_file(entry, streams)

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        found = stream_of(video, stream)
        return parquet_rows(found.path, found.key, stream, start, stop)


READER = ParquetReader()

NOT_A_TABLE = ("not a table of one row per video (video_id, rgb [, flow]); a per-clip table as "
               "`vgray export` writes is not read")


def probe_file(entry: Entry, streams: str) -> list[Video | Skip]:
    """Every video of a Parquet file (row group by row group), each a Video or the Skip saying
    why not; a file that cannot be opened fails in one line."""
    import pyarrow.parquet as pq

    path = entry.rgb_path
    try:
        meta = pq.ParquetFile(open_file(path) if fs.is_uri(path) else path)
        names = meta.schema_arrow.names
    except StorageError:
        raise
    except (OSError, ValueError) as e:
        raise VgrayError(f"cannot open the Parquet file {path}: {e}") from None
    if "video_id" not in names or "rgb" not in names:
        return [Skip(entry.video_id, path, NOT_A_TABLE)]
    found: list[Video | Skip] = []
    for group in range(meta.num_row_groups):
        try:
            table = parquet_group(path, group)
        except BadVideo as e:
            found.append(Skip(entry.video_id, path, str(e)))
            continue
        for row, vid in enumerate(table.column("video_id").to_pylist()):
            found.append(row_video(table, f"{group}:{row}", vid, streams, path=path,
                                   source=entry.source))
    return found


def row_video(table, where: str, vid, streams: str, *, path: str, source: str) -> Video | Skip:
    """The Video of one row of a row group (`where`: "group:row"), or the Skip saying why not."""
    row = int(where.split(":")[1])
    if not isinstance(vid, str) or id_problem(vid) is not None:
        return Skip(str(vid), f"{path}#{where}",
                    id_problem(vid) if isinstance(vid, str) else "no video_id")
    try:
        rgb = list_rows(table.column("rgb")[row].values, "rgb").shape
        flow = None
        if "flow" in table.column_names and table.column("flow")[row].is_valid:
            flow = Found(path, list_rows(table.column("flow")[row].values, "flow").shape, where)
    except BadVideo as e:
        return Skip(vid, f"{path}#{where}", str(e))
    return paired(vid, Found(path, rgb, where), flow, streams, source)


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
    """Rows [start, stop) of one stream of the video at `where` ("group:row"), checked."""
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
