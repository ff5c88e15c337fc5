"""The `vgray` command: parse, call a library function, print a one-line summary."""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import sys
import tempfile
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .features import formats
from .config import TrainConfig
from .errors import Terminated, VgrayError, first_line


def _flag(*names, **options):
    """A plain on/off flag: shown without a value in the help."""
    return typer.Option(*names, metavar="", **options)


class _PlainHelp:
    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""  # a plain flag, shown without a value
        return option


class _Command(_PlainHelp, TyperCommand):
    pass


class _OneLine(_PlainHelp, TyperGroup):
    """Every error in one style: `error: …` on one line and a non-zero exit; a usage error
    (exit 2) names the help to read instead of Typer's boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        except typer.TyperException as e:  # a usage error: a bad option, a missing argument
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = e.format_message().replace("Value error, ", "")
            typer.echo(f"error: {message}{where}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=_OneLine, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Visual GloVe on Ray: per-clip video features -> visual words -> "
                       "GloVe embeddings for every clip.")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"vgray {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, _flag(
        "--version", help="Print vgray's version and exit.", callback=_show_version,
        is_eager=True)] = False) -> None:
    """Visual GloVe on Ray: per-clip video features -> visual words -> GloVe embeddings for
    every clip."""

Features = Annotated[str, typer.Argument(help="Directory of {id}_rgb.npy [+ {id}_flow.npy] or {id}.npy, each [T, D].")]
Run = Annotated[str, typer.Argument(help="A directory made by `vgray train`.")]
DATA, VOCAB, GLOVE, CLUSTER, OUTPUT = "Data", "Vocabulary", "GloVe", "Cluster", "Output"

Workers = Annotated[Optional[int], typer.Option("--workers", rich_help_panel=CLUSTER, help="Shard actors (default: as many as the shards need, up to the CPUs the Ray cluster has or its autoscaler can add).")]
Strict = Annotated[bool, _flag("--strict", rich_help_panel=DATA, help="Fail on the first unusable video instead of skipping it.")]
FollowSymlinks = Annotated[bool, _flag("--follow-symlinks", rich_help_panel=DATA, help="Use symlinks in FEATURES that point to files outside it (skipped otherwise).")]
Quiet = Annotated[bool, _flag("--quiet", "-q", rich_help_panel=OUTPUT, help="Print only the final summary.")]
Address = Annotated[Optional[str], typer.Option(
    "--address", rich_help_panel=CLUSTER, envvar="RAY_ADDRESS",
    help="http://HEAD:8265: submit as a Ray job (Jobs API); auto or ray://...: attach to that "
         "cluster; unset: an embedded local Ray.")]
NoWait = Annotated[bool, _flag("--no-wait", rich_help_panel=CLUSTER, help="With an http address: print the job id and return at once.")]
JobAddress = Annotated[str, typer.Option("--address", envvar="RAY_ADDRESS", help="http://HEAD:8265 of the cluster.")]

D = TrainConfig()

TrainIds = Annotated[Optional[str], typer.Option("--train-ids", rich_help_panel=DATA, help="JSON list of training ids, or an object keyed by id (ActivityNet train.json). Default: every video.")]
XMax = Annotated[float, typer.Option("--x-max", rich_help_panel=GLOVE, help="GloVe weighting cut-off.")]
Alpha = Annotated[float, typer.Option(rich_help_panel=GLOVE, help="GloVe weighting exponent.")]
Epochs = Annotated[int, typer.Option(rich_help_panel=GLOVE, help="GloVe epochs (full-batch steps) at most; see --glove-tol.")]
LearningRate = Annotated[float, typer.Option("--learning-rate", rich_help_panel=GLOVE, help="GloVe Adam step size.")]
GloveTol = Annotated[float, typer.Option("--glove-tol", rich_help_panel=GLOVE, help="GloVe stops before --epochs once its lowest J gained less than this share over 50 epochs (0: run every epoch).")]
Streams = Annotated[Literal["rgb", "flow", "rgb+flow"], typer.Option(rich_help_panel=DATA, help="What is clustered: rgb, flow or rgb+flow (concatenated per clip).")]
Seed = Annotated[int, typer.Option(rich_help_panel=VOCAB, help="Seed of the k-means sample and init and of GloVe's init.")]
Device = Annotated[Literal["auto", "cpu", "cuda"], typer.Option(rich_help_panel=CLUSTER, help="auto, cpu or cuda: where k-means and GloVe run.")]
GpuWait = Annotated[Optional[float], typer.Option("--gpu-wait", rich_help_panel=CLUSTER, help="Seconds a GPU stage waits for a GPU node to join before running on CPU (auto) or failing (cuda). Default: 600 where a node type has a GPU, 120 where the node types cannot be read.")]
KmeansIters = Annotated[int, typer.Option("--kmeans-iters", rich_help_panel=VOCAB, help="Lloyd iterations at most (fewer once an iteration lowers the inertia by < 0.01%).")]
KmeansSample = Annotated[Optional[int], typer.Option("--kmeans-sample", rich_help_panel=VOCAB, help="Training clips sampled for k-means (default 256 per word).")]
ShardClips = Annotated[int, typer.Option("--shard-clips", rich_help_panel=CLUSTER, help="Clips per unit of work.")]
BatchClips = Annotated[int, typer.Option("--batch-clips", rich_help_panel=CLUSTER, help="Clips a worker holds in memory at once.")]
Embeddings = Annotated[Literal["files", "parquet"], typer.Option("--embeddings", rich_help_panel=OUTPUT, help="files: embeddings/{id}.npy and concat/ (what BMT and MDVC read); parquet: one embeddings/part-*.parquet per shard, a row per clip, no concat/ (for corpora of millions of videos).")]
InputFormat = Annotated[Optional[Literal[formats.FORMATS]], typer.Option("--format", "--input-format", rich_help_panel=DATA, help=f"How FEATURES ships (default: detected from what it is). {formats.described()}.")]
Hdf5Key = Annotated[Optional[str], typer.Option("--hdf5-key", rich_help_panel=DATA, help="HDF5: the dataset in each video's group (e.g. c3d_features), or a group holding rgb and flow (MDVC's i3d_features). Default: the group's one 2-D float dataset.")]
Hdf5FlowKey = Annotated[Optional[str], typer.Option("--hdf5-flow-key", rich_help_panel=DATA, help="HDF5: the flow dataset in each video's group.")]
Reducers = Annotated[int, typer.Option(rich_help_panel=CLUSTER, help="Co-occurrence reduce partitions.")]


def _echo(quiet: bool):
    return None if quiet else (lambda message: typer.echo(message, err=True))


def _fail(error: BaseException) -> None:
    """One line for a failure: vgray's own errors say all there is to say; anything else
    (a bug, an error of a library) also says how to see its traceback."""
    if os.environ.get("VGRAY_DEBUG") == "1":
        raise error
    message = first_line(error)
    hint = "" if isinstance(error, VgrayError) else " (set VGRAY_DEBUG=1 for the traceback)"
    typer.echo(f"error: {message}{hint}", err=True)
    raise typer.Exit(1)


def _cause(error: BaseException) -> BaseException:
    """The user-facing error behind a Ray task error, if there is one."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:
        _quiet_ray()
        if isinstance(e, Terminated):
            typer.echo("terminated (SIGTERM); run the same command again to resume", err=True)
            raise typer.Exit(143) from None
        typer.echo("interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        _quiet_ray()
        _fail(_cause(e))


def _quiet_ray() -> None:
    """After a failure is reported in one line, Ray should not add a traceback for each shard
    still in flight that failed the same way (it checks this variable at the time)."""
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"


def _mdvc_warning(out: str) -> None:
    """One stderr line (even with -q) when RUN's settings make outputs MDVC cannot read."""
    from .commands.downstream import mdvc_warning

    line = mdvc_warning(out)
    if line:
        typer.echo(line, err=True)


def _dispatch(line, local, *, verb, address, no_wait, quiet, after=None):
    """Submit `line` (command, arguments, options: as _argv takes them) to the Jobs API (http
    address), or run `local` here on the given/embedded Ray and print the summary line."""
    from .clusters import submit

    if submit.is_jobs_address(address):
        def go():
            def note(message):  # shown even with -q: it is about where the data must be
                typer.echo(message, err=True)

            args = _argv(*line, quiet=quiet, path=lambda p: submit.cluster_path(p, address, note))
            return submit.submit(address, args, wait=not no_wait, echo=note)

        _run(go)
        return
    previous = os.environ.get("RAY_ADDRESS")
    # Attached to when Ray is first needed (a refusal needs none). "auto" follows Ray's rule:
    # a RAY_ADDRESS already set comes first.
    if address and not (address == "auto" and previous):
        os.environ["RAY_ADDRESS"] = address
    try:
        summary = _run(local)
    finally:
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous
    typer.echo(summary.line(verb))
    if after is not None:
        after(summary)


# The parameters, by name, whose values are files or directories: a job gets them as the
# cluster's nodes see them (submit.cluster_path). By name, so that no option shifts another.
PATHS = frozenset({"run", "features", "out", "train_ids", "labels"})


def _settings(params: dict, leave: tuple = ()) -> dict:
    """A run's settings from a command's parameters (its locals() on entry): every TrainConfig
    field but those in `leave` is the parameter of the same name."""
    return {f.name: params[f.name] for f in dataclasses.fields(TrainConfig) if f.name not in leave}


def _argv(command: str, arguments: dict, options: dict, *, quiet: bool, path=None) -> list[str]:
    """The command line that reproduces these arguments (in order) and options (for a job's
    entrypoint); `path`, where given, rewrites the value of each parameter named in PATHS."""

    def text(name, value):
        return path(value) if path is not None and name in PATHS else str(value)

    argv = [command] + [text(name, value) for name, value in arguments.items()]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, text(name, value)]
    return argv + (["-q"] if quiet else [])


