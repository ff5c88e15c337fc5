"""`vgray sweep`: every combination of vocabulary sizes x windows x dimensions, trained from one
scan, one k-means sample, one pass over the features and one count per vocabulary, then
evaluated side by side.

What is shared, and why each combination still equals a separate `vgray train`:

- **one k-means sample.** Every clip has one seeded draw u in [0, 1) (worker.clip_draws); a
  train with K words samples the clips with u < p_K. The sweep samples with the largest p and
  keeps the draws: K's sample is then the clips with u < p_K, in the same order.
- **one pass over the features.** Each shard is read once and tokenised with every vocabulary
  (a TokenizeUnit takes several vocabularies); the blocks are those of `vgray train`.
- **one count per vocabulary.** Pairs are counted per distance up to the largest window
  (cooccur.count_by_distance); the scaled counts of any window w are derived exactly from them
  (cooccur.at_window), partitioned and ordered as train's reducers write them.
- **one GloVe per combination**, on the GPU worker where there is one, else on a shard worker
  with every core of its node: the same code and thread count as train.

Layout of DIR:

    manifest.json, skipped.jsonl, sweep.csv, report.html
    shared/K{K}/            vocab/centroids.npy, tokens/, bydistance/ (counts per distance)
    K{K}-w{W}-d{D}/         a RUN of `vgray train` without embeddings: vocab/, tokens/,
                            cooccur/, glove/, manifest.json, evaluation.json

A combination's RUN is used as it is by `vgray embed`, `evaluate`, `export`, `report` and
`VisualGlove.load`; `vgray train` with its settings and --out adds its embeddings and nothing
else. The sweep resumes like train: each finished piece (a vocabulary, a shard's tokens, a
vocabulary's counts, a combination) is kept, so adding a value to a list trains only the new
combinations.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import time

from ..files import fs
from ..run import stages
from ..config import TrainConfig
from ..features.corpus import read_train_ids
from ..errors import VgrayError
from .evaluate import evaluate, read_labels
from ..run.job import Job, stage_record, versions
from ..rundir.manifest import (Best, Counts, Evaluation, Grid, Manifest, Stage, SweepOrigin,
                               VocabularyRecord)
from ..progress import Progress
from ..run.resume import (Check, check_sweep, digest_file, make_shards, sweep_settings,
                          train_settings)
from ..rundir.store import WORK, RunDir, copy_file, read_json, save_npy, write_text
from ..rundir.sweeptable import TIE_BREAK, VARIED, SweepSummary, best_of, cell, name, tie_note
from ..run.units import Count, Fit, ReduceUnit, ShardStats, TokenizeUnit, Vocabulary, totals

PLOTTED = ("final_loss", "inertia_per_clip", "perplexity", "neighbour_share", "probe_accuracy",
           "retrieval_map")


# ---------------------------------------------------------------------------------------------
# The driver

def sweep(features: str, out: str, *, vocab_sizes: list[int], windows: list[int],
          dims: list[int], config: TrainConfig | None = None, train_ids: str | None = None,
          labels: str | None = None, echo=None, checked: Check | None = None) -> SweepSummary:
    """Train and evaluate every (K, window, dim) of the lists on FEATURES into DIR `out`.
    `checked` is what resume.check_sweep already found (FEATURES as it scanned it is not
    scanned again); without it the check runs here."""
    config = config or TrainConfig()
    grid = [(k, w, d) for k in sorted(set(vocab_sizes)) for w in sorted(set(windows))
            for d in sorted(set(dims))]
    if not grid:
        raise VgrayError("--vocab-size, --window and --dim each need at least one value")
    try:
        configs = {c: dataclasses.replace(config, **dict(zip(VARIED, c))) for c in grid}
    except ValueError as e:
        raise VgrayError(str(e)) from None
    label_map = read_labels(labels) if labels else None
    checked = checked or check_sweep(features, out, vocab_sizes=vocab_sizes, windows=windows,
                                     dims=dims, config=config, train_ids=train_ids,
                                     labels=labels, echo=echo)
    if checked.summary is not None:  # nothing to do: no Ray, no file written
        return checked.summary
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    old = RunDir(out).read_manifest()
    if old is not None and old.command != "sweep":
        raise VgrayError(f"{fs.normalize(out)} is a vgray {old.command} RUN, not a sweep; "
                         "use another --out")
    with Job(out, echo, features) as job:
        return _Sweep(job, features, config=config, configs=configs, train_ids=train_ids,
                      ids=ids, labels=labels, label_map=label_map).run(checked)


class _Sweep:
    def __init__(self, job: Job, features: str, *, config: TrainConfig, configs: dict,
                 train_ids: str | None, ids: list[str] | None, labels: str | None,
                 label_map: dict | None):
        self.job, self.run_dir, self.features, self.config = job, job.run, features, config
        self.configs, self.train_ids, self.ids = configs, train_ids, ids
        self.labels, self.label_map = labels, label_map
        self.grid = list(configs)
        self.vocab_sizes = sorted({k for k, _, _ in self.grid})
        self.window = max(w for _, w, _ in self.grid)  # counts are kept up to this distance
        self.echo = job.echo
        self.assigned: dict[int, list[ShardStats]] = {}  # K -> every shard's assign record

    # --- paths and state ------------------------------------------------------------------
    def shared(self, vocab_size: int) -> RunDir:
        return RunDir(self.run_dir.path("shared", f"K{vocab_size}"))

    def combo(self, c: tuple) -> RunDir:
        return RunDir(self.run_dir.path(name(*c)))

    def state(self, vocab_size: int) -> VocabularyRecord:
        return self.job.manifest.vocabulary(vocab_size)

    def trained(self, c: tuple) -> bool:
        m = self.combo(c).read_manifest()
        return bool(m and m.stage_done("glove")
                    and fs.exists(self.combo(c).path("glove", "vectors.npy")))

    def counted(self, c: tuple) -> bool:
        return all(fs.exists(self.combo(c).part("cooccur", r)) for r in range(self.config.reducers))

    # --- the run --------------------------------------------------------------------------
    def run(self, scanned: Check | None = None) -> SweepSummary:
        job, cfg = self.job, self.config
        settings = sweep_settings(cfg, self.features, self.ids)
        grid = Grid(self.vocab_sizes, sorted({w for _, w, _ in self.grid}),
                    sorted({d for _, _, d in self.grid}))
        job.open(Manifest.for_sweep(
            cfg, grid, features=self.features, settings=settings,
            train_ids_file=fs.normalize(self.train_ids) if self.train_ids else None,
            labels_file=fs.normalize(self.labels) if self.labels else None))
        # What the listing alone refuses is refused before Ray starts.
        listing = None if scanned and scanned.corpus else stages.listed(
            self.features, cfg.streams, cfg.strict, self.ids, cfg.follow_symlinks, cfg.reading())
        job.workers.connect()
        todo = [c for c in self.grid if not self.trained(c)]
        job.workers.plan_gpu(cfg, gpu_stages_left=bool(todo))
        needed = sorted({c[0] for c in todo})
        vocab_left = [k for k in needed if not (self.state(k).vocab and self.state(k).vocab.done
                                                and fs.exists(self.centroids(k)))]
        # The workers start first: they read the headers (the driver only lists FEATURES).
        job.workers.start(cfg, gpu_now=bool(vocab_left), train=bool(todo))
        self.corpus = corpus = stages.scan(job, self.features, cfg.streams, strict=cfg.strict,
                                           train_ids=self.ids, follow_symlinks=cfg.follow_symlinks, scanned=scanned,
                                           workers=cfg.workers, listing=listing,
                                           reading=cfg.reading())
        stages.enough_training_clips(corpus, max(self.vocab_sizes))
        if self.label_map is not None:
            self._check_labels()
        self.shards = make_shards(corpus.videos, cfg.shard_clips)
        for kind in ("vocab", "assign_shards", "reduce_parts", "glove", "evaluate"):
            job.count(kind, 0)
        self._vocabularies(vocab_left)
        self._counts(needed, todo)
        self._fits(todo)
        job.workers.gpu_stages_over()
        return self._finish()

    def centroids(self, vocab_size: int) -> str:
        return self.shared(vocab_size).path("vocab", "centroids.npy")

    def _check_labels(self) -> None:
        """--labels against the corpus, before any training: unknown ids and fewer than two
        classes are refused (evaluate checks the same against each RUN)."""
        known = {v.video_id for v in self.corpus.videos} | {s.video_id for s in self.corpus.skips}
        unknown = sorted(v for v in self.label_map if v not in known)
        if unknown:
            raise VgrayError(f"{len(unknown)} ids of --labels are not videos of FEATURES "
                             f"(first: {unknown[0]})")
        classes = {self.label_map[v.video_id] for v in self.corpus.videos
                   if v.video_id in self.label_map}
        if len(classes) < 2:
            raise VgrayError(f"--labels gives {len(classes)} class for the videos of FEATURES; "
                             "a probe needs at least 2")

    def _vocabularies(self, vocab_left: list[int]) -> None:
        """One sample, one k-means per missing vocabulary (a new vocabulary makes everything
        derived from an older one of that size void)."""
        job = self.job
        if not vocab_left:
            return
        for k in vocab_left:
            fs.remove_tree(self.shared(k).root)
            # Every combination of this K: of this grid, and (locally) of earlier ones.
            for entry in {name(*c) for c in self.grid if c[0] == k} | set(
                    fs.listdir(self.run_dir.root)):
                if entry.startswith(f"K{k}-w"):
                    fs.remove_tree(self.run_dir.path(entry))
            self.job.manifest.vocabulary(k, fresh=True)
        t = time.perf_counter()

        def save(cfg: TrainConfig, fit: Fit, where: list) -> None:
            nonlocal t
            save_npy(self.centroids(cfg.vocab_size), fit.centroids)
            self.state(cfg.vocab_size).vocab = stage_record(time.perf_counter() - t, where,
                                                            **fit.figures)
            job.count("vocab")
            job.save()
            job.echo(stages.vocab_line(cfg, fit.figures, time.perf_counter() - t))
            t = time.perf_counter()

        stages.fit_vocabularies(job, [self.configs[(k, *self.grid[0][1:])] for k in vocab_left],
                         self.corpus, self.shards, save)

    def _counts(self, needed: list[int], todo: list[tuple]) -> None:
        """Tokens of every vocabulary in one pass; per-distance counts merged per vocabulary;
        each combination's counts at its window."""
        recount = self._to_recount(needed, todo)
        count = Count(0, self.window, self.config.reducers, by_distance=True)
        self._tokenize(needed, recount, count)
        self._reduce(needed, todo, recount, count)

    def _to_recount(self, needed: list[int], todo: list[tuple]) -> list[int]:
        """The vocabularies whose counts per distance do not reach the windows still to train
        (an older, smaller count is removed)."""
        recount = []
        for k in needed:
            reach = max(c[1] for c in todo if c[0] == k)
            state = self.state(k)
            if (state.counted_window or 0) < reach:
                if state.counting_window != self.window:  # an older, smaller count
                    fs.remove_tree(self.shared(k).path("bydistance"))
                    fs.remove_tree(self.shared(k).path(WORK, "cooccur"))
                    state.counted_window = None
                    state.counting_window = self.window
                recount.append(k)
        self.job.save()
        return recount

    def _tokenize(self, needed: list[int], recount: list[int], count: Count) -> None:
        """Every shard tokenised once with every vocabulary it still owes (and counted where
        its vocabulary is recounted)."""
        job, cfg, shards = self.job, self.config, self.shards
        vocabularies: dict[int, list[Vocabulary]] = {s: [] for s in range(len(shards))}
        for k in needed:  # what each shard still owes each vocabulary, from one listing each
            run = self.shared(k)
            marked = run.done_shards("assign")
            merged = all(fs.exists(run.part("bydistance", r)) for r in range(cfg.reducers))
            partials = run.partials_listed() if k in recount and not merged else set()
            for s in range(len(shards)):
                counted = False
                if k in recount and not merged and s in marked:
                    counted = (ShardStats.from_dict(run.read_marker("assign", s)).count_window
                               == self.window
                               and all((s, r) in partials for r in range(cfg.reducers)))
                recounts = k in recount and not merged and not counted
                if s in marked and not recounts:
                    continue
                vocabularies[s].append(Vocabulary(
                    run.root, self.centroids(k), run.tokens_part(s),
                    tokenize=s not in marked,
                    count=dataclasses.replace(count, vocab_size=k) if recounts else None))
        corpus = self.corpus
        units = {s: TokenizeUnit(s, shards[s], [corpus.is_train(v.video_id) for v in shards[s]],
                                 vocabs) for s, vocabs in vocabularies.items() if vocabs}
        job.count("assign_shards", len(units))
        t = time.perf_counter()
        done = stages.tokenize(job, shards, units, cfg.workers, cfg.strict)
        for k in needed:
            fresh = {s: next(r for v, r in zip(units[s].vocabularies, records)
                             if v.root == self.shared(k).root)
                     for s, records in done.items()
                     if any(v.root == self.shared(k).root for v in units[s].vocabularies)}
            stats = self.assigned[k] = stages.records(self.shared(k), "assign", len(shards), fresh)
            self.state(k).assign = stage_record(
                time.perf_counter() - t, [("assign", r.where) for r in stats], **totals(stats))
        if units:
            self.echo(f"assign: {len(needed)} vocabularies, {len(units)} shards "
                      f"({time.perf_counter() - t:.1f} s)")

    def _reduce(self, needed: list[int], todo: list[tuple], recount: list[int],
                count: Count) -> None:
        """Merge what was counted, and derive each combination's counts at its window."""
        job, cfg, shards = self.job, self.config, self.shards
        t = time.perf_counter()
        reduce_units = []
        for k in needed:
            run = self.shared(k)
            merge = k in recount
            targets: dict[int, list[str]] = {}
            for c in todo:
                if c[0] == k and not self.counted(c):
                    targets.setdefault(c[1], []).append(self.combo(c).root)
            for r in range(cfg.reducers):
                merged = fs.exists(run.part("bydistance", r))
                missing = [(w, tuple(root for root in roots
                                     if not fs.exists(RunDir(root).part("cooccur", r))))
                           for w, roots in sorted(targets.items())]
                missing = tuple((w, roots) for w, roots in missing if roots)
                if (merge and not merged) or missing:
                    reduce_units.append(ReduceUnit(
                        run.root, r, len(shards), dataclasses.replace(count, vocab_size=k),
                        merge=merge and not merged, targets=missing))
        job.count("reduce_parts", len(reduce_units))
        stages.reduce(job, reduce_units, cfg.workers)
        for k in recount:
            state = self.state(k)
            state.counted_window = state.counting_window or self.window
            state.counting_window = None
            fs.remove_tree(self.shared(k).path(WORK, "cooccur"))  # merged for good
        job.save()
        if reduce_units:
            self.echo(f"cooccur: {len(recount)} vocabularies counted up to window {self.window}, "
                      f"{len(todo)} combinations derived ({time.perf_counter() - t:.1f} s)")

    def _fits(self, todo: list[tuple]) -> None:
        """GloVe for each combination still to train, then its RUN is completed. With a GPU plan,
        one after the other on the GPU worker (as train's GloVe stage); on CPU, in parallel on
        one shard worker per node, each fit with every core of its node."""
        job = self.job
        if not todo:
            return
        job.workers.ask_for_trainer("glove")
        if job.workers.gpu.request:
            for c in todo:
                self._prepare(c)
                t, where = time.perf_counter(), []
                fit = job.workers.fit_glove(self.combo(c).root, self.configs[c], where)
                self._record(c, fit, time.perf_counter() - t, where)
            return
        pool = job.workers.pool
        actors = pool.one_per_node()
        started = {}
        progress = Progress(self.echo, "glove", len(todo), "combinations")

        def submit(actor, n):
            self._prepare(todo[n])
            started[n] = time.perf_counter()
            return actor.glove.remote(self.combo(todo[n]).root, self.configs[todo[n]].to_dict())

        def on_done(n, fit: Fit, finished):
            self._record(todo[n], fit, time.perf_counter() - started[n], [("glove", fit.where)])
            progress.advance(1)

        # Fits of different K and dim take very different times: none is judged stalled.
        for actor in pool.run(0, list(range(len(todo))), submit, on_done, extra=actors,
                              own=False, stage="glove", deadline=False):
            pool.give(actor)
        progress.close()

    def _prepare(self, c: tuple) -> None:
        self._materialise(c)
        fs.remove_tree(self.combo(c).path("glove"))

    def _record(self, c: tuple, fit: Fit, seconds: float, where: list) -> None:
        """The combination's manifest and skip list, written once its GloVe is fitted: from now
        on it is a RUN."""
        job, cfg = self.job, self.configs[c]
        run = self.combo(c)
        job.count("glove")
        state = self.state(c[0])
        skips = self.skips(c[0])
        # Made as train makes its manifest (Manifest.for_train), of the shared records.
        manifest = Manifest.for_train(cfg, features=self.features,
                                      train_ids_file=job.manifest.train_ids_file,
                                      settings=train_settings(cfg, self.features, self.ids))
        manifest.versions, manifest.status = versions(), "complete"
        manifest.corpus = job.manifest.corpus
        manifest.stages = {
            "scan": job.manifest.stages["scan"], "vocab": state.vocab, "assign": state.assign,
            "cooccur": Stage("done", None, {"nonzeros": fit.figures["nonzeros"],
                                            "reducers": cfg.reducers,
                                            "derived_from_window": state.counted_window}),
            "glove": stage_record(seconds, where, **fit.figures)}
        manifest.counts = Counts(state.assign.videos, state.assign.clips, len(skips))
        manifest.sweep = SweepOrigin(self.run_dir.root, name(*c))
        stages.write_skips(run.path("skipped.jsonl"), skips)
        run.write_manifest(manifest)
        job.echo(stages.glove_line(f"glove {name(*c)}", fit.figures, seconds))

    def _materialise(self, c: tuple) -> None:
        """The combination's RUN gets its vocabulary's centroids, tokens and assign markers (hard
        links where local): a RUN as train leaves it, minus the embeddings."""
        run, shared = self.combo(c), self.shared(c[0])
        copy_file(self.centroids(c[0]), run.path("vocab", "centroids.npy"))
        for s in range(len(self.shards)):
            copy_file(shared.tokens_part(s), run.tokens_part(s))
            copy_file(shared.marker("assign", s), run.marker("assign", s))

    def skips(self, vocab_size: int) -> list[dict]:
        """Every input not used, and why (as train's skipped.jsonl), from the vocabulary's
        assign records (read once)."""
        if vocab_size not in self.assigned:
            self.assigned[vocab_size] = stages.records(self.shared(vocab_size), "assign",
                                                       len(self.shards), {})
        return stages.skip_records(self.corpus, [r.skips for r in self.assigned[vocab_size]])

    # --- evaluation and the table -----------------------------------------------------------
    def _evaluate(self, c: tuple) -> dict:
        """The combination's evaluation.json, computed once per labels file."""
        run = self.combo(c)
        key = digest_file(self.labels)
        if self.job.manifest.evaluated is None:
            self.job.manifest.evaluated = {}
        evaluated = self.job.manifest.evaluated
        record = evaluated.get(name(*c))
        if record is not None and record.labels == key and fs.exists(run.path("evaluation.json")):
            return read_json(run.path("evaluation.json"))
        t = time.perf_counter()
        result = evaluate(run.root, None, self.labels)
        evaluated[name(*c)] = Evaluation(key, round(time.perf_counter() - t, 3))
        self.job.count("evaluate")
        self.job.save()
        return result

    def _finish(self) -> SweepSummary:
        job = self.job
        rows = []
        progress = Progress(self.echo, "evaluate", len(self.grid), "combinations")
        for c in self.grid:
            result = self._evaluate(c)
            progress.advance(1)
            m = result["intrinsic"]
            held = m.get("held_out") or {}
            probe = (result.get("labels") or {}).get("representations", {}).get("visual_glove", {})
            manifest = self.combo(c).read_manifest()
            state = job.manifest.vocabulary(c[0])
            rows.append({
                "vocab_size": c[0], "window": c[1], "dim": c[2],
                "final_loss": m["final_loss"], "inertia_per_clip": m["inertia_per_clip"],
                "perplexity": m["perplexity"], "dead_words": m["dead_words"],
                "tiny_words": m["tiny_words"], "neighbour_share": m["neighbour_share"],
                "held_out_loss": held.get("loss"), "probe_accuracy": probe.get("probe_accuracy"),
                "retrieval_map": probe.get("retrieval_map"),
                "kmeans_seconds": state.vocab.kmeans_seconds,
                "seconds": round(manifest.stages["glove"].seconds
                                 + job.manifest.evaluated[name(*c)].seconds, 3)})
        progress.close()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        write_text(self.run_dir.path("sweep.csv"), text.getvalue())
        # Only a probe ranks combinations of different K and windows on one scale: J, inertia
        # and the neighbours' share each move with K or the window by construction.
        # Ties of the probe are broken by retrieval mAP (sweeptable.best_of).
        ranked_by = "probe_accuracy" if self.labels else None
        best = best_of(rows, ranked_by)
        write_text(self.run_dir.path("report.html"), report_page(rows, ranked_by, best))
        stages.write_skips(self.run_dir.path("skipped.jsonl"), self.skips(self.vocab_sizes[0]))
        job.manifest.best = Best(ranked_by, TIE_BREAK,
                                 name(*(best[k] for k in VARIED))) if best else None
        seconds = job.complete([v.vocab for v in job.manifest.vocabularies.values() if v.vocab])
        return SweepSummary(self.run_dir.root, rows, best, ranked_by, seconds, dict(job.work))


