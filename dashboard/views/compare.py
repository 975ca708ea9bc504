"""Compare: verdicts against the baseline, votes and ratings, scores, null arms, raters and judges,
compute and reversibility per variant, and a per-prompt drill-down."""

from __future__ import annotations

import math

import streamlit as st

from dashboard import live_panel
from dashboard.common import attempt, chosen_experiment, flash, identity, may, page_header, store, succeeded
from dashboard.run_status import health_warnings
from dashboard.text import md, plain_block
from service import charts
from service.comparison import (
    MIN_DECISIVE_VOTES,
    compare_two,
    diff_html,
    drill_rows,
    drill_texts,
    escape_text,
    too_few_votes,
)
from service.decision_tables import decisions_table, judge_lines
from service.judging import judges_overview
from service.rater_settings import set_rater_excluded
from service.staleness import stale_figures, warning

page_header("Compare")
name = chosen_experiment("analyst", "comparing variants")
health_warnings(name)
if stale := stale_figures(store(), name):  # figures computed from an older definition of what they measure
    st.warning(md(warning(stale)))


view = charts.compare_view(store(), name)
c = view.comparison
left_out = f" · left out: {md(', '.join(c.excluded_raters))}" if c.excluded_raters else ""
judged = f" · {c.judge_votes} judge votes (apart)" if c.judge_votes else ""
st.caption(
    f"Experiment **{md(name)}** · {c.votes} votes from {c.raters} rater{'s' if c.raters != 1 else ''}{judged}{left_out} · "
    f"baseline: {md(c.baseline) if c.baseline else 'none'}. "
    "Intervals are 95%; n is the number of votes, prompts or generations behind each figure; a figure from too "
    "few votes is shown as “too few votes” with its count."
)

tab_names = ["Verdicts", "Votes", "Scores"]
if c.null_arms:
    tab_names.append("Null arms")
tab_names += ["Raters & judges", "Compute & reversibility", "Per prompt"]
live_deployments = live_panel.deployments_of(name)  # served to real users (dashboard/live_panel.py)
tab_names += ["Live"] if live_deployments else []
tabs = dict(zip(tab_names, st.tabs(tab_names), strict=True))
if live_deployments:
    with tabs["Live"]:
        live_panel.show_live_tab(live_deployments)
votes_tab, scores_tab = tabs["Votes"], tabs["Scores"]
compute_tab, drill_tab = tabs["Compute & reversibility"], tabs["Per prompt"]

with tabs["Verdicts"]:
    d = c.decisions
    if d is None or d.baseline is None:
        st.info("Verdicts compare each variant with the baseline: this experiment has no baseline variant.")
    else:
        st.caption(
            md(d.settings_sentence())
            + " The always-valid interval and p-value stay valid however often you look, so you may stop as soon "
            "as a verdict is clear. Set these in the experiment's `statistics` section."
        )
        if few_prompts := d.warning():
            st.warning(md(few_prompts))
        # Every comparison in view without an inner scroll bar (a table shows 10 rows by default).
        verdicts = view.tables["decisions"]
        st.dataframe(verdicts, hide_index=True, width="stretch", height=min(1200, 35 * (len(verdicts) + 1) + 3))
        if d.judges:
            st.markdown("**LLM judges** (their votes are never mixed with the people's; corrected as their own family)")
            st.dataframe(view.tables["judge_decisions"], hide_index=True, width="stretch")
            for judge in judges_overview(store(), name):
                for sign in judge.warnings:
                    st.warning(f"Judge **{md(judge.name)}**: {md(sign)}", icon=":material/warning:")
        st.markdown("**Any two variants**")
        names = c.variants
        pick_a, pick_b = st.columns(2)
        first = pick_a.selectbox("Variant", names, index=min(1, len(names) - 1), key="verdict_a")
        second = pick_b.selectbox("against", names, index=0, key="verdict_b")
        if first == second:
            st.caption("Pick two different variants.")
        else:
            pair = attempt(lambda: compare_two(store(), name, first, second))
            if pair is not None:
                st.dataframe(decisions_table(pair, corrected=False), hide_index=True, width="stretch")
                st.caption(
                    "Not corrected for multiple comparisons: a pair picked after seeing the results is one more look."
                )

with votes_tab:
    if c.votes == 0:
        st.info("No votes yet: rate some pairs on the Rate page.")
    else:
        # Charts come as cached Vega-Lite specs (see charts.compare_view): building them is slow.
        if c.baseline:
            st.vega_lite_chart(spec=view.charts["win_rate"], width="stretch")
            st.dataframe(view.tables["win_rate"], hide_index=True, width="stretch")
        if view.charts["bradley_terry"] is not None:
            st.vega_lite_chart(spec=view.charts["bradley_terry"], width="stretch")
        for note in view.notes["bradley_terry"]:
            st.caption(note)
        st.dataframe(view.tables["bradley_terry"], hide_index=True, width="stretch")
        # The matrix has a fixed cell size (readable labels whatever the number of variants).
        st.vega_lite_chart(spec=view.charts["matrix"], width="content")
        left, right = st.columns(2)
        lw = c.left_wins
        enough = lw.enough(MIN_DECISIVE_VOTES)
        left.metric(
            "Left side won (position bias check)",
            f"{lw.value:.0%}" if enough else "too few votes",
            help="Share of decisive votes won by the output shown on the left; about 50% means no position bias.",
        )
        left.caption(
            f"95% CI {lw.low:.0%}–{lw.high:.0%}, n={lw.n} decisive votes"
            if enough
            else too_few_votes(lw.n, MIN_DECISIVE_VOTES)
        )
        a = c.agreement
        right.metric(
            a.statistic if a.items else "Rater agreement",
            f"{a.value:.2f}" if a.items and math.isfinite(a.value) else "–",
            help="Agreement between raters on the same pair of outputs, beyond chance (1 = always agree, "
            "0 = chance). It needs shared pairs: pairs rated by two or more raters.",
        )
        shared = f"{a.items} shared pairs (rated by two or more raters) of {a.rated_pairs} rated pairs"
        if not a.items:
            shared += (
                ". Agreement needs overlapping pairs: raters must rate some of the same pairs (the rating "
                "queue's overlap share) before it can be measured."
            )
        elif not math.isfinite(a.value):
            shared += f"; {a.statistic} is not defined there: every vote on them has the same verdict."
        else:
            shared += f", from {a.raters} raters."
        right.caption(shared)

