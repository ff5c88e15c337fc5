"""`.pt` files, one 2-D float tensor per video and stream (`{id}_rgb.pt` with an optional
`{id}_flow.pt`, or `{id}.pt`), listed as `.npy` files are. Nothing is ever unpickled: a file is
loaded with `torch.load(weights_only=True)` (memory-mapped locally), and anything but one plain
tensor is a recorded skip.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from ..files import fs
from .corpus import Entry, Skip, Video
from ..errors import BadVideo, StorageError, first_line
from .format_base import FilesReader, Found, checked, float_shape, paired, stream_of


class PtReader(FilesReader):
    """The reader of `.pt` tensors per video and stream (format_base.FeatureReader)."""

    name = "pt"
    shipped = ".pt tensors per video and stream"
    suffix = ".pt"
    npy_files = False

    def probe(self, entry: Entry, streams: str, *, whole: bool = False) -> list[Video | Skip]:
        return [probe_tensors(entry, streams)]

    def rows(self, video: Video, stream: str, start: int, stop: int | None) -> np.ndarray:
        return pt_rows(stream_of(video, stream).path, start, stop)


READER = PtReader()


def probe_tensors(entry: Entry, streams: str) -> Video | Skip:
    """The Video of a listed `.pt` entry from its tensors' shapes, or the Skip saying why not."""
    vid = entry.video_id
    try:
        rgb = Found(entry.rgb_path, pt_shape(entry.rgb_path))
    except BadVideo as e:
        return Skip(vid, entry.rgb_path, str(e))
    flow = None
    if entry.flow_path is not None:
        try:
            flow = Found(entry.flow_path, pt_shape(entry.flow_path))
        except BadVideo as e:
            return Skip(vid, entry.flow_path, f"flow: {e}")
    return paired(vid, rgb, flow, streams, entry.source)


@functools.lru_cache(maxsize=8)
def pt_tensor(path: str):
    """The file's tensor (memory-mapped locally), loaded with weights_only=True: anything but a
    plain tensor is refused, as is any pickled object."""
    import torch

    try:
        if fs.is_uri(path):
            value = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu",
                               weights_only=True)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except StorageError:
        raise
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        first = first_line(e)
        raise BadVideo(f"not a plain tensor file (loaded with weights_only=True, never "
                       f"unpickled): {first[:200]}") from None
    if not isinstance(value, torch.Tensor):
        raise BadVideo(f"holds a {type(value).__name__}, not one tensor")
    return value


def pt_shape(path: str) -> tuple[int, int]:
    """(T, D) of the file's tensor, or the BadVideo saying why it is no [T, D] float tensor."""
    tensor = pt_tensor(path)
    if not tensor.is_floating_point():
        raise BadVideo(f"dtype {tensor.dtype} is not a floating-point type")
    return float_shape(tuple(tensor.shape), np.dtype("float32"), "tensor")


def pt_rows(path: str, start: int, stop: int | None) -> np.ndarray:
    """Rows [start, stop) of the file's tensor as float32, checked."""
    tensor = pt_tensor(path)
    return checked(tensor[start:stop].float().numpy(), start)