# ---------------------------------------------------------------------------------------------
# DIR/report.html

def report_page(rows: list[dict], ranked_by: str | None, best: dict | None) -> str:
    """One self-contained page: each measure against K, a line per (window, dim), and the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for measure in PLOTTED:
        if all(r[measure] is None for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for w, d in sorted({(r["window"], r["dim"]) for r in rows}):
            line = sorted((r["vocab_size"], r[measure]) for r in rows
                          if r["window"] == w and r["dim"] == d and r[measure] is not None)
            ax.plot([k for k, _ in line], [v for _, v in line], marker="o",
                    label=f"window {w}, dim {d}")
        ax.set_xlabel("vocabulary size K")
        ax.set_ylabel(measure.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        figures.append((measure, base64.b64encode(buf.getvalue()).decode("ascii")))
    head = list(rows[0])
    table = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r[h]))}</td>" for h in head)
                    + "</tr>" for r in rows)
    tie = tie_note(rows, ranked_by, best) if best else ""
    best_line = (f"<p>Best by {html.escape(str(ranked_by).replace('_', ' '))}: "
                 f"<b>{html.escape(name(*(best[k] for k in VARIED)))}</b>"
                 f"{html.escape('; ' + tie) if tie else ''}</p>" if best else "")
    note = ("" if best else
            "<p>Without --labels no combination is named best: J, inertia, perplexity and the "
            "neighbours' co-occurrence share each change with K or the window by construction. "
            "Pass --labels to rank the combinations by a linear probe.</p>")
    images = "".join(f'<figure><img alt="{m}" src="data:image/png;base64,{b}"></figure>'
                     for m, b in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vgray sweep</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:.5em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style>
</head><body><h1>vgray sweep: {len(rows)} combinations</h1>{best_line}{note}{images}
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>{table}</table></body></html>
"""
