"""Report: download the HTML report, the CSV of generations with ratings, the JSON export, a steering
variant's vectors (llama.cpp GGUF, or safetensors with a model card) and the votes (CSV or JSONL);
import votes from another tool or another copy of the experiment.

All of them name the variants behind every vote, so they are for analysts and owners only.
Each file is made when its button is pressed (not on every view of the page), and each
download and import is written to the audit log.
"""

from __future__ import annotations

import shlex
from functools import partial

import streamlit as st

from dashboard.common import attempt, chosen_experiment, flash, identity, page_header, store
from dashboard.text import md
from service.export import export_csv, export_json, html_report_for
from service.vector_export import FORMATS, export_variant, steering_variants
from service.votes_io import export_votes, import_votes

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

st.subheader("Vectors for other tools")
st.caption(
    "A steering variant's vectors, its coefficient multiplied in: a llama.cpp control vector (GGUF, for "
    "`--control-vector`), or a zip of safetensors (one tensor per layer) with a Hugging Face model card. llama.cpp "
    "takes only plain addition on every token from layer 1 up; other variants are explained when prepared."
)
exportable = steering_variants(store(), name)
if not exportable:
    st.caption("This experiment has no steering variant to export.")
else:
    e1, e2 = st.columns([2, 1])
    chosen = e1.selectbox("Steering variant", exportable, key=f"vector_export_variant:{name}")
    labels = {"gguf": "llama.cpp control vector (.gguf)", "safetensors": "safetensors + model card (.zip)"}
    fmt = e2.radio("Format", FORMATS, format_func=labels.__getitem__, key=f"vector_export_format:{name}")
    target = shlex.quote(f"{chosen}.gguf" if fmt == "gguf" else f"{chosen}_vectors")
    st.code(
        f"steerlab vectors export {shlex.quote(name)} {shlex.quote(chosen)} --format {fmt} -o {target}", language="bash"
    )
    prepared_key = f"vector_export_file:{name}:{chosen}:{fmt}"
    if st.button("Prepare the vector file", key=f"vector_export_prepare:{name}"):
        made = attempt(partial(export_variant, store(), name, chosen, fmt, who))
        if made is not None:
            st.session_state[prepared_key] = made
    made = st.session_state.get(prepared_key)
    if made is not None:
        st.download_button(f"Download {made.filename}", made.content, made.filename, made.mime, on_click="ignore")

st.subheader("Votes")
st.caption(
    "Every vote: rater, kind (human or judge), choice, time, and the two outputs as shown, by variant, prompt and "
    "sample (counted from 0) and by id. The import below reads the same columns."
)
v1, v2 = st.columns(2)
v1.download_button(
    "Votes as CSV",
    lambda: export_votes(store(), name, "csv", who),
    f"{name}_votes.csv",
    "text/csv",
    on_click="ignore",
)
v2.download_button(
    "Votes as JSONL",
    lambda: export_votes(store(), name, "jsonl", who),
    f"{name}_votes.jsonl",
    "application/jsonl",
    on_click="ignore",
)
with st.expander("Import votes"):
    st.caption(
        "A CSV or JSONL file of votes from another tool or another copy of this experiment: columns rater, choice "
        "and time, and the outputs by left_variant, right_variant, prompt_index and sample (or by left_id and "
        "right_id); optional rater_kind and repeat. All or nothing: a bad line stops the import and names the line; "
        "votes already stored are skipped."
    )
    st.code(f"steerlab votes import {shlex.quote(name)} votes.csv", language="bash")
    upload_key = f"votes_upload:{name}"
    uploaded = st.file_uploader("Votes file (.csv or .jsonl)", type=["csv", "jsonl"], key=upload_key)
    if uploaded is not None and st.button("Import votes", type="primary"):
        result = attempt(partial(import_votes, store(), name, uploaded.getvalue(), uploaded.name, who))
        if result is not None:
            st.session_state.pop(upload_key, None)
            flash(md(result.describe()))
            st.rerun()