@app.command()
def train(
    features: Features,
    out: Annotated[str, typer.Option("--out", "-o", rich_help_panel=OUTPUT, help="Run directory to write (resumed if it exists).")],
    train_ids: TrainIds = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", "-k", rich_help_panel=VOCAB, help="Visual words (k-means clusters).")] = D.vocab_size,
    window: Annotated[int, typer.Option(rich_help_panel=GLOVE, help="Co-occurrence window in clips (1-24).")] = D.window,
    dim: Annotated[int, typer.Option(rich_help_panel=GLOVE, help="GloVe vector size.")] = D.dim,
    x_max: XMax = D.x_max,
    alpha: Alpha = D.alpha,
    epochs: Epochs = D.epochs,
    learning_rate: LearningRate = D.learning_rate,
    glove_tol: GloveTol = D.glove_tol,
    streams: Streams = D.streams,
    seed: Seed = D.seed,
    workers: Workers = None,
    device: Device = D.device,
    gpu_wait: GpuWait = None,
    strict: Strict = False,
    follow_symlinks: FollowSymlinks = False,
    with_report: Annotated[bool, _flag("--report", rich_help_panel=OUTPUT, help="Write RUN/report/ at the end (see `vgray report`).")] = False,
    kmeans_iters: KmeansIters = D.kmeans_iters,
    kmeans_sample: KmeansSample = None,
    shard_clips: ShardClips = D.shard_clips,
    batch_clips: BatchClips = D.batch_clips,
    reducers: Reducers = D.reducers,
    embeddings: Embeddings = D.embeddings,
    input_format: InputFormat = None,
    hdf5_key: Hdf5Key = None,
    hdf5_flow_key: Hdf5FlowKey = None,
    quiet: Quiet = False,
    address: Address = None,
    no_wait: NoWait = False,
):
    """Learn a visual vocabulary and Visual GloVe vectors, and embed every clip of FEATURES."""
    settings = _settings(locals())
    config = _run(TrainConfig, **settings)
    line = ("train", {"features": features},
            {"out": out, "train_ids": train_ids, **settings, "report": with_report})

    def local():
        from .run.resume import check_train

        # A complete RUN is told from its manifest before torch or Ray is loaded; what the check
        # scanned is handed on.
        checked = check_train(features, out, config, train_ids, _echo(quiet))
        summary = checked.summary
        if summary is None:
            from .commands.train import train as run_train

            summary = run_train(features, out, config, train_ids, _echo(quiet), checked)
        if with_report:
            from .commands.report import report as write_report

            typer.echo(f"report: {write_report(out)}", err=True)
        return summary

    _dispatch(line, local, verb="embedded", address=address, no_wait=no_wait, quiet=quiet,
              after=lambda summary: _mdvc_warning(summary.out))


