"""Progress of a stage: done of total, rate and ETA.

On a terminal the line is rewritten in place; anywhere else (CI, Ray job logs, a file) it is a
plain line at most every VGRAY_PROGRESS_EVERY seconds (default 10) and once at the end, so logs
stay readable for a corpus of a million videos.
"""

from __future__ import annotations

import os
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    def __init__(self, echo, stage: str, total: int, unit: str, tty: bool | None = None,
                 every: float | None = None, clock=time.monotonic, stream=None):
        self.echo, self.stage, self.total, self.unit = echo, stage, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every = float(os.environ.get("VGRAY_PROGRESS_EVERY", "10")) if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.drawn = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        share = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.stage}: {self.done:,}/{self.total:,} {self.unit} ({share:.0f}%), {rate:,.0f} {self.unit}/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def advance(self, n: int) -> None:
        self.done += int(n)
        if self.echo is None:
            return
        now = self.clock()
        final = self.done >= self.total
        if self.tty:
            if final or now - self.last >= 0.1:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self.last, self.drawn = now, True
        elif final or now - self.last >= self.every:
            self.echo(self.line())
            self.last = now

    def close(self) -> None:
        """Clear the in-place line (the stage's summary line follows it)."""
        if self.tty and self.drawn and self.echo is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
