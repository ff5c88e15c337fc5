"""One `.npy` array read safely: its header parsed and checked without unpickling anything,
its rows read by range (memory-mapped locally, one ranged request on object storage at the
offset the header gives), every block checked finite. The same reader serves an `.npy` member
inside a WebDataset tar, at its offset there."""

from __future__ import annotations

from dataclasses import dataclass
import functools
import io

import numpy as np

from ..files import fs
from ..errors import BadVideo, StorageError, first_line

HEADER_BYTES = 4096  # read with the header: every .npy header vgray meets fits (~128 bytes)


@dataclass(frozen=True, slots=True)
class NpyHeader:
    shape: tuple
    fortran_order: bool
    dtype: np.dtype
    offset: int


def read_at(path: str, start: int, length: int) -> bytes:
    """Bytes of a file; a missing or unreadable file is a BadVideo, a fault of the storage (on
    a URI) a StorageError."""
    try:
        return fs.read_range(path, start, length)
    except StorageError:
        raise
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None


def read_header(path: str, size: int | None = None) -> NpyHeader:
    """Read and check a `.npy` header without reading (or unpickling) the array: one read of
    its first HEADER_BYTES (`size`, the file's size, as the listing gave it; else it is asked)."""
    if size is None:
        size = file_size(path)
    head = read_at(path, 0, HEADER_BYTES)
    return parse_header(head, size, lambda need: read_at(path, 0, need))


def file_size(path: str) -> int:
    try:
        return fs.size(path)
    except FileNotFoundError:
        raise BadVideo("unreadable file: not found (removed since it was listed?)") from None
    except StorageError:
        raise
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None


def parse_header(head: bytes, size: int, more=None) -> NpyHeader:
    """The header of a `.npy` file of `size` bytes from its first bytes `head`, checked (a 2-D
    float array, not truncated); more(n) gives the first n bytes where the header is longer."""
    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise BadVideo(f"unsupported .npy format version {version[0]}.{version[1]}")
        if version == (2, 0) and len(head) >= 12 and more is not None:
            need = 12 + int.from_bytes(head[8:12], "little")  # a header longer than was read
            if need > len(head) and size >= need:
                f = io.BytesIO(more(need))
                np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    except BadVideo:
        raise
    except Exception as e:  # numpy raises ValueError/SyntaxError/... on garbage headers
        raise BadVideo(f"not a valid .npy file: {first_line(e)}") from None
    if dtype.hasobject:
        raise BadVideo("object array (would need unpickling); refused")
    if dtype.kind != "f" or dtype.fields is not None:
        raise BadVideo(f"dtype {dtype} is not a floating-point type")
    if len(shape) != 2:
        raise BadVideo(f"expected a 2-D [T, D] array, got shape {tuple(shape)}")
    frames, dim = shape
    if frames == 0:
        raise BadVideo("no clips (T = 0)")
    if dim == 0:
        raise BadVideo("zero-width features (D = 0)")
    expected = offset + frames * dim * dtype.itemsize
    if size < expected:
        raise BadVideo(f"truncated: {size} bytes, the header declares {expected}")
    return NpyHeader(tuple(shape), bool(fortran), _canonical(dtype), offset)


@functools.lru_cache(maxsize=64)
def _dtype(text: str) -> np.dtype:
    return np.dtype(text)


def _canonical(dtype: np.dtype) -> np.dtype:
    """One dtype object per kind of float (the driver holds a header per file of the corpus)."""
    return _dtype(dtype.str)


def all_finite(data: bytes, head: NpyHeader) -> bool:
    """Whether a whole `.npy` file's array (its bytes `data`) holds only values finite in
    float32, as load_rows requires of every block."""
    frames, dim = head.shape
    array = np.frombuffer(data, dtype=head.dtype, count=frames * dim, offset=head.offset)
    with np.errstate(over="ignore"):
        return bool(np.isfinite(array.astype(np.float32, copy=False)).all())


def load_rows(path: str, start: int = 0, stop: int | None = None,
              header: NpyHeader | None = None) -> np.ndarray:
    """Rows [start, stop) of a `.npy` file as C-contiguous float32; raise BadVideo on NaN/inf.

    Local files are memory-mapped; on object storage only the rows' byte range is fetched, in
    one request where the `header` (as the scan read it) is given."""
    try:
        if fs.is_uri(path):
            block = read_rows_at(path, start, stop, header or read_header(path))
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
                block = np.array(array[start:stop], dtype=np.float32, order="C")  # a copy, not the map
    except (BadVideo, StorageError):
        raise
    except OSError as e:
        raise BadVideo(f"unreadable file: {e.strerror or e}") from None
    except (ValueError, EOFError) as e:  # the file changed since its header was read
        raise BadVideo(f"not a valid .npy file: {e}") from None
    return finite(block, start)


def finite(block: np.ndarray, start: int) -> np.ndarray:
    """The block of clips from `start`, or BadVideo naming its first clip with NaN or inf."""
    if not np.isfinite(block).all():
        bad = int(np.argmax(~np.isfinite(block).all(axis=1))) + start
        raise BadVideo(f"non-finite value (NaN or inf, or beyond float32's range) in clip {bad}")
    return block


def read_rows_at(path: str, start: int, stop: int | None, head: NpyHeader) -> np.ndarray:
    frames, dim = head.shape
    stop = frames if stop is None else min(stop, frames)
    item = head.dtype.itemsize
    if head.fortran_order:  # columns are contiguous: the whole array has to be read
        want = frames * dim * item
        data = read_at(path, head.offset, want)
        if len(data) < want:
            raise BadVideo(f"truncated: {head.offset + len(data)} bytes, the header declares "
                           f"{head.offset + want}")
        array = np.frombuffer(data, dtype=head.dtype).reshape((dim, frames)).T[start:stop]
    else:
        want = (stop - start) * dim * item
        data = read_at(path, head.offset + start * dim * item, want)
        if len(data) < want:
            raise BadVideo(f"truncated: the file ends before clip {stop} (changed since it "
                           "was scanned?)")
        array = np.frombuffer(data, dtype=head.dtype).reshape((stop - start, dim))
    with np.errstate(over="ignore"):
        return np.array(array, dtype=np.float32, order="C")
