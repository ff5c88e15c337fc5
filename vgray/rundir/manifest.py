"""RUN/manifest.json as typed records: what made a RUN, the corpus it was made from, each stage's
record, where it ran, and for a sweep its vocabularies and combinations.

The JSON is read and written here and nowhere else: every other module reads attributes, so a
type checker finds every reader of a field. The file keeps the shape older vgray wrote, and a
manifest of an older vgray reads with the fields it lacks at what that vgray did
(TrainConfig.ADDED, a corpus without its listing fingerprint). A field of the wrong type, or a
required one missing, is one line (a VgrayError), never a KeyError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..files import fs
from ..config import TrainConfig
from ..errors import VgrayError
from .sweeptable import VARIED

REQUIRED = object()  # take(): the field has no default


def take(data: dict, key: str, kind, where: str, default: Any = None) -> Any:
    """data[key] checked to be of `kind` (None allowed unless required); `where` names the
    record for the error."""
    if key not in data or data[key] is None:
        if default is REQUIRED:
            raise VgrayError(f"manifest field {where}{key} is missing")
        return default
    value = data[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float,
                                                                                (int, float)))
    if not ok:
        wanted = getattr(kind, "__name__", None) or " or ".join(k.__name__ for k in kind)
        raise VgrayError(f"manifest field {where}{key} should be {wanted}, is {value!r}")
    return value


def record(data, where: str) -> dict:
    """A nested record, checked to be a JSON object."""
    if not isinstance(data, dict):
        raise VgrayError(f"manifest field {where.rstrip('.')} should be an object, is {data!r}")
    return data


@dataclass
class Stage:
    """One stage's record: done or not, its seconds, the figures its work measured (counts of
    videos, clips and shards; a fit's loss, device and timings) and the nodes it ran on."""

    status: str = "done"
    seconds: float | None = None  # None: not recorded (a sweep's derived cooccur)
    figures: dict = field(default_factory=dict)
    nodes: dict | None = None  # node id -> cluster.node_usage's facts

    @property
    def done(self) -> bool:
        return self.status == "done"

    # The figures other modules read; the others are shown as recorded.
    videos = property(lambda self: self.figures.get("videos"), doc="videos it went through")
    clips = property(lambda self: self.figures.get("clips"), doc="clips it tokenised")
    shards = property(lambda self: self.figures.get("shards"), doc="shards of its work")
    device = property(lambda self: self.figures.get("device"), doc="where a fit computed")
    final_loss = property(lambda self: self.figures.get("final_loss"), doc="GloVe's kept J")
    kept_epoch = property(lambda self: self.figures.get("kept_epoch"), doc="GloVe's kept epoch")
    inertia_per_clip = property(lambda self: self.figures.get("inertia_per_clip"),
                                doc="k-means inertia per sampled clip")
    kmeans_seconds = property(lambda self: self.figures.get("kmeans_seconds"),
                              doc="k-means' own seconds")

    @classmethod
    def from_dict(cls, data, where: str) -> "Stage":
        data = record(data, where)
        figures = {k: v for k, v in data.items() if k not in ("status", "seconds", "nodes")}
        return cls(take(data, "status", str, where, REQUIRED),
                   take(data, "seconds", (int, float), where), figures,
                   take(data, "nodes", dict, where))

    def to_dict(self) -> dict:
        out: dict = {"status": self.status}
        if self.seconds is not None:
            out["seconds"] = self.seconds
        out.update(self.figures)
        if self.nodes is not None:
            out["nodes"] = self.nodes
        return out


def stage_record(seconds: float, nodes: dict | None = None, **figures) -> Stage:
    """A finished stage; `nodes` is cluster.node_usage of where its work ran."""
    return Stage("done", round(seconds, 3), figures, nodes)


