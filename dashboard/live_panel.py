"""The live figures of a deployment, as the Deploy page and Compare's Live tab show them.

Only layout: the figures and their words come from :mod:`service.live_comparison`, the same
rows `steerlab deploy show` prints.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.common import store
from dashboard.text import md
from service.deployments import Deployment, list_deployments
from service.live_comparison import difference_rows, live_comparison, summary, traffic_rows, unattributed_note


def deployments_of(experiment: str) -> list[Deployment]:
    """The experiment's deployments, live ones first (then ended ones), each group by name."""
    return sorted(list_deployments(store(), experiment), key=lambda d: (not d.live, d.name))


def _frame(rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows[1:], columns=rows[0])


def show_live_figures(deployment: str) -> None:
    """Traffic and feedback per variant, then each arm against the baseline with its verdict."""
    comparison = live_comparison(store(), deployment)
    st.dataframe(_frame(traffic_rows(comparison)), hide_index=True, width="stretch")
    st.caption(
        "Traffic, tokens and latency are by the variant that ran (*served*); users and feedback by the arm the "
        "user was *assigned* (intention to treat: a stopped arm's users, served the baseline, keep counting for "
        "their arm, so no user is in two samples). The thumbs-up share is the mean over users of each user's "
        f"share of thumbs up; its interval here is {md(comparison.thumbs_interval)} (Wilson while every user's "
        "thumbs agree, else a t interval over users' shares)."
    )
    if comparison.unattributed:
        st.caption(unattributed_note(comparison))
    st.caption(md(summary(comparison)))
    if comparison.differences or comparison.preferences:
        st.caption(
            "The one-look interval holds for a single look; the always-valid one, the p-value and the verdict "
            "hold however often you look. n is arm vs baseline."
        )
        rows = difference_rows(comparison)
        # The verdicts are sentences: they read better as lines under the figures than in a narrow column.
        st.dataframe(_frame([r[:-1] for r in rows]), hide_index=True, width="stretch")
        st.markdown("\n".join(f"- **{md(r[0])}**, {md(r[1])}: {md(r[-1])}" for r in rows[1:]))


def show_live_tab(deployments: list[Deployment]) -> None:
    """Compare's Live tab: every deployment of the experiment, live ones first, then ended ones."""
    st.caption(
        "Live A/B deployments of this experiment, served by `steerlab serve` to real users; their feedback is "
        "not mixed with the offline votes and scores of the other tabs. Change them on the Deploy page."
    )
    for deployment in deployments:
        state = "live" if deployment.live else "ended"
        st.subheader(f"{deployment.name} ({state})")
        show_live_figures(deployment.name)
