"""The table of a `vgray sweep`: a combination's name, the values of its flags, its rows
(sweep.csv read back), its ranking and ties, its summary. No Ray, no torch: the no-op check, the
command line and the sweep itself read the same table."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from ..files import fs
from ..errors import VgrayError

VARIED = ("vocab_size", "window", "dim")  # what a sweep varies; the rest is the sweep's own
INTEGERS = {"vocab_size", "window", "dim", "dead_words", "tiny_words"}


def parse_values(text: str, flag: str) -> list[int]:
    """'500,1000,1500' -> [500, 1000, 1500] (sorted, each once)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise VgrayError(f"{flag} takes integers separated by commas, got {text!r}") from None
    if not values:
        raise VgrayError(f"{flag} needs at least one value")
    return values


def name(vocab_size: int, window: int, dim: int) -> str:
    """A combination's RUN directory in DIR."""
    return f"K{vocab_size}-w{window}-d{dim}"


def cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# What breaks a tie of the sweep's ranking score: a probe accuracy is a share of a few hundred
# videos and often ties (at 1.0 on easy corpora); retrieval mAP ranks the whole order.
TIE_BREAK = "retrieval_map"


def _score(row: dict, key: str) -> float:
    # Rounded so that means of the same fold accuracies summed in another order still tie.
    value = row.get(key)
    return float("-inf") if value is None else round(float(value), 9)


def best_of(rows: list[dict], ranked_by: str | None) -> dict | None:
    """The row with the highest `ranked_by`; among ties the one with the highest retrieval mAP,
    then the first in the table (smallest K, then window, then dim). None without a score."""
    scored = [(n, r) for n, r in enumerate(rows) if ranked_by and r.get(ranked_by) is not None]
    if not scored:
        return None
    return max(scored, key=lambda nr: (_score(nr[1], ranked_by), _score(nr[1], TIE_BREAK),
                                       -nr[0]))[1]


def ties(rows: list[dict], ranked_by: str, best: dict) -> tuple[int, int]:
    """How many rows share `best`'s score, and how many of them its retrieval mAP too."""
    same = [r for r in rows if _score(r, ranked_by) == _score(best, ranked_by)]
    return len(same), sum(_score(r, TIE_BREAK) == _score(best, TIE_BREAK) for r in same)


def tie_note(rows: list[dict], ranked_by: str, best: dict) -> str:
    """'' when `best` is alone at its score, else how the tie was broken."""
    tied, still = ties(rows, ranked_by, best)
    if tied < 2:
        return ""
    note = (f"{tied} combinations tie on {ranked_by.replace('_', ' ')}, broken by retrieval mAP "
            f"({cell(best.get(TIE_BREAK))})")
    return note + (f", then by table order ({still} tie on both)" if still > 1 else "")


@dataclass
class SweepSummary:
    """What `vgray sweep` did: the table, the best combination (by `ranked_by`), the time."""

    out: str
    rows: list[dict]
    best: dict | None
    ranked_by: str | None
    seconds: float
    work: dict

    def line(self, verb: str = "") -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        head = ["vocab_size", "window", "dim", "final_loss", "perplexity", "neighbour_share",
                "probe_accuracy", "retrieval_map", "seconds"]
        out = ["  ".join(f"{h:>15}" if n > 2 else f"{h:>10}" for n, h in enumerate(head))]
        for r in self.rows:
            out.append("  ".join((f"{cell(r[h]):>15}" if n > 2 else f"{r[h]:>10}")
                                 for n, h in enumerate(head)))
        if self.best is not None:
            best = name(*(self.best[k] for k in VARIED))
            note = tie_note(self.rows, self.ranked_by, self.best)
            out.append(f"best by {self.ranked_by.replace('_', ' ')}: {best} "
                       f"({cell(self.best[self.ranked_by])}) -> {fs.join(self.out, best)}"
                       + (f"; {note}" if note else ""))
        else:
            out.append("no best without --labels: J, inertia, perplexity and the neighbours' "
                       "share each change with K or the window by construction")
        out.append(f"{len(self.rows)} combinations in {self.seconds:.1f} s; "
                   f"{fs.join(self.out, 'sweep.csv')}, {fs.join(self.out, 'report.html')}")
        return out


def read_rows(text: str) -> list[dict]:
    """sweep.csv back as the rows it was written from."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: None if v == "" else int(v) if k in INTEGERS else float(v)
                     for k, v in row.items()})
    return rows
