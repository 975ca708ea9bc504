"""SteerLab dashboard: ``streamlit run dashboard/app.py``.

Pages only lay out widgets and call the service layer (no SQL, no torch here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

from dashboard.common import sidebar  # noqa: E402

st.set_page_config(page_title="SteerLab", page_icon=":material/tune:", layout="wide")

PAGES = [
    st.Page("pages/experiments.py", title="Experiments", icon=":material/science:", default=True),
    st.Page("pages/variants.py", title="Variants", icon=":material/tune:"),
    st.Page("pages/run.py", title="Run", icon=":material/play_circle:"),
    st.Page("pages/playground.py", title="Playground", icon=":material/toggle_on:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_on:"),
    st.Page("pages/rate.py", title="Rate", icon=":material/thumbs_up_down:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/bar_chart:"),
    st.Page("pages/adaptation.py", title="Adaptation", icon=":material/balance:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
]

page = st.navigation(PAGES)
try:
    page.run()
finally:
    sidebar()
