"""`vgray sweep`: every combination of vocabulary sizes x windows x dimensions, trained from one
scan, one k-means sample, one pass over the features and one count per vocabulary, then
evaluated side by side.

What is shared, and why each combination still equals a separate `vgray train`:

- **one k-means sample.** Every clip has one seeded draw u in [0, 1) (pipeline.clip_draws); a
  train with K words samples the clips with u < p_K. The sweep samples with the largest p and
  keeps the draws: K's sample is then the clips with u < p_K, in the same order.
- **one pass over the features.** Each shard is read once and tokenised with every vocabulary
  (pipeline.tokenize takes several codebooks); the blocks are those of `vgray train`.
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

import pyarrow as pa

from . import cooccur, fs
from .cluster import connect, here, node_usage, plan_gpu, usage_by_type
from .config import TrainConfig
from .corpus import Skip, read_train_ids
from .errors import BadVideo, VgrayError
from .pipeline import (Job, _clips, _remove_tree, _versions, fit_vocabularies, glove_line,
                       partial_paths, skip_records, tokenize, vocab_line, write_skips)
from .progress import Progress
from .resume import (VARIED, SweepSummary, cell, complete_sweep, digest_file, make_shards, name,
                     sweep_settings, train_settings)

PLOTTED = ("final_loss", "inertia_per_clip", "perplexity", "neighbour_share", "probe_accuracy")
from .store import (COOCCUR_SCHEMA, WORK, RunDir, copy_file, distance_table, read_distance_table,
                    read_json, read_tokens, save_npy, shard_name, tokens_table, write_table,
                    write_text)

# ---------------------------------------------------------------------------------------------
# On the shard workers

def assign_shard(worker, shard: int, videos: list, train: list[bool], todo: list[dict],
                 window: int, reducers: int) -> dict:
    """One shard for each vocabulary of `todo` ({K, root, centroids, tokenise, count}): the
    features are read once and tokenised with every vocabulary to tokenise; the others' tokens
    are read back. Pairs of the training videos are counted per distance up to `window` where
    `count`; each vocabulary's tokens part, partials and marker go to its shared root (the marker
    last, with the fields of train's assign marker)."""
    t0, began = time.perf_counter(), worker._began()
    fresh = [t for t in todo if t["tokenise"]]
    books = [worker.codebook(t["centroids"]) for t in fresh]
    device = str(books[0].centers.device) if books else "cpu"
    is_train = {v.video_id: flag for v, flag in zip(videos, train)}
    ids, seqs, skips = [], {t["K"]: [] for t in fresh}, []
    if fresh:
        for v, tokens in tokenize(videos, books, worker.streams, worker.batch_clips, device):
            if isinstance(tokens, BadVideo):
                skips.append(Skip(v.video_id, v.rgb_path, str(tokens)).to_dict())
                continue
            ids.append(v.video_id)
            for t, words in zip(fresh, tokens):
                seqs[t["K"]].append(words)
    for t in todo:
        k_run, vocab_size = RunDir(t["root"]), t["K"]
        part = k_run.path("tokens", f"part-{shard_name(shard)}.parquet")
        old = k_run.read_marker("assign", shard) if k_run.done("assign", shard) else {}
        if t["tokenise"]:
            write_table(part, tokens_table(ids, seqs[vocab_size]))
            k_ids, k_seqs, k_skips = ids, seqs[vocab_size], skips
        else:
            tokens = read_tokens([part])
            k_ids, k_seqs, k_skips = list(tokens), list(tokens.values()), old["skips"]
        trained = [s for v, s in zip(k_ids, k_seqs) if is_train[v]]
        pairs = old.get("pairs", 0)
        if t["count"]:
            i, j, c = cooccur.count_by_distance(trained, vocab_size, window)
            paths = partial_paths(k_run, shard, reducers)
            for r, rows in enumerate(cooccur.partition(i, reducers)):
                write_table(paths[r], distance_table(i[rows], j[rows], c[rows]))
            pairs = int(len(i))
        where = here(began)
        k_run.mark("assign", shard, {
            "shard": shard, "node": where["node"], "device": device.split(":")[0],
            "videos": len(k_ids), "clips": int(sum(len(s) for s in k_seqs)),
            "train_videos": len(trained), "pairs": pairs, "skips": k_skips,
            "count_window": window if t["count"] else old.get("count_window"),
            "seconds": round(time.perf_counter() - t0, 3), "where": where})
    return {"shard": shard, "where": here(began)}