def _apply(command: str, run, features, *, out, workers, strict, follow_symlinks, reading: dict,
           quiet, address, no_wait, embeddings: str | None = None):
    """`assign` and `embed`: RUN's model applied to FEATURES, here or as a job."""
    from .commands import apply

    options = {"workers": workers, "strict": strict, "follow_symlinks": follow_symlinks,
               **reading}
    if command == "embed":  # a choice: checked by the option itself (and by TrainConfig)
        options["embeddings"] = embeddings
    line = (command, {"run": run, "features": features}, {"out": out, **options})

    def local():
        common = {"workers": workers, "strict": strict, "echo": _echo(quiet),
                  "follow_symlinks": follow_symlinks, "reading": reading}
        if command == "assign":
            return apply.assign(run, features, out, **common)
        return apply.embed_corpus(run, features, out, embeddings=embeddings, **common)

    _dispatch(line, local, verb="tokenised" if command == "assign" else "embedded",
              address=address, no_wait=no_wait, quiet=quiet,
              after=(lambda summary: _mdvc_warning(summary.out)) if command == "embed" else None)


@app.command()
def assign(run: Run, features: Features,
           out: Annotated[str, typer.Option("--out", "-o", help="Directory for {id}.npy tokens and tokens.parquet.")],
           workers: Workers = None, strict: Strict = False, quiet: Quiet = False,
           address: Address = None, no_wait: NoWait = False, follow_symlinks: FollowSymlinks = False,
           input_format: InputFormat = None, hdf5_key: Hdf5Key = None,
           hdf5_flow_key: Hdf5FlowKey = None):
    """Visual words of every clip of FEATURES with RUN's vocabulary."""
    _apply("assign", run, features, out=out, workers=workers, strict=strict, quiet=quiet,
           address=address, no_wait=no_wait, follow_symlinks=follow_symlinks,
           reading={"input_format": input_format, "hdf5_key": hdf5_key,
                    "hdf5_flow_key": hdf5_flow_key})


