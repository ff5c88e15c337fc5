"""The docs site as a reader sees it: builds it (mkdocs), serves it on loopback and opens pages in
headless Chromium through the DevTools protocol, as a reader would: a page on a desktop window,
a search typed into the search box (its results, once the search index is loaded), and a page of
wide tables on a phone-wide window.

    python benchmarks/docs_screenshots.py [--out benchmarks/results/screenshots]

Needs the `docs` extra and Chromium (`chromium` on PATH); prints what each page showed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import aiohttp  # comes with ray[default]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (file, page, width, height, search typed into the box)
SHOTS = [("getting-started.png", "getting-started/", 1280, 900, ""),
         ("search.png", "", 1280, 900, "autoscaling v2"),
         ("performance-phone.png", "performance/", 390, 1600, "")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(site: str):
    """The built site on a loopback HTTP server (the search's web worker needs http://)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


@contextlib.contextmanager
def chromium():
    """Headless Chromium with its DevTools endpoint; yields the websocket URL of its page."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or sys.exit(
        "chromium is not installed")
    port = free_port()
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu",
                             "--hide-scrollbars", f"--remote-debugging-port={port}",
                             f"--user-data-dir={tempfile.mkdtemp()}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ws = None
        for _ in range(100):
            with contextlib.suppress(OSError, StopIteration, ValueError):
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                ws = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                break
            time.sleep(0.2)
        if ws is None:
            sys.exit("chromium's DevTools endpoint did not come up")
        yield ws  # outside the suppress: an error of the caller's is never swallowed
    finally:
        proc.kill()
        proc.wait()


class Page:
    def __init__(self, sock):
        self.sock, self.n = sock, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.sock.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.sock.receive_json()
            if msg.get("id") == self.n:
                return msg.get("result", msg)

    async def value(self, expression: str):
        answer = await self.call("Runtime.evaluate", expression=expression)
        return answer["result"].get("value")


async def shoot(ws: str, url: str, out: str, width: int, height: int, query: str) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws, max_msg_size=0) as sock:
        page = Page(sock)
        await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=width < 600)
        await page.call("Page.navigate", url=url)
        await asyncio.sleep(3)
        said = await page.value("document.title")
        if query:
            await page.value("document.querySelector('input.md-search__input').focus()")
            await page.call("Input.insertText", text=query)
            for _ in range(60):  # the search index loads in a web worker
                await asyncio.sleep(0.5)
                meta = await page.value(
                    "document.querySelector('.md-search-result__meta')?.textContent || ''")
                if meta and "Initializing" not in meta and "Type to" not in meta:
                    break
            said += f"; search {query!r}: {meta}"
        else:
            tables = await page.value("document.querySelectorAll('table').length")
            said += f"; {tables} tables"
        shot = await page.call("Page.captureScreenshot", format="png")
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return said


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "screenshots"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    site = tempfile.mkdtemp(prefix="vgray-site-")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "--site-dir", site],
                   cwd=ROOT, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    with served(site) as base, chromium() as ws:
        for name, page, width, height, query in SHOTS:
            out = os.path.join(args.out, name)
            said = asyncio.run(shoot(ws, base + page, out, width, height, query))
            print(f"{name} ({width}x{height}): {said}")


if __name__ == "__main__":
    main()
