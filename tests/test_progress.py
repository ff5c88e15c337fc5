"""Progress lines: done of total, rate, ETA; in place on a terminal, throttled in logs."""

import io

from vgray.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_lines_are_throttled_and_the_last_one_always_shown():
    clock, lines = Clock(), []
    p = Progress(lines.append, "assign", 1000, "clips", tty=False, every=10, clock=clock)
    for _ in range(9):
        clock.now += 2
        p.advance(100)
    assert lines == ["assign: 500/1,000 clips (50%), 50 clips/s, ETA 10 s"]  # at 10 s
    clock.now += 2
    p.advance(100)
    assert lines[-1] == "assign: 1,000/1,000 clips (100%), 50 clips/s"


def test_terminal_line_is_rewritten_in_place_and_cleared():
    clock, stream = Clock(), io.StringIO()
    p = Progress(print, "embed", 4, "videos", tty=True, clock=clock, stream=stream)
    clock.now = 1.0
    p.advance(1)
    clock.now = 2.0
    p.advance(1)
    p.close()
    out = stream.getvalue()
    assert out.count("\r") == 3 and "embed: 2/4 videos (50%), 1 videos/s, ETA 2 s" in out
    assert out.endswith("\r\x1b[K") and "\n" not in out


def test_quiet_prints_nothing_and_eta_reads_well():
    clock, stream = Clock(), io.StringIO()
    p = Progress(None, "vocab", 10**6, "clips", tty=True, clock=clock, stream=stream)
    clock.now = 10
    p.advance(1000)
    p.close()
    assert stream.getvalue() == ""
    assert p.line().endswith("ETA 2 h 46 min")