with scores_tab:
    if view.charts["scores"] is None:
        st.info("This experiment has no automatic scorers.")
    else:
        st.caption(
            "Each mean is over prompts (the mean of each prompt's outputs), with a 95% t-interval over prompts "
            "corrected for skewness: outputs of one prompt are not independent. Differences from the baseline, "
            "paired on the same prompt and sample, are on the Verdicts tab."
        )
        st.vega_lite_chart(spec=view.charts["scores"])
        st.dataframe(view.tables["scores"], hide_index=True, width="stretch")

if "Null arms" in tabs:
    with tabs["Null arms"]:
        st.caption(
            "Each steering variant with null arms against its controls, run in the same batches: the same edit "
            "with a random direction of the same norm, and with the sign flipped. Differences are real minus arm, "
            "paired on (prompt, sample); a vector that does no better than its random arm steers by its size, not "
            "its direction."
        )
        st.dataframe(view.tables["null_arms"], hide_index=True, width="stretch")

with tabs["Raters & judges"]:
    if view.tables["raters"].empty:
        st.info("No votes yet.")
    else:
        st.caption(
            "Per rater: agreement with the majority of the *other* raters on shared pairs, the share of decisive "
            "votes for the left side (50% means no side bias), and the share of repeated pairs given the same "
            "verdict. Flags say why a rater looks off. A rater left out counts in no statistic; the votes stay stored."
        )
        st.dataframe(view.tables["raters"], hide_index=True, width="stretch")
        for r in c.rater_quality:
            if r.outlier:
                st.warning(f"**{md(r.rater)}**: {md(r.reason)}", icon=":material/flag:")
        if may("analyst"):
            people = [r.rater for r in c.rater_quality if r.kind == "human"]
            chosen = st.multiselect(
                "Leave out of every statistic",
                people,
                default=[r for r in c.excluded_raters if r in people],
                key=f"left_out_{name}",
            )
            if set(chosen) != set(c.excluded_raters) and st.button("Apply", key="apply_left_out"):

                def apply() -> None:
                    for rater in people:
                        if (rater in chosen) != (rater in c.excluded_raters):
                            set_rater_excluded(store(), name, rater, rater in chosen, identity())

                if succeeded(apply):
                    flash("Updated who is left out of the statistics: every figure is recomputed without them.")
                    st.rerun()
    for line in judge_lines(c):
        st.caption(md(line))

with compute_tab:
    for key in ("compute", "reversibility"):
        if view.charts[key] is not None:
            st.vega_lite_chart(spec=view.charts[key])
    for line in [*view.notes["compute"], *view.notes["reversibility"]]:
        st.caption(md(line))
    wide = ["timed with the baseline", *charts.TIMING]  # room for "(not comparable)" marks
    st.dataframe(
        view.tables["compute"],
        hide_index=True,
        width="stretch",
        column_config={column: st.column_config.TextColumn(width="medium") for column in wide},
    )

with drill_tab:
    # The list of rows first, then the texts of the one picked: not every output on each view.
    rows = drill_rows(store(), name)
    if not rows:
        st.info("No outputs yet: run the experiment first.")
    else:
        labels = [f"Prompt {r.prompt_index + 1}, sample {r.sample + 1}: {r.prompt[:60]}" for r in rows]
        picked = rows[st.selectbox("Prompt", range(len(rows)), format_func=lambda i: labels[i])]
        texts = drill_texts(store(), name, picked.prompt_index, picked.sample)
        st.markdown(plain_block(picked.prompt, empty="(empty prompt)"), unsafe_allow_html=True)
        variants = list(texts)
        c1, c2 = st.columns(2)
        first = c1.selectbox("Variant", variants, index=0)
        second = c2.selectbox("against", variants, index=min(1, len(variants) - 1))
        left_html, right_html = diff_html(texts[first], texts[second])
        style = "<style>mark.removed{background:#ffd6d6} mark.added{background:#d6f5d6}</style>"
        box = "<div class='steerlab-text' style='white-space:pre-wrap;overflow-wrap:anywhere'>{}</div>"
        empty = f"<i>{escape_text('(empty output)')}</i>"
        c1.markdown(style + box.format(left_html or empty), unsafe_allow_html=True)
        c2.markdown(style + box.format(right_html or empty), unsafe_allow_html=True)
        st.caption("Red: words only in the left output; green: words only in the right output.")