@dataclass
class CorpusRecord:
    """FEATURES as the scan found it, and the fingerprints a re-run compares: `fingerprint` of
    what the scan read, `listing` of one listing (None in a RUN of an older vgray)."""

    layout: str
    _: dataclasses.KW_ONLY
    videos: int
    clips: int
    train_videos: int
    rgb_dim: int | None
    flow_dim: int | None
    skipped_at_scan: int
    missing_train_ids: int
    fingerprint: str | None
    listing: str | None = None

    @classmethod
    def from_dict(cls, data) -> "CorpusRecord":
        data, w = record(data, "corpus."), "corpus."
        counted = {k: take(data, k, int, w, 0) for k in ("videos", "clips", "train_videos",
                                                          "skipped_at_scan", "missing_train_ids")}
        return cls(take(data, "layout", str, w, REQUIRED), **counted,
                   rgb_dim=take(data, "rgb_dim", int, w), flow_dim=take(data, "flow_dim", int, w),
                   fingerprint=take(data, "fingerprint", str, w),
                   listing=take(data, "listing", str, w))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class Counts:
    """What a finished command made: videos, their clips, inputs skipped."""

    videos: int
    clips: int
    skipped: int

    @classmethod
    def from_dict(cls, data) -> "Counts":
        data = record(data, "counts.")
        return cls(*(take(data, k, int, "counts.", REQUIRED) for k in ("videos", "clips",
                                                                         "skipped")))

    def to_dict(self) -> dict:
        return {"videos": self.videos, "skipped": self.skipped, "clips": self.clips}


@dataclass
class NodeTypeUse:
    """Nodes of one type and the seconds of vgray work on them (cluster.usage_by_type)."""

    nodes: int
    node_seconds: float


@dataclass
class Placement:
    """Where a finished invocation ran: nodes and node-seconds per node type, what the cluster
    was (autoscale.Capacity.to_dict), the GPU plan (demand.GpuPlan) and what was asked of the
    autoscaler, in order."""

    nodes: dict[str, NodeTypeUse] = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)
    gpu: dict | None = None
    asked: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "Placement":
        nodes = {t: NodeTypeUse(take(u, "nodes", int, f"nodes.{t}.", REQUIRED),
                                take(u, "node_seconds", (int, float), f"nodes.{t}.", REQUIRED))
                 for t, u in record(data.get("nodes") or {}, "nodes.").items()}
        cluster = dict(record(data.get("cluster") or {}, "cluster."))
        return cls(nodes, cluster, cluster.pop("gpu", None), cluster.pop("asked", []))

    @classmethod
    def of(cls, by_type: dict, cluster: dict, gpu: dict, asked: list) -> "Placement":
        """From cluster.usage_by_type, Capacity.to_dict, asdict(GpuPlan), Demand.history."""
        return cls({t: NodeTypeUse(u["nodes"], u["node_seconds"]) for t, u in by_type.items()},
                   dict(cluster), gpu, list(asked))

    def to_dict(self) -> dict:
        return {"nodes": {t: dataclasses.asdict(u) for t, u in self.nodes.items()},
                "cluster": {**self.cluster, "gpu": self.gpu, "asked": self.asked}}


@dataclass
class Retries:
    """Requests sent again and units run again, for one stage of one invocation."""

    requests: int = 0
    units: int = 0


@dataclass
class Invocation:
    """The last invocation: its seconds and the units of work it computed."""

    seconds: float
    work: dict


@dataclass
class FeatureReading:
    """How a `vgray embed`/`assign` read its FEATURES (--format, --hdf5-key, --hdf5-flow-key)."""

    input_format: str | None = None
    hdf5_key: str | None = None
    hdf5_flow_key: str | None = None


@dataclass
class Grid:
    """The values a sweep varies."""

    vocab_size: list[int]
    window: list[int]
    dim: list[int]


@dataclass
class VocabularyRecord:
    """One vocabulary of a sweep: its k-means and assign records, and how far its counts per
    distance reach (`counting_window` while they are being counted)."""

    vocab: Stage | None = None
    assign: Stage | None = None
    counted_window: int | None = None
    counting_window: int | None = None

    @classmethod
    def from_dict(cls, data, where: str) -> "VocabularyRecord":
        data = record(data, where)
        stages = {k: Stage.from_dict(data[k], f"{where}{k}.") if data.get(k) else None
                  for k in ("vocab", "assign")}
        return cls(**stages, counted_window=take(data, "counted_window", int, where),
                   counting_window=take(data, "counting_window", int, where))

    def to_dict(self) -> dict:
        out = {k: s.to_dict() for k, s in (("vocab", self.vocab), ("assign", self.assign)) if s}
        out.update({k: v for k, v in (("counted_window", self.counted_window),
                                      ("counting_window", self.counting_window)) if v is not None})
        return out


