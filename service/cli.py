"""The command line: ``steerlab run|worker|judge|status|cancel|list|export|votes|report|sweep|calibrate|score|suite|bench|serve|deploy|vectors|schema``.

``python -m engine`` is the same command. This module parses arguments and runs the
commands; the text tables they print are in :mod:`service.cli_tables`.

Exit codes: 0 success, 2 bad input (one sentence on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from db.store import Store, StoreError, resolve_url
from engine import limits
from engine.errors import SteerLabError
from engine.fields import printable
from service.access import Identity
from service.catalog import list_experiments
from service.cli_tables import format_experiments, format_status, format_suite_task, format_summary, format_sweep
from service.export import export_csv, export_json
from service.logs import configure_logging

if TYPE_CHECKING:
    from engine.runner import Progress

# Commands that run a model import what runs it (torch, transformers) inside themselves,
# so `list`, `status`, `export`, `report` and `schema` start in well under a second.

PROG = "steerlab"
DB_HELP = "SQLAlchemy URL or SQLite file (default: $STEERLAB_DB or steerlab.db)"
# Commands that log to the file beside the store even without --db.
LOGGED_COMMANDS = ("run", "worker", "judge", "sweep", "score", "suite", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="SteerLab: A/B test steering variants of a language model.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an experiment file and print a per-variant summary")
    run.add_argument("file", help="experiment YAML file")
    run.add_argument("--db", help=DB_HELP)
    run.add_argument(
        "--queue", action="store_true", help="validate and store the experiment, queue its run for a worker and return"
    )
    run.add_argument("--model", help="hub id, local folder or .gguf file, instead of the file's model")
    run.add_argument("--name", help="store under this experiment name instead of the file's")
    run.add_argument("--batch-size", type=int, default=32, help="rows per mixed batch (default 32)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or multi (spread over every GPU; default auto)")
    run.add_argument(
        "--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto: float32 on CPU)"
    )
    run.add_argument("--quantize", choices=("4bit", "8bit"), help="load the linear layers in 4 or 8 bits (GPU)")
    run.add_argument(
        "--replace", action="store_true", help="discard a stored experiment of that name whose definition differs"
    )
    _allow_path_option(run)
    _executor_options(run)

    worker = sub.add_parser("worker", help="claim queued runs from the store and run them (until stopped)")
    worker.add_argument("--db", help=DB_HELP)
    worker.add_argument("--once", action="store_true", help="run what is queued now, then exit")
    worker.add_argument(
        "--poll", type=float, help="seconds between looks for queued runs (default: $STEERLAB_POLL_SECONDS or 2)"
    )
    worker.add_argument(
        "--create", action="store_true", help="create the store if the database is empty (otherwise refused)"
    )
    _executor_options(worker)

    judge = sub.add_parser(
        "judge", help="let an LLM judge of a stored experiment read its pairs in both orders and vote"
    )
    judge.add_argument("name", help="the stored experiment")
    judge.add_argument("--judge", help="which of its judges (default: the first in its 'judges' section)")
    judge.add_argument("--db", help=DB_HELP)
    judge.add_argument("--queue", action="store_true", help="queue the judge's run for a worker and return")
    judge.add_argument("--batch-size", type=int, default=8, help="readings per batch (default 8)")
    judge.add_argument("--device", default="auto", help="for a local judge model: auto, cpu, cuda or multi")
    judge.add_argument("--dtype", default="auto", help="for a local judge model: auto, float32, bfloat16, float16")
    judge.add_argument(
        "--restart",
        action="store_true",
        help="first delete this judge's readings and votes, and judge every pair again",
    )
    _executor_options(judge)

    status = sub.add_parser("status", help="show an experiment's run: state, progress, worker, error, traceback")
    status.add_argument("name")
    status.add_argument("--db", help=DB_HELP)

    cancel = sub.add_parser(
        "cancel", help="stop an experiment's active run, wherever it runs (a queued one never starts)"
    )
    cancel.add_argument("name")
    cancel.add_argument("--db", help=DB_HELP)

    ls = sub.add_parser("list", help="list stored experiments with their counts")
    ls.add_argument("--db")

    export = sub.add_parser("export", help="export an experiment's outputs, figures and ratings")
    export.add_argument("name")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.add_argument("--db")

    votes = sub.add_parser("votes", help="export an experiment's votes, or import votes from a CSV or JSONL file")
    votes_sub = votes.add_subparsers(dest="votes_command", required=True)
    votes_export = votes_sub.add_parser("export", help="write every vote (the format `votes import` reads)")
    votes_export.add_argument("name")
    votes_export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    votes_export.add_argument("-o", "--output", help="file to write (default: standard output)")
    votes_export.add_argument("--db", help=DB_HELP)
    votes_import = votes_sub.add_parser(
        "import", help="store the votes of a .csv or .jsonl file (all or none; stored ones are skipped)"
    )
    votes_import.add_argument("name")
    votes_import.add_argument("file", help="a .csv or .jsonl file of votes")
    votes_import.add_argument("--db", help=DB_HELP)

    sweep = sub.add_parser("sweep", help="run the file's layer x coefficient sweep and recommend a cell")
    sweep.add_argument("file", help="experiment YAML file with a 'sweep' section")
    sweep.add_argument("--db")
    sweep.add_argument("--model", help="hub id, local folder or .gguf file, instead of the file's model")
    sweep.add_argument("--batch-size", type=int, default=32)
    sweep.add_argument("--device", default="auto")
    sweep.add_argument("--dtype", default="auto")
    sweep.add_argument("--quantize", choices=("4bit", "8bit"), help="load the linear layers in 4 or 8 bits (GPU)")
    sweep.add_argument(
        "--add-cells", nargs="+", metavar="CELL", help="add these cells (like L1_x2) to the experiment as variants"
    )
    _allow_path_option(sweep)
    _executor_options(sweep)

    calibrate = sub.add_parser("calibrate", help="pick a conditional variant's threshold from its condition examples")
    calibrate.add_argument("file", help="experiment YAML file")
    calibrate.add_argument("--variant", required=True, help="the variant with a conditional intervention")
    calibrate.add_argument("--device", default="auto")
    _allow_path_option(calibrate)

    suite = sub.add_parser("suite", help="run the benchmark suite and print the adaptation comparison")
    suite.add_argument("--json", help="also write the comparison table to this JSON file")
    suite.add_argument("--db")
    suite.add_argument("--all", action="store_true", help="also the tasks for the instruct model (downloads it)")
    suite.add_argument("--only", help="only tasks whose file name contains this text")
    suite.add_argument("--device", default="auto")

    score = sub.add_parser("score", help="compute missing automatic scores of a stored experiment")
    score.add_argument("name")
    score.add_argument("--db")
    score.add_argument("--device", default="auto")

    report = sub.add_parser("report", help="write a self-contained HTML report of an experiment")
    report.add_argument("name")
    report.add_argument("--format", choices=("html",), default="html")
    report.add_argument("-o", "--output", required=True, help="file to write")
    report.add_argument("--db")

    bench = sub.add_parser(
        "bench",
        help="measure steering overhead, mixed-batch speedup, toggle time, reversibility; "
        "or (bench store) every page and call on a team-scale store",
    )
    bench.add_argument(
        "what",
        nargs="?",
        choices=("engine", "store", "serve", "decode", "distributed"),
        default="engine",
        help="what to measure",
    )
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument(
        "--quick", action="store_true", help="fewer repeats; bench store: a small store (for smoke tests)"
    )
    bench.add_argument(
        "--executor",
        help="bench distributed: ray (the cluster in $RAY_ADDRESS; without it, a Ray head started here and "
        "stopped after) or ray://HOST:PORT",
    )
    _serve_parser(sub)

    vectors = sub.add_parser(
        "vectors", help="export a variant's vectors for llama.cpp or the Hub, or import other tools' vector files"
    )
    vectors_sub = vectors.add_subparsers(dest="vectors_command", required=True)
    vectors_export = vectors_sub.add_parser(
        "export", help="write a steering variant's vectors (coefficient multiplied in) as GGUF or safetensors"
    )
    vectors_export.add_argument("name", help="experiment name")
    vectors_export.add_argument("variant", help="steering variant to export")
    vectors_export.add_argument(
        "--format",
        choices=("gguf", "safetensors"),
        default="gguf",
        help="gguf: a llama.cpp control vector file; safetensors: a folder with the vectors and a model card",
    )
    vectors_export.add_argument("-o", "--output", required=True, help="the .gguf file, or the folder to create")
    vectors_export.add_argument("--db")
    vectors_import = vectors_sub.add_parser(
        "import",
        help="convert a llama.cpp/repeng .gguf, a steering-vectors torch.save dict or a per-layer safetensors "
        "file to a SteerLab vector file, and say what it holds",
    )
    vectors_import.add_argument("file", help="the vector file to read")
    vectors_import.add_argument("-o", "--output", required=True, help="the SteerLab .safetensors file to write")
    vectors_import.add_argument("--name", help="the vector's name (default: the file's)")

    deploy = sub.add_parser("deploy", help="live A/B deployments served by `steerlab serve`: traffic, kill switch")
    deploy.add_argument("--db", help=DB_HELP)
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    deploy_create = deploy_sub.add_parser("create", help="deploy an experiment's variants with traffic weights")
    deploy_create.add_argument("name", help="the deployment's name: the `model` clients send")
    deploy_create.add_argument("--experiment", required=True, help="experiment whose variants are served")
    deploy_create.add_argument("--weights", required=True, help="traffic weights, like baseline=50,sad=50")
    deploy_create.add_argument("--baseline", help="where stopped arms' traffic goes (default: the baseline variant)")
    deploy_create.add_argument("--show-variant", action="store_true", help="name the variant in responses (not blind)")
    deploy_sub.add_parser("list", help="list deployments with their arms")
    deploy_show = deploy_sub.add_parser("show", help="the live comparison: traffic, feedback, arms vs baseline")
    deploy_show.add_argument("name")
    deploy_weights = deploy_sub.add_parser("weights", help="set new traffic weights (arms left out get 0)")
    deploy_weights.add_argument("name")
    deploy_weights.add_argument("weights", help="like baseline=80,sad=20")
    for command, what in (("stop-variant", "the kill switch: serve the baseline instead"), ("resume-variant", "undo")):
        switch = deploy_sub.add_parser(command, help=what)
        switch.add_argument("name")
        switch.add_argument("variant")
    deploy_end = deploy_sub.add_parser("end", help="stop serving the deployment (its data stays)")
    deploy_end.add_argument("name")

    schema = sub.add_parser("schema", help="write the JSON Schema of experiment files (for editors)")
    schema.add_argument("-o", "--output", help="file to write (default: standard output)")
    return parser


def _executor_options(parser: argparse.ArgumentParser, actors: bool = True) -> None:
    from service.ray_cluster import EXECUTOR_HELP

    parser.add_argument("--executor", metavar="local|ray|ray://HOST:PORT", help=EXECUTOR_HELP)
    if actors:
        parser.add_argument(
            "--actors", type=int, help="Ray actors, each with the model loaded (default: one per GPU, else per CPU)"
        )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        help="GPUs each Ray actor holds (default: 1 when the cluster has GPUs; 2+ spreads a large model with --device multi)",
    )


def _ray_plan(args: argparse.Namespace) -> Any:
    """The Ray cluster and actors the command line asks for; None for a local run."""
    from service.ray_cluster import plan_from

    if getattr(args, "queue", False) and args.executor is None:
        return None  # queued work runs where its worker's executor says ($STEERLAB_EXECUTOR is the worker's)
    plan = plan_from(args.executor, getattr(args, "actors", None), args.gpus_per_actor)
    if plan is not None and getattr(args, "queue", False):
        raise SteerLabError(
            "--queue hands the run to a worker, which runs it where the worker's own --executor says; "
            "drop --executor here, or start the worker with `steerlab worker --executor ray`."
        )
    return plan


def _allow_path_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="also let the file name prompts and vector files in this folder (repeatable); "
        "by default only files in the experiment file's own folder are read",
    )


def _allowed_dirs(args: argparse.Namespace) -> tuple[str, ...]:
    """The --allow-path folders, each checked to exist (a typo must not pass silently)."""
    for folder in args.allow_path:
        if not Path(folder).is_dir():
            raise SteerLabError(f"Folder '{folder}' given to --allow-path does not exist; give an existing folder.")
    return tuple(args.allow_path)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``steerlab`` console command (and ``python -m engine``)."""
    # Before anything imports huggingface_hub or transformers (they read the variables once).
    from service.offline import use_shared_hub_cache

    use_shared_hub_cache()
    args = build_parser().parse_args(argv)
    commands = {
        "run": _run,
        "worker": _worker,
        "judge": _judge,
        "status": _status,
        "cancel": _cancel,
        "list": _list,
        "export": _export,
        "votes": _votes,
        "report": _report,
        "sweep": _sweep,
        "calibrate": _calibrate,
        "suite": _suite,
        "score": _score,
        "bench": _bench,
        "serve": _serve,
        "schema": _schema,
        "deploy": _deploy,
        "vectors": _vectors,
    }
    try:
        if getattr(args, "db", None) is not None or args.command in LOGGED_COMMANDS:
            # The log file lies beside the store; a command's own output stays on stdout/stderr.
            configure_logging(
                resolve_url(getattr(args, "db", None)),
                stderr_level=logging.INFO if args.command in ("worker", "serve") else logging.ERROR,
            )
        return commands[args.command](args)
    except (SteerLabError, StoreError) as exc:
        # One line whatever the message quotes (a name or path with a line break in it).
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted: finished batches are stored; run the same command again to continue.", file=sys.stderr)
        return 130


