"""Object storage as a cloud has it, on loopback: a real S3-compatible server (moto) behind an
HTTP proxy that adds a fixed delay to every request and fails a share of them the way S3 does
under load (half answered 503 SlowDown with S3's XML body, half by a reset connection), counts
every request, and can be told that the storage is down (every request fails) or stalls (a
connection is accepted and never answered).

    with MotoServer() as moto, FaultyProxy(moto.endpoint, delay=0.03, fail=0.05) as proxy:
        env = {**os.environ, **proxy.env()}   # AWS_ENDPOINT_URL and credentials for vgray
        ...
        proxy.counts   # {"GET": n, "PUT": n, "HEAD": n, ...} of the requests that reached it

Used by tests/test_faults.py and benchmarks/s3.py; needs moto[server].
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ACCESS_KEY = "testing"
SECRET = "vgray-secret-0f3a9c71"  # must never show up in output, logs, errors or the run
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message>"
             b"<RequestId>vgray-proxy</RequestId><HostId>vgray-proxy</HostId></Error>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto in server mode on a free loopback port, for the life of the `with` block."""

    def __init__(self, log_path: str | None = None):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path

    def __enter__(self) -> "MotoServer":
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(240):
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.25)
        self.proc.kill()
        raise RuntimeError("moto did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def filesystem(self):
        """A pyarrow S3FileSystem straight to moto (no proxy), to set up and read back."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 access_key=ACCESS_KEY, secret_key=SECRET, region="us-east-1",
                                 allow_bucket_creation=True)


class FaultyProxy:
    """An HTTP/1.1 proxy to `upstream`: every request waits `delay` seconds, then a share `fail`
    of them (drawn with `seed`) fails, half with 503 SlowDown and half by a reset connection.
    `down` fails every request; `stall` accepts connections and never answers."""

    def __init__(self, upstream: str, delay: float = 0.0, fail: float = 0.0, seed: int = 0):
        self.upstream = upstream.split("://", 1)[1]
        self.delay, self.fail, self.down, self.stall = delay, fail, False, False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.failed = {"slowdown": 0, "reset": 0}
        self.log: list[tuple[str, str]] | None = None  # (method, path) of each request, if set
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def reset_counts(self) -> None:
        with self.lock:
            self.counts = {}
            self.failed = {"slowdown": 0, "reset": 0}

    def total(self) -> int:
        return sum(self.counts.values())

    def _fate(self, method: str, path: str) -> str:
        with self.lock:
            self.counts[method] = self.counts.get(method, 0) + 1
            if self.log is not None:
                self.log.append((method, path))
            if self.down:
                fate = "slowdown" if self.rng.random() < 0.5 else "reset"
            elif self.fail and self.rng.random() < self.fail:
                fate = "slowdown" if self.rng.random() < 0.5 else "reset"
            else:
                return "forward"
            self.failed[fate] += 1
            return fate

    def __enter__(self) -> "FaultyProxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            while chunk not in (b"\r\n", b""):  # trailers
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                if proxy.stall:
                    time.sleep(3600)
                    return
                if proxy.delay:
                    time.sleep(proxy.delay)
                fate = proxy._fate(self.command, self.path)
                if fate == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fate == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                # One upstream connection per client connection, kept alive (as S3 keeps them).
                for attempt in (1, 2):
                    conn = getattr(self, "upstream", None)
                    if conn is None:
                        conn = self.upstream = http.client.HTTPConnection(proxy.upstream,
                                                                          timeout=120)
                    try:
                        conn.putrequest(self.command, self.path, skip_host=True,
                                        skip_accept_encoding=True)
                        for name, value in self.headers.items():
                            conn.putheader(name, value)
                        conn.endheaders(body if body else None)
                        answer = conn.getresponse()
                        data = answer.read()
                        break
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        self.upstream = None
                        if attempt == 2:
                            raise
                self.send_response_only(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection",
                                            "content-length"):
                        self.send_header(name, value)
                length = answer.getheader("Content-Length")
                self.send_header("Content-Length",
                                 length if self.command == "HEAD" and length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def finish(self):
                super().finish()
                if getattr(self, "upstream", None) is not None:
                    self.upstream.close()

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass  # a client that went away (it timed out, or a reset) is part of the game

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
