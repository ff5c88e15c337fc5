"""Progress of a stage: done of total, rate and ETA.

On a terminal the line is rewritten in place; anywhere else (CI, Ray job logs, a file) it is a
plain line at most every VGRAY_PROGRESS_EVERY seconds (default 10) and once at the end if any
came before (a stage over sooner leaves only its own summary line), so logs stay readable for a
corpus of a million videos.
"""

from __future__ import annotations

import os
import sys
import time


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files', '1,500 words'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """One stage's progress: `done` of `total` `unit`, with its rate and ETA, shown through `echo`
    (None: shown nowhere) on `stream` in place on a terminal, else as a line every `every` s."""

    def __init__(self, echo, stage: str, total: int, unit: str, *, tty: bool | None = None,
                 every: float | None = None, clock=time.monotonic, stream=None):
        self.echo, self.stage, self.total, self.unit = echo, stage, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every = float(os.environ.get("VGRAY_PROGRESS_EVERY", "10")) if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.note = ""
        self.drawn = self.ended = self.logged = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        share = 100.0 * self.done / self.total if self.total else 100.0
        speed = f"{rate:,.0f}" if rate >= 10 or rate == 0 else f"{rate:.2g}"
        text = f"{self.stage}: {self.done:,}/{self.total:,} {self.unit} ({share:.0f}%), {speed} {self.unit}/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        if self.note:
            text += f", {self.note}"
        return text

    def set(self, done: int, note: str | None = None, seconds: float | None = None) -> None:
        """Move to `done` (absolute), with an optional figure such as the current loss; `seconds`
        into the stage, if given, is the stage's own clock (that of a remote task)."""
        if note is not None:
            self.note = note
        if seconds is not None:
            self.start = self.clock() - seconds
        self.advance(int(done) - self.done)

    def advance(self, n: int) -> None:
        self.done += int(n)
        final = self.done >= self.total
        if self.echo is None or (n == 0 and (not final or self.ended)):
            return  # nothing new to show; the final line is shown once
        self.ended = final
        now = self.clock()
        if self.tty:
            if final or now - self.last >= 0.1:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self.last, self.drawn = now, True
        elif (final and self.logged) or now - self.last >= self.every:
            self.echo(self.line())  # a stage over within `every` leaves only its summary line
            self.last, self.logged = now, True

    def close(self) -> None:
        """Clear the in-place line (the stage's summary line follows it)."""
        if self.tty and self.drawn and self.echo is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
