"""S3 at one request per read, per write and per listing page, with its faults retried.

pyarrow's S3 filesystem asks for an object's size (a HEAD) before every read, even where the
listing already said it, and uploads every file, however small, in three requests (a multipart
upload); through its Python API neither can be avoided. At a cloud's latency per request that is
most of a run's time, so s3:// goes through botocore instead:

- a read is one GET (of a byte range where only a range is needed), a small write one PUT, a
  listing one request per 1,000 objects;
- one client per process, thread-safe, with up to MAX_IN_FLIGHT connections, so a worker keeps
  many requests in flight;
- throttling (503 SlowDown), 5xx answers, resets and timeouts are retried with backoff (botocore's
  "standard" mode); what still fails is a StorageError naming the storage error, never a verdict
  on the file. Retries are counted (`retries()`) for the manifest.

Credentials, region, endpoint and the attempts per request come from where AWS's own tools take
them (AWS_ACCESS_KEY_ID, ~/.aws, instance metadata, AWS_ENDPOINT_URL for an S3-compatible store,
AWS_MAX_ATTEMPTS).
"""

from __future__ import annotations

import os
import threading

from ..errors import StorageError

MAX_ATTEMPTS = 6         # per request, first try included (random backoff, 1 s, 2 s, ... 20 s),
                         # unless AWS_MAX_ATTEMPTS or ~/.aws/config's max_attempts says otherwise
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 20      # a connection that accepts and never answers is a fault after this
MAX_IN_FLIGHT = 64       # connections per process (see corpus.IO_THREADS)
SINGLE_PUT_MAX = 256 << 20  # larger files go up in parts of this size
MISSING = ("NoSuchKey", "404", "NotFound")

_lock = threading.Lock()
_client = None
_counts = {"calls": 0, "attempts": 0}


def split(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def client():
    """This process's S3 client (made once; botocore clients are thread-safe)."""
    global _client
    with _lock:
        if _client is None:
            import botocore.session
            from botocore.config import Config

            session = botocore.session.get_session()
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            attempts = session.get_config_variable("max_attempts") or MAX_ATTEMPTS
            config = Config(retries={"mode": "standard", "total_max_attempts": attempts},
                            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                            max_pool_connections=MAX_IN_FLIGHT,
                            s3={"addressing_style": "path" if endpoint else "auto"})
            region = (session.get_config_variable("region") or os.environ.get("AWS_REGION")
                      or "us-east-1")
            made = session.create_client("s3", region_name=region, endpoint_url=endpoint,
                                         config=config)
            made.meta.events.register("before-send.s3", _attempted)
            _client = made
        return _client


def _attempted(**kwargs) -> None:
    with _lock:
        _counts["attempts"] += 1


def retries() -> int:
    """Requests sent again after a fault, in this process so far."""
    with _lock:
        return _counts["attempts"] - _counts["calls"]


def _call(operation: str, uri: str, **params):
    """One S3 operation; its faults retried, then a StorageError; a missing key is a
    FileNotFoundError."""
    import botocore.exceptions as bex

    c = client()
    with _lock:
        _counts["calls"] += 1
    try:
        return getattr(c, operation)(**params)
    except bex.ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in MISSING:
            raise FileNotFoundError(uri) from None
        if code == "InvalidRange":
            return None
        raise StorageError(f"{uri}: {operation} failed: {code} {error.get('Message', '')}"
                           .strip()) from None
    except bex.BotoCoreError as e:  # connection reset, timeout, endpoint unreachable...
        raise StorageError(f"{uri}: {operation} failed: {e}") from None


def get(uri: str, start: int | None = None, length: int | None = None) -> bytes:
    """The object's bytes, or `length` bytes from `start` (fewer at its end): one GET."""
    bucket, key = split(uri)
    params = {"Bucket": bucket, "Key": key}
    if start is not None:
        if length == 0:
            return b""
        end = "" if length is None else str(start + length - 1)
        params["Range"] = f"bytes={start}-{end}"
    answer = _call("get_object", uri, **params)
    if answer is None:  # a range past the end
        return b""
    try:
        return answer["Body"].read()
    except Exception as e:  # noqa: BLE001 - the connection broke while the body came
        raise StorageError(f"{uri}: reading the answer failed: {e}") from None


def put(uri: str, local: str) -> None:
    """A local file becomes the object at `uri`: one PUT up to SINGLE_PUT_MAX, else a multipart
    upload in parts of that size. The object appears only when complete."""
    bucket, key = split(uri)
    size = os.path.getsize(local)
    if size <= SINGLE_PUT_MAX:
        with open(local, "rb") as f:
            _call("put_object", uri, Bucket=bucket, Key=key, Body=f.read())
        return
    upload = _call("create_multipart_upload", uri, Bucket=bucket, Key=key)["UploadId"]
    parts = []
    try:
        with open(local, "rb") as f:
            while chunk := f.read(SINGLE_PUT_MAX):
                n = len(parts) + 1
                etag = _call("upload_part", uri, Bucket=bucket, Key=key, UploadId=upload,
                             PartNumber=n, Body=chunk)["ETag"]
                parts.append({"PartNumber": n, "ETag": etag})
        _call("complete_multipart_upload", uri, Bucket=bucket, Key=key, UploadId=upload,
              MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            _call("abort_multipart_upload", uri, Bucket=bucket, Key=key, UploadId=upload)
        except (StorageError, FileNotFoundError):
            pass
        raise


def head(uri: str) -> dict | None:
    """{size, mtime (a datetime)} of the object, or None where there is none: one HEAD."""
    bucket, key = split(uri)
    try:
        answer = _call("head_object", uri, Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None
    return {"size": answer["ContentLength"], "mtime": answer["LastModified"]}


def listing(uri: str, recursive: bool = False) -> dict[str, int]:
    """name -> size of the objects directly under the prefix `uri` (every object below it, by
    path relative to it, with `recursive`): one request per 1,000 objects."""
    bucket, key = split(uri)
    prefix = key + "/" if key else ""
    params = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        params["Delimiter"] = "/"
    found = {}
    while True:
        answer = _call("list_objects_v2", uri, **params)
        for item in answer.get("Contents", []):
            name = item["Key"][len(prefix):]
            if name:
                found[name] = item["Size"]
        if not answer.get("IsTruncated"):
            return found
        params["ContinuationToken"] = answer["NextContinuationToken"]


def is_prefix(uri: str) -> bool:
    """Whether any object lies below `uri` (a "directory" of object storage): one request."""
    bucket, key = split(uri)
    if not key:
        try:
            _call("head_bucket", uri, Bucket=bucket)
            return True
        except FileNotFoundError:
            return False
    answer = _call("list_objects_v2", uri, Bucket=bucket, Prefix=key + "/", MaxKeys=1)
    return bool(answer.get("KeyCount"))


def delete(uri: str) -> None:
    bucket, key = split(uri)
    _call("delete_object", uri, Bucket=bucket, Key=key)


def delete_tree(uri: str) -> None:
    """Every object below the prefix `uri`: one listing, one request per 1,000 deletions."""
    bucket, key = split(uri)
    names = list(listing(uri, recursive=True))
    for at in range(0, len(names), 1000):
        batch = [{"Key": f"{key}/{n}"} for n in names[at:at + 1000]]
        _call("delete_objects", uri, Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