@dataclass
class Evaluation:
    """A sweep's evaluation of one combination: for which labels file, in how many seconds."""

    labels: str | None
    seconds: float


@dataclass
class Best:
    """The combination a sweep names best, by which measure, ties broken by which."""

    by: str | None
    ties_by: str | None
    combination: str


@dataclass
class SweepOrigin:
    """A combination's RUN: the sweep DIR it belongs to and its name there."""

    dir: str
    combination: str


@dataclass
class Manifest:
    """RUN/manifest.json: what made the RUN (command, FEATURES, settings and config), the state
    of each stage, the corpus, what it made and where it ran; a sweep's DIR adds its grid,
    vocabularies, evaluations and best combination, a combination's RUN where it came from."""

    command: str
    _: dataclasses.KW_ONLY
    status: str = "running"
    settings: dict = field(default_factory=dict)  # what must match to resume (resume.py)
    stages: dict[str, Stage] = field(default_factory=dict)
    features: str | None = None
    train_ids_file: str | None = None  # train and sweep: --train-ids as given
    config: TrainConfig | None = None  # train and sweep (a sweep's varied: the grid's largest)
    run: str | None = None  # embed and assign: the model's RUN
    reading: FeatureReading | None = None  # embed and assign
    grid: Grid | None = None  # sweep
    labels_file: str | None = None  # sweep
    retries: dict[str, Retries] | None = None
    versions: dict | None = None  # package -> version of what made the RUN (job.versions)
    corpus: CorpusRecord | None = None
    counts: Counts | None = None
    last_invocation: Invocation | None = None
    placement: Placement | None = None
    vocabularies: dict[str, VocabularyRecord] | None = None  # sweep: str(K) -> its vocabulary
    evaluated: dict[str, Evaluation] | None = None  # sweep: combination -> its evaluation
    best: Best | None = None  # sweep, once complete (None there too: none named best)
    sweep: SweepOrigin | None = None  # a combination's RUN

    # --- building ----------------------------------------------------------------------------
    @classmethod
    def for_train(cls, config: TrainConfig, *, features: str, train_ids_file: str | None,
                  settings: dict) -> "Manifest":
        """A RUN of `vgray train`, as train starts it and a sweep writes each combination."""
        return cls("train", settings=settings, features=features,
                   train_ids_file=train_ids_file, config=config)

    @classmethod
    def for_sweep(cls, config: TrainConfig, grid: Grid, *, features: str,
                  train_ids_file: str | None, labels_file: str | None,
                  settings: dict) -> "Manifest":
        """A sweep's DIR."""
        return cls("sweep", settings=settings, features=features, train_ids_file=train_ids_file,
                   config=config, grid=grid, labels_file=labels_file)

    @classmethod
    def for_apply(cls, command: str, *, features: str, run: str, reading: FeatureReading,
                  settings: dict) -> "Manifest":
        """The output of `vgray embed` or `vgray assign` with the model of `run`."""
        return cls(command, settings=settings, features=features, run=run, reading=reading)

    def resume_as(self, header: "Manifest") -> None:
        """This RUN resumed by the invocation `header` describes: what made it is the new
        invocation's (its settings, checked equal, stay as recorded); what was done is kept."""
        for name in ("command", "features", "train_ids_file", "config", "run", "reading", "grid",
                     "labels_file"):
            value = getattr(header, name)
            if value is not None or name in ("train_ids_file", "labels_file"):
                setattr(self, name, value)

    # --- reading -----------------------------------------------------------------------------
    def stage_done(self, name: str) -> bool:
        """Whether the stage is recorded done."""
        return name in self.stages and self.stages[name].done

    def settings_with_added(self) -> dict:
        """The settings the RUN was made with, those added since then at what an older vgray
        did (TrainConfig.ADDED)."""
        return {**TrainConfig.ADDED, **self.settings}

    @property
    def embeddings_layout(self) -> str:
        """How its embeddings are laid out (--embeddings), from its config or settings."""
        if self.config is not None:
            return self.config.embeddings
        return self.settings_with_added()["embeddings"] if self.command == "embed" else "files"

    @property
    def made_by(self) -> str | None:
        """The version of vgray that made it, where recorded."""
        return (self.versions or {}).get("vgray")

    def reading_for(self, features: str | None = None):
        """How the RUN read its FEATURES (corpus.Reading: its config, or for `vgray embed` and
        `assign` its own record); for another FEATURES than the RUN's, the format is detected."""
        from ..features.corpus import Reading

        if features is not None and fs.normalize(features) != self.features:
            return Reading()
        given = self.reading or self.config or FeatureReading()
        return Reading(given.input_format, given.hdf5_key, given.hdf5_flow_key)

    def vocabulary(self, vocab_size: int, *, fresh: bool = False) -> VocabularyRecord:
        """A sweep's record of one vocabulary (made empty if there is none, or if `fresh`)."""
        if self.vocabularies is None:
            self.vocabularies = {}
        if fresh:
            self.vocabularies[str(vocab_size)] = VocabularyRecord()
        return self.vocabularies.setdefault(str(vocab_size), VocabularyRecord())

    def retries_of(self, stage: str) -> Retries:
        """This invocation's retries of a stage (made zero if there are none)."""
        if self.retries is None:
            self.retries = {}
        return self.retries.setdefault(stage, Retries())

    # --- the JSON ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data) -> "Manifest":
        """A manifest as manifest.json holds it; VgrayError (one line) for a bad field."""
        data = record(data, "manifest")
        command = take(data, "command", str, "", REQUIRED)
        m = cls(command, status=take(data, "status", str, "", REQUIRED),
                settings=dict(take(data, "settings", dict, "", {})),
                stages={n: Stage.from_dict(s, f"stages.{n}.")
                        for n, s in take(data, "stages", dict, "", {}).items()},
                features=take(data, "features", str, ""),
                train_ids_file=take(data, "train_ids_file", str, ""),
                config=config_of(data, command), run=take(data, "run", str, ""),
                reading=(FeatureReading(**reading_fields(data["reading"]))
                         if data.get("reading") else None))
        read_sweep(m, data)
        read_outcome(m, data)
        return m

    def to_dict(self) -> dict:
        """The manifest as manifest.json holds it, in the order vgray writes its keys."""
        out: dict = {"settings": self.settings,
                     "stages": {n: s.to_dict() for n, s in self.stages.items()},
                     "command": self.command}
        if self.features is not None:
            out["features"] = self.features
        if self.command in ("train", "sweep"):
            out["train_ids_file"] = self.train_ids_file
        if self.config is not None:
            config = self.config.to_dict()
            out["config"] = ({k: v for k, v in config.items() if k not in VARIED}
                             if self.command == "sweep" else config)
        if self.run is not None:
            out.update(run=self.run, reading=dataclasses.asdict(self.reading or FeatureReading()))
        if self.grid is not None:
            out.update(grid=dataclasses.asdict(self.grid), labels_file=self.labels_file)
        out.update(outcome_dict(self))
        return out


