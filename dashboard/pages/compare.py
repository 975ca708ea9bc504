"""Compare: votes, ratings, scores, compute and reversibility per variant, and a per-prompt drill-down."""

from __future__ import annotations

import math

import streamlit as st

from dashboard.common import chosen_experiment, store
from service import charts
from service.comparison import compare, diff_html, drill_down

st.title("Compare")
name = chosen_experiment()


c = compare(store(), name)
st.caption(
    f"Experiment **{name}** · {c.votes} votes from {c.raters} rater{'s' if c.raters != 1 else ''} · baseline: {c.baseline or 'none'}. "
    "Intervals are 95%; n is the number of votes or generations behind each figure."
)

votes_tab, scores_tab, compute_tab, drill_tab = st.tabs(["Votes", "Scores", "Compute & reversibility", "Per prompt"])

with votes_tab:
    if c.votes == 0:
        st.info("No votes yet: rate some pairs on the Rate page.")
    else:
        if c.baseline:
            st.altair_chart(charts.win_rate_chart(c), width="stretch")
            st.dataframe(charts.win_rate_frame(c).drop(columns=["label"]), hide_index=True, width="stretch")
        st.altair_chart(charts.bradley_terry_chart(c), width="stretch")
        st.dataframe(charts.bradley_terry_frame(c), hide_index=True, width="stretch")
        st.altair_chart(charts.matrix_chart(c), width="stretch")
        left, right = st.columns(2)
        lw = c.left_wins
        left.metric(
            "Left side won (position bias check)",
            "–" if lw.n == 0 else f"{lw.value:.0%}",
            help="Share of decisive votes won by the output shown on the left; about 50% means no position bias.",
        )
        left.caption("–" if lw.n == 0 else f"95% CI {lw.low:.0%}–{lw.high:.0%}, n={lw.n} decisive votes")
        a = c.agreement
        right.metric(a.statistic if a.items else "Rater agreement", "–" if math.isnan(a.value) else f"{a.value:.2f}")
        right.caption(
            f"on {a.items} pairs rated by several of {a.raters} raters"
            if a.items
            else "no pair has votes from two raters yet"
        )

with scores_tab:
    chart = charts.scores_chart(c)
    if chart is None:
        st.info("This experiment has no automatic scorers.")
    else:
        st.altair_chart(chart)
        st.dataframe(charts.scores_frame(c), hide_index=True, width="stretch")

with compute_tab:
    st.altair_chart(charts.compute_chart(c))
    st.altair_chart(charts.reversibility_chart(c))
    st.dataframe(charts.compute_frame(c), hide_index=True, width="stretch")

with drill_tab:
    rows = drill_down(store(), name)
    if not rows:
        st.info("No outputs yet: run the experiment first.")
    else:
        labels = [f"Prompt {r.prompt_index + 1}, sample {r.sample + 1}: {r.prompt[:60]}" for r in rows]
        picked = rows[st.selectbox("Prompt", range(len(rows)), format_func=lambda i: labels[i])]
        variants = list(picked.texts)
        c1, c2 = st.columns(2)
        first = c1.selectbox("Variant", variants, index=0)
        second = c2.selectbox("against", variants, index=min(1, len(variants) - 1))
        left_html, right_html = diff_html(picked.texts[first], picked.texts[second])
        style = "<style>mark.removed{background:#ffd6d6} mark.added{background:#d6f5d6}</style>"
        c1.markdown(style + f"<div style='white-space:pre-wrap'>{left_html}</div>", unsafe_allow_html=True)
        c2.markdown(style + f"<div style='white-space:pre-wrap'>{right_html}</div>", unsafe_allow_html=True)
        st.caption("Red: words only in the left output; green: words only in the right output.")
