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
from service.live_comparison import difference_rows, live_comparison, traffic_rows


def deployments_of(experiment: str) -> list[Deployment]:
    return list_deployments(store(), experiment)


def _frame(rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows[1:], columns=rows[0])


def show_live_figures(deployment: str) -> None:
    """Traffic and feedback per variant, then each arm against the baseline with its verdict."""
    comparison = live_comparison(store(), deployment)
    d = comparison.deployment
    st.dataframe(_frame(traffic_rows(comparison)), hide_index=True, width="stretch")
    if any(v.stopped for v in comparison.variants):
        st.caption(
            "A stopped arm's users are served the baseline: *assigned* counts what their hash picked, *served* "
            "what ran; every figure is by the variant served."
        )
    if comparison.unattributed:
        st.caption(f"{comparison.unattributed} responses ran a request's own steering and belong to no variant.")
    if comparison.differences or comparison.preferences:
        st.caption(
            md(
                f"Each arm against {d.baseline}: users differ between arms, so the comparisons are unpaired; each "
                f"user counts once. The one-look interval holds for a single look; the always-valid one, the "
                f"p-value and the verdict hold however often you look. {comparison.correction.capitalize()}-"
                f"corrected over {comparison.family} comparisons at alpha {comparison.alpha:g}; n is arm vs "
                "baseline."
            )
        )
        rows = difference_rows(comparison)
        # The verdicts are sentences: they read better as lines under the figures than in a narrow column.
        st.dataframe(_frame([r[:-1] for r in rows]), hide_index=True, width="stretch")
        st.markdown("\n".join(f"- **{md(r[0])}**, {md(r[1])}: {md(r[-1])}" for r in rows[1:]))
    else:
        st.caption(md(f"No arm besides the baseline {d.baseline} yet: nothing to compare."))


def show_live_tab(deployments: list[Deployment]) -> None:
    """Compare's Live tab: every deployment of the experiment, newest state first."""
    st.caption(
        "Live A/B deployments of this experiment, served by `steerlab serve` to real users; their feedback is "
        "not mixed with the offline votes and scores of the other tabs. Change them on the Deploy page."
    )
    for deployment in deployments:
        state = "live" if deployment.live else "ended"
        st.subheader(f"{deployment.name} ({state})")
        show_live_figures(deployment.name)
