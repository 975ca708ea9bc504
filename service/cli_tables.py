"""Text tables for the command line: plain columns, one row per variant, cell or experiment.

No table here names a method's own figures: a summary's columns are the metrics stored
for its variants (whatever a steering method or baseline recorded), so a new method's
figures show up without touching this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from db.repository import ExperimentSummary
from service.jobs import RunStatus
from service.summary import VariantSummary


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns with a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _figure(value: float) -> str:
    """A stored metric of any size, readable: 0.0123, 12.3, 123456."""
    if not math.isfinite(value):
        return "-"
    if value == int(value) and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}"


def format_summary(summaries: Sequence[VariantSummary]) -> str:
    """Per variant: counts and speed, every stored figure, then each score's mean and 95% interval."""
    figure_names = sorted({k for s in summaries for k, v in s.figures.items() if math.isfinite(v)})
    score_names = sorted({k for s in summaries for k in s.scores})
    header = ["variant", "kind", "n", "tok/gen", "tok/s", "peak MB", *figure_names]
    rows = [header + [f"{n} (mean [95% CI])" for n in score_names]]
    for s in summaries:
        row = [
            s.name,
            s.kind,
            str(s.generations),
            fmt(s.mean_tokens, 1),
            fmt(s.tokens_per_second, 1),
            fmt(s.peak_memory_bytes / 2**20, 0),
            *[_figure(s.figures[n]) if n in s.figures else "-" for n in figure_names],
        ]
        for n in score_names:
            e = s.scores[n]
            row.append(f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]" if e.n else "-")
        rows.append(row)
    return table(rows)


def format_sweep(result: Any) -> str:
    """A sweep's grid (behaviour / perplexity per layer x coefficient), its Pareto front and recommendation."""
    config = result.config
    layers = sorted({c.layer for c in result.cells})
    coefficients = sorted({c.coefficient for c in result.cells})
    by_key = {(c.layer, c.coefficient): c for c in result.cells}
    lines = [
        f"{config.scorer} (mean) / perplexity under the unsteered model, per cell; "
        f"baseline {result.baseline_behaviour:.3f} / {result.baseline_perplexity:.1f}",
    ]
    grid = [["layer \\ coefficient", *[f"{c:g}" for c in coefficients]]]
    for layer in layers:
        row = [str(layer)]
        for c in coefficients:
            cell = by_key.get((layer, c))
            row.append("-" if cell is None else f"{cell.behaviour:.3f} / {cell.perplexity:.1f}")
        grid.append(row)
    lines.append(table(grid))
    lines.append("Pareto front (more behaviour, less perplexity): " + ", ".join(c.name for c in result.front))
    if result.recommended is not None:
        r = result.recommended
        lines.append(
            f"Recommended: layer {r.layer}, coefficient {r.coefficient:g} ({config.scorer} {r.behaviour:.3f} "
            f"[{r.behaviour_low:.3f}, {r.behaviour_high:.3f}], {r.n} prompts; perplexity {r.perplexity:.1f}, "
            f"within {config.fluency_tolerance:g}x the baseline's)."
        )
    else:
        lines.append("No cell to recommend yet (no fluency figures).")
    return "\n".join(lines)


def format_suite_task(task: dict[str, Any]) -> str:
    """One task of the benchmark suite: each adaptation method's cost and performance."""
    rows = [
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
        rows.append(
            [
                m["variant"],
                m["method"],
                m["scope"],
                fmt(m["undo_logit_diff"], 1),
                fmt(m["setup_seconds"], 3),
                fmt(m["inference_overhead"], 2),
                str(m["extra_parameters"]),
                str(m["examples"]),
                f"{perf['mean']:.3f} [{perf['ci95'][0]:.3f}, {perf['ci95'][1]:.3f}]",
                "-" if share is None else f"{share['value']:.2f} [{share['ci95'][0]:.2f}, {share['ci95'][1]:.2f}]",
            ]
        )
    return f"{task['task']} — task performance: {task['scorer']}\n" + table(rows)


def format_experiments(rows: Sequence[ExperimentSummary]) -> str:
    listing = [["experiment", "model", "prompts", "variants", "generations", "ratings", "last run"]]
    for r in rows:
        listing.append(
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
    return table(listing)


def format_status(name: str, s: RunStatus, now: datetime, lease: float) -> str:
    """What ``steerlab status NAME`` prints: state, progress, phase, worker, heartbeat age, error, traceback."""
    lines = [f"Experiment '{name}': {s.state}" + (f" (run {s.run_id})" if s.run_id is not None else "")]
    lines.append(f"  progress   {s.done} / {s.total} generations ({100 * s.fraction:.0f}%)")
    if s.phase:
        lines.append(f"  phase      {s.phase}")
    if s.rate:
        left = f", about {s.seconds_left:.0f} s left" if s.seconds_left is not None else ""
        lines.append(f"  rate       {s.rate:.1f} generations/s{left}")
    if s.worker:
        lines.append(f"  worker     {s.worker}" + (f" (attempt {s.attempts})" if s.attempts > 1 else ""))
    if s.device:
        lines.append(f"  runs on    {s.device}")
    age = s.heartbeat_age(now)
    if age is not None and s.active:
        lines.append(f"  heartbeat  {age:.0f} s ago")
        if s.running and age > lease:
            lines.append(
                "  its worker seems to have stopped (no heartbeat within the lease); another worker takes it over"
            )
    if s.requested_by:
        lines.append(f"  queued by  {s.requested_by}")
    if s.cancel_requested and s.active:
        lines.append("  cancelling after the current step")
    if s.error:
        lines.append(f"  error      {s.error}")
    if s.traceback:
        lines.append("  traceback:")
        lines.extend(f"    {line}" for line in s.traceback.rstrip().splitlines())
    return "\n".join(lines)
