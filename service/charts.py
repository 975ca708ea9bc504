"""Altair charts and display tables of a comparison, shared by the dashboard and the HTML report.

Every chart of an estimate draws its 95% interval and labels its sample size; a figure from
fewer votes than its minimum is drawn as "too few votes (n=…)" rather than as a number.
Charts are sized by their number of variants (a fixed height per row), so they read the
same on the Compare page and in the report; the ``*_table`` functions give the same figures
as text rounded to what is meaningful, for ``st.dataframe`` and the report's tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd

from db import repository as repo
from db.store import Store
from engine.ranking import Rating
from engine.stats import MIN_DECISIVE_VOTES, Estimate, MeanEstimate
from service import cache, decision_tables
from service.adaptation import MethodRow
from service.catalog import get_experiment
from service.comparison import Comparison, compare, too_few_votes
from service.sweeps import SweepResult

WIDTH = 640  # width of a single chart in the report (the page stretches it to the page's width)
ROW = 26  # pixels per variant row: room for a label and its interval
PANEL_WIDTH = 250  # plot width of one panel of a grid of small charts: three fit in ~1100 px
LABEL_LIMIT = 170  # longest variant label (pixels) before it is cut with "…"
# Charts a page stretches to its width fit that width, but keep their own height (rows x ROW);
# Streamlit's default "fit" would squeeze every row into what is left after the axes.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
NATURAL = alt.AutoSizeParams(type="pad", contains="padding")
NOT_COMPARABLE = "measured in a different run than the baseline: not comparable"
GREY = "#9e9e9e"


# --- numbers as text -------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sig(value: Any, digits: int = 3, trim: bool = False) -> str:
    """``value`` to ``digits`` significant digits, with thousands separators; "–" when there is none.

    ``trim`` drops trailing zeros (0.0100 -> 0.01), for a lone label rather than a table column.
    """
    number = _finite(value)
    if number is None:
        return "–"
    if number == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(number)))
    text = f"{round(number, decimals):,.{max(0, decimals)}f}"
    return text.rstrip("0").rstrip(".") if trim and "." in text else text


def round_sig(value: Any, digits: int = 3) -> float | None:
    """``value`` rounded to ``digits`` significant digits (a number, for tables that sort)."""
    number = _finite(value)
    if number is None or number == 0:
        return number
    return round(number, digits - 1 - math.floor(math.log10(abs(number))))


def interval_text(e: Estimate | MeanEstimate, percent: bool = False) -> str:
    """``value [low, high]`` with as many decimals as the interval's width makes meaningful."""
    scale = 100.0 if percent else 1.0
    value, low, high = (_finite(x) for x in (e.value, e.low, e.high))
    if value is None:
        return "–"
    unit = "%" if percent else ""
    if low is None or high is None:
        return sig(value * scale) + unit
    width = (high - low) * scale
    if width <= 0:
        text = sig(value * scale)
        return f"{text}{unit} [{sig(low * scale)}{unit}, {sig(high * scale)}{unit}]"
    # Two significant digits of the width: 0.018 -> 3 decimals, 3.3 -> 1, 52 (%) -> 0.
    decimals = min(6, max(0, 1 - math.floor(math.log10(width))))
    return (
        f"{value * scale:,.{decimals}f}{unit} [{low * scale:,.{decimals}f}{unit}, {high * scale:,.{decimals}f}{unit}]"
    )


def _rows_height(rows: int) -> int:
    return max(2, rows) * ROW


def _variant_axis(order: list[str] | None, title: str | None = None) -> alt.Y:
    return alt.Y("variant:N", sort=order, title=title, axis=alt.Axis(labelLimit=LABEL_LIMIT, labelOverlap=False))


def _label_column(base: alt.Chart, field: str) -> alt.Chart:
    """Labels in a column just right of the plot, each on the middle of its row."""
    return base.mark_text(align="left", baseline="middle", dx=8, fontSize=11, color="#444").encode(
        x=alt.value("width"), text=f"{field}:N"
    )


# --- votes -----------------------------------------------------------------------------


