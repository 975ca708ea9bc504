"""Sweep: find which layer and strength steer, over a grid, with behaviour and fluency per cell."""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, identity, page_header, store
from dashboard.run_status import health_warnings, run_status
from dashboard.text import md
from service import charts
from service.catalog import list_experiments, load_spec
from service.editing import model_facts
from service.jobs import status
from service.run_options import RunOptions
from service.sweeps import analyse, promote_cells, start_sweep

page_header("Sweep")
name = chosen_experiment()
if name.endswith("__sweep"):
    st.info("This is a sweep's own experiment; pick the experiment it sweeps in the sidebar.")
    st.stop()
spec = load_spec(store(), name)
facts = attempt(lambda: model_facts(spec.model))
if facts is None:
    st.stop()
if not spec.vectors or not spec.scorers:
    st.info("A sweep needs a vector and a scorer in the experiment (see Variants, or the experiment file).")
    st.stop()
st.caption(
    "Runs the baseline and one vector-addition variant per (layer, coefficient) cell, scores each cell on behaviour "
    "and on fluency (perplexity under the unsteered model), and recommends the strongest cell that stays fluent."
)
sweep_name = f"{name}__sweep"
SWEEP_BATCH = 32
with st.form("sweep_form"):
    c1, c2 = st.columns(2)
    vector = c1.selectbox("Vector", [v.name for v in spec.vectors])
    scorer = c2.selectbox("Behaviour scorer", [s.name for s in spec.scorers])
    layers = st.multiselect(
        f"Layers (0–{facts.n_layers - 1})", list(range(facts.n_layers)), default=list(range(facts.n_layers))
    )
    c3, c4 = st.columns(2)
    coefficients_text = c3.text_input("Coefficients (comma-separated)", "-2, -1, 1, 2, 3")
    max_cells = c4.number_input("Largest grid allowed (cells)", 1, 10000, 64)
    if st.form_submit_button("Start sweep", type="primary"):
        try:
            coefficients = [float(x) for x in coefficients_text.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            st.error(
                f"Coefficients '{coefficients_text}' are not numbers separated by commas; write them like -1, 1, 2."
            )
        else:
            raw = {
                "vector": vector,
                "scorer": scorer,
                "layers": layers,
                "coefficients": coefficients,
                "max_cells": int(max_cells),
            }
            attempt(
                lambda: start_sweep(store(), name, raw, SWEEP_BATCH, identity()),
                "Sweep queued; a worker starts it shortly.",
            )


sweep_stored = sweep_name in {e.name for e in list_experiments(store())}
if not sweep_stored:
    st.caption("No sweep run yet for this experiment.")
else:
    # Its results appear once the run ends: the status reruns the page when it sees that.
    run_status(
        sweep_name,
        key="sweep",
        options=lambda: RunOptions(batch_size=SWEEP_BATCH),
        noun="sweep",
        resume_only=True,
    )
# Results once the sweep's run has ended (a queued or running sweep shows its progress above).
if sweep_stored and not status(store(), sweep_name).active:
    result = attempt(lambda: analyse(store(), sweep_name))
    if result is not None and result.stale:
        st.warning(md(" ".join(result.stale)))
    if result is not None and result.cells:
        st.altair_chart(charts.sweep_heatmaps(result))
        st.altair_chart(charts.pareto_chart(result))
        st.dataframe(charts.sweep_frame(result), hide_index=True, width="stretch")
        if result.recommended is not None:
            r = result.recommended
            st.success(
                f"Recommended: layer {r.layer}, coefficient {r.coefficient:g} — {md(result.config.scorer)} {r.behaviour:.3f} "
                f"[{r.behaviour_low:.3f}, {r.behaviour_high:.3f}] (n={r.n}), perplexity {r.perplexity:.1f} "
                f"(baseline {result.baseline_behaviour:.3f}, perplexity {result.baseline_perplexity:.1f})."
            )
        chosen = st.multiselect(
            "Turn cells into variants of this experiment",
            [c.name for c in result.cells],
            default=[result.recommended.name] if result.recommended else [],
        )
        if st.button("Add as variants", disabled=not chosen):
            added = attempt(lambda: promote_cells(store(), name, sweep_name, chosen))
            if added:
                st.success(f"Added {md(', '.join(added))}; run the experiment to generate their outputs.")
    health_warnings(sweep_name)
