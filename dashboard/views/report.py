"""Report: download the HTML report, the CSV of generations with ratings, and the JSON export.

All three name the variants behind every vote, so they are for analysts and owners only.
Each file is made when its button is pressed (not on every view of the page), and each
download is written to the audit log.
"""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard.common import chosen_experiment, identity, page_header, store
from service.export import export_csv, export_json, html_report_for

page_header("Report")
name = chosen_experiment("analyst", "downloading reports and exports")
who = identity()
st.caption(
    "The HTML report is self-contained: it opens offline, charts included. Each file is prepared when you press "
    "its button. The same report from the command line:"
)
# A code block, not Markdown: the name is shown exactly, quoted for the shell, ready to copy.
st.code(f"steerlab report {shlex.quote(name)} --format html -o report.html", language="bash")
c1, c2, c3 = st.columns(3)
c1.download_button(
    "HTML report",
    lambda: html_report_for(store(), name, who),
    f"{name}_report.html",
    "text/html",
    type="primary",
    on_click="ignore",
)
c2.download_button(
    "CSV of generations and ratings",
    lambda: export_csv(store(), name, who),
    f"{name}_generations.csv",
    "text/csv",
    on_click="ignore",
)
c3.download_button(
    "Full JSON export", lambda: export_json(store(), name, who), f"{name}.json", "application/json", on_click="ignore"
)
