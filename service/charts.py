"""Altair charts of a comparison, shared by the dashboard and the HTML report.

Every chart of an estimate draws its 95% interval and labels its sample size.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from engine.stats import Estimate
from service.adaptation import MethodRow
from service.comparison import Comparison
from service.sweeps import SweepResult

WIDTH = 520


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def win_rate_frame(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "variant": w.variant,
                "win rate": _finite(w.estimate.value),
                "low": w.estimate.low,
                "high": w.estimate.high,
                "decisive votes": w.estimate.n,
                "wins": w.wins,
                "losses": w.losses,
                "ties": w.ties,
                "both bad": w.both_bad,
                "label": f"n={w.estimate.n} (ties {w.ties}, both bad {w.both_bad})",
            }
            for w in c.against_baseline
        ]
    )


def win_rate_chart(c: Comparison) -> alt.LayerChart:
    data = win_rate_frame(c)
    base = alt.Chart(data).encode(y=alt.Y("variant:N", sort=None, title=None))
    rule = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", scale=alt.Scale(domain=[0, 1]), title=f"win rate against {c.baseline} (95% Wilson)"),
        x2="high:Q",
    )
    point = base.mark_point(filled=True, size=80).encode(x="win rate:Q", tooltip=list(data.columns))
    text = base.mark_text(align="left", dx=6, dy=-9, fontSize=10).encode(x="high:Q", text="label:N")
    even = alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return (rule + point + text + even).properties(width=WIDTH, title="Win rate against the baseline")


def bradley_terry_frame(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "variant": r.player,
                "rating": _finite(r.rating),
                "low": _finite(r.low),
                "high": _finite(r.high),
                "battles": r.battles,
            }
            for r in c.bradley_terry
        ]
    ).sort_values("rating", ascending=False, na_position="last")


def bradley_terry_chart(c: Comparison) -> alt.LayerChart:
    data = bradley_terry_frame(c).dropna(subset=["rating"])  # variants without votes have no rating
    base = alt.Chart(data).encode(y=alt.Y("variant:N", sort=list(data["variant"]), title=None))
    rule = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("low:Q", scale=alt.Scale(zero=False), title="Bradley–Terry rating (95% bootstrap)"), x2="high:Q"
    )
    point = base.mark_point(filled=True, size=80, color="#d62728").encode(x="rating:Q", tooltip=list(data.columns))
    text = base.mark_text(align="left", dx=6, dy=-9, fontSize=10).encode(
        x="high:Q", text=alt.Text("battles:Q", format="d")
    )
    return (rule + point + text).properties(width=WIDTH, title="Bradley–Terry ratings (label: battles)")


def matrix_frame(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "variant": w.variant,
                "opponent": w.opponent,
                "win rate": _finite(w.estimate.value),
                "n": w.estimate.n,
                "label": "-" if w.estimate.n == 0 else f"{w.estimate.value:.2f} (n={w.estimate.n})",
            }
            for w in c.pairwise
        ]
    )


def matrix_chart(c: Comparison) -> alt.LayerChart:
    data = matrix_frame(c)
    base = alt.Chart(data).encode(
        x=alt.X("opponent:N", sort=c.variants, title="against"), y=alt.Y("variant:N", sort=c.variants, title="row wins")
    )
    rect = base.mark_rect().encode(
        color=alt.Color(
            "win rate:Q", scale=alt.Scale(domain=[0, 1], scheme="redblue"), legend=alt.Legend(title="win rate")
        ),
        tooltip=list(data.columns),
    )
    text = base.mark_text(fontSize=9).encode(text="label:N")
    return (rect + text).properties(
        width=WIDTH, height=max(120, 34 * len(c.variants)), title="Pairwise win rates (decisive votes)"
    )


def compute_frame(c: Comparison) -> pd.DataFrame:
    rows = []
    for s in c.summaries:
        comp, rev = s.compute(), s.reversibility()
        rows.append(
            {
                "variant": s.name,
                "kind": s.kind,
                "generations": s.generations,
                "latency per generation (s)": _finite(comp["wall_seconds"] / s.generations) if s.generations else None,
                "tokens per second": _finite(comp["tokens_per_second"]),
                "peak memory (MB)": comp["peak_memory_bytes"] / 2**20,
                "steering parameters": _finite(comp["steering_parameters"]),
                "extraction time (s)": _finite(comp["extraction_seconds"]),
                "KL on neutral prompts": _finite(comp["side_effect_kl"]),
                "nudging ms per row": comp["nudge_ms_per_row"],
                "logit diff after removal": _finite(rev["max_abs_logit_diff_after_removal"]),
                "toggle (ms)": _finite(rev["toggle_ms"]),
            }
        )
    return pd.DataFrame(rows)


def compute_chart(c: Comparison) -> alt.VConcatChart:
    data = compute_frame(c)
    measures = [
        "tokens per second",
        "peak memory (MB)",
        "steering parameters",
        "extraction time (s)",
        "nudging ms per row",
        "KL on neutral prompts",
    ]
    charts = [
        alt.Chart(data)
        .mark_bar()
        .encode(y=alt.Y("variant:N", sort=None, title=None), x=alt.X(f"{m}:Q"), tooltip=["variant", m, "generations"])
        .properties(width=230, height=max(80, 20 * len(data)), title=m)
        for m in measures
    ]
    return alt.vconcat(*(alt.hconcat(*charts[i : i + 2]) for i in range(0, len(charts), 2))).properties(
        title="Compute and side effects per variant"
    )


def reversibility_chart(c: Comparison) -> alt.HConcatChart:
    data = compute_frame(c)
    diff = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("variant:N", sort=None, title=None),
            x=alt.X("logit diff after removal:Q", scale=alt.Scale(domainMin=0)),
        )
    )
    diff_text = (
        alt.Chart(data)
        .mark_text(align="left", dx=4)
        .encode(
            y=alt.Y("variant:N", sort=None),
            x="logit diff after removal:Q",
            text=alt.Text("logit diff after removal:Q", format=".1f"),
        )
    )
    toggle = (
        alt.Chart(data).mark_bar(color="#2ca02c").encode(y=alt.Y("variant:N", sort=None, title=None), x="toggle (ms):Q")
    )
    size = {"width": 230, "height": max(80, 20 * len(data))}
    return alt.hconcat(
        (diff + diff_text).properties(title="Largest logit difference after removal (0 = exact)", **size),
        toggle.properties(title="Attach + detach time (ms)", **size),
    )


def scores_frame(c: Comparison) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for s in c.summaries:
        for scorer, e in s.scores.items():
            rows.append(
                {"variant": s.name, "scorer": scorer, "mean": _finite(e.value), "low": e.low, "high": e.high, "n": e.n}
            )
    return pd.DataFrame(rows, columns=["variant", "scorer", "mean", "low", "high", "n"])


def scores_chart(c: Comparison) -> alt.FacetChart | None:
    data = scores_frame(c)
    if data.empty:
        return None
    base = alt.Chart().encode(y=alt.Y("variant:N", sort=c.variants, title=None))
    layered = alt.layer(
        base.mark_rule(strokeWidth=2).encode(
            x=alt.X("low:Q", title="mean score (95% bootstrap over prompts)"), x2="high:Q"
        ),
        base.mark_point(filled=True, size=70).encode(
            x="mean:Q", tooltip=["variant", "scorer", "mean", "low", "high", "n"]
        ),
        data=data,
    ).properties(width=WIDTH // 2 + 40)
    return layered.facet(column=alt.Column("scorer:N", title=None)).resolve_scale(x="independent")


def sweep_frame(result: SweepResult) -> pd.DataFrame:
    front = {c.name for c in result.front}
    chosen = result.recommended.name if result.recommended else None
    return pd.DataFrame(
        [
            {
                "cell": c.name,
                "layer": c.layer,
                "coefficient": c.coefficient,
                result.config.scorer: _finite(c.behaviour),
                "low": _finite(c.behaviour_low),
                "high": _finite(c.behaviour_high),
                "perplexity": _finite(c.perplexity),
                "n": c.n,
                "pareto": c.name in front,
                "recommended": c.name == chosen,
            }
            for c in result.cells
        ]
    )


def sweep_heatmaps(result: SweepResult) -> alt.HConcatChart:
    data = sweep_frame(result)
    scorer = result.config.scorer

    def heatmap(measure: str, scale: alt.Scale, title: str) -> alt.LayerChart:
        base = alt.Chart(data).encode(x=alt.X("coefficient:O", title="coefficient"), y=alt.Y("layer:O", title="layer"))
        rect = base.mark_rect().encode(color=alt.Color(f"{measure}:Q", scale=scale), tooltip=list(data.columns))
        text = base.mark_text(fontSize=10).encode(text=alt.Text(f"{measure}:Q", format=".3g"))
        return (rect + text).properties(width=260, height=max(60, 40 * data["layer"].nunique()), title=title)

    return alt.hconcat(
        heatmap(
            scorer, alt.Scale(scheme="blues"), f"{scorer} (mean per cell, n={int(data['n'].max()) if len(data) else 0})"
        ),
        heatmap("perplexity", alt.Scale(scheme="oranges", type="log"), "perplexity under the unsteered model"),
    ).resolve_scale(color="independent")


def pareto_chart(result: SweepResult) -> alt.LayerChart:
    data = sweep_frame(result)
    scorer = result.config.scorer
    base = alt.Chart(data).encode(
        x=alt.X("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (lower = more fluent)"),
        y=alt.Y(f"{scorer}:Q", title=f"{scorer} (95% interval)"),
    )
    bars = base.mark_rule(opacity=0.5).encode(y="low:Q", y2="high:Q")
    points = base.mark_point(filled=True, size=80).encode(
        color=alt.Color(
            "pareto:N", title="on the Pareto front", scale=alt.Scale(domain=[False, True], range=["#9e9e9e", "#d62728"])
        ),
        shape=alt.Shape(
            "recommended:N", title="recommended", scale=alt.Scale(domain=[False, True], range=["circle", "diamond"])
        ),
        size=alt.Size("recommended:N", scale=alt.Scale(domain=[False, True], range=[70, 260]), legend=None),
        tooltip=list(data.columns),
    )
    labels = base.mark_text(align="left", dx=6, fontSize=9).encode(text="cell:N")
    baseline = (
        alt.Chart(pd.DataFrame({"x": [result.baseline_perplexity]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(x="x:Q")
    )
    return (bars + points + labels + baseline).properties(
        width=WIDTH, title="Behaviour against fluency (dashed: baseline perplexity)"
    )


def adaptation_frame(rows: list[MethodRow]) -> pd.DataFrame:
    def est(e: Estimate | None) -> str:
        if e is None or not math.isfinite(e.value):
            return "–"
        return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}] (n={e.n})"

    return pd.DataFrame(
        [
            {
                "variant": r.variant,
                "method": r.kind,
                "scope": r.scope,
                "can be undone": "yes" if r.reversible else "only from a saved copy",
                "logit diff after undo": _finite(r.undo_logit_diff),
                "set-up seconds": _finite(r.setup_seconds),
                "inference time vs baseline": _finite(r.inference_overhead),
                "extra parameters": r.extra_parameters,
                "extra bytes": r.extra_bytes,
                "examples used": r.examples,
                "task performance [95% CI]": est(r.performance),
                "share of fine-tuning's gain [95% CI]": est(r.share_of_finetune_gain),
            }
            for r in rows
        ]
    )


def adaptation_chart(rows: list[MethodRow], scorer: str) -> alt.VConcatChart:
    long = []
    for r in rows:
        for criterion, value in (
            (f"task performance ({scorer})", r.performance.value),
            ("set-up seconds (log)", max(r.setup_seconds, 1e-4)),
            ("inference time vs baseline", r.inference_overhead),
            ("extra bytes (log)", max(r.extra_bytes, 1)),
            ("examples used", r.examples),
            ("layers touched", r.layers_touched),
        ):
            long.append(
                {"variant": r.variant, "method": r.kind, "criterion": criterion, "value": _finite(float(value))}
            )
    data = pd.DataFrame(long)
    charts = []
    for criterion in data["criterion"].unique():
        # Bars cannot start at 0 on a log axis: log-scaled criteria are drawn as dots.
        log = "(log)" in criterion
        chart = alt.Chart(data[data["criterion"] == criterion])
        mark = chart.mark_point(filled=True, size=90) if log else chart.mark_bar()
        charts.append(
            mark.encode(
                y=alt.Y("variant:N", sort=None, title=None, axis=alt.Axis(labelLimit=160)),
                x=alt.X("value:Q", title=None, scale=alt.Scale(type="log") if log else alt.Scale(zero=True)),
                color=alt.Color("method:N"),
                tooltip=["variant", "method", "value"],
            ).properties(width=230, height=max(100, 26 * len(rows)), title=criterion)
        )
    return alt.vconcat(*(alt.hconcat(*charts[i : i + 2]) for i in range(0, len(charts), 2))).properties(
        title="The study's criteria, measured per method"
    )