@app.command()
def embed(run: Run, features: Features,
          out: Annotated[str, typer.Option("--out", "-o", help="Directory for embeddings/ and concat/.")],
          workers: Workers = None, strict: Strict = False, quiet: Quiet = False,
          address: Address = None, no_wait: NoWait = False, follow_symlinks: FollowSymlinks = False,
          embeddings: Embeddings = "files", input_format: InputFormat = None,
          hdf5_key: Hdf5Key = None, hdf5_flow_key: Hdf5FlowKey = None):
    """Visual GloVe embeddings (and concatenations) of every clip of FEATURES with RUN's model."""
    _apply("embed", run, features, out=out, workers=workers, strict=strict, quiet=quiet,
           address=address, no_wait=no_wait, follow_symlinks=follow_symlinks,
           embeddings=embeddings, reading={"input_format": input_format, "hdf5_key": hdf5_key,
                                           "hdf5_flow_key": hdf5_flow_key})


@app.command()
def info(run: Annotated[str, typer.Argument(help="A directory made by vgray (train, sweep, assign, embed).")]):
    """What a RUN holds: what made it and its settings, its corpus, its stages, and where its
    outputs are with their sizes (from its manifest; nothing is computed, Ray is not started)."""
    from .commands.info import describe

    for line in _run(describe, run):
        typer.echo(line)