def config_of(data: dict, command: str) -> TrainConfig | None:
    """The TrainConfig a manifest records (keys added since it was written at their defaults; a
    sweep's varied settings at the grid's largest values)."""
    given = take(data, "config", dict, "")
    if given is None:
        return None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in given.items() if k in known}
    if command == "sweep":
        grid = record(take(data, "grid", dict, "", REQUIRED), "grid.")
        values.update({k: max(take(grid, k, list, "grid.", REQUIRED)) for k in VARIED})
    try:
        return TrainConfig(**values)
    except VgrayError as e:
        raise VgrayError(f"manifest field config: {e}") from None
    except TypeError as e:
        raise VgrayError(f"manifest field config is malformed: {e}") from None


def reading_fields(data) -> dict:
    """The fields of an embed or assign's record of how it read FEATURES, checked."""
    data = record(data, "reading.")
    return {k: take(data, k, str, "reading.") for k in ("input_format", "hdf5_key",
                                                        "hdf5_flow_key")}


def read_sweep(m: Manifest, data: dict) -> None:
    """A sweep's own fields, and a combination's origin."""
    if data.get("grid") is not None:
        grid = record(data["grid"], "grid.")
        m.grid = Grid(*(list(take(grid, k, list, "grid.", REQUIRED)) for k in VARIED))
    m.labels_file = take(data, "labels_file", str, "")
    if data.get("vocabularies") is not None:
        m.vocabularies = {k: VocabularyRecord.from_dict(v, f"vocabularies.{k}.")
                          for k, v in record(data["vocabularies"], "vocabularies.").items()}
    if data.get("evaluated") is not None:
        m.evaluated = {c: Evaluation(take(record(e, f"evaluated.{c}."), "labels", str,
                                          f"evaluated.{c}."),
                                     take(e, "seconds", (int, float), f"evaluated.{c}.", 0.0))
                       for c, e in record(data["evaluated"], "evaluated.").items()}
    if data.get("best") is not None:
        best = record(data["best"], "best.")
        m.best = Best(take(best, "by", str, "best."), take(best, "ties_by", str, "best."),
                      take(best, "combination", str, "best.", REQUIRED))
    if data.get("sweep") is not None:
        origin = record(data["sweep"], "sweep.")
        m.sweep = SweepOrigin(take(origin, "dir", str, "sweep.", REQUIRED),
                              take(origin, "combination", str, "sweep.", REQUIRED))


