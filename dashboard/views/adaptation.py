"""Adaptation: steering measured against prompting, a LoRA adapter and fine-tuning, with a decision helper."""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, page_header, store
from dashboard.text import md
from service import charts
from service.adaptation import Constraints, adaptation_table, decide, unchecked_speed
from service.catalog import load_spec

page_header("Adaptation")
name = chosen_experiment("analyst", "comparing adaptation methods")
spec = load_spec(store(), name)
st.caption(
    "The study's criteria per method — scope, permanence, compute, memory, data, task performance and the share of "
    "fine-tuning's gain — every number from this experiment's runs. Add LoRA and fine-tune variants "
    "(`train: {method: lora}` / `{method: finetune}` in the experiment file) to compare against them."
)
if not spec.scorers:
    st.info("This experiment has no scorers, so there is no task performance to compare.")
    st.stop()
scorer = st.selectbox("Task performance measured by", [s.name for s in spec.scorers])
rows = attempt(lambda: adaptation_table(store(), name, scorer))
if not rows:
    st.stop()
st.altair_chart(charts.adaptation_chart(rows, scorer))
st.dataframe(charts.adaptation_frame(rows), hide_index=True, width="stretch")
other_runs = [r.variant for r in rows if not r.speed_comparable]
if other_runs:
    st.caption(
        f"Inference time of {md(', '.join(other_runs))}: {md(charts.NOT_COMPARABLE)} (generated in other runs, "
        "so under other machine conditions); run them again together with the baseline to compare."
    )

st.subheader("Which method fits?")
c1, c2, c3, c4 = st.columns(4)
examples = c1.number_input("Examples available", 0, 10_000_000, 50)
budget = c2.number_input("Set-up compute budget (s)", 0.0, 1e7, 60.0)
latency = c3.number_input("Inference time budget (× baseline)", 0.5, 100.0, 1.5, 0.1)
reversible = c4.toggle("Must be reversible", value=True)
constraints = Constraints(int(examples), float(budget), reversible, float(latency))
fitting = decide(rows, constraints)
if fitting:
    st.success(
        "Meets the constraints, best task performance first: "
        + ", ".join(f"{md(r.variant)} ({md(r.kind)}, {md(scorer)} {charts.sig(r.performance.value)})" for r in fitting)
    )
else:
    st.warning("No measured method meets these constraints; relax one of them.")
unchecked = unchecked_speed(rows, constraints)
if unchecked:
    st.info(
        f"Inference time not judged for {md(', '.join(r.variant for r in unchecked))}: it was measured in a different "
        "run than the baseline, so it is not comparable with the budget; these are ranked on task performance only."
    )