@app.command()
def evaluate(run: Run,
             features: Annotated[Optional[str], typer.Argument(help="FEATURES of RUN's videos: adds the raw features and raw + embeddings to the probe (needs --labels).")] = None,
             labels: Annotated[Optional[str], typer.Option("--labels", help="JSON object video id -> class: a cross-validated linear probe and same-class retrieval for each representation.")] = None,
             out: Annotated[Optional[str], typer.Option("--out", "-o", help="Where to write the JSON (default RUN/evaluation.json).")] = None,
             quiet: Quiet = False):
    """Measures of RUN to choose a model by: final and held-out J, inertia, vocabulary usage,
    neighbours' co-occurrence share; with --labels, a linear probe and retrieval per representation."""
    from .files import fs
    from .commands.evaluate import evaluate as run_evaluate, lines

    if features is not None and labels is None:
        _fail(ValueError("FEATURES is used by the probe: give --labels too"))
    result = _run(run_evaluate, run, features, labels, out=out)
    if not quiet:
        typer.echo("\n".join(lines(result)))
    typer.echo(f"wrote {out or fs.join(fs.normalize(run), 'evaluation.json')}", err=True)


@app.command()
def sweep(
    features: Features,
    out: Annotated[str, typer.Option("--out", "-o", help="Sweep directory to write (resumed if it exists): one RUN per combination, sweep.csv, report.html.")],
    vocab_size: Annotated[str, typer.Option("--vocab-size", "-k", help="Vocabulary sizes, comma-separated (e.g. 500,1000,1500).")] = str(D.vocab_size),
    window: Annotated[str, typer.Option(help="Co-occurrence windows, comma-separated (each 1-24).")] = str(D.window),
    dim: Annotated[str, typer.Option(help="GloVe vector sizes, comma-separated.")] = str(D.dim),
    train_ids: TrainIds = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="JSON object video id -> class: each combination gets a linear probe (and retrieval) and is ranked by its accuracy, ties by retrieval mAP.")] = None,
    x_max: XMax = D.x_max, alpha: Alpha = D.alpha, epochs: Epochs = D.epochs,
    learning_rate: LearningRate = D.learning_rate, glove_tol: GloveTol = D.glove_tol,
    streams: Streams = D.streams, seed: Seed = D.seed,
    workers: Workers = None, device: Device = D.device, gpu_wait: GpuWait = None,
    strict: Strict = False, follow_symlinks: FollowSymlinks = False,
    kmeans_iters: KmeansIters = D.kmeans_iters, kmeans_sample: KmeansSample = None,
    shard_clips: ShardClips = D.shard_clips, batch_clips: BatchClips = D.batch_clips,
    reducers: Reducers = D.reducers, input_format: InputFormat = None,
    hdf5_key: Hdf5Key = None, hdf5_flow_key: Hdf5FlowKey = None,
    quiet: Quiet = False, address: Address = None, no_wait: NoWait = False,
):
    """Train and evaluate every combination of --vocab-size x --window x --dim, sharing the scan,
    the k-means sample, the pass over the features and the counts; print the best."""
    # Left out: vocab_size, window and dim are lists here, and a sweep has no --embeddings.
    settings = _settings(locals(), leave=("vocab_size", "window", "dim", "embeddings"))
    from .rundir.sweeptable import parse_values

    lists = {name: _run(parse_values, text, flag) for name, text, flag in
             (("vocab_sizes", vocab_size, "--vocab-size"), ("windows", window, "--window"),
              ("dims", dim, "--dim"))}
    # Checked here with the first of each list; the sweep checks every combination.
    config = _run(TrainConfig, **settings, vocab_size=lists["vocab_sizes"][0],
                  window=lists["windows"][0], dim=lists["dims"][0])
    line = ("sweep", {"features": features},
            {"out": out, "train_ids": train_ids, "labels": labels, **settings,
             "vocab_size": vocab_size, "window": window, "dim": dim})

    def local():
        from .run.resume import check_sweep

        # A complete sweep is told from its manifest before torch or Ray is loaded; what the
        # check scanned is handed on.
        checked = check_sweep(features, out, **lists, config=config, train_ids=train_ids,
                              labels=labels, echo=_echo(quiet))
        summary = checked.summary
        if summary is None:
            from .commands.sweep import sweep as run_sweep

            summary = run_sweep(features, out, **lists, config=config, train_ids=train_ids,
                                labels=labels, echo=_echo(quiet), checked=checked)
        return summary

    _dispatch(line, local, verb="", address=address, no_wait=no_wait, quiet=quiet)