def win_rate_frame(c: Comparison) -> pd.DataFrame:
    """Win rates against the baseline, as numbers; ``win rate``/``low``/``high`` are empty with too few votes."""
    rows = []
    for w in c.against_baseline:
        enough = w.enough_votes
        n = w.estimate.n
        rest = f"ties {w.ties}, both bad {w.both_bad}"
        rows.append(
            {
                "variant": w.variant,
                "win rate": _finite(w.estimate.value) if enough else None,
                "low": w.estimate.low if enough else None,
                "high": w.estimate.high if enough else None,
                "decisive votes": n,
                "wins": w.wins,
                "losses": w.losses,
                "ties": w.ties,
                "both bad": w.both_bad,
                "enough votes": enough,
                "label": f"n={n} ({rest})" if enough else f"too few votes (n={n}; needs {MIN_DECISIVE_VOTES})",
            }
        )
    columns = ["variant", "win rate", "low", "high", "decisive votes", "wins", "losses", "ties", "both bad"]
    return pd.DataFrame(rows, columns=[*columns, "enough votes", "label"])


def win_rate_table(c: Comparison) -> pd.DataFrame:
    """Win rates against the baseline as text: a percentage with its interval, or "too few votes"."""
    return pd.DataFrame(
        [
            {
                "variant": w.variant,
                f"win rate against {c.baseline} [95% CI]": interval_text(w.estimate, percent=True)
                if w.enough_votes
                else too_few_votes(w.estimate.n, MIN_DECISIVE_VOTES),
                "decisive votes": w.estimate.n,
                "wins": w.wins,
                "losses": w.losses,
                "ties": w.ties,
                "both bad": w.both_bad,
            }
            for w in c.against_baseline
        ]
    )


def win_rate_chart(c: Comparison) -> alt.LayerChart:
    data = win_rate_frame(c)
    base = alt.Chart(data).encode(y=_variant_axis(list(data["variant"])))
    x = alt.X(
        "low:Q",
        scale=alt.Scale(domain=[0, 1]),
        title=f"win rate against {c.baseline} (95% Wilson)",
        axis=alt.Axis(format=".0%", values=[0, 0.25, 0.5, 0.75, 1]),
    )
    rule = base.mark_rule(strokeWidth=2).encode(x=x, x2="high:Q")
    point = base.mark_point(filled=True, size=80).encode(
        x=alt.X("win rate:Q", scale=alt.Scale(domain=[0, 1])), tooltip=list(data.columns)
    )
    even = alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return (rule + point + even + _label_column(base, "label")).properties(
        width=WIDTH,
        height=_rows_height(len(data)),
        autosize=FIT_WIDTH,
        title=alt.Title(
            "Win rate against the baseline",
            subtitle=f"decisive votes only; shown from {MIN_DECISIVE_VOTES} decisive votes per variant",
        ),
    )


def _rating_rows(ratings: list[Rating], series: str) -> list[dict[str, Any]]:
    return [
        {
            "variant": r.player,
            "series": series,
            "rating": _finite(r.rating),
            # An interval from fewer than the minimum of decisive battles is not shown: with 3 wins of 3
            # every bootstrap resample is the same and the interval would have no width at all.
            "low": _finite(r.low) if r.enough_votes else None,
            "high": _finite(r.high) if r.enough_votes else None,
            "decisive battles": r.decisive,
            "battles": r.battles,
            "enough votes": r.enough_votes,
            "label": f"n={r.decisive}"
            if r.enough_votes
            else f"needs more votes ({r.decisive} of {r.min_decisive} decisive battles)",
        }
        for r in ratings
    ]


_RATING_COLUMNS = ["variant", "series", "rating", "low", "high", "decisive battles", "battles", "enough votes", "label"]
RAW = "raw"
LENGTH_CONTROLLED = "length-controlled"


def bradley_terry_frame(c: Comparison) -> pd.DataFrame:
    """Ratings as numbers, best first (raw, then length-controlled when measured). Every variant with
    battles has a finite rating (the prior keeps it so); below the minimum of decisive battles it is
    labelled "needs more votes" and has no interval."""
    rows = _rating_rows(c.bradley_terry, RAW)
    if c.length_controlled is not None:
        rows += _rating_rows(c.length_controlled.controlled, LENGTH_CONTROLLED)
    frame = pd.DataFrame(rows, columns=_RATING_COLUMNS)
    order = {
        v: i for i, v in enumerate(frame[frame["series"] == RAW].sort_values("rating", ascending=False)["variant"])
    }
    frame["order"] = frame["variant"].map(order)
    return frame.sort_values(["order", "series"], ascending=[True, False]).drop(columns="order")


