"""WebDataset `.tar` shards of `{key}.npy`, or `{key}.rgb.npy` + `{key}.flow.npy` members. The
driver lists the shards (nothing opened); a probe reads a shard front to back once (a tar has no
index) and parses each member's `.npy` header; rows are read by range at the member's offset,
as an `.npy` file's are (npyfile.py). Other members are ignored; nothing is extracted.
"""

from __future__ import annotations

import tarfile

import numpy as np

from .corpus import Entry, Skip, Video, id_problem
from ..errors import BadVideo, StorageError, VgrayError
from .format_base import ContainersReader, Found, open_file, paired, stream_of
from .npyfile import NpyHeader, finite, parse_header, read_rows_at


class WebDatasetReader(ContainersReader):
    """The reader of WebDataset tar shards (format_base.FeatureReader)."""

    name = "webdataset"
    shipped = "WebDataset .tar shards"
    suffix = ".tar"
    npy_files = False

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        return probe_shard(entry, streams)

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        found = stream_of(video, stream)  # an .npy member at its offset in the tar
        return finite(read_rows_at(found.path, start, stop, found.header), start)


READER = WebDatasetReader()


def probe_shard(entry: Entry, streams: str) -> list[Video | Skip]:
    """Every video of a tar shard (read front to back once), each a Video or the Skip saying
    why not; a shard that cannot be read fails in one line."""
    path = entry.rgb_path
    members = tar_members(path)
    found: list[Video | Skip] = []
    for key in sorted(members):
        problem = id_problem(key)
        if problem is not None:
            found.append(Skip(key, f"{path}#{key}", problem))
        else:
            found.append(member_video(path, key, members[key], streams, entry.source))
    return found


def member_video(path: str, key: str, streams_found: dict[str, tuple[int, int, bytes]],
                 streams: str, source: str) -> Video | Skip:
    """The Video of one key's members (their headers parsed), or the Skip saying why not."""
    where, found = f"{path}#{key}", {}
    try:
        for stream in ("rgb", "flow"):
            if stream in streams_found:
                offset, size, first = streams_found[stream]
                if offset < 0:
                    raise BadVideo(f"{key}.{stream}.npy is in the shard twice")
                h = parse_header(first, size)
                header = NpyHeader(h.shape, h.fortran_order, h.dtype, h.offset + offset)
                found[stream] = Found(path, h.shape, None, header)
    except BadVideo as e:
        return Skip(key, where, f"{stream}: {e}" if stream == "flow" else str(e))
    if "rgb" not in found:
        return Skip(key, where, "flow member without an rgb member")
    return paired(key, found["rgb"], found.get("flow"), streams, source)


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