@app.command()
def check(run: Annotated[str, typer.Argument(help="A RUN of vgray train, or an output of vgray embed.")],
          model: Annotated[Literal["bmt", "mdvc"], typer.Option("--for", help="The model whose loader RUN is checked against.")],
          features: Annotated[Optional[str], typer.Option("--features", help="The corpus whose every video must be readable (default: the one RUN was made from).")] = None,
          every: Annotated[bool, _flag("--all", help="One line per file with a problem, not one per kind of problem.")] = False):
    """Can BMT or MDVC read RUN as it is? One line per problem (file, width); exit 1 if not."""
    from .commands.downstream import check as run_check

    result = _run(run_check, run, model.lower(), features)
    for line in result.lines(every):
        typer.echo(line)
    typer.echo(result.verdict())
    if not result.ok():
        raise typer.Exit(1)


@app.command()
def report(run: Run, quiet: Quiet = False):
    """RUN/report/index.html (opens offline) and PNGs: loss, vocabulary usage and map, neighbours."""
    from .commands.report import report as write_report

    index = _run(write_report, run)
    if not quiet:
        typer.echo(index)


@app.command()
def export(run: Run,
           fmt: Annotated[Literal["glove-text", "word2vec", "projector", "parquet"], typer.Option("--format", "-f", help="What to write: Stanford GloVe text, word2vec text, TensorBoard projector files, or a per-clip Parquet table.")],
           out: Annotated[str, typer.Option("--out", "-o", help="Directory to write the export into.")],
           quiet: Quiet = False):
    """RUN's vectors as GloVe text, word2vec text, TensorBoard projector TSVs, or per-clip Parquet."""
    from .commands.export import export as run_export

    written = _run(run_export, run, fmt, out, _echo(quiet))
    if not quiet:
        for path in written:
            typer.echo(path)


jobs = typer.Typer(no_args_is_help=True, cls=_OneLine, help="Jobs submitted with --address http://HEAD:8265.")
app.add_typer(jobs, name="jobs", short_help="Jobs submitted with --address http://HEAD:8265: status, logs, stop.")
JobId = Annotated[str, typer.Argument(help="The id printed when the job was submitted.")]


@jobs.command("status")
def job_status(job_id: JobId, address: JobAddress):
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from .clusters import submit

    typer.echo(_run(submit.status, address, job_id))


@jobs.command("logs")
def job_logs(job_id: JobId, address: JobAddress,
             follow: Annotated[bool, _flag("--follow", "-f", help="Stream until the job ends.")] = False):
    """Print a job's logs."""
    from .clusters import submit

    if follow:
        _run(submit.follow, address, job_id)
    else:
        typer.echo(_run(submit.logs, address, job_id), nl=False)


