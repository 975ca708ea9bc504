"""Deploy: serve the current experiment's variants to real users, split traffic, stop an arm at once.

Owners create deployments, change weights, press an arm's kill switch and end a deployment;
analysts see the same state and live figures. Everything is in the store, so every
`steerlab serve` replica and every open tab sees the same state after its next poll.
"""

from __future__ import annotations

import re
from functools import partial

import pandas as pd
import streamlit as st

from dashboard.common import attempt, chosen_experiment, flash, identity, may, page_header, store
from dashboard.live_panel import deployments_of, show_live_figures
from dashboard.text import md
from service import USER_ERRORS
from service.catalog import load_spec
from service.deployments import (
    TRAINED_KINDS,
    Deployment,
    create_deployment,
    end_deployment,
    resume_variant,
    set_weights,
    stop_variant,
)

SERVE_URL = "http://127.0.0.1:8000/v1"  # `steerlab serve`'s default address

page_header("Deploy")
name = chosen_experiment("analyst", "seeing its deployments")
owner = may("owner")
st.caption(
    f"Experiment **{md(name)}**. A deployment serves variants of this experiment through `steerlab serve` "
    "(OpenAI-compatible): each user is hashed to one arm by the weights and keeps it while the weights stay; "
    "responses are blind unless the deployment names the variant. Stopping an arm serves its users the "
    "baseline within a fraction of a second (the servers read the store's deployments every 0.2 s)."
)
try:
    spec = load_spec(store(), name)
    deployments = deployments_of(name)
except USER_ERRORS as exc:
    st.error(md(exc), icon=":material/error:")
    st.stop()
# Null-arm controls (``sad (random)``) are for offline comparison only: never offered to real users.
servable = [v.name for v in spec.variants if v.kind not in TRAINED_KINDS and not v.control_of]


def _switch(deployment: str, variant: str, stop: bool) -> None:
    """The kill switch's callback: runs before the page reruns, so the new state shows at once."""
    action = stop_variant if stop else resume_variant
    try:
        action(store(), identity(), deployment, variant)
    except USER_ERRORS as exc:
        flash(md(exc), "error")
        return
    verb = "Stopped" if stop else "Resumed"
    flash(f"{verb} **{md(variant)}** in **{md(deployment)}**.")


def _end(deployment: str) -> None:
    try:
        end_deployment(store(), identity(), deployment)
    except USER_ERRORS as exc:
        flash(md(exc), "error")
        return
    flash(f"Ended **{md(deployment)}**; its responses and feedback stay.")


def _arms(d: Deployment) -> None:
    total = sum(a.weight for a in d.arms) or 1.0
    for arm in d.arms:
        left, middle, right = st.columns([3, 2, 2])
        role = " (baseline)" if arm.variant == d.baseline else ""
        left.markdown(f"**{md(arm.variant)}**{role} · {100 * arm.weight / total:.0f}% of traffic")
        if not d.live:
            middle.markdown(":gray[ended]")
        else:
            state = "stopped: serves the baseline" if arm.stopped else ("serving" if arm.weight else "no traffic")
            middle.markdown(f":{'red' if arm.stopped else 'green'}[{state}]")
        if owner and d.live and arm.variant != d.baseline:
            if arm.stopped:
                right.button(
                    "Resume variant",
                    key=f"resume:{d.name}:{arm.variant}",
                    on_click=partial(_switch, d.name, arm.variant, False),
                )
            else:
                right.button(
                    "Stop variant",
                    type="primary",
                    key=f"stop:{d.name}:{arm.variant}",
                    on_click=partial(_switch, d.name, arm.variant, True),
                    help="The kill switch: this arm's users get the baseline instead.",
                )