class _ProgressBar:
    """A tqdm bar fed by the engine's progress callback, opened at the first report."""

    def __init__(self, description: str, unit: str = "gen") -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._description = description
        self._unit = unit
        self._bar: Any = None

    def __call__(self, p: Progress) -> None:
        if self._bar is None:
            self._bar = self._tqdm(
                total=p.total, initial=p.done, unit=self._unit, desc=self._description, dynamic_ncols=True
            )
        self._bar.update(p.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run(args: argparse.Namespace) -> int:
    from service.running import RunOptions, run_experiment_file

    ray_plan = _ray_plan(args)
    store = Store(args.db)
    options = RunOptions(
        args.batch_size,
        args.device,
        args.dtype,
        args.model,
        args.name,
        args.replace,
        _allowed_dirs(args),
        quantize=args.quantize,
    )
    if args.queue:
        from service.jobs import NothingToRun, queue_experiment_file

        try:
            run_id = queue_experiment_file(
                store, args.file, options, who=Identity(f"command line on {_host()}", signed_in=False)
            )
        except NothingToRun as done:  # as `run` without --queue: a complete experiment is not an error
            print(done)
            return 0
        print(f"Queued run {run_id} ({store.display_url}); a worker will run it: watch it with `steerlab status`.")
        return 0
    progress = _ProgressBar("generating")
    try:
        if ray_plan is not None:
            from service.ray_runs import run_file_on_ray

            result = run_file_on_ray(store, args.file, options, ray_plan, progress)
        else:
            result = run_experiment_file(store, args.file, options, progress)
    finally:
        progress.close()
    print(
        f"Experiment '{result.experiment}': run {result.run_id} {result.status}, "
        f"{result.generated} new generations, {result.total} in all ({store.display_url})."
    )
    print(format_summary(_summaries(store, result.experiment)))
    _print_stale(store, result.experiment)
    return 0


def _print_stale(store: Store, name: str) -> None:
    """Say which printed figures were computed from an older definition (see service.staleness)."""
    from service.staleness import stale_figures, warning

    if note := warning(stale_figures(store, name)):
        print(note)


def _summaries(store: Store, name: str) -> Any:
    from service.summary import variant_summaries

    return variant_summaries(store, name)


def _host() -> str:
    import socket

    return socket.gethostname()


def _worker(args: argparse.Namespace) -> int:
    from service.worker import Worker, open_worker_store

    ray_plan = _ray_plan(args)
    store = open_worker_store(args.db, create=args.create)
    if args.poll is not None and not args.poll > 0:
        raise SteerLabError(f"--poll {args.poll:g} is not a positive number of seconds; give one like --poll 2.")
    stop = threading.Event()

    def stop_softly(signum: int, _frame: FrameType | None) -> None:
        # The run stops after its current decode step and goes back to the queue; a second
        # signal stops at once (a killed worker's run is taken over when its lease expires).
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, stop_softly) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        processed = Worker(store, stop, poll=args.poll, once=args.once, ray=ray_plan).run()
    finally:
        for number, handler in previous.items():  # as they were (main() may be called again in-process)
            signal.signal(number, handler)
    print(f"Worker stopped after {processed} runs ({store.display_url}).")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from service.jobs import enqueue_judge
    from service.judging import NothingToJudge, forget_judge, run_judge
    from service.run_options import RunOptions

    ray_plan = _ray_plan(args)
    store = Store(args.db)
    options = RunOptions(args.batch_size, args.device, args.dtype)
    who = Identity(f"command line on {_host()}", signed_in=False)
    try:
        if args.queue:
            run_id = enqueue_judge(store, args.name, args.judge, options, who, restart=args.restart)
            print(f"Queued judge run {run_id} ({store.display_url}); a worker will run it (see `steerlab status`).")
            return 0
        if args.restart and args.judge is None:
            raise SteerLabError("--restart deletes a judge's verdicts, so name the judge: add --judge NAME.")
        if args.restart:
            forget_judge(store, args.name, args.judge, who)
        progress = _ProgressBar("judging", unit="reading")
        try:
            if ray_plan is not None:
                from service.ray_runs import judge_on_ray

                result = judge_on_ray(store, args.name, args.judge, options, ray_plan, progress)
            else:
                result = run_judge(store, args.name, args.judge, options, progress)
        finally:
            progress.close()
    except NothingToJudge as done:  # as `run`: a complete judge is not an error
        print(done)
        return 0
    print(
        f"Judge '{result.judge}' of '{result.experiment}': run {result.run_id} {result.status}, "
        f"{result.read} new readings ({result.total} in all), {result.votes} votes stored ({store.display_url})."
    )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from service.jobs import cancel

    store = Store(args.db)
    if not cancel(store, args.name, Identity(f"command line on {_host()}", signed_in=False)):
        print(f"Experiment '{args.name}' has no queued or running run to cancel ({store.display_url}).")
        return 0
    print(
        f"Asked the run of '{args.name}' to stop ({store.display_url}): it stops after its current batch, "
        "on every host and Ray actor; `steerlab status` shows when it has."
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from service.jobs import missing_worker, status
    from service.lease import lease_seconds

    store = Store(args.db)
    print(format_status(args.name, status(store, args.name), datetime.now(UTC), lease_seconds()))
    _print_judges(store, args.name)
    warning = missing_worker(store)
    if warning:
        print(warning)
    return 0


def _print_judges(store: Store, name: str) -> None:
    """One line per judge that has stored readings: its latest run and its progress."""
    from service.jobs import judge_status
    from service.judging import judges_with_readings

    for judge in judges_with_readings(store, name):
        try:
            line = judge_status(store, name, judge).describe()
        except SteerLabError:  # no longer declared by the experiment: its readings stay, it has no status
            continue
        print(f"Judge '{judge}': {line}")


def _sweep(args: argparse.Namespace) -> int:
    from service.running import RunOptions
    from service.sweeps import promote_cells, run_sweep_file

    store = Store(args.db)
    progress = _ProgressBar("sweeping")
    try:
        options = RunOptions(
            args.batch_size,
            args.device,
            args.dtype,
            args.model,
            allowed_dirs=_allowed_dirs(args),
            quantize=args.quantize,
        )
        run, result = run_sweep_file(store, args.file, options, progress, ray=_ray_plan(args))
    finally:
        progress.close()
    print(
        f"Sweep '{result.experiment}': run {run.run_id} {run.status}, "
        f"{run.generated} new generations ({store.display_url})."
    )
    print(format_sweep(result))
    if args.add_cells:
        from engine.experiment_file import load_experiment_file
        from service.catalog import import_experiment

        spec = load_experiment_file(args.file, [Path(d) for d in _allowed_dirs(args)])
        with store.session() as session:
            import_experiment(session, spec, args.file, {})
        added = promote_cells(store, spec.name, result.experiment, args.add_cells)
        print(f"Added {', '.join(added)} to experiment '{spec.name}'; run it to generate their outputs.")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from engine.experiment_file import load_experiment_file
    from engine.methods.conditional import ConditionalAdd, calibrate
    from engine.models import load_model

    spec = load_experiment_file(args.file, [Path(d) for d in _allowed_dirs(args)])
    variant = next((v for v in spec.variants if v.name == args.variant), None)
    if variant is None:
        raise SteerLabError(
            f"{args.file} has no variant named '{args.variant}'; pick one of {', '.join(v.name for v in spec.variants)}."
        )
    conditional = [i for i in variant.interventions if isinstance(i, ConditionalAdd)]
    if not conditional:
        raise SteerLabError(
            f"Variant '{args.variant}' has no conditional intervention; calibrate needs 'method: conditional'."
        )
    model = load_model(spec.model, args.device)
    for i, intervention in enumerate(conditional):
        # Examples are rendered as the experiment's prompts are (through the chat template, or raw).
        result = calibrate(model, intervention.framed(spec.chat_template))
        print(
            f"{args.variant}, conditional edit {i}: threshold {result.threshold:.4f} "
            f"(precision {result.precision:.2f}, recall {result.recall:.2f}, F1 {result.f1:.2f} on {result.examples} examples; "
            f"similarities range {result.lowest:.3f} to {result.highest:.3f}; the file says {intervention.condition.threshold:g})"
        )
    return 0


def _suite(args: argparse.Namespace) -> int:
    from service.running import RunOptions
    from service.suite import run_suite, suite_files

    files = suite_files(args.all, args.only)
    if not files:
        raise SteerLabError(f"No suite file matches '{args.only}'; see experiments/suite/.")
    results = run_suite(Store(args.db), files, RunOptions(device=args.device), log=lambda line: print(line, flush=True))
    for task in results["tasks"]:
        print("\n" + format_suite_task(task))
    if args.json:
        Path(args.json).write_text(json.dumps(_json_safe(results), indent=2), encoding="utf-8")
        print(f"\nWrote {args.json}.")
    return 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _score(args: argparse.Namespace) -> int:
    from engine.models import load_model
    from service.catalog import load_spec
    from service.scoring import score_experiment, score_fluency

    store = Store(args.db)
    added = score_experiment(store, args.name)
    added += score_fluency(store, args.name, load_model(load_spec(store, args.name).model, args.device))
    print(f"Added {added} scores to '{args.name}'.")
    print(format_summary(_summaries(store, args.name)))
    _print_stale(store, args.name)
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = list_experiments(Store(args.db))
    if not rows:
        print("No experiments stored yet; run one with `steerlab run experiments/tinystories_mood.yaml`.")
        return 0
    print(format_experiments(rows))
    return 0


def _export(args: argparse.Namespace) -> int:
    store = Store(args.db)
    target = _output_path(args.output, "export")
    text = export_json(store, args.name) if args.format == "json" else export_csv(store, args.name)
    _write(target, text, "export")
    print(f"Wrote {args.format.upper()} export of '{args.name}' to {target}.")
    return 0


def _votes(args: argparse.Namespace) -> int:
    from service.votes_io import export_votes, import_votes

    store = Store(args.db)
    who = Identity(f"command line on {_host()}", signed_in=False)
    if args.votes_command == "export":
        text = export_votes(store, args.name, args.format, who)
        if args.output is None:
            sys.stdout.write(text)
            return 0
        target = _output_path(args.output, "votes")
        _write(target, text, "votes")
        print(f"Wrote the votes of '{args.name}' as {args.format.upper()} to {target}.")
        return 0
    path = Path(args.file)
    if not path.is_file():
        raise SteerLabError(f"Votes file '{args.file}' does not exist; check the path.")
    limits.check(limits.MAX_FILE_BYTES, path.stat().st_size, f"Votes file '{args.file}'")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise SteerLabError(f"Votes file '{args.file}' cannot be read ({exc.strerror or exc}); check it.") from exc
    print(import_votes(store, args.name, content, path.name, who).describe())
    return 0


def _report(args: argparse.Namespace) -> int:
    # The same self-contained, escaped page the dashboard's Report page serves.
    from service.report import html_report  # imports altair and vl_convert: only when asked for

    store = Store(args.db)
    target = _output_path(args.output, "report")
    _write(target, html_report(store, args.name), "report")
    print(f"Wrote HTML report of '{args.name}' to {target}.")
    return 0


def _output_path(output: str, what: str) -> Path:
    target = Path(output)
    if not target.parent.is_dir():
        raise SteerLabError(
            f"Folder '{target.parent}' for the {what} does not exist; create it or pick another -o path."
        )
    return target


def _write(target: Path, text: str, what: str) -> None:
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SteerLabError(
            f"The {what} could not be written to '{target}' ({exc.strerror or exc}); pick another -o path."
        ) from exc


def _bench(args: argparse.Namespace) -> int:
    def report(line: str) -> None:
        print(line, flush=True)

    if args.what == "serve":
        _passive_openmp_threads()  # as `steerlab serve` runs
        from service.bench_serve import format_serve_benchmark, run_serve_benchmark

        figures = run_serve_benchmark(quick=args.quick, log=report)
        print(format_serve_benchmark(figures))
    elif args.what == "decode":
        from engine.bench import run_decode_benchmark

        figures = run_decode_benchmark(quick=args.quick, log=report)
        print(json.dumps(figures, indent=2))
    elif args.what == "distributed":
        _passive_openmp_threads()  # here and in the Ray head started for it (its actors inherit the setting)
        from service.bench_distributed import format_distributed_benchmark, run_distributed_benchmark

        figures = run_distributed_benchmark(args.executor, quick=args.quick, log=report)
        print(format_distributed_benchmark(figures))
    elif args.what == "store":
        from service.bench_store import format_store_benchmark, run_store_benchmark

        figures = run_store_benchmark("quick" if args.quick else "full", report)
        print(format_store_benchmark(figures))
    else:
        from engine.bench import run_benchmarks

        figures = run_benchmarks(quick=args.quick, log=report)
        print(json.dumps(figures, indent=2))
    if args.json:
        _write(Path(args.json), json.dumps(_json_safe(figures), indent=2), "benchmark figures")
    return 0


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="serve experiments' variants and live deployments over an OpenAI-compatible HTTP API"
    )
    serve.add_argument(
        "--experiment",
        action="append",
        required=True,
        metavar="NAME",
        help="a stored experiment to serve (repeatable; one model for all)",
    )
    serve.add_argument("--db", help=DB_HELP)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need an API key)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key clients must send (default: STEERLAB_API_KEY if set)",
    )
    serve.add_argument(
        "--admin-key-env",
        metavar="VAR",
        help="environment variable holding the key of the kill-switch endpoints (default: STEERLAB_ADMIN_KEY if set)",
    )
    serve.add_argument("--max-rows", type=int, default=64, help="requests decoded together (default 64)")
    serve.add_argument(
        "--request-steering",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let a request carry its own steering spec (default: on)",
    )
    serve.add_argument(
        "--request-method",
        action="append",
        metavar="METHOD",
        help="a method such a spec may use (repeatable; default: add)",
    )
    serve.add_argument(
        "--max-coefficient", type=float, default=8.0, help="largest |coefficient| of a request's edit (default 8)"
    )
    serve.add_argument("--max-edits", type=int, default=4, help="most edits in a request's spec (default 4)")
    serve.add_argument("--max-tokens", type=int, default=512, help="most new tokens per request, and the default (512)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or multi (default auto)")
    serve.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    from service.ray_cluster import EXECUTOR_HELP

    serve.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="run N replicas of the server on a Ray cluster behind Ray Serve's proxy at --host/--port "
        "(default: one server in this process)",
    )
    serve.add_argument(
        "--executor",
        metavar="local|ray|ray://HOST:PORT",
        help=EXECUTOR_HELP + "; with --replicas, ray is the default",
    )
    serve.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves on the cluster (default 1)"
    )
    serve.add_argument(
        "--gpus-per-replica",
        type=float,
        help="GPUs each replica reserves (default: 1 when the cluster has GPUs and --device is not cpu, else 0)",
    )


