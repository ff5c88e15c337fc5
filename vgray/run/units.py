"""The units of work a stage hands to a worker, and the records a worker hands back.

Each stage says what one unit is (which videos, which vocabularies, where the outputs go) in a
small frozen dataclass, and every shard of every stage is accounted for by one `ShardStats`: the
marker a worker writes last, and what the driver sums into the stage's figures. Plain data: no
Ray, no torch; the stages build units, the worker (worker.py) runs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..features.corpus import Entry, Video


@dataclass(frozen=True)
class Count:
    """What a TokenizeUnit counts of its training videos: pairs up to `window`, either scaled at
    that window (train's reducers sum them) or kept per distance (a sweep derives each of its
    windows from them), partitioned by i mod `reducers`."""

    vocab_size: int
    window: int
    reducers: int
    by_distance: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """One vocabulary a shard is tokenised with, and where its share of the unit goes: the tokens
    part, the partial counts and the shard's marker, all under `root`."""

    root: str
    centroids: str
    tokens_part: str
    tokenize: bool = True      # False: its tokens are already in tokens_part (read back to count)
    count: Count | None = None


@dataclass(frozen=True)
class TokenizeUnit:
    """One shard read once and tokenised with every vocabulary (train passes one); with
    `tokens_dir` (vgray assign), each video's tokens of the first vocabulary also go to
    tokens_dir/{id}.npy."""

    shard: int
    videos: list[Video]
    train: list[bool]          # per video: counted (a training video) or only tokenised
    vocabularies: list[Vocabulary]
    tokens_dir: str | None = None


@dataclass(frozen=True)
class ReduceUnit:
    """Partition `partition` of one vocabulary's counts under `root`: every shard's partials
    summed exactly. Scaled counts go to root/cooccur/part-r; counts per distance go to
    root/bydistance/part-r (with `merge`; else that part is read back), and each (window, RUN
    roots) of `targets` gets its cooccur/part-r derived from them."""

    root: str
    partition: int
    shards: int
    count: Count
    merge: bool = True
    targets: tuple = ()        # ((window, (run root, ...)), ...): by distance only


@dataclass(frozen=True)
class EmbedUnit:
    """One shard's embeddings and concatenations, written under `root` (the vectors travel beside
    the unit, put once in the object store); with layout parquet, the shard's clips as one table
    (see config.EMBEDDINGS)."""

    root: str
    shard: int
    videos: list[Video]
    batch_clips: int
    layout: str = "files"      # or "parquet": one table of the shard's clips, no concatenation


@dataclass(frozen=True)
class ScanUnit:
    """A chunk of the listing of FEATURES whose headers a worker reads (the driver lists; the
    workers read): `chunk` is its place in the listing."""

    chunk: int
    entries: list[Entry]
    streams: str


@dataclass
class Scanned:
    """What a scan unit found: a Video or a Skip per entry, in order; where it ran; the requests
    sent again."""

    chunk: int
    found: list
    where: dict
    retries: int = 0


@dataclass(frozen=True)
class SampleUnit:
    """The k-means sample of one shard's training videos: each clip is drawn with `probability`;
    with `draws`, each sampled clip's draw comes back too (see worker.clip_draws)."""

    shard: int
    videos: list[Video]
    probability: float
    seed: int
    draws: bool = False


@dataclass
class ShardStats:
    """What one unit of a stage did: written by the worker as the shard's marker (last, once its
    outputs are complete) and returned to the driver, which sums the stage's with `totals`."""

    shard: int
    videos: int = 0
    clips: int = 0
    train_videos: int = 0
    pairs: int = 0
    skips: list = field(default_factory=list)   # Skip.to_dict() records
    seconds: float = 0.0
    device: str | None = None
    count_window: int | None = None  # counted per distance up to this window (a sweep)
    where: dict | None = None        # cluster.here() of the work
    retries: int = 0                 # requests to the storage sent again after a fault

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["node"] = (self.where or {}).get("node")
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "ShardStats":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def totals(stats: list[ShardStats]) -> dict:
    """A stage's figures from its shards' records: shards, videos, clips and skipped."""
    return {"shards": len(stats), "videos": sum(s.videos for s in stats),
            "clips": sum(s.clips for s in stats), "skipped": sum(len(s.skips) for s in stats)}


def first_skip(stats: list[ShardStats]) -> dict | None:
    """The first skip recorded in these records (what --strict fails on), or None."""
    return next((s.skips[0] for s in stats if s.skips), None)


@dataclass
class Fit:
    """A fit on one worker (k-means, GloVe): the figures the manifest records, where it ran, and
    the centroids where it made a vocabulary."""

    figures: dict
    where: dict
    centroids: object = None   # np.ndarray [K, D] of a k-means fit

    @property
    def device(self) -> str:
        return self.figures["device"]


@dataclass
class Reduced:
    """One reduce partition done: its merged non-zeros and where it ran."""

    partition: int
    nonzeros: int
    where: dict
    retries: int = 0
