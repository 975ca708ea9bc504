"""The self-contained HTML report: opens offline, charts inlined as SVG, every output escaped."""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

import altair as alt
import pandas as pd
import vl_convert

from db.store import Store
from engine.stats import MIN_DECISIVE_VOTES
from service import charts, decision_tables
from service.adaptation import adaptation_table
from service.catalog import load_spec
from service.comparison import Comparison, compare, drill_down, drill_rows, too_few_votes
from service.export import export_data
from service.provenance import describe_model_source

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5} .muted{color:#666} .chart{margin:1rem 0;overflow-x:auto} .output{white-space:pre-wrap}
.scroll{overflow-x:auto}
"""


def _svg(chart: Any) -> str:
    if chart is None:
        return ""
    return f'<div class="chart">{vl_convert.vegalite_to_svg(chart.to_json())}</div>'


def _table(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if not math.isfinite(value) else f"{value:.4g}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def html_report(store: Store, name: str, bootstrap_rounds: int = 1000) -> str:
    alt.data_transformers.disable_max_rows()
    data = export_data(store, name, rows=False)  # the outputs are sampled below; counts come from the summaries
    comparison = compare(store, name, bootstrap_rounds)
    e = data["experiment"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>SteerLab report: {html.escape(name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>SteerLab report: {html.escape(name)}</h1>",
        f"<p class='muted'>Model {html.escape(e['model'])} · {len(data['prompts'])} prompts · {len(data['variants'])} variants · "
        f"{sum(s.generations for s in comparison.summaries)} generations · {comparison.votes} votes from {comparison.raters} rater{'s' if comparison.raters != 1 else ''}"
        f"{_apart(comparison)} · "
        f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        f"<p>{html.escape(e['description'] or '')}</p>",
        _model_source_line(e.get("model_source") or {}),
        "<h2>Variants</h2>",
        _table(
            pd.DataFrame(
                [
                    {"variant": v["name"], "kind": v["kind"], "definition": _describe(v["spec"])}
                    for v in data["variants"]
                ]
            )
        ),
        _verdicts_section(comparison),
        _ratings_section(comparison),
        _raters_section(comparison),
        _null_arms_section(comparison),
        _adaptation_section(store, name),
        "<h2>Automatic scores</h2>",
        _svg(charts.scores_chart(comparison)) or "<p class='muted'>No scorers in this experiment.</p>",
        _table(charts.scores_table(comparison)),
        "<h2>Compute</h2>",
        "<p>Timings (latency, tokens per second, peak memory) are shares of mixed batches: they compare variants "
        "generated in the same runs only.</p>",
        _svg(charts.compute_chart(comparison)),
        _notes(charts.compute_notes(comparison)),
        _table(charts.compute_table(comparison)),
        "<h2>Reversibility</h2>",
        "<p>Largest absolute logit difference between the untouched model and the model after the variant's edit was "
        "attached, used on a probe prompt and removed (0.0 means exactly the original model), and the time to attach "
        "and detach the edit.</p>",
        _svg(charts.reversibility_chart(comparison)),
        _notes(charts.reversibility_notes(comparison)),
        "<h2>Outputs</h2>",
        _outputs(store, name),
        "</body></html>",
    ]
    return "\n".join(parts)


def _apart(c: Comparison) -> str:
    """What the people's vote count leaves out: judges' votes and the raters an analyst left out."""
    parts = []
    if c.judge_votes:
        parts.append(f"{c.judge_votes} judge votes apart")
    if c.excluded_raters:
        parts.append(f"left out: {html.escape(', '.join(c.excluded_raters))}")
    return f" ({'; '.join(parts)})" if parts else ""


def _verdicts_section(c: Comparison) -> str:
    d = c.decisions
    if d is None or d.baseline is None:
        return "<h2>Verdicts</h2><p class='muted'>No baseline variant: verdicts compare each variant with it.</p>"
    parts = [
        "<h2>Verdicts</h2>",
        f"<p>Each variant against the baseline ({html.escape(d.baseline)}), on the people's votes and on each score "
        f"paired on (prompt, sample). {html.escape(d.settings_sentence())} The always-valid interval and p-value "
        "stay valid however often the results are looked at.</p>",
    ]
    if warning := d.warning():
        parts.append(f"<p><b>{html.escape(warning)}</b></p>")
    parts.append(_table(decision_tables.decisions_table(d.people)))
    if d.judges:
        parts.append("<h3>LLM judges (apart from the people; their own family)</h3>")
        parts.append(_table(decision_tables.decisions_table(d.judges)))
    return "\n".join(parts)


def _raters_section(c: Comparison) -> str:
    if not c.rater_quality:
        return ""
    left_out = (
        f" Left out of every statistic: {html.escape(', '.join(c.excluded_raters))}." if c.excluded_raters else ""
    )
    return "\n".join(
        [
            "<h2>Raters and judges</h2>",
            "<p>Agreement with the majority of the other raters on shared pairs, share of decisive votes for the left "
            f"side, and the same verdict on repeated pairs.{left_out}</p>",
            _table(decision_tables.raters_table(c.rater_quality)),
            _notes(decision_tables.judge_lines(c)),
        ]
    )


def _null_arms_section(c: Comparison) -> str:
    if not c.null_arms:
        return ""
    return "\n".join(
        [
            "<h2>Null arms</h2>",
            "<p>Each steering variant against its controls, run in the same batches: a random direction of the same "
            "norm, and the flipped sign. Differences are real minus arm, paired on (prompt, sample).</p>",
            _table(decision_tables.null_arms_table(c.null_arms)),
        ]
    )


def _adaptation_section(store: Store, name: str) -> str:
    spec = load_spec(store, name)
    if not spec.scorers or not any(v.kind in ("lora", "finetune") for v in spec.variants):
        return ""
    scorer = spec.scorers[0].name
    rows = adaptation_table(store, name, scorer)
    return "\n".join(
        [
            "<h2>Adaptation comparison</h2>",
            f"<p>Steering against prompting, a LoRA adapter and fine-tuning on the same prompts; task performance is "
            f"'{html.escape(scorer)}'. Every figure is measured in this experiment's runs.</p>",
            _svg(charts.adaptation_chart(rows, scorer)),
            _notes(
                [
                    f"Inference time of {', '.join(r.variant for r in rows if not r.speed_comparable)}: "
                    f"{charts.NOT_COMPARABLE}."
                ]
                if any(not r.speed_comparable for r in rows)
                else []
            ),
            _table(charts.adaptation_frame(rows)),
        ]
    )


def _model_source_line(source: dict[str, Any]) -> str:
    described = describe_model_source(source)
    return f"<p class='muted'>Weights: {html.escape(described)}</p>" if described else ""


def _notes(lines: list[str]) -> str:
    return "".join(f"<p class='muted'>{html.escape(line)}</p>" for line in lines)


def _ratings_section(c: Comparison) -> str:
    if c.votes == 0:
        return "<h2>Ratings</h2><p class='muted'>No votes yet.</p>"
    lw = c.left_wins
    position = (
        f"Left side won {lw.value:.0%} of {lw.n} decisive votes (95% CI {lw.low:.0%}–{lw.high:.0%}; 50% means no "
        "position bias)"
        if lw.enough(MIN_DECISIVE_VOTES)
        else f"Position bias (left side's share of wins): {too_few_votes(lw.n, MIN_DECISIVE_VOTES)}"
    )
    note = charts.bradley_terry_note(c)
    return "\n".join(
        [
            "<h2>Ratings</h2>",
            f"<p>{c.votes} blind pairwise votes. {position}. Rater agreement: {html.escape(c.agreement.describe())}.</p>",
            _svg(charts.win_rate_chart(c)) if c.baseline else "",
            _table(charts.win_rate_table(c)) if c.baseline else "",
            _svg(charts.bradley_terry_chart(c)),
            _notes([note] if note else []),
            _table(charts.bradley_terry_table(c)),
            _svg(charts.matrix_chart(c)),
        ]
    )


# The report lists outputs of this many (prompt, sample) rows, spread over the prompts (every
# variant's output on each): at 10,000 generations the full list made a report of many
# megabytes that no one reads; the CSV and JSON exports hold every output.
REPORT_OUTPUT_ROWS = 10


def _outputs(store: Store, name: str) -> str:
    every = drill_rows(store, name)
    if not every:
        return "<p class='muted'>No outputs yet.</p>"
    step = max(1, len(every) / REPORT_OUTPUT_ROWS)
    chosen = sorted({min(len(every) - 1, int(i * step)) for i in range(min(REPORT_OUTPUT_ROWS, len(every)))})
    picked = drill_down(store, name, [(every[i].prompt_index, every[i].sample) for i in chosen])
    note = (
        f"<p class='muted'>A sample: {len(picked)} of {len(every)} prompt × sample rows, with every variant's output "
        "on each. Every output is in the CSV and JSON exports.</p>"
        if len(picked) < len(every)
        else ""
    )
    rows = []
    for row in picked:
        cells = "".join(
            f"<tr><th>{html.escape(variant)}</th><td class='output'>{html.escape(text)}</td></tr>"
            for variant, text in row.texts.items()
        )
        rows.append(
            f"<h3>Prompt {row.prompt_index + 1}, sample {row.sample + 1}</h3><p class='output'><b>{html.escape(row.prompt)}</b></p><table>{cells}</table>"
        )
    return note + "\n".join(rows)


def _describe(spec: dict[str, Any]) -> str:
    bits = []
    if spec.get("system"):
        bits.append(f"system prompt: {spec['system']!r}")
    if spec.get("prefix"):
        bits.append(f"prefix: {spec['prefix']!r}")
    for i in spec.get("interventions", []):
        settings = ", ".join(f"{k}={v}" for k, v in i.items() if k != "method")
        bits.append(f"{i['method']}({settings})")
    return "; ".join(bits) or "plain model"
