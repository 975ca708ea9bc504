"""Report: download the HTML report, the CSV of generations with ratings, and the JSON export."""

from __future__ import annotations

import streamlit as st

from dashboard.common import chosen_experiment, store
from service.export import export_csv, export_json
from service.report import html_report

st.title("Report")
name = chosen_experiment()
st.caption(
    "The HTML report is self-contained: it opens offline, charts included. "
    f"The same report comes from `python -m engine report {name} --format html -o report.html`."
)
c1, c2, c3 = st.columns(3)
with st.spinner("Preparing the report…"):
    c1.download_button("HTML report", html_report(store(), name), f"{name}_report.html", "text/html", type="primary")
c2.download_button("CSV of generations and ratings", export_csv(store(), name), f"{name}_generations.csv", "text/csv")
c3.download_button("Full JSON export", export_json(store(), name), f"{name}.json", "application/json")
