"""Playground: a chat with one variant of the experiment beside the plain model.

The user's messages are shared; each column keeps its own earlier answers, so the steered
conversation drifts as the steering makes it drift. Both answers of a turn come from one
mixed batch of two rows (see service.playground).
"""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, page_header, store
from dashboard.text import md, plain_block
from service.catalog import load_spec
from service.editing import model_facts
from service.playground import (
    CUSTOM_EDIT,
    SCOPES,
    Chat,
    CustomEdit,
    Steering,
    chat_template_used,
    model_loaded,
    reply,
    reveal,
    steering_choices,
    steering_variant,
)

page_header("Playground")
name = chosen_experiment("analyst", "trying variants in the Playground")
spec = load_spec(store(), name)
choices = steering_choices(spec)
if not choices:
    st.info("This experiment has no variant the Playground can run: add a vector or a variant on the Variants page.")
    st.stop()
chat_key = f"playground_chat:{name}"
chat: Chat = st.session_state.get(chat_key, Chat())

# --- what the steered column runs ------------------------------------------------------------
steering_kinds = [v.name for v in spec.variants if v.kind == "steering" and v.name in choices]
default = choices.index(steering_kinds[0]) if steering_kinds else 0
top = st.columns([3, 1, 1])
choice = top[0].selectbox("Steered side", choices, index=default, key=f"playground_choice:{name}")
tokens = top[1].slider("Max new tokens", 8, 256, 40, 8)
greedy = top[2].toggle("Greedy", value=True, help="Off: sample with the experiment's temperature, top-k and top-p.")
steering: Steering = choice
if choice == CUSTOM_EDIT:
    facts = attempt(lambda: model_facts(spec.model))
    if facts is None:
        st.stop()
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
    vector = c1.selectbox("Vector", [v.name for v in spec.vectors])
    layer = c2.select_slider("Layer", options=list(range(facts.n_layers)), value=0)
    scope = c3.selectbox(
        "Scope",
        SCOPES,
        index=SCOPES.index("all"),
        help="Which tokens the edit touches; assistant: every answer, every turn.",
    )
    steering_on = c4.toggle("Steering on", value=True)
    coefficient = st.slider("Coefficient (the knob)", -10.0, 10.0, 1.0, 0.25)
    steering = CustomEdit(vector, int(layer), coefficient, scope, steering_on)
variant = attempt(lambda: steering_variant(spec, steering))
if variant is None:
    st.stop()
with st.expander("What the steered side is"):
    st.markdown("\n".join(f"- {md(line)}" for line in reveal(variant)))

# --- the model, and how turns are put together -----------------------------------------------
if model_loaded(spec):
    templated = attempt(lambda: chat_template_used(spec))
else:
    with st.spinner("Loading the model; the first load takes a while (about 15 s for SmolLM2-135M on a CPU)…"):
        templated = attempt(lambda: chat_template_used(spec))
if templated is None:
    st.stop()
if templated:
    st.caption("Each message goes through the model's chat template; each column keeps its own earlier answers.")
else:
    st.caption(
        "This model has no chat template: your first message is continued as plain text, and later turns "
        "are joined as plain 'User: …' and 'Assistant: …' lines."
    )


def send(message: str) -> None:
    with st.spinner("Answering on both sides…"):
        answered = attempt(lambda: reply(store(), name, chat, message, steering, tokens, greedy))
    if answered is not None:
        st.session_state[chat_key] = answered


message = st.chat_input("Message both sides")
actions = st.columns([1, 4])
if actions[0].button("New conversation", disabled=not chat.turns):
    st.session_state.pop(chat_key, None)
    st.rerun()
if not chat.turns and isinstance(spec.prompts[0], str):
    first = spec.prompts[0]
    # A button label is Markdown: the prompt is escaped so it reads as the characters it holds.
    if actions[1].button(f"Send the experiment's first prompt: “{md(first[:60])}”"):
        message = first
if message is not None:
    send(message)
    chat = st.session_state.get(chat_key, chat)

# --- the two conversations: the user's turns are shared, each column answers from its own history ---


def answer(text: str, caption: str = "") -> None:
    with st.chat_message("assistant"):
        st.markdown(plain_block(text, css_class="steerlab-output"), unsafe_allow_html=True)
        if caption:
            st.caption(caption)


left, right = st.columns(2)
label = steering.label if isinstance(steering, CustomEdit) else choice
left.markdown(f"**Steered** · {md(label)}")
right.markdown("**Unsteered**")
for turn in chat.turns:
    with st.chat_message("user"):
        st.markdown(plain_block(turn.user), unsafe_allow_html=True)
    left, right = st.columns(2)
    with left:
        answer(turn.steered, f"Answered by {md(turn.steering)}" if turn.steering != label else "")
    with right:
        answer(turn.plain)

if chat.turns:
    last = chat.turns[-1]
    if not last.edited:
        if last.identical:
            st.success("Nothing steers this side: its answer is exactly the unsteered model's again.")
        else:
            st.error("Nothing steers this side but the answers differ: please report this.")
    elif last.identical:
        st.info("The steering did not change this answer; try a larger coefficient or another layer.")
    st.caption("Both answers of a turn come from one batch of two rows; only the first carries the steering.")
else:
    st.caption("Send a message: both sides answer it, each continuing its own conversation.")