def read_outcome(m: Manifest, data: dict) -> None:
    """What the invocations did: retries, versions, corpus, counts, work, placement."""
    if data.get("retries") is not None:
        m.retries = {s: Retries(take(record(r, f"retries.{s}."), "requests", int,
                                     f"retries.{s}.", 0),
                                take(r, "units", int, f"retries.{s}.", 0))
                     for s, r in record(data["retries"], "retries.").items()}
    m.versions = take(data, "versions", dict, "")
    if data.get("corpus"):
        m.corpus = CorpusRecord.from_dict(data["corpus"])
    if data.get("counts") is not None:
        m.counts = Counts.from_dict(data["counts"])
    if data.get("last_invocation") is not None:
        last = record(data["last_invocation"], "last_invocation.")
        m.last_invocation = Invocation(take(last, "seconds", (int, float), "last_invocation.", 0.0),
                                       dict(take(last, "work", dict, "last_invocation.", {})))
    if data.get("cluster") is not None or data.get("nodes") is not None:
        m.placement = Placement.from_dict(data)


def outcome_dict(m: Manifest) -> dict:
    """The JSON of what the invocations did, in the order vgray writes it."""
    out: dict = {}
    if m.retries is not None:
        out["retries"] = {s: dataclasses.asdict(r) for s, r in m.retries.items()}
    if m.versions is not None:
        out["versions"] = m.versions
    out["status"] = m.status
    if m.vocabularies is not None:
        out["vocabularies"] = {k: v.to_dict() for k, v in m.vocabularies.items()}
    if m.corpus is not None:
        out["corpus"] = m.corpus.to_dict()
    if m.counts is not None:
        out["counts"] = m.counts.to_dict()
    if m.evaluated is not None:
        out["evaluated"] = {c: dataclasses.asdict(e) for c, e in m.evaluated.items()}
    if m.command == "sweep" and (m.best is not None or m.status == "complete"):
        out["best"] = dataclasses.asdict(m.best) if m.best else None
    if m.last_invocation is not None:
        out["last_invocation"] = dataclasses.asdict(m.last_invocation)
    if m.placement is not None:
        out.update(m.placement.to_dict())
    if m.sweep is not None:
        out["sweep"] = dataclasses.asdict(m.sweep)
    return out
