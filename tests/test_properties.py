"""Property-based tests (hypothesis) of the .npy header reader, the loader and the scanner.

Whatever bytes a feature file holds, reading it either gives the right float32 clips or raises
BadVideo with a reason; scanning a directory of such files records every file as a video or as a
skip. Nothing crashes, nothing allocates what a header merely declares, nothing is unpickled.
"""

import atexit
import io
import os
import pickle
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgray.features.npyfile import load_rows, read_header
from vgray.features.readers import scan
from vgray.errors import BadVideo

# The number of examples is the profile's (tests/conftest.py): 100 while developing, 1,000 in CI.
PROFILE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = ["<f2", "<f4", ">f4", "<f8", ">f8", "<i1", "<i4", ">i8", "<u2", "|b1", "<c8", ">c16", "<M8[s]"]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write(data: bytes) -> str:
    fd, path = tempfile.mkstemp(suffix=".npy", dir=WORK)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


WORK = tempfile.mkdtemp(prefix="vgray-props-")
atexit.register(shutil.rmtree, WORK, True)


def read_or_reason(path: str):
    """What a run does with a file: its rows, or the BadVideo reason. Anything else fails."""
    try:
        head = read_header(path)
        rows = load_rows(path)
    except BadVideo as e:
        assert str(e), "a skip needs a reason"
        return None, str(e)
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.flags.c_contiguous
    assert rows.shape == head.shape and np.isfinite(rows).all()
    return rows, None


arrays = st.builds(
    lambda dtype, shape, fortran, seed: (lambda a: np.asfortranarray(a) if fortran else a)(
        (np.random.default_rng(seed).normal(size=shape) * 3).astype(np.dtype(dtype))),
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple),
    st.booleans(), st.integers(0, 2**32 - 1))


@PROFILE
@given(arrays)
def test_any_array_loads_exactly_or_is_refused_with_a_reason(array):
    rows, reason = read_or_reason(write(npy_bytes(array)))
    usable = (array.dtype.kind == "f" and array.ndim == 2 and 0 not in array.shape
              and np.isfinite(array).all())
    if usable:
        assert reason is None, reason
        np.testing.assert_array_equal(rows, array.astype(np.float32))
    else:
        assert rows is None


def mutate(data: bytes, how: str, at: int, value: int, length: int) -> bytes:
    if not data:
        return data
    at %= len(data)
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (value or 1)]) + data[at + 1:]
    if how == "truncate":
        return data[:at]
    if how == "insert":
        return data[:at] + bytes([value]) * length + data[at:]
    return data[:at] + data[at + length:]  # delete


@PROFILE
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["<f4", ">f8", "<f2"]), st.booleans(),
       st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                          st.integers(0, 10**6), st.integers(0, 255), st.integers(1, 64)),
                min_size=1, max_size=4))
def test_corrupted_bytes_never_crash(frames, dim, dtype, fortran, mutations):
    array = np.arange(frames * dim, dtype=np.float64).reshape(frames, dim).astype(dtype)
    data = npy_bytes(np.asfortranarray(array) if fortran else array)
    header_len = len(data) - array.nbytes
    for how, at, value, length in mutations:
        # aim half of the mutations at the header, where the parser lives
        data = mutate(data, how, at % header_len if value % 2 else at, value, length)
    read_or_reason(write(data))


def raw_npy(descr: str, shape: tuple, fortran: bool, body: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + body  # the magic string is part of what numpy wrote


@PROFILE
@given(st.lists(st.integers(0, 2**62), min_size=0, max_size=3).map(tuple),
       st.sampled_from(["<f4", "<f8", "<f2"]), st.booleans(), st.binary(max_size=256))
def test_declared_shapes_are_checked_against_the_file_before_anything_is_allocated(shape, descr, fortran, body):
    rows, reason = read_or_reason(write(raw_npy(descr, shape, fortran, body)))
    need = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize if shape else None
    if len(shape) == 2 and 0 not in shape and need > len(body):
        assert reason is not None and "truncated" in reason


class Trap:
    """Unpickling this creates a file: proof that something executed the pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@PROFILE
@given(st.integers(1, 5), st.sampled_from([0, 2, 4]))
def test_pickled_object_arrays_are_never_unpickled(n, protocol_shift):
    marker = os.path.join(WORK, f"unpickled-{n}-{protocol_shift}")
    array = np.empty((n, 1), dtype=object)
    for k in range(n):
        array[k, 0] = Trap(marker)
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    data = buf.getvalue()
    path = write(data)
    rows, reason = read_or_reason(path)
    assert rows is None and "object array" in reason
    # the same pickle behind a float header: read as raw numbers, or refused; never executed
    body = pickle.dumps(array, protocol=2 + protocol_shift // 2)
    read_or_reason(write(raw_npy("<f4", (1, max(1, len(body) // 4)), False, body)))
    assert not os.path.exists(marker)


files = st.lists(st.tuples(
    st.text(st.sampled_from("abAB_.-1 "), min_size=0, max_size=6),
    st.sampled_from(["_rgb.npy", "_flow.npy", ".npy"]),
    st.one_of(arrays.map(npy_bytes), st.binary(max_size=200))), min_size=1, max_size=8)


@PROFILE
@given(files)
def test_scan_records_every_file_as_a_video_or_a_skip(entries):
    root = tempfile.mkdtemp(dir=WORK)
    names = set()
    for stem, suffix, data in entries:
        name = stem + suffix
        if name in names or "/" in name:
            continue
        names.add(name)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    corpus = scan(root, "rgb")
    used = set()
    for v in corpus.videos:
        used.add(os.path.basename(v.rgb_path))
        if v.flow_path:
            used.add(os.path.basename(v.flow_path))
        rows, reason = read_or_reason(v.rgb_path)  # a listed video's header was good
        assert reason is None or "non-finite" in reason
    skipped = {os.path.basename(s.path) for s in corpus.skips if s.path}
    assert all(s.reason for s in corpus.skips)
    two_stream = any(n.endswith("_rgb.npy") for n in names)

    def video_of(name):
        for suffix in ("_rgb.npy", "_flow.npy") if two_stream else (".npy",):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name[:-4]

    skipped_ids = {s.video_id for s in corpus.skips}
    # nothing silently dropped: every file is used, or skipped itself or with its video
    assert {n for n in names if n not in used | skipped} <= {n for n in names if video_of(n) in skipped_ids}
    assert not used & skipped
