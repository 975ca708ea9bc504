"""Rate: blind pairwise comparison of two variants' outputs for the same prompt."""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, store
from dashboard.widgets import output_box
from service.rating import CHOICE_LABELS, next_item, progress, record_vote

st.title("Rate")
name = chosen_experiment()

rater = st.session_state.get("rater", "")
if not rater:
    with st.form("rater_form"):
        typed = st.text_input("Your name (asked once per browser session)", key="rater_input")
        if st.form_submit_button("Start rating", type="primary"):
            if typed.strip():
                st.session_state["rater"] = typed.strip()
                st.rerun()
            st.error("The rater name is empty; type your name before rating.")
    st.stop()

st.caption(f"Rating as **{rater}** · experiment **{name}**. Outputs are labelled A and B only; sides are random.")
revealed = st.session_state.pop("revealed", None)
if revealed:
    st.info(revealed)

key = f"item:{name}:{rater}"
if st.session_state.get(key) is None:
    st.session_state[key] = attempt(lambda: next_item(store(), name, rater))
item = st.session_state[key]

p = progress(store(), name, rater)
c1, c2 = st.columns(2)
c1.progress(p.rater_votes / p.items if p.items else 0.0, text=f"You: {p.rater_votes} of {p.items} pairs rated")
c2.progress(
    p.items_rated / p.items if p.items else 0.0,
    text=f"Everyone: {p.votes} votes, {p.items_rated} of {p.items} pairs rated at least once",
)

if item is None:
    st.success("Nothing left for you to rate here: every pair has your vote (or there are no outputs yet; see Run).")
    st.stop()

st.markdown("**Prompt**")
st.markdown(f"> {item.prompt}")
a, b = st.columns(2)
with a:
    st.markdown("**A**")
    output_box(item.left_text)
with b:
    st.markdown("**B**")
    output_box(item.right_text)


def vote(choice: str) -> None:
    reveal = attempt(lambda: record_vote(store(), name, rater, item.left_id, item.right_id, choice))
    st.session_state[key] = None
    if reveal:
        st.session_state["revealed"] = (
            f"Your vote: {CHOICE_LABELS[choice]}. A was '{item.left_variant}', B was '{item.right_variant}'."
        )


buttons = st.columns(4)
for column, (choice, shortcut) in zip(
    buttons, (("left", "a"), ("right", "b"), ("tie", "t"), ("both_bad", "x")), strict=True
):
    column.button(
        f"{CHOICE_LABELS[choice]}",
        key=f"vote_{choice}",
        on_click=vote,
        args=(choice,),
        shortcut=shortcut,
        width="stretch",
        help=f"Keyboard: {shortcut}",
        type="primary" if choice in ("left", "right") else "secondary",
    )
st.caption("Keyboard: a = A is better · b = B is better · t = tie · x = both bad")
if st.button("Change rater", type="tertiary"):
    st.session_state.pop("rater", None)
    st.rerun()
