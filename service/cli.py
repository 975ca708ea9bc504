"""The command line: ``python -m engine run|list|export|report|sweep|calibrate|suite|score|bench``.

Exit codes: 0 success, 2 bad input (one sentence on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from db.store import Store, StoreError
from engine.errors import SteerLabError
from engine.fields import printable
from engine.runner import Progress
from service.catalog import list_experiments
from service.export import export_csv, export_json
from service.running import RunOptions, run_experiment_file
from service.summary import VariantSummary, variant_summaries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="SteerLab: A/B test steering variants of a language model."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) an experiment file and print a per-variant summary")
    run.add_argument("file", help="experiment YAML file")
    run.add_argument("--db", help="SQLAlchemy URL or SQLite file (default: $STEERLAB_DB or steerlab.db)")
    run.add_argument("--model", help="hub id or local folder, instead of the file's model")
    run.add_argument("--name", help="store under this experiment name instead of the file's")
    run.add_argument("--batch-size", type=int, default=8, help="rows per mixed batch (default 8)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    run.add_argument(
        "--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto: float32 on CPU)"
    )
    run.add_argument(
        "--replace", action="store_true", help="discard a stored experiment of that name whose definition differs"
    )
    _allow_path_option(run)

    ls = sub.add_parser("list", help="list stored experiments with their counts")
    ls.add_argument("--db")

    export = sub.add_parser("export", help="export an experiment's outputs, figures and ratings")
    export.add_argument("name")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.add_argument("--db")

    sweep = sub.add_parser("sweep", help="run the file's layer x coefficient sweep and recommend a cell")
    sweep.add_argument("file", help="experiment YAML file with a 'sweep' section")
    sweep.add_argument("--db")
    sweep.add_argument("--model", help="hub id or local folder, instead of the file's model")
    sweep.add_argument("--batch-size", type=int, default=32)
    sweep.add_argument("--device", default="auto")
    sweep.add_argument("--dtype", default="auto")
    sweep.add_argument(
        "--add-cells", nargs="+", metavar="CELL", help="add these cells (like L1_x2) to the experiment as variants"
    )
    _allow_path_option(sweep)

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

    bench = sub.add_parser("bench", help="measure steering overhead, mixed-batch speedup, toggle time, reversibility")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")
    return parser


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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list(args)
        if args.command == "export":
            return _export(args)
        if args.command == "report":
            return _report(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "suite":
            return _suite(args)
        if args.command == "score":
            return _score(args)
        return _bench(args)
    except (SteerLabError, StoreError) as exc:
        # One line whatever the message quotes (a name or path with a line break in it).
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted: finished batches are stored; run the same command again to continue.", file=sys.stderr)
        return 130


class _ProgressBar:
    """A tqdm bar fed by the engine's progress callback, opened at the first report."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._description = description
        self._bar: Any = None

    def __call__(self, p: Progress) -> None:
        if self._bar is None:
            self._bar = self._tqdm(
                total=p.total, initial=p.done, unit="gen", desc=self._description, dynamic_ncols=True
            )
        self._bar.update(p.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run(args: argparse.Namespace) -> int:
    store = Store(args.db)
    options = RunOptions(
        args.batch_size, args.device, args.dtype, args.model, args.name, args.replace, _allowed_dirs(args)
    )
    progress = _ProgressBar("generating")
    try:
        result = run_experiment_file(store, args.file, options, progress)
    finally:
        progress.close()
    print(
        f"Experiment '{result.experiment}': run {result.run_id} {result.status}, "
        f"{result.generated} new generations, {result.total} in all ({store.url})."
    )
    print(format_summary(variant_summaries(store, result.experiment)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from service.sweeps import promote_cells, run_sweep_file

    store = Store(args.db)
    progress = _ProgressBar("sweeping")
    try:
        options = RunOptions(args.batch_size, args.device, args.dtype, args.model, allowed_dirs=_allowed_dirs(args))
        run, result = run_sweep_file(store, args.file, options, progress)
    finally:
        progress.close()
    print(f"Sweep '{result.experiment}': run {run.run_id} {run.status}, {run.generated} new generations ({store.url}).")
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


def format_sweep(result: Any) -> str:
    config = result.config
    layers = sorted({c.layer for c in result.cells})
    coefficients = sorted({c.coefficient for c in result.cells})
    by_key = {(c.layer, c.coefficient): c for c in result.cells}
    lines = [
        f"{config.scorer} (mean) / perplexity under the unsteered model, per cell; "
        f"baseline {result.baseline_behaviour:.3f} / {result.baseline_perplexity:.1f}",
    ]
    table = [["layer \\ coefficient", *[f"{c:g}" for c in coefficients]]]
    for layer in layers:
        row = [str(layer)]
        for c in coefficients:
            cell = by_key.get((layer, c))
            row.append("-" if cell is None else f"{cell.behaviour:.3f} / {cell.perplexity:.1f}")
        table.append(row)
    lines.append(_table(table))
    lines.append("Pareto front (more behaviour, less perplexity): " + ", ".join(c.name for c in result.front))
    if result.recommended is not None:
        r = result.recommended
        lines.append(
            f"Recommended: layer {r.layer}, coefficient {r.coefficient:g} ({config.scorer} {r.behaviour:.3f} "
            f"[{r.behaviour_low:.3f}, {r.behaviour_high:.3f}], n={r.n}; perplexity {r.perplexity:.1f}, "
            f"within {config.fluency_tolerance:g}x the baseline's)."
        )
    else:
        lines.append("No cell to recommend yet (no fluency figures).")
    return "\n".join(lines)


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
        result = calibrate(model, intervention)
        print(
            f"{args.variant}, conditional edit {i}: threshold {result.threshold:.4f} "
            f"(precision {result.precision:.2f}, recall {result.recall:.2f}, F1 {result.f1:.2f} on {result.examples} examples; "
            f"similarities range {result.lowest:.3f} to {result.highest:.3f}; the file says {intervention.condition.threshold:g})"
        )
    return 0


def _suite(args: argparse.Namespace) -> int:
    from service.suite import run_suite, suite_files

    files = suite_files(args.all, args.only)
    if not files:
        raise SteerLabError(f"No suite file matches '{args.only}'; see experiments/suite/.")
    results = run_suite(Store(args.db), files, RunOptions(device=args.device), log=lambda line: print(line, flush=True))
    for task in results["tasks"]:
        print(f"\n{task['task']} — task performance: {task['scorer']}")
        table = [
            [
                "variant",
                "method",
                "scope",
                "undo diff",
                "set-up s",
                "infer x",
                "extra params",
                "examples",
                "performance [95% CI]",
                "share of FT gain [95% CI]",
            ]
        ]
        for m in task["methods"]:
            perf, share = m["performance"], m["share_of_finetune_gain"]
            table.append(
                [
                    m["variant"],
                    m["method"],
                    m["scope"],
                    _fmt(m["undo_logit_diff"], 1),
                    _fmt(m["setup_seconds"], 3),
                    _fmt(m["inference_overhead"], 2),
                    str(m["extra_parameters"]),
                    str(m["examples"]),
                    f"{perf['mean']:.3f} [{perf['ci95'][0]:.3f}, {perf['ci95'][1]:.3f}]",
                    "-" if share is None else f"{share['value']:.2f} [{share['ci95'][0]:.2f}, {share['ci95'][1]:.2f}]",
                ]
            )
        print(_table(table))
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
    print(format_summary(variant_summaries(store, args.name)))
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = list_experiments(Store(args.db))
    if not rows:
        print("No experiments stored yet; run one with `python -m engine run experiments/tinystories_mood.yaml`.")
        return 0
    table = [["experiment", "model", "prompts", "variants", "generations", "ratings", "last run"]]
    for r in rows:
        table.append(
            [
                r.name,
                r.model_id,
                str(r.prompts),
                str(r.variants),
                str(r.generations),
                str(r.ratings),
                r.last_run_status or "-",
            ]
        )
    print(_table(table))
    return 0


def _export(args: argparse.Namespace) -> int:
    store = Store(args.db)
    target = _output_path(args.output, "export")
    text = export_json(store, args.name) if args.format == "json" else export_csv(store, args.name)
    _write(target, text, "export")
    print(f"Wrote {args.format.upper()} export of '{args.name}' to {target}.")
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
    from engine.bench import run_benchmarks

    def report(line: str) -> None:
        print(line, flush=True)

    figures = run_benchmarks(quick=args.quick, log=report)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def format_summary(summaries: Sequence[VariantSummary]) -> str:
    score_names = sorted({k for s in summaries for k in s.scores})
    header = [
        "variant",
        "kind",
        "n",
        "tok/gen",
        "tok/s",
        "peak MB",
        "params",
        "extract s",
        "nudge ms/row",
        "KL",
        "rev. diff",
        "toggle ms",
    ]
    table = [header + [f"{n} (mean [95% CI])" for n in score_names]]
    for s in summaries:
        rev = s.reversibility()
        comp = s.compute()
        row = [
            s.name,
            s.kind,
            str(s.generations),
            _fmt(s.mean_tokens, 1),
            _fmt(s.tokens_per_second, 1),
            _fmt(s.peak_memory_bytes / 2**20, 0),
            _fmt(comp["steering_parameters"], 0),
            _fmt(comp["extraction_seconds"], 3),
            _fmt(comp["nudge_ms_per_row"], 1),
            _fmt(comp["side_effect_kl"], 3),
            _fmt(rev["max_abs_logit_diff_after_removal"], 1),
            _fmt(rev["toggle_ms"], 3),
        ]
        for n in score_names:
            e = s.scores[n]
            row.append(f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]" if e.n else "-")
        table.append(row)
    return _table(table)


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
