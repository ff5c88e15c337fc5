"""Paths and URIs: local paths, or anything pyarrow's filesystems understand (s3://, gs://,
file://). Local paths keep the fast local ways (mmap reads, write-then-rename); on object stores
a PUT is atomic, so a file written there also appears only when complete.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


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


def remove(path: str) -> None:
    """Delete one file; FileNotFoundError if it is not there."""
    if not is_uri(path):
        os.remove(path)
        return
    fs, inner = resolve(path)
    try:
        fs.delete_file(inner)
    except OSError as e:
        if "not found" in str(e).lower() or "does not exist" in str(e).lower():
            raise FileNotFoundError(path) from None
        raise


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def info(path: str) -> pafs.FileInfo:
    fs, inner = resolve(path)
    return fs.get_file_info(inner)


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    return info(path).type != pafs.FileType.NotFound


def isdir(path: str) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    return info(path).type == pafs.FileType.Directory


def listdir(path: str) -> list[str]:
    """Names (not paths) of the files directly in a directory; [] if it does not exist."""
    if not is_uri(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs, inner = resolve(path)
    selector = pafs.FileSelector(inner, allow_not_found=True, recursive=False)
    return [basename(i.path) for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def size(path: str) -> int:
    return os.path.getsize(path) if not is_uri(path) else info(path).size


def open_input(path: str):
    """A seekable binary file for reading."""
    if not is_uri(path):
        return open(path, "rb")
    fs, inner = resolve(path)
    return fs.open_input_file(inner)


def read_bytes(path: str) -> bytes:
    with open_input(path) as f:
        return f.read()


def upload(local: str, path: str) -> None:
    fs, inner = resolve(path)
    with open(local, "rb") as src, fs.open_output_stream(inner) as dst:
        while chunk := src.read(1 << 24):
            dst.write(chunk)


def makedirs(path: str) -> None:
    if is_uri(path):
        fs, inner = resolve(path)
        fs.create_dir(inner, recursive=True)
    else:
        os.makedirs(path, exist_ok=True)


def remove_tree(path: str) -> None:
    if not is_uri(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    fs, inner = resolve(path)
    try:
        fs.delete_dir(inner)
    except (FileNotFoundError, OSError):
        pass


def parquet_source(path: str):
    """(source, filesystem) arguments for pyarrow.parquet readers."""
    if not is_uri(path):
        return path, None
    fs, inner = resolve(path)
    return inner, fs