def reduce_partition(worker, root: str, partition: int, shards: int, reducers: int,
                     vocab_size: int, merge: bool, targets: list[tuple[int, list[str]]]) -> dict:
    """Partition r of one vocabulary: with `merge`, every shard's per-distance partials are
    summed into bydistance/part-r (else it is read back); then for each (window, RUNs) of
    `targets`, the counts at that window are written to each RUN's cooccur/part-r, exactly as
    train's reducer writes them."""
    began = worker._began()
    k_run = RunDir(root)
    merged = k_run.path("bydistance", f"part-{partition:05d}.parquet")
    if merge:
        parts = [read_distance_table(partial_paths(k_run, s, reducers)[partition])
                 for s in range(shards)]
        i, j, c = cooccur.merge_by_distance(parts, vocab_size)
        write_table(merged, distance_table(i, j, c))
    else:
        i, j, c = read_distance_table(merged)
    for window, roots in targets:
        wi, wj, s = cooccur.at_window(i, j, c, window)
        table = pa.table([wi, wj, cooccur.weights(s, window)], schema=COOCCUR_SCHEMA)
        for run_root in roots:
            write_table(RunDir(run_root).path("cooccur", f"part-{partition:05d}.parquet"), table)
    return {"partition": partition, "nonzeros": int(len(i)), "where": here(began)}


# ---------------------------------------------------------------------------------------------
# The driver

def sweep(features: str, out: str, vocab_sizes: list[int], windows: list[int], dims: list[int],
          config: TrainConfig | None = None, train_ids: str | None = None,
          labels: str | None = None, echo=None) -> SweepSummary:
    """Train and evaluate every (K, window, dim) of the lists on FEATURES into DIR `out`."""
    from .evaluate import read_labels

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
    done = complete_sweep(features, out, vocab_sizes, windows, dims, config, train_ids, labels,
                          echo)
    if done is not None:  # nothing to do: no Ray, no file written
        return done
    features = fs.normalize(features)
    ids = read_train_ids(train_ids) if train_ids else None
    old = RunDir(out).read_manifest()
    if old is not None and old.get("command") != "sweep":
        raise VgrayError(f"{fs.normalize(out)} is a vgray {old.get('command')} RUN, not a sweep; "
                         "use another --out")
    connect()
    with Job(out, echo) as job:
        return _Sweep(job, features, config, configs, train_ids, ids, labels, label_map).run()


