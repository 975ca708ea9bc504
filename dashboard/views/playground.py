"""Playground: the behaviour knob, steered and unsteered output side by side."""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, page_header, store
from dashboard.widgets import output_box
from service.catalog import load_spec
from service.editing import model_facts
from service.playground import preview

page_header("Playground")
name = chosen_experiment("analyst", "trying variants in the Playground")
spec = load_spec(store(), name)
if not spec.vectors:
    st.info("This experiment has no vectors yet: add one on the Variants page.")
    st.stop()
facts = attempt(lambda: model_facts(spec.model))
if facts is None:
    st.stop()

c1, c2, c3 = st.columns([2, 2, 1])
vector = c1.selectbox("Vector", [v.name for v in spec.vectors])
layer = c2.select_slider("Layer", options=list(range(facts.n_layers)), value=0)
steering_on = c3.toggle("Steering on", value=True)
coefficient = st.slider("Coefficient (the knob)", -10.0, 10.0, 1.0, 0.25)
prompt = st.text_area("Prompt", value=spec.prompts[0], height=80)
tokens = st.slider("New tokens", 8, 128, 40, 8)

with st.spinner("Generating…"):
    result = attempt(lambda: preview(store(), name, vector, int(layer), coefficient, prompt, steering_on, tokens))
if result is not None:
    left, right = st.columns(2)
    with left:
        st.markdown(
            f"**Steered** · `{vector}` × {coefficient:g} at layer {layer}" if steering_on else "**Steering off**"
        )
        output_box(result.steered)
    with right:
        st.markdown("**Unsteered**")
        output_box(result.plain)
    if not steering_on:
        if result.identical:
            st.success("Steering is off: the output is exactly the unsteered model's again.")
        else:
            st.error("Steering is off but the outputs differ: please report this.")
    elif result.identical:
        st.info("The edit did not change this greedy output; try a larger coefficient or another layer.")
    st.caption("Greedy decoding; both rows run in one batch, only the first carries the edit.")
