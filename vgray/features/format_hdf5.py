"""One HDF5 file, a group per video (MDVC's and BMT's I3D files: `{id}/i3d_features/rgb`...).
The driver lists the file's groups (its metadata is read, no dataset); a probe reads the shapes
of a group's datasets; rows are read by row range. On object storage the file is read through
the process's BlockCache (format_base.py), so each block costs one ranged GET per process.
"""

from __future__ import annotations

import threading

import numpy as np

from ..files import fs
from .corpus import (SINGLE_STREAM, TWO_STREAM, Entry, Listing, Reading, Skip, Video, id_problem,
                     listing_fingerprint, wanted_ids)
from ..errors import BadVideo, StorageError, VgrayError
from .format_base import CachedFile, Found, checked, float_shape, paired, stream_of

HDF5_SUFFIXES = (".h5", ".hdf5")


class Hdf5Reader:
    """The reader of one HDF5 file of a group per video (format_base.FeatureReader)."""

    name = "hdf5"
    shipped = "one HDF5 file of a group per video"
    container = False
    npy_files = False

    def detects(self, root: str, names: list[str] | None) -> bool:
        return names is None and root.lower().endswith(HDF5_SUFFIXES)

    def fingerprint(self, root: str, *, follow_symlinks: bool = False,
                    reading: Reading | None = None) -> str:
        """The file's name and size (symlinks do not apply to one file)."""
        info = fs.stat(root)
        if info is None:
            raise VgrayError(f"FEATURES {root} does not exist")
        return listing_fingerprint({fs.basename(root): info["size"]}, False, "", reading)

    def listing(self, root: str, streams: str, *, train_ids: list[str] | None = None,
                follow_symlinks: bool = False, reading: Reading | None = None) -> Listing:
        return list_groups(root, streams, train_ids, self.fingerprint(root, reading=reading),
                           reading or Reading(self.name))

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        return [probe_group(entry, streams, entry.reading or Reading(self.name))]

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        found = stream_of(video, stream)
        return h5_rows(found.path, found.key, start, stop)


READER = Hdf5Reader()


def list_groups(path: str, streams: str, train_ids: list[str] | None, fingerprint: str,
                reading: Reading) -> Listing:
    """An HDF5 file's groups, one per video (its metadata is read here, no dataset)."""
    h5py = need_h5py()
    try:
        names = sorted(h5_file(path).keys())
    except VgrayError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises many kinds on a broken file
        raise VgrayError(f"cannot read the HDF5 file {path}: {e}") from None
    skips: list[Skip] = []
    entries = []
    for name in names:
        item = h5_file(path).get(name)
        if not isinstance(item, h5py.Group):
            skips.append(Skip(name, f"{path}#{name}", "not a group (one group per video)"))
            continue
        problem = id_problem(name)
        if problem is not None:
            skips.append(Skip(name, f"{path}#{name}", problem))
            continue
        entries.append(Entry(name, path, None, READER.name, key=name, reading=reading))
    two = reading.hdf5_flow_key is not None or streams != "rgb"
    found = {e.video_id for e in entries}
    return Listing(path, TWO_STREAM if two else SINGLE_STREAM, entries, skips,
                   wanted_ids(train_ids, skips), found, fingerprint, layout_probed=True)


def probe_group(entry: Entry, streams: str, reading: Reading) -> Video | Skip:
    """The Video of one video's group from its datasets' shapes, or the Skip saying why not."""
    vid, where = entry.video_id, f"{entry.rgb_path}#{entry.key}"
    try:
        group = h5_file(entry.rgb_path)[entry.key]
        rgb_key, flow_key = h5_streams(group, reading.hdf5_key, reading.hdf5_flow_key)
        rgb = h5_shape(entry.rgb_path, f"{entry.key}/{rgb_key}")
        flow = None
        if flow_key is not None:
            if flow_key not in group:
                return Skip(vid, where, f"flow: no {flow_key!r} in the group")
            flow = Found(entry.rgb_path, h5_shape(entry.rgb_path, f"{entry.key}/{flow_key}"),
                         f"{entry.key}/{flow_key}")
    except BadVideo as e:
        return Skip(vid, where, str(e))
    return paired(vid, Found(entry.rgb_path, rgb, f"{entry.key}/{rgb_key}"), flow, streams,
                  entry.source)


def need_h5py():
    """h5py, or the one line that says how to install it (an optional extra)."""
    try:
        import h5py
    except ImportError:
        raise VgrayError("reading HDF5 needs h5py: pip install 'vgray[hdf5]'") from None
    return h5py


_OPEN = threading.local()


def h5_file(path: str):
    """The HDF5 file, opened once per thread (locally, or through the BlockCache on object
    storage)."""
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
    """Rows [start, stop) of a dataset, checked; an unreadable one is a BadVideo."""
    try:
        data = h5_file(path)[dataset]
        return checked(data[start:stop], start)
    except (BadVideo, StorageError, VgrayError):
        raise
    except (OSError, KeyError, ValueError) as e:
        raise BadVideo(f"unreadable dataset {dataset}: {e}") from None


def h5_shape(path: str, dataset: str) -> tuple[int, int]:
    """(T, D) of a dataset, or the BadVideo saying why it is no [T, D] float array."""
    try:
        item = h5_file(path)[dataset]
        return float_shape(item.shape, item.dtype, dataset)
    except (BadVideo, StorageError, VgrayError):
        raise
    except (OSError, KeyError, ValueError, AttributeError) as e:
        raise BadVideo(f"unreadable dataset {dataset}: {e}") from None
