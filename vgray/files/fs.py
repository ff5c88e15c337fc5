"""Paths and URIs: local paths, s3:// (through s3.py: one request per read, write and listing
page, faults retried) and anything else pyarrow's filesystems understand (gs://, hdfs://, ...;
one filesystem object built per scheme and authority, not per call). Local paths keep the fast
local ways (mmap reads, write-then-rename); on object stores a PUT is atomic, so a file written
there also appears only when complete.

On a URI, a fault of the storage is a StorageError (errors.py), never an OSError that a caller
could take for a bad file; a missing file is a FileNotFoundError everywhere.
"""

from __future__ import annotations

import functools
import os

import pyarrow.fs as pafs

from . import s3
from ..errors import StorageError, first_line


def is_uri(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def normalize(path: str) -> str:
    """Local paths (and file:// URIs) become absolute local paths; other URIs stay as given."""
    path = str(path)
    if path.startswith("file://"):
        return os.path.abspath(path[len("file://"):])
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else os.path.dirname(path)


@functools.lru_cache(maxsize=None)
def _filesystem(scheme_and_authority: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(scheme_and_authority)[0]


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI other than s3:// (built once per scheme and authority)
    and the path inside it; the local filesystem for a local path."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    authority = rest.split("/", 1)[0]
    filesystem = _filesystem(f"{scheme}://{authority}")
    return filesystem, pafs.FileSystem.from_uri(path)[1]


def _storage(path: str, error: OSError) -> Exception:
    """An OSError of a pyarrow filesystem on a URI: missing, or a fault of the storage."""
    text = str(error)
    if isinstance(error, FileNotFoundError) or "not found" in text.lower() \
            or "does not exist" in text.lower():
        return FileNotFoundError(path)
    return StorageError(f"{path}: {first_line(error)}")


def remove(path: str) -> None:
    """Delete one file; FileNotFoundError if it is not there."""
    if not is_uri(path):
        os.remove(path)
    elif is_s3(path):
        if s3.head(path) is None:
            raise FileNotFoundError(path)
        s3.delete(path)
    else:
        filesystem, inner = resolve(path)
        try:
            filesystem.delete_file(inner)
        except OSError as e:
            raise _storage(path, e) from None


def stat(path: str) -> dict | None:
    """{size, mtime (a datetime or None)} of a file, or None where there is none."""
    if not is_uri(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        import datetime

        return {"size": st.st_size,
                "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)}
    if is_s3(path):
        return s3.head(path)
    filesystem, inner = resolve(path)
    try:
        info = filesystem.get_file_info(inner)
    except OSError as e:
        raise _storage(path, e) from None
    if info.type != pafs.FileType.File:
        return None
    return {"size": info.size, "mtime": info.mtime}


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    if is_s3(path):
        return s3.head(path) is not None or s3.is_prefix(path)
    filesystem, inner = resolve(path)
    try:
        return filesystem.get_file_info(inner).type != pafs.FileType.NotFound
    except OSError as e:
        raise _storage(path, e) from None


def isdir(path: str) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    if is_s3(path):
        return s3.is_prefix(path)
    filesystem, inner = resolve(path)
    try:
        return filesystem.get_file_info(inner).type == pafs.FileType.Directory
    except OSError as e:
        raise _storage(path, e) from None


def files(path: str) -> dict[str, int | None]:
    """name -> size of the files directly in a directory ({} if there is none): one listing
    (on S3 one request per 1,000 files)."""
    if not is_uri(path):
        if not os.path.isdir(path):
            return {}
        # Every entry, as listdir has them; what is not a regular file has no size (reading it
        # says why it cannot be used).
        return {e.name: e.stat().st_size if e.is_file() else None for e in os.scandir(path)}
    if is_s3(path):
        return s3.listing(path)
    filesystem, inner = resolve(path)
    selector = pafs.FileSelector(inner, allow_not_found=True, recursive=False)
    try:
        infos = filesystem.get_file_info(selector)
    except OSError as e:
        raise _storage(path, e) from None
    return {basename(i.path): i.size for i in infos if i.type == pafs.FileType.File}


def listdir(path: str) -> list[str]:
    """Names (not paths) of the files directly in a directory; [] if it does not exist."""
    if not is_uri(path):
        return os.listdir(path) if os.path.isdir(path) else []
    return list(files(path))


def size(path: str) -> int:
    found = stat(path)
    if found is None:
        raise FileNotFoundError(path)
    return found["size"]


def read_range(path: str, start: int, length: int) -> bytes:
    """`length` bytes from `start` (fewer at the end of the file): one request on S3."""
    if not is_uri(path):
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(length)
    if is_s3(path):
        return s3.get(path, start, length)
    filesystem, inner = resolve(path)
    try:
        with filesystem.open_input_file(inner) as f:
            return f.read_at(length, start)
    except OSError as e:
        raise _storage(path, e) from None


def read_bytes(path: str) -> bytes:
    """The whole file: one request on S3."""
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    if is_s3(path):
        return s3.get(path)
    filesystem, inner = resolve(path)
    try:
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    except OSError as e:
        raise _storage(path, e) from None


def upload(local: str, path: str) -> None:
    """A complete local file becomes the file at the URI `path` (one PUT on S3 up to 256 MB)."""
    if is_s3(path):
        s3.put(path, local)
        return
    filesystem, inner = resolve(path)
    try:
        with open(local, "rb") as src, filesystem.open_output_stream(inner) as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    except OSError as e:
        raise _storage(path, e) from None


def makedirs(path: str) -> None:
    """A directory for files to come (object stores have none to make)."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)


def remove_tree(path: str) -> None:
    if not is_uri(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    if is_s3(path):
        s3.delete_tree(path)
        return
    filesystem, inner = resolve(path)
    try:
        filesystem.delete_dir(inner)
    except FileNotFoundError:
        pass
    except OSError as e:
        error = _storage(path, e)
        if not isinstance(error, FileNotFoundError):
            raise error from None
