"""Experiments: list, create (form or YAML upload), duplicate, delete."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.common import attempt, experiment_names, select_experiment, store
from service.catalog import delete_experiment, list_experiments
from service.editing import create_experiment, create_experiment_from_yaml, duplicate_experiment, parse_uploaded_prompts

st.title("Experiments")
st.caption("An experiment is a model, shared prompts, generation settings and the variants to compare.")

table_slot = st.container()  # filled last, so it shows what this run created or deleted

new_tab, upload_tab, copy_tab, delete_tab = st.tabs(["New", "Upload YAML", "Duplicate", "Delete"])

with new_tab, st.form("new_experiment"):
    name = st.text_input("Name", placeholder="mood_test")
    model = st.text_input("Model (hub id or local folder)", value="raincandy-u/TinyStories-656K")
    description = st.text_area("Description (optional)", height=68)
    prompts_text = st.text_area("Prompts, one per line", height=120, placeholder="Once upon a time, there was a")
    prompts_file = st.file_uploader(
        "…or upload prompts (CSV with a 'prompt' column, JSONL, TXT)", type=["csv", "jsonl", "txt"]
    )
    c1, c2, c3, c4 = st.columns(4)
    max_new_tokens = c1.number_input("Max new tokens", 1, 4096, 48)
    do_sample = c2.toggle("Sample (off = greedy)", value=True)
    samples = c3.number_input("Samples per prompt", 1, 1000, 2)
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0)
    c5, c6, c7 = st.columns(3)
    temperature = c5.number_input("Temperature", 0.01, 100.0, 0.8)
    top_k = c6.number_input("Top-k (0 = off)", 0, 100000, 40)
    top_p = c7.number_input("Top-p (1 = off)", 0.01, 1.0, 1.0)
    if st.form_submit_button("Create experiment", type="primary"):
        prompts = [line for line in prompts_text.splitlines() if line.strip()]
        if prompts_file is not None:
            parsed = attempt(partial(parse_uploaded_prompts, prompts_file.getvalue(), prompts_file.name))
            prompts = parsed if parsed is not None else []
        raw = {
            "name": name,
            "model": model,
            "description": description,
            "prompts": prompts,
            "generation": {
                "max_new_tokens": int(max_new_tokens),
                "do_sample": do_sample,
                "temperature": float(temperature),
                "top_k": int(top_k),
                "top_p": float(top_p),
                "seed": int(seed),
                "samples_per_prompt": int(samples) if do_sample else 1,
            },
        }
        with st.spinner("Checking the model…"):
            created = attempt(
                lambda: create_experiment(store(), raw), f"Created '{name}' with a baseline variant; add variants next."
            )
        if created is not None:
            select_experiment(created.name)

with upload_tab:
    uploaded = st.file_uploader("Experiment YAML file", type=["yaml", "yml"], key="yaml_upload")
    if uploaded is not None and st.button("Create from file", type="primary"):
        with st.spinner("Checking the file and the model…"):
            spec = attempt(
                partial(
                    create_experiment_from_yaml, store(), uploaded.getvalue().decode("utf-8", "replace"), uploaded.name
                )
            )
        if spec is not None:
            select_experiment(spec.name)
            st.success(
                f"Created '{spec.name}' with {len(spec.variants)} variants and {len(spec.prompts)} prompts; run it on the Run page."
            )

names = experiment_names()
with copy_tab:
    if names:
        source = st.selectbox("Experiment to copy", names, key="copy_source")
        new_name = st.text_input("Name of the copy", value=f"{source}_copy")
        if st.button("Duplicate"):
            attempt(
                lambda: duplicate_experiment(store(), source, new_name),
                f"Copied '{source}' to '{new_name}' (definition and vectors; no outputs or votes).",
            )

with delete_tab:
    names = experiment_names()  # again: a copy may have just been made
    if names:
        doomed = st.selectbox("Experiment to delete", names, key="delete_target")
        sure = st.checkbox(f"Yes, delete '{doomed}' with all its outputs and votes", key="delete_confirm")
        if st.button("Delete experiment", type="primary", disabled=not sure):
            attempt(lambda: delete_experiment(store(), doomed), f"Deleted '{doomed}'.")


with table_slot:
    summaries = list_experiments(store())
    if summaries:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "experiment": s.name,
                        "model": s.model_id,
                        "prompts": s.prompts,
                        "variants": s.variants,
                        "generations": s.generations,
                        "ratings": s.ratings,
                        "last run": s.last_run_status or "never run",
                    }
                    for s in summaries
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.info("No experiments yet. Create one below, upload an experiment file, or start from the example.")
        if st.button("Add the example experiment (tinystories_mood)", type="primary"):
            example = Path(__file__).resolve().parents[2] / "experiments" / "tinystories_mood.yaml"
            spec = attempt(
                partial(create_experiment_from_yaml, store(), example.read_text(encoding="utf-8"), example.name)
            )
            if spec is not None:
                select_experiment(spec.name)
                st.rerun()