def bradley_terry_table(c: Comparison) -> pd.DataFrame:
    """One row per variant: the raw rating and, when measured, the length-controlled one, with battles."""
    controlled = {r.player: r for r in c.length_controlled.controlled} if c.length_controlled is not None else {}
    rows = []
    for r in sorted(c.bradley_terry, key=lambda r: -r.rating if math.isfinite(r.rating) else math.inf):
        row: dict[str, Any] = {"variant": r.player, "rating [95% CI]": _rating_text(r)}
        if controlled:
            row["length-controlled [95% CI]"] = _rating_text(controlled[r.player])
        row["decisive battles"] = r.decisive
        row["battles (ties included)"] = r.battles
        rows.append(row)
    return pd.DataFrame(rows)


def _rating_text(r: Rating) -> str:
    if not math.isfinite(r.rating):
        return f"no votes yet (needs {r.min_decisive} decisive battles)"
    if not r.enough_votes:
        return f"{r.rating:,.0f} (needs more votes: {r.decisive} of {r.min_decisive} decisive battles)"
    return interval_text(Estimate(r.rating, r.low, r.high, r.decisive))


def bradley_terry_chart(c: Comparison) -> alt.LayerChart | None:
    """Ratings with intervals (raw and length-controlled side by side); variants below the minimum are
    grey points labelled "needs more votes". None without battles."""
    data = bradley_terry_frame(c)
    data = data[data["battles"] > 0]
    if data.empty:
        return None
    order = list(dict.fromkeys(data["variant"]))
    series = [RAW, LENGTH_CONTROLLED] if c.length_controlled is not None else [RAW]
    colour = alt.Color(
        "series:N",
        scale=alt.Scale(domain=series, range=["#d62728", "#1f77b4"][: len(series)]),
        legend=alt.Legend(title=None, orient="top") if len(series) > 1 else None,
    )
    offset = alt.YOffset("series:N", sort=series) if len(series) > 1 else alt.YOffset()
    base = alt.Chart(data).encode(y=_variant_axis(order), yOffset=offset)
    rule = base.mark_rule(strokeWidth=2).encode(
        x=alt.X(
            "low:Q",
            scale=alt.Scale(zero=False),
            title="Bradley–Terry rating (95% bootstrap; prior N(1000, 400²))",
            axis=alt.Axis(labelOverlap="greedy", labelSeparation=6),
        ),
        x2="high:Q",
        color=colour,
    )
    point = base.mark_point(filled=True, size=80).encode(
        x="rating:Q",
        color=alt.condition("datum['enough votes']", colour, alt.value(GREY)),
        tooltip=list(data.columns),
    )
    labels = alt.Chart(data[data["series"] == RAW]).encode(y=_variant_axis(order))
    return (rule + point + _label_column(labels, "label")).properties(
        width=WIDTH,
        height=_rows_height(len(order)) * (len(series) if len(series) > 1 else 1),
        autosize=FIT_WIDTH,
        title=alt.Title(
            "Bradley–Terry ratings",
            subtitle=f"interval shown from {c.statistics.min_votes} decisive battles per variant; grey: needs more votes",
        ),
    )


def bradley_terry_note(c: Comparison) -> str | None:
    """Which ratings need more votes, and the length effect; None when there is nothing to say."""
    notes = []
    short = [r for r in c.bradley_terry if r.battles and not r.enough_votes]
    if short:
        notes.append(
            f"{len(short)} of {len(c.bradley_terry)} variants have fewer than {c.statistics.min_votes} decisive "
            "battles: their ratings are shown without an interval and labelled “needs more votes” (a weak prior, "
            "N(1000, 400²), keeps them finite; they move as votes come in)."
        )
    if c.length_controlled is not None:
        notes.append(c.length_controlled.describe())
    return " ".join(notes) or None


def matrix_frame(c: Comparison) -> pd.DataFrame:
    rows = []
    for w in c.pairwise:
        n = w.estimate.n
        enough = w.enough_votes
        rows.append(
            {
                "variant": w.variant,
                "opponent": w.opponent,
                "win rate": _finite(w.estimate.value) if enough else None,
                "low": w.estimate.low if enough else None,
                "high": w.estimate.high if enough else None,
                "n": n,
                "enough votes": enough,
                "label": f"{w.estimate.value:.0%}\nn={n}" if enough else ("too few\n" if n else "") + f"n={n}",
            }
        )
    return pd.DataFrame(rows, columns=["variant", "opponent", "win rate", "low", "high", "n", "enough votes", "label"])