@jobs.command("stop")
def job_stop(job_id: JobId, address: JobAddress):
    """Stop a running job."""
    from .clusters import submit

    stopped = _run(submit.stop, address, job_id)
    typer.echo(f"{job_id} {'stop requested' if stopped else 'was not running'}")


@app.command()
def synth(
    out: Annotated[str, typer.Argument(help="Directory to write: features/, train_ids.json, truth.parquet, labels.json (the topic of each video, for --labels).")],
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 200,
    dim: Annotated[int, typer.Option(help="rgb feature width D.")] = 64,
    words: Annotated[int, typer.Option(help="Planted visual words.")] = 24,
    topics: Annotated[int, typer.Option(help="Planted topics (each owns a block of words).")] = 4,
    flow: Annotated[bool, _flag("--flow/--no-flow", help="Also write {id}_flow.npy.")] = False,
    flow_dim: Annotated[int, typer.Option("--flow-dim", help="flow feature width.")] = 32,
    min_clips: Annotated[int, typer.Option("--min-clips", help="Shortest video, in clips.")] = 16,
    max_clips: Annotated[int, typer.Option("--max-clips", help="Longest video, in clips.")] = 64,
    noise: Annotated[float, typer.Option(help="Std of the Gaussian noise around each word.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    force: Annotated[bool, _flag("--force", help="Replace the corpus an earlier synth wrote in OUT (a non-empty OUT is refused otherwise).")] = False,
):
    """Write a synthetic corpus with planted visual words and topics."""
    from .commands.synth import make_corpus

    info = _run(make_corpus, out, videos=videos, dim=dim, words=words, topics=topics, flow=flow,
                flow_dim=flow_dim, min_clips=min_clips, max_clips=max_clips, noise=noise, seed=seed,
                force=force)
    typer.echo(f"wrote {info['videos']} videos ({info['clips']} clips) to {info['features']}; "
               f"training ids in {info['train_ids']}, truth in {info['truth']}, "
               f"labels in {info['labels']}")


@app.command()
def demo(
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Where to put the corpus and the run (default: a temporary directory).")] = None,
    videos: Annotated[int, typer.Option(help="Synthetic videos.")] = 300,
    quiet: Quiet = False,
):
    """Make a synthetic corpus, train on it, and check the result against the planted truth."""
    from .commands.quality import evaluate
    from .commands.synth import make_corpus
    from .commands.train import train as run_train

    root = out or tempfile.mkdtemp(prefix="vgray-demo-")

    def go():
        # A re-run into the same --out replaces the corpus the first one wrote.
        info = make_corpus(os.path.join(root, "corpus"), videos=videos, flow=True, force=True)
        config = TrainConfig(vocab_size=24, dim=32, epochs=300, shard_clips=2000)
        summary = run_train(info["features"], os.path.join(root, "run"), config,
                            info["train_ids"], echo=_echo(quiet))
        return summary, evaluate(os.path.join(root, "run"), os.path.join(root, "corpus"))

    summary, quality = _run(go)
    typer.echo(summary.line("embedded"))
    typer.echo(f"vocabulary vs planted words: NMI {quality['nmi']:.3f}; nearest neighbours in the "
               f"same topic: {quality['neighbour_topic_agreement']:.0%}")


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup is not cut short
    raise Terminated()


def _summary(callback) -> str:
    """A command's docstring's first paragraph, on one line: what `--help` and the CLI
    reference list for it, whole (Click cuts a summary it makes itself at 45 characters)."""
    return " ".join((inspect.getdoc(callback) or "").split("\n\n")[0].split())


for _info in app.registered_commands + jobs.registered_commands:
    _info.cls = _Command
    _info.short_help = _info.short_help or _summary(_info.callback)


def main() -> None:
    """Entry point of the `vgray` console script. SIGTERM ends a run as Ctrl-C does (exit 143);
    cluster.connect keeps this handler over the one Ray's driver installs."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()


if __name__ == "__main__":
    sys.exit(main())