def _key_from(variable: str | None, default: str) -> str | None:
    """The key in ``variable`` (which must then be set), else in ``default`` if that is set."""
    import os

    if variable is None:
        return os.environ.get(default) or None
    value = os.environ.get(variable)
    if not value:
        raise SteerLabError(
            f"Environment variable {variable} named by the key option is not set; set it to the key, or leave the option out."
        )
    return value


def _passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning (before torch is imported).

    The server's model runs in the batcher's thread, not the main one; on a busy 2-core
    machine, OpenMP threads spinning between parallel regions made its decode steps 20 times
    slower (4.5 s against 0.2 s for 16 rows x 8 tokens of a small GPT-2).
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _serve(args: argparse.Namespace) -> int:
    _passive_openmp_threads()
    from service.serving.options import ServeOptions

    options = ServeOptions(
        tuple(args.experiment),
        host=args.host,
        port=args.port,
        api_key=_key_from(args.api_key_env, "STEERLAB_API_KEY"),
        admin_key=_key_from(args.admin_key_env, "STEERLAB_ADMIN_KEY"),
        max_rows=args.max_rows,
        request_steering=args.request_steering,
        request_methods=tuple(args.request_method or ("add",)),
        max_coefficient=args.max_coefficient,
        max_edits=args.max_edits,
        max_tokens=args.max_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    options.check()  # before the model loads: a refused host or limit costs nothing
    if args.replicas is not None or (args.executor or "local").strip() != "local":
        return _serve_replicas(args, options)
    from service.serving.server import serve

    store = Store(args.db)

    def ready(context: Any) -> None:
        served = len(context.catalog.model_names()) - 1
        print(
            f"Serving {served} variants of {', '.join(options.experiments)} on {context.catalog.model_id} at "
            f"http://{options.host}:{options.port}/v1 (store {store.display_url}); Ctrl-C stops.",
            flush=True,
        )

    serve(store, options, ready)
    return 0


def _serve_replicas(args: argparse.Namespace, options: Any) -> int:
    """``steerlab serve --replicas N``: the replicas on a Ray cluster, never a local server in their place."""
    from service.ray_cluster import parse_executor
    from service.serving.replicas import ReplicaPlan, Replicas, serve_replicas

    target = parse_executor(args.executor or "ray")
    if target is None:
        raise SteerLabError(
            "--replicas runs the replicas on Ray, but --executor is local; drop --executor (or give ray or "
            "ray://HOST:PORT), or drop --replicas to serve from this process."
        )
    plan = ReplicaPlan(args.replicas or 1, target, args.cpus_per_replica, args.gpus_per_replica)
    plan.check()
    store = Store(args.db)

    def ready(running: Replicas) -> None:
        print(
            f"Serving {', '.join(options.experiments)} from {running.replicas} replicas ({running.cpus:g} CPUs, "
            f"{running.gpus:g} GPUs each) on the Ray cluster at {running.cluster}, through Ray Serve's proxy at "
            f"{running.url} on the cluster's head node (store {store.display_url}); Ctrl-C stops.",
            flush=True,
        )

    serve_replicas(store, options, plan, ready)
    return 0


def _vectors(args: argparse.Namespace) -> int:
    if args.vectors_command == "export":
        from service.vector_export import write_variant

        who = Identity(f"command line on {_host()}", signed_in=False)
        written = write_variant(Store(args.db), args.name, args.variant, args.format, args.output, who)
        print(f"Wrote variant '{args.variant}' of '{args.name}' as {args.format}: {', '.join(map(str, written))}.")
        return 0
    from engine.vector_formats import describe_vector, load_any_vector

    vector = load_any_vector(args.file, args.name)
    target = _output_path(args.output, "vector")
    try:
        target.write_bytes(vector.to_bytes())
    except OSError as exc:
        raise SteerLabError(
            f"The vector could not be written to '{target}' ({exc.strerror or exc}); pick another -o path."
        ) from exc
    print(f"Read {args.file}:")
    for line in describe_vector(vector):
        print(f"  {line}")
    print(f"Wrote {target}; name it in an experiment as `vectors: {{{vector.name}: {{file: {target.name}}}}}`.")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from engine.traffic import parse_weights
    from service import deployments as live
    from service.cli_tables import table
    from service.live_comparison import difference_rows, live_comparison, traffic_rows

    store, who = Store(args.db), Identity(f"command line on {_host()}", signed_in=False)
    command = args.deploy_command
    if command == "list":
        rows = [["deployment", "experiment", "baseline", "arms", "state", "blind"]]
        for d in live.list_deployments(store):
            arms = ", ".join(f"{a.variant}={a.weight:g}{' (stopped)' if a.stopped else ''}" for a in d.arms)
            rows.append(
                [
                    d.name,
                    d.experiment,
                    d.baseline,
                    arms,
                    "live" if d.live else "ended",
                    "no" if d.show_variant else "yes",
                ]
            )
        print(table(rows) if len(rows) > 1 else "No deployments yet; create one with `steerlab deploy create`.")
        return 0
    if command == "show":
        comparison = live_comparison(store, args.name)
        d = comparison.deployment
        print(
            f"Deployment '{d.name}' of experiment '{d.experiment}' ({'live' if d.live else 'ended'}; "
            f"{'names the variant' if d.show_variant else 'blind'}; baseline {d.baseline}; version {d.version})"
        )
        print(table(traffic_rows(comparison)))
        if comparison.differences or comparison.preferences:
            print(
                f"\nEach arm against {d.baseline} (unpaired; {comparison.correction}-corrected over "
                f"{comparison.family} comparisons at alpha {comparison.alpha:g}):"
            )
            print(table(difference_rows(comparison)))
        return 0
    if command == "create":
        weights = parse_weights(args.weights)
        d = live.create_deployment(store, who, args.name, args.experiment, weights, args.baseline, args.show_variant)
        print(f"Deployed '{d.name}': clients send model=\"{d.name}\" to `steerlab serve`.")
    elif command == "weights":
        d = live.set_weights(store, who, args.name, parse_weights(args.weights))
    elif command == "stop-variant":
        d = live.stop_variant(store, who, args.name, args.variant)
    elif command == "resume-variant":
        d = live.resume_variant(store, who, args.name, args.variant)
    else:
        d = live.end_deployment(store, who, args.name)
    arms = ", ".join(f"{a.variant}={a.weight:g}{' (stopped)' if a.stopped else ''}" for a in d.arms)
    print(f"{d.name}: {'live' if d.live else 'ended'}, baseline {d.baseline}, arms {arms} (version {d.version}).")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from engine.spec_schema import experiment_json_schema

    text = json.dumps(experiment_json_schema(), indent=2) + "\n"
    if args.output:
        target = _output_path(args.output, "schema")
        _write(target, text, "schema")
        print(f"Wrote the experiment file JSON Schema to {target}.")
    else:
        sys.stdout.write(text)
    return 0