def _weights_form(d: Deployment) -> None:
    current = {a.variant: a.weight for a in d.arms}
    with st.form(f"weights:{d.name}"):
        st.markdown("**Traffic weights** (shares are weight / total; 0 sends an arm nothing)")
        columns = st.columns(min(4, len(servable)) or 1)
        weights = {
            v: columns[i % len(columns)].number_input(
                md(v), min_value=0.0, value=float(current.get(v, 0.0)), step=5.0, key=f"w:{d.name}:{v}"
            )
            for i, v in enumerate(servable)
        }
        if st.form_submit_button("Save weights"):
            chosen = {v: w for v, w in weights.items() if w > 0 or v in current}
            if attempt(lambda: set_weights(store(), identity(), d.name, chosen)) is not None:
                flash(f"Saved the weights of **{md(d.name)}**.")
                st.rerun()


def _snippet(d: Deployment) -> None:
    st.code(
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{SERVE_URL}", api_key="unused")  # the server\'s $STEERLAB_API_KEY if it has one\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{d.name}",\n'
        '    messages=[{"role": "user", "content": "Tell me a story."}],\n'
        '    user="a-stable-user-id",  # sticky arm per user; stored only as its SHA-256\n'
        ")\n"
        "print(reply.choices[0].message.content)\n"
        "# Feedback on it: thumbs up/down and/or a score from 0 (worst) to 1 (best)\n"
        "import httpx\n"
        f'httpx.post("{SERVE_URL}/feedback", json={{"response_id": reply.id, "thumbs": "up", '
        '"user": "a-stable-user-id"})\n',
        language="python",
    )


for d in deployments:
    with st.container(border=True):
        state = "live" if d.live else "ended"
        blind = "names the variant in responses" if d.show_variant else "blind"
        st.subheader(f"{d.name}")
        st.caption(f"{state} · {blind} · baseline **{md(d.baseline)}** · version {d.version} of this deployment")
        _arms(d)
        live_tab, weights_tab, call_tab = st.tabs(["Live figures", "Weights", "Call it"])
        with live_tab:
            show_live_figures(d.name)
        with weights_tab:
            if owner and d.live:
                _weights_form(d)
                st.button(
                    "End deployment",
                    key=f"end:{d.name}",
                    help="Requests naming it are refused from then on.",
                    on_click=partial(_end, d.name),
                )
            else:
                st.dataframe(
                    pd.DataFrame([{"variant": a.variant, "weight": a.weight, "stopped": a.stopped} for a in d.arms]),
                    hide_index=True,
                )
        with call_tab:
            _snippet(d)

if not deployments:
    st.info("No deployment of this experiment yet." + (" Create one below." if owner else ""), icon=":material/info:")

if owner:
    st.subheader("New deployment")
    if not servable:
        st.info("Every variant of this experiment is trained (LoRA or fine-tuned): one loaded model cannot serve them.")
        st.stop()
    baselines = [v.name for v in spec.variants if v.kind == "baseline" and v.name in servable]
    with st.form("new_deployment"):
        new_name = st.text_input(
            "Name (the `model` clients send)",
            value=re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}-live")[:100],
            key="deploy_name",
        )
        st.markdown("**Traffic weights** (0 leaves a variant out)")
        columns = st.columns(min(4, len(servable)))
        weights = {
            v: columns[i % len(columns)].number_input(
                md(v), min_value=0.0, value=50.0 if i < 2 else 0.0, step=5.0, key=f"new_w:{v}"
            )
            for i, v in enumerate(servable)
        }
        baseline = st.selectbox(
            "Baseline (stopped arms fall back to it)", servable, index=servable.index(baselines[0]) if baselines else 0
        )
        show_variant = st.checkbox("Name the variant in responses (not blind)", value=False)
        if st.form_submit_button("Create deployment", type="primary"):
            chosen = {v: w for v, w in weights.items() if w > 0}
            made = attempt(
                lambda: create_deployment(store(), identity(), new_name.strip(), name, chosen, baseline, show_variant)
            )
            if made is not None:
                # A code span shows its text literally (no markdown escapes inside); names keep to
                # [A-Za-z0-9_.-] (engine.traffic.check_name), so no backtick can end it early.
                flash(f'Deployed **{md(made.name)}**: clients send `model="{made.name}"`.')
                st.rerun()