class _Sweep:
    def __init__(self, job: Job, features: str, config: TrainConfig, configs: dict,
                 train_ids: str | None, ids: list[str] | None, labels: str | None,
                 label_map: dict | None):
        self.job, self.run_dir, self.features, self.config = job, job.run, features, config
        self.configs, self.train_ids, self.ids = configs, train_ids, ids
        self.labels, self.label_map = labels, label_map
        self.grid = list(configs)
        self.vocab_sizes = sorted({k for k, _, _ in self.grid})
        self.window = max(w for _, w, _ in self.grid)  # counts are kept up to this distance
        self.echo = job.echo

    # --- paths and state ------------------------------------------------------------------
    def shared(self, vocab_size: int) -> RunDir:
        return RunDir(self.run_dir.path("shared", f"K{vocab_size}"))

    def combo(self, c: tuple) -> RunDir:
        return RunDir(self.run_dir.path(name(*c)))

    def state(self, vocab_size: int) -> dict:
        return self.job.manifest.setdefault("vocabularies", {}).setdefault(str(vocab_size), {})

    def trained(self, c: tuple) -> bool:
        m = self.combo(c).read_manifest()
        return bool(m and m.get("stages", {}).get("glove", {}).get("status") == "done"
                    and fs.exists(self.combo(c).path("glove", "vectors.npy")))

    def counted(self, c: tuple) -> bool:
        return all(fs.exists(self.combo(c).path("cooccur", f"part-{r:05d}.parquet"))
                   for r in range(self.config.reducers))

    # --- the run --------------------------------------------------------------------------
    def run(self) -> SweepSummary:
        job, cfg = self.job, self.config
        settings = sweep_settings(cfg, self.features, self.ids)
        job.open({"command": "sweep", "features": self.features,
                  "train_ids_file": fs.normalize(self.train_ids) if self.train_ids else None,
                  "config": {k: v for k, v in cfg.to_dict().items() if k not in VARIED},
                  "grid": {"vocab_size": self.vocab_sizes,
                           "window": sorted({w for _, w, _ in self.grid}),
                           "dim": sorted({d for _, _, d in self.grid})},
                  "labels_file": fs.normalize(self.labels) if self.labels else None}, settings)
        job.gpu = plan_gpu(cfg.device, job.capacity, cfg.gpu_wait)
        self.corpus = corpus = job.scan(self.features, cfg.streams, cfg.strict, self.ids,
                                        follow_symlinks=cfg.follow_symlinks)
        if not corpus.train_videos:
            raise VgrayError("none of the --train-ids has usable features")
        if self.label_map is not None:
            self._check_labels()
        self.shards = make_shards(corpus.videos, cfg.shard_clips)
        todo = [c for c in self.grid if not self.trained(c)]
        needed = sorted({c[0] for c in todo})
        vocab_left = [k for k in needed if not (self.state(k).get("vocab", {}).get("status") == "done"
                                                and fs.exists(self.centroids(k)))]
        job.hold_gpu = job.gpu.request and bool(todo)
        job.start_workers(cfg, gpu_now=bool(vocab_left), train=bool(todo))
        job.work.update(vocab=0, assign_shards=0, reduce_parts=0, glove=0, evaluate=0)
        self._vocabularies(vocab_left)
        self._counts(needed, todo)
        self._fits(todo)
        job.hold_gpu = False
        job.release_gpu_worker()
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
            _remove_tree(self.shared(k).root)
            # Every combination of this K: of this grid, and (locally) of earlier ones.
            for entry in {name(*c) for c in self.grid if c[0] == k} | set(
                    fs.listdir(self.run_dir.root)):
                if entry.startswith(f"K{k}-w"):
                    _remove_tree(self.run_dir.path(entry))
            self.job.manifest.setdefault("vocabularies", {})[str(k)] = {}
        t = time.perf_counter()

        def save(cfg: TrainConfig, result: dict, where: list) -> None:
            nonlocal t
            save_npy(self.centroids(cfg.vocab_size), result.pop("centroids"))
            self.state(cfg.vocab_size)["vocab"] = {
                "status": "done", "seconds": round(time.perf_counter() - t, 3),
                "nodes": node_usage([(kind, w) for kind, w in where if w]), **result}
            job.work["vocab"] += 1
            job.save()
            job.echo(vocab_line(cfg, result, time.perf_counter() - t))
            t = time.perf_counter()

        fit_vocabularies(job, [self.configs[(k, *self.grid[0][1:])] for k in vocab_left],
                         self.corpus, self.shards, save)

    def _counts(self, needed: list[int], todo: list[tuple]) -> None:
        """Tokens of every vocabulary in one pass; per-distance counts merged per vocabulary;
        each combination's counts at its window."""
        job, cfg, shards = self.job, self.config, self.shards
        # Vocabularies whose counts per distance do not reach the windows still to train.
        recount = []
        for k in needed:
            reach = max(c[1] for c in todo if c[0] == k)
            state = self.state(k)
            if state.get("counted_window", 0) < reach:
                if state.get("counting_window") != self.window:  # an older, smaller count
                    _remove_tree(self.shared(k).path("bydistance"))
                    _remove_tree(self.shared(k).path(WORK, "cooccur"))
                    state.pop("counted_window", None)
                    state["counting_window"] = self.window
                recount.append(k)
        job.save()

        def work(k: int, shard: int) -> dict | None:
            run = self.shared(k)
            marker = run.read_marker("assign", shard) if run.done("assign", shard) else None
            count = k in recount and not (marker and marker.get("count_window") == self.window
                                          and all(fs.exists(p) for p in
                                                  partial_paths(run, shard, cfg.reducers)))
            merged_all = all(fs.exists(run.path("bydistance", f"part-{r:05d}.parquet"))
                             for r in range(cfg.reducers))
            count = count and not merged_all
            if marker is not None and not count:
                return None
            return {"K": k, "root": run.root, "centroids": self.centroids(k),
                    "tokenise": marker is None, "count": count}

        units = {s: [w for w in (work(k, s) for k in needed) if w] for s in range(len(shards))}
        units = {s: u for s, u in units.items() if u}
        job.work["assign_shards"] = len(units)
        t = time.perf_counter()
        if units:
            corpus = self.corpus
            fresh = {s: any(u["tokenise"] for u in units[s]) for s in units}
            progress = Progress(self.echo, "assign", sum(_clips(shards[s]) for s in units), "clips")

            def on_done(s, stats, finished):
                if cfg.strict:
                    for k in needed:
                        skips = self.shared(k).read_marker("assign", s)["skips"]
                        if skips:
                            raise VgrayError(f"{skips[0]['video_id']}: {skips[0]['reason']} "
                                             f"({skips[0]['path']}) [--strict]")
                progress.advance(_clips(shards[s]))

            job.run_shards("assign", cfg.workers, sorted(units), lambda actor, s: actor.sweep_assign.remote(
                s, shards[s], [corpus.is_train(v.video_id) for v in shards[s]], units[s],
                self.window, cfg.reducers), on_done, gpu=any(fresh.values()))
            progress.close()
        for k in needed:
            markers = [self.shared(k).read_marker("assign", s) for s in range(len(shards))]
            self.state(k)["assign"] = {
                "status": "done", "seconds": round(time.perf_counter() - t, 3),
                "nodes": node_usage([("assign", m.get("where")) for m in markers if m.get("where")]),
                "shards": len(shards), "videos": sum(m["videos"] for m in markers),
                "clips": sum(m["clips"] for m in markers),
                "skipped": sum(len(m["skips"]) for m in markers)}
        if units:
            self.echo(f"assign: {len(needed)} vocabularies, {len(units)} shards "
                      f"({time.perf_counter() - t:.1f} s)")

        # Reduce (merge what was counted) and derive each combination's window.
        t = time.perf_counter()
        reduce_units = []
        for k in needed:
            merge = k in recount
            targets: dict[int, list[str]] = {}
            for c in todo:
                if c[0] == k and not self.counted(c):
                    targets.setdefault(c[1], []).append(self.combo(c).root)
            for r in range(cfg.reducers):
                merged = fs.exists(self.shared(k).path("bydistance", f"part-{r:05d}.parquet"))
                missing = [(w, [root for root in roots if not fs.exists(
                    RunDir(root).path("cooccur", f"part-{r:05d}.parquet"))])
                    for w, roots in sorted(targets.items())]
                missing = [(w, roots) for w, roots in missing if roots]
                if (merge and not merged) or missing:
                    reduce_units.append((k, r, merge and not merged, missing))
        job.work["reduce_parts"] = len(reduce_units)
        if reduce_units:
            progress = Progress(self.echo, "cooccur: reduce", len(reduce_units), "partitions")
            job.run_shards("reduce", cfg.workers, list(range(len(reduce_units))),
                           lambda actor, n: actor.sweep_reduce.remote(
                               self.shared(reduce_units[n][0]).root, reduce_units[n][1],
                               len(shards), cfg.reducers, reduce_units[n][0],
                               reduce_units[n][2], reduce_units[n][3]),
                           lambda n, stats, finished: progress.advance(1))
            progress.close()
        for k in recount:
            state = self.state(k)
            state["counted_window"] = state.pop("counting_window", self.window)
            _remove_tree(self.shared(k).path(WORK, "cooccur"))  # merged for good
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
        job.demand.ask("glove", cpus=len(job.pool), gpu=job.gpu.request)
        if job.gpu.request:
            for c in todo:
                self._prepare(c)
                t, where = time.perf_counter(), []
                result = job.fit_glove(self.combo(c).root, self.configs[c], where)
                self._record(c, result, time.perf_counter() - t, where)
            return
        actors = job.pool.one_per_node()
        started = {}
        progress = Progress(self.echo, "glove", len(todo), "combinations")

        def submit(actor, n):
            self._prepare(todo[n])
            started[n] = time.perf_counter()
            return actor.glove.remote(self.combo(todo[n]).root, self.configs[todo[n]].to_dict())

        def on_done(n, result, finished):
            self._record(todo[n], result, time.perf_counter() - started[n],
                         [("glove", result.pop("where"))])
            progress.advance(1)

        for actor in job.pool.run(0, list(range(len(todo))), submit, on_done, extra=actors,
                                  own=False):
            job.pool.give(actor)
        progress.close()

    def _prepare(self, c: tuple) -> None:
        self._materialise(c)
        _remove_tree(self.combo(c).path("glove"))

    def _record(self, c: tuple, result: dict, seconds: float, where: list) -> None:
        """The combination's manifest and skip list, written once its GloVe is fitted: from now
        on it is a RUN."""
        job, cfg = self.job, self.configs[c]
        run, shared = self.combo(c), self.shared(c[0])
        job.work["glove"] += 1
        seconds = round(seconds, 3)
        state = self.state(c[0])
        nonzeros = result["nonzeros"]
        skips = self.skips(shared)
        manifest = {
            "command": "train", "features": self.features,
            "train_ids_file": job.manifest.get("train_ids_file"), "config": cfg.to_dict(),
            "settings": train_settings(cfg, self.features, self.ids), "versions": _versions(),
            "status": "complete", "corpus": job.manifest["corpus"],
            "stages": {"scan": job.manifest["stages"]["scan"], "vocab": state["vocab"],
                       "assign": state["assign"],
                       "cooccur": {"status": "done", "nonzeros": nonzeros,
                                   "reducers": cfg.reducers,
                                   "derived_from_window": state["counted_window"]},
                       "glove": {"status": "done", "seconds": seconds,
                                 "nodes": node_usage([(kind, w) for kind, w in where if w]),
                                 **result}},
            "counts": {"videos": state["assign"]["videos"], "clips": state["assign"]["clips"],
                       "skipped": len(skips)},
            "sweep": {"dir": self.run_dir.root, "combination": name(*c)}}
        write_skips(run.path("skipped.jsonl"), skips)
        run.write_manifest(manifest)
        job.echo(glove_line(f"glove {name(*c)}", result, seconds))

    def _materialise(self, c: tuple) -> None:
        """The combination's RUN gets its vocabulary's centroids, tokens and assign markers (hard
        links where local): a RUN as train leaves it, minus the embeddings."""
        run, shared = self.combo(c), self.shared(c[0])
        copy_file(self.centroids(c[0]), run.path("vocab", "centroids.npy"))
        for s in range(len(self.shards)):
            part = f"part-{shard_name(s)}.parquet"
            copy_file(shared.path("tokens", part), run.path("tokens", part))
            copy_file(shared.marker("assign", s), run.marker("assign", s))

    def skips(self, shared: RunDir) -> list[dict]:
        """Every input not used, and why (as train's skipped.jsonl)."""
        return skip_records(self.corpus, [shared.read_marker("assign", s)["skips"]
                                          for s in range(len(self.shards))])

    # --- evaluation and the table -----------------------------------------------------------
    def _evaluate(self, c: tuple) -> dict:
        """The combination's evaluation.json, computed once per labels file."""
        from .evaluate import evaluate

        run = self.combo(c)
        key = digest_file(self.labels)
        record = self.job.manifest.setdefault("evaluated", {}).get(name(*c))
        if record is not None and record.get("labels") == key and fs.exists(run.path("evaluation.json")):
            return read_json(run.path("evaluation.json"))
        t = time.perf_counter()
        result = evaluate(run.root, None, self.labels)
        self.job.manifest["evaluated"][name(*c)] = {
            "labels": key, "seconds": round(time.perf_counter() - t, 3)}
        self.job.work["evaluate"] += 1
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
            state = job.manifest["vocabularies"][str(c[0])]
            rows.append({
                "vocab_size": c[0], "window": c[1], "dim": c[2],
                "final_loss": m["final_loss"], "inertia_per_clip": m["inertia_per_clip"],
                "perplexity": m["perplexity"], "dead_words": m["dead_words"],
                "tiny_words": m["tiny_words"], "neighbour_share": m["neighbour_share"],
                "held_out_loss": held.get("loss"), "probe_accuracy": probe.get("probe_accuracy"),
                "retrieval_map": probe.get("retrieval_map"),
                "kmeans_seconds": state["vocab"].get("kmeans_seconds"),
                "seconds": round(manifest["stages"]["glove"]["seconds"]
                                 + job.manifest["evaluated"][name(*c)]["seconds"], 3)})
        progress.close()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        write_text(self.run_dir.path("sweep.csv"), text.getvalue())
        # Only a probe ranks combinations of different K and windows on one scale: J, inertia
        # and the neighbours' share each move with K or the window by construction.
        ranked_by = "probe_accuracy" if self.labels else None
        scored = [r for r in rows if ranked_by and r[ranked_by] is not None]
        best = max(scored, key=lambda r: r[ranked_by]) if scored else None
        write_text(self.run_dir.path("report.html"), report_page(rows, ranked_by, best))
        shared = self.shared(self.vocab_sizes[0])
        write_skips(self.run_dir.path("skipped.jsonl"), self.skips(shared))
        seconds = time.perf_counter() - job.t0
        job.manifest["status"] = "complete"
        job.manifest["best"] = {"by": ranked_by, "combination": name(*(best[k] for k in VARIED))
                                } if best else None
        job.manifest["last_invocation"] = {"seconds": round(seconds, 3), "work": job.work}
        job.demand.clear()
        job.manifest["nodes"] = usage_by_type({f"vocab K{k}": s.get("vocab", {})
                                               for k, s in job.manifest["vocabularies"].items()})
        job.manifest["cluster"] = {**job.capacity.to_dict(), "gpu": dataclasses.asdict(job.gpu),
                                   "asked": job.demand.history}
        job.save()
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
    best_line = (f"<p>Best by {html.escape(str(ranked_by).replace('_', ' '))}: "
                 f"<b>{html.escape(name(*(best[k] for k in VARIED)))}</b></p>" if best else "")
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