def matrix_chart(c: Comparison) -> alt.LayerChart:
    """Row variant's win rate against each column variant, one readable cell per pair.

    Cells have a fixed size (wide enough for "100%" and "n=123", narrower with many
    variants so that 15 still fit ~1100 px), so the chart grows with the variants instead
    of squeezing them; pages show it at its own width.
    """
    data = matrix_frame(c)
    n = max(1, len(c.variants))
    cell_width = max(44, min(80, 800 // n))
    base = alt.Chart(data).encode(
        x=alt.X(
            "opponent:N",
            sort=c.variants,
            title="against",
            # Every label, always: rotated labels' boxes overlap, and Vega would then drop every other one.
            axis=alt.Axis(orient="top", labelAngle=-40, labelLimit=140, labelOverlap=False),
        ),
        y=alt.Y(
            "variant:N", sort=c.variants, title="row wins", axis=alt.Axis(labelLimit=LABEL_LIMIT, labelOverlap=False)
        ),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color(
            "win rate:Q", scale=alt.Scale(domain=[0, 1], scheme="redblue"), legend=alt.Legend(title="win rate")
        ),
        tooltip=["variant", "opponent", "win rate", "low", "high", "n"],
    )
    text = base.mark_text(fontSize=10, lineBreak="\n", lineHeight=12).encode(
        text="label:N",
        # Readable on the cell's colour: grey without a rate, white on the dark ends of the scale.
        color=alt.value(
            "black",
            condition=[
                {"test": "!datum['enough votes']", "value": "#888"},
                {"test": "abs(datum['win rate'] - 0.5) > 0.3", "value": "white"},
            ],
        ),
    )
    return (rect + text).properties(
        width=alt.Step(cell_width),
        height=alt.Step(36),
        autosize=NATURAL,
        title=alt.Title(
            "Pairwise win rates (decisive votes)",
            subtitle=f"cell: the row's win rate against the column and its decisive votes; "
            f"shown from {MIN_DECISIVE_VOTES} votes",
        ),
    )


# --- compute and reversibility -------------------------------------------------------------

TIMING = ("latency per generation (ms)", "tokens per second", "peak memory (MB)")
COMPUTE_MEASURES = (
    "tokens per second",
    "peak memory (MB)",
    "steering parameters",
    "extraction time (s)",
    "nudging ms per row",
    "KL on neutral prompts",
)
REVERSIBILITY_MEASURES = ("logit diff after removal", "toggle (ms)")


def compute_frame(c: Comparison) -> pd.DataFrame:
    rows = []
    for s in c.summaries:
        comp, rev = s.compute(), s.reversibility()
        rows.append(
            {
                "variant": s.name,
                "kind": s.kind,
                "generations": s.generations,
                "runs": ", ".join(str(r) if r is not None else "?" for r in sorted(s.run_ids, key=lambda r: r or 0)),
                "same runs as baseline": s.same_runs_as_baseline,
                "latency per generation (ms)": _finite(1000 * comp["wall_seconds"] / s.generations)
                if s.generations
                else None,
                "tokens per second": _finite(comp["tokens_per_second"]),
                "peak memory (MB)": comp["peak_memory_bytes"] / 2**20 if s.generations else None,
                "steering parameters": _finite(comp["steering_parameters"]),
                "extraction time (s)": _finite(comp["extraction_seconds"]),
                "KL on neutral prompts": _finite(comp["side_effect_kl"]),
                "nudging ms per row": _finite(comp["nudge_ms_per_row"]),
                "logit diff after removal": _finite(rev["max_abs_logit_diff_after_removal"]),
                "toggle (ms)": _finite(rev["toggle_ms"]),
            }
        )
    return pd.DataFrame(rows)


def compute_table(c: Comparison) -> pd.DataFrame:
    """Compute figures as text (3 significant digits); timings from other runs than the baseline's are marked."""
    data = compute_frame(c)
    if data.empty:
        return data
    out = pd.DataFrame({"variant": data["variant"], "kind": data["kind"], "generations": data["generations"]})
    out["runs"] = data["runs"]
    out["timed with the baseline"] = [
        "–" if same is None else "yes" if same else "no: different run, not comparable"
        for same in data["same runs as baseline"]
    ]
    for column in [
        m for m in data.columns if m not in ("variant", "kind", "generations", "runs", "same runs as baseline")
    ]:
        out[column] = [
            sig(v) + (" (not comparable)" if column in TIMING and same is False and _finite(v) is not None else "")
            for v, same in zip(data[column], data["same runs as baseline"], strict=True)
        ]
    return out


def hidden_measures(c: Comparison) -> tuple[list[str], list[str]]:
    """Measures not drawn: (zero for every variant, measured for no variant)."""
    data = compute_frame(c)
    zero, missing = [], []
    for measure in (*COMPUTE_MEASURES, *REVERSIBILITY_MEASURES):
        values = [v for v in data.get(measure, []) if _finite(v) is not None]
        if not values:
            missing.append(measure)
        elif all(v == 0 for v in values):
            zero.append(measure)
    return zero, missing


def compute_notes(c: Comparison, measures: tuple[str, ...] = COMPUTE_MEASURES) -> list[str]:
    """Captions for what the compute charts leave out (all zero, unmeasured) or mark (other runs' timings)."""
    zero, missing = ([m for m in found if m in measures] for found in hidden_measures(c))
    notes = []
    if zero:
        exact = (
            " (0 means removing the edit restores the original model exactly)"
            if "logit diff after removal" in zero
            else ""
        )
        notes.append(f"All zero for every variant, so not drawn: {', '.join(zero)}{exact}.")
    if missing:
        notes.append(f"Not measured for any variant: {', '.join(missing)}.")
    if measures != COMPUTE_MEASURES:
        return notes
    other = [s.name for s in c.summaries if s.same_runs_as_baseline is False]
    if other:
        notes.append(
            f"Timings (latency, tokens per second, peak memory) of {', '.join(other)} were {NOT_COMPARABLE} "
            "(mixed batches share their wall time, so only variants generated in the same runs compare); "
            "run them again together with the baseline to compare."
        )
    return notes


def _bar_panel(data: pd.DataFrame, measure: str, color: str | None = None) -> alt.LayerChart:
    """One measure per variant as bars with their values; other-run timings in grey, marked."""
    frame = data[["variant", "generations", "same runs as baseline", measure]].copy()
    frame["other run"] = (frame["same runs as baseline"] == False) & (measure in TIMING)  # noqa: E712
    frame["text"] = [
        sig(v) + (" · not comparable" if other else "") if _finite(v) is not None else "–"
        for v, other in zip(frame[measure], frame["other run"], strict=True)
    ]
    base = alt.Chart(frame).encode(y=_variant_axis(list(frame["variant"])))
    bars = base.mark_bar(color=color or "#4c78a8").encode(
        x=alt.X(f"{measure}:Q", title=None, scale=alt.Scale(zero=True)),
        tooltip=["variant", alt.Tooltip(f"{measure}:Q", format=",.3~g"), "generations", "other run"],
    )
    if frame["other run"].any():
        bars = bars.encode(
            color=alt.condition("datum['other run']", alt.value(GREY), alt.value(color or "#4c78a8")),
        )
    labels = base.mark_text(align="left", baseline="middle", dx=3, fontSize=10, color="#333").encode(
        x=alt.X(f"{measure}:Q"), text="text:N"
    )
    return (bars + labels).properties(width=PANEL_WIDTH, height=_rows_height(len(frame)), title=measure)


def _grid(panels: list[Any], title: str) -> alt.VConcatChart:
    return alt.vconcat(*(alt.hconcat(*panels[i : i + 2]) for i in range(0, len(panels), 2))).properties(
        title=title, autosize=NATURAL
    )


def compute_chart(c: Comparison) -> alt.VConcatChart | None:
    """Compute and side-effect measures per variant; measures zero (or unmeasured) for every variant are left out."""
    data = compute_frame(c)
    if data.empty:
        return None
    zero, missing = hidden_measures(c)
    shown = [m for m in COMPUTE_MEASURES if m not in zero and m not in missing]
    if not shown:
        return None
    title = "Compute and side effects per variant"
    if (data["same runs as baseline"] == False).any():  # noqa: E712
        title += f" (grey: {NOT_COMPARABLE})"
    return _grid([_bar_panel(data, m) for m in shown], title)


def reversibility_notes(c: Comparison) -> list[str]:
    return compute_notes(c, REVERSIBILITY_MEASURES)


def reversibility_chart(c: Comparison) -> alt.VConcatChart | None:
    data = compute_frame(c)
    if data.empty:
        return None
    zero, missing = hidden_measures(c)
    titles = {
        "logit diff after removal": "Largest logit difference after removal (0 = exact)",
        "toggle (ms)": "Attach + detach time (ms)",
    }
    panels = [
        _bar_panel(data, m, "#2ca02c").properties(title=titles[m])
        for m in REVERSIBILITY_MEASURES
        if m not in zero and m not in missing
    ]
    return _grid(panels, "Reversibility per variant") if panels else None


# --- automatic scores --------------------------------------------------------------------


def scores_frame(c: Comparison) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for s in c.summaries:
        for scorer, e in s.scores.items():
            rows.append(
                {"variant": s.name, "scorer": scorer, "mean": _finite(e.value), "low": e.low, "high": e.high, "n": e.n}
            )
    return pd.DataFrame(rows, columns=["variant", "scorer", "mean", "low", "high", "n"])


def scores_table(c: Comparison) -> pd.DataFrame:
    """One row per variant, one column per scorer: mean of per-prompt means [95% CI], with the prompts
    (the interval's sample size) and the generations scored."""
    scorers = list(dict.fromkeys(scorer for s in c.summaries for scorer in s.scores))
    rows = []
    for s in c.summaries:
        prompts = max((e.prompts for e in s.scores.values()), default=0)
        generations = max((e.generations for e in s.scores.values()), default=0)
        row: dict[str, Any] = {"variant": s.name, "prompts": prompts, "generations scored": generations}
        for scorer in scorers:
            e = s.scores.get(scorer)
            if e is None:
                row[f"{scorer} [95% CI]"] = "–"
            else:
                differs = (e.prompts, e.generations) != (prompts, generations)
                row[f"{scorer} [95% CI]"] = interval_text(e) + (
                    f" ({e.prompts} prompts, {e.generations} generations)" if differs else ""
                )
        rows.append(row)
    return pd.DataFrame(rows)


def scores_chart(c: Comparison) -> alt.FacetChart | None:
    """Mean score per variant with its 95% interval, one panel per scorer, wrapped three to a row."""
    data = scores_frame(c)
    if data.empty:
        return None
    titles = {}
    for scorer, group in data.groupby("scorer", sort=False):
        low, high = int(group["n"].min()), int(group["n"].max())
        count = f"{low}" if low == high else f"{low}–{high}"
        titles[scorer] = f"{scorer} ({count} prompts per variant)"
    data["panel"] = data["scorer"].map(titles)
    base = alt.Chart().encode(y=_variant_axis(c.variants))
    layered = alt.layer(
        base.mark_rule(strokeWidth=2).encode(
            x=alt.X("low:Q", title="mean score over prompts (95% t-interval)"), x2="high:Q"
        ),
        base.mark_point(filled=True, size=70).encode(
            x="mean:Q", tooltip=["variant", "scorer", "mean", "low", "high", "n"]
        ),
        data=data,
    ).properties(width=PANEL_WIDTH, height=_rows_height(len(c.variants)))
    return (
        layered.facet(
            facet=alt.Facet("panel:N", title=None, sort=list(titles.values()), header=alt.Header(labelFontSize=12)),
            columns=min(3, len(titles)),
        )
        .resolve_scale(x="independent")
        .properties(autosize=NATURAL)
    )


# --- sweeps ------------------------------------------------------------------------------


def sweep_frame(result: SweepResult) -> pd.DataFrame:
    front = {c.name for c in result.front}
    chosen = result.recommended.name if result.recommended else None
    return pd.DataFrame(
        [
            {
                "cell": c.name,
                "layer": c.layer,
                "coefficient": c.coefficient,
                result.config.scorer: round_sig(c.behaviour),
                "low": round_sig(c.behaviour_low),
                "high": round_sig(c.behaviour_high),
                "perplexity": round_sig(c.perplexity),
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
    front, off, pick, rest = "on the Pareto front", "not on the front", "recommended", "not recommended"
    data["front"] = [front if p else off for p in data["pareto"]]
    data["pick"] = [pick if r else rest for r in data["recommended"]]
    scorer = result.config.scorer
    base = alt.Chart(data).encode(
        x=alt.X("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (lower = more fluent)"),
        y=alt.Y(f"{scorer}:Q", title=f"{scorer} (95% interval)"),
    )
    bars = base.mark_rule(opacity=0.5).encode(y="low:Q", y2="high:Q")
    points = base.mark_point(filled=True, size=80).encode(
        color=alt.Color("front:N", title="Pareto front", scale=alt.Scale(domain=[front, off], range=["#d62728", GREY])),
        shape=alt.Shape(
            "pick:N", title="recommendation", scale=alt.Scale(domain=[pick, rest], range=["diamond", "circle"])
        ),
        # Same field as the shape: one legend shows both (legend=None here would hide that one too).
        size=alt.Size("pick:N", title="recommendation", scale=alt.Scale(domain=[pick, rest], range=[260, 70])),
        tooltip=["cell", "layer", "coefficient", scorer, "low", "high", "perplexity", "n", "front", "pick"],
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


# --- adaptation ------------------------------------------------------------------------------


def adaptation_frame(rows: list[MethodRow]) -> pd.DataFrame:
    """The adaptation comparison as text, rounded to what is meaningful."""

    def est(e: Estimate | MeanEstimate | None) -> str:
        if e is None or _finite(e.value) is None:
            return "–"
        return f"{interval_text(e)} (n={e.n})"

    def overhead(r: MethodRow) -> str:
        if _finite(r.inference_overhead) is None:
            return "–"
        text = f"{r.inference_overhead:.2f}×"
        return text if r.speed_comparable else f"{text} (different run: not comparable)"

    return pd.DataFrame(
        [
            {
                "variant": r.variant,
                "method": r.kind,
                "scope": r.scope,
                "can be undone": "yes" if r.reversible else "only from a saved copy",
                "logit diff after undo": sig(r.undo_logit_diff),
                "set-up seconds": sig(r.setup_seconds),
                "inference time vs baseline": overhead(r),
                "extra parameters": f"{r.extra_parameters:,}",
                "extra bytes": _bytes(r.extra_bytes),
                "examples used": r.examples,
                "task performance [95% CI]": est(r.performance),
                "share of fine-tuning's gain [95% CI]": est(r.share_of_finetune_gain),
            }
            for r in rows
        ]
    )


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n_units = n / 1024 ** (("KB", "MB", "GB").index(unit) + 1)
        if n_units < 1024 or unit == "GB":
            return f"{sig(n_units)} {unit}"
    return f"{n} B"  # pragma: no cover


def adaptation_chart(rows: list[MethodRow], scorer: str) -> alt.VConcatChart:
    """The study's criteria per variant; costs spanning orders of magnitude use a symlog axis that keeps 0 at 0."""
    criteria: list[tuple[str, bool, list[tuple[MethodRow, float | None, str]]]] = []

    def add(name: str, spread: bool, values: list[tuple[MethodRow, float | None, str]]) -> None:
        criteria.append((name, spread, values))

    add(
        f"task performance ({scorer})",
        False,
        [(r, _finite(r.performance.value), sig(r.performance.value, trim=True)) for r in rows],
    )
    add("set-up seconds", True, [(r, _finite(r.setup_seconds), sig(r.setup_seconds, trim=True) + " s") for r in rows])
    add(
        "inference time vs baseline",
        False,
        [
            (r, _finite(r.inference_overhead) if r.speed_comparable else None,
             (f"{r.inference_overhead:.2f}×" if _finite(r.inference_overhead) is not None else "–")
             if r.speed_comparable else "not comparable: different run")
            for r in rows
        ],
    )  # fmt: skip
    add("extra bytes", True, [(r, float(r.extra_bytes), _bytes(r.extra_bytes)) for r in rows])
    add("examples used", False, [(r, float(r.examples), str(r.examples)) for r in rows])
    add("layers touched", False, [(r, float(r.layers_touched), str(r.layers_touched)) for r in rows])
    charts = []
    for name, spread, values in criteria:
        data = pd.DataFrame(
            [{"variant": r.variant, "method": r.kind, "value": v, "text": t} for r, v, t in values],
            columns=["variant", "method", "value", "text"],
        )
        positive = [v for v in data["value"] if v is not None and v > 0]
        if spread and positive:
            # Symlog is linear near 0 and logarithmic beyond ``constant``: a zero cost sits at 0 (not
            # at an invented 0.0001), and the smallest non-zero cost is still told apart from it.
            scale = alt.Scale(type="symlog", constant=min(positive))
            title = f"{name} (symlog: 0 at 0)"
            # Ticks at 0 and at the powers of ten within the data (in the log part of the axis).
            low, high = math.ceil(math.log10(min(positive))), math.floor(math.log10(max(positive)))
            powers = [10.0**k for k in range(low, high + 1)]
            label = "format(datum.value, '~s') + 'B'" if "bytes" in name else "format(datum.value, ',~g')"
            axis = alt.Axis(values=[0.0, *powers[:: max(1, math.ceil(len(powers) / 5))]], labelExpr=label)
        else:
            scale = alt.Scale(zero=True)
            title = name
            axis = alt.Axis()
        base = alt.Chart(data).encode(y=alt.Y("variant:N", sort=None, title=None, axis=alt.Axis(labelLimit=160)))
        bars = base.mark_bar().encode(
            x=alt.X("value:Q", title=None, scale=scale, axis=axis),
            color=alt.Color("method:N"),
            tooltip=["variant", "method", "text"],
        )
        labels = base.mark_text(align="left", baseline="middle", dx=3, fontSize=10, color="#333").encode(
            x=alt.X("value:Q", scale=scale), text="text:N"
        )
        missing = data.assign(value=0.0)[data["value"].isna()]
        marks = [bars, labels]
        if not missing.empty:
            marks.append(
                alt.Chart(missing)
                .mark_text(align="left", baseline="middle", dx=3, fontSize=10, color="#888")
                .encode(y=alt.Y("variant:N", sort=None), x=alt.X("value:Q", scale=scale), text="text:N")
            )
        charts.append(alt.layer(*marks).properties(width=PANEL_WIDTH, height=_rows_height(len(rows)), title=title))
    return _grid(charts, "The study's criteria, measured per method")


# --- the Compare page's whole view, cached ----------------------------------------------


@dataclass(frozen=True)
class CompareView:
    """The comparison with its charts as Vega-Lite specs and its tables, ready to draw.

    Building and validating Altair charts takes most of a second for 20 variants, so the
    page draws these (kept per experiment and data version) instead of rebuilding them.
    """

    comparison: Comparison
    charts: dict[str, dict[str, Any] | None]  # win_rate, bradley_terry, matrix, scores, compute, reversibility
    # win_rate, bradley_terry, scores, compute, decisions, judge_decisions, raters, null_arms
    tables: dict[str, pd.DataFrame]
    notes: dict[str, list[str]]  # bradley_terry, compute, reversibility


def compare_view(store: Store, name: str, bootstrap_rounds: int = 1000, seed: int = 0) -> CompareView:
    """What the Compare page draws; recomputed only when the experiment's data changed."""
    with store.session() as session:
        version = repo.data_version(session, get_experiment(session, name).id)
    return cache.cached(
        (store.url, "compare_view", name, bootstrap_rounds, seed),
        version,
        lambda: _view(compare(store, name, bootstrap_rounds, seed)),
    )


def _view(c: Comparison) -> CompareView:
    def spec(chart: Any) -> dict[str, Any] | None:
        # Not validated again against the Vega-Lite schema here (a second per chart): the same
        # chart functions build the report's charts, which are validated.
        return None if chart is None else dict(chart.to_dict(validate=False))

    note = bradley_terry_note(c)
    return CompareView(
        comparison=c,
        charts={
            "win_rate": spec(win_rate_chart(c)) if c.baseline and c.votes else None,
            "bradley_terry": spec(bradley_terry_chart(c)) if c.votes else None,
            "matrix": spec(matrix_chart(c)) if c.votes else None,
            "scores": spec(scores_chart(c)),
            "compute": spec(compute_chart(c)),
            "reversibility": spec(reversibility_chart(c)),
        },
        tables={
            "win_rate": win_rate_table(c),
            "bradley_terry": bradley_terry_table(c),
            "scores": scores_table(c),
            "compute": compute_table(c),
            "decisions": decision_tables.decisions_table(c.decisions.people) if c.decisions else pd.DataFrame(),
            "judge_decisions": decision_tables.decisions_table(c.decisions.judges) if c.decisions else pd.DataFrame(),
            "raters": decision_tables.raters_table(c.rater_quality),
            "null_arms": decision_tables.null_arms_table(c.null_arms),
        },
        notes={
            "bradley_terry": [note] if note else [],
            "compute": compute_notes(c),
            "reversibility": reversibility_notes(c),
        },
    )
