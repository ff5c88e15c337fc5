"""The registry of input formats: the one list of the formats FEATURES may ship in, each read by
its own reader behind format_base.FeatureReader (list, probe, rows): one `.npy` per video and
stream, one HDF5 file (a group per video), WebDataset `.tar` shards, Parquet files (a row per
video) and one `.pt` tensor per video and stream. Adding a format is one module and one line
here: --format's choices and help, TrainConfig's check and `detect` take them from READERS.
A Video's and an Entry's `source` is its format's name, and `reader(source)` is what reads it.
"""

from __future__ import annotations

from ..files import fs
from ..errors import VgrayError
from .format_base import FeatureReader
from .format_hdf5 import READER as HDF5_READER
from .format_npy import READER as NPY_READER
from .format_parquet import READER as PARQUET_READER
from .format_pt import READER as PT_READER
from .format_webdataset import READER as WEBDATASET_READER

READERS: dict[str, FeatureReader] = {r.name: r for r in (
    NPY_READER, HDF5_READER, WEBDATASET_READER, PARQUET_READER, PT_READER)}
FORMATS = tuple(READERS)
DEFAULT = NPY_READER.name  # a directory with no file of any format's suffix


def reader(name: str) -> FeatureReader:
    """The reader of a format, by its name (a Video's or an Entry's `source`)."""
    try:
        return READERS[name]
    except KeyError:
        raise VgrayError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}") from None


def described() -> str:
    """The formats as --format's help lists them."""
    return "; ".join(f"{r.name}: {r.shipped}" for r in READERS.values())


def detect(root: str, forced: str | None = None) -> str:
    """The format of FEATURES: --format if given, else the reader that claims it: an HDF5 file
    by its suffix, else the directory's files, per-video files before containers (.npy first,
    then .pt, .tar, .parquet: the first that is there)."""
    if forced is not None:
        return reader(forced).name
    names = list(fs.files(root)) if fs.isdir(root) else None
    for each in sorted(READERS.values(), key=lambda r: r.container):
        if each.detects(root, names):
            return each.name
    if names is None:
        raise VgrayError(f"FEATURES {root} is not a directory")
    return DEFAULT


def reader_of(root: str, forced: str | None = None) -> FeatureReader:
    """The reader of FEATURES (detect)."""
    return READERS[detect(root, forced)]
