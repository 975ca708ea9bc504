"""Rate: blind pairwise comparison of two variants' outputs for the same prompt.

The pair on screen carries its experiment's name, and the vote buttons hand that pair to
the callback, so a vote is stored in the experiment whose outputs the rater saw even if
the sidebar changed in between.
"""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, current_rater, identity, page_header, set_rater, store
from dashboard.text import md, plain_block
from dashboard.widgets import output_box, prompt_tail
from service import USER_ERRORS
from service.catalog import load_spec
from service.rating import CHOICE_LABELS, RatingItem, check_rater, next_item, progress, record_vote

page_header("Rate")
name = chosen_experiment("rater", "rating")
spec = load_spec(store(), name)
who = identity()

rater = who.user if who.signed_in else current_rater()  # signed in: the sign-in names the rater
if not rater:
    with st.form("rater_form"):
        st.markdown(
            f"Experiment **{md(name)}**. Raters compare two outputs at a time without seeing which variant wrote them."
        )
        typed = st.text_input("Your name (kept in this page's link, so a reload keeps it)", key="rater_input")
        if st.form_submit_button("Start rating", type="primary"):
            checked = attempt(lambda: check_rater(typed))
            if checked:
                set_rater(checked)
                st.rerun()
    st.stop()

st.caption(
    f"Rating as **{md(rater)}** · experiment **{md(name)}** · outputs are labelled A and B only; sides are random."
)
revealed = st.session_state.pop("revealed", None)
if revealed:
    # Apart from the new pair and brief, so it is not read as the identity of the pair below.
    st.toast(md(revealed), icon=":material/visibility:", duration="short")
problem = st.session_state.pop("vote_problem", None)
if problem:
    st.warning(md(problem), icon=":material/warning:")

key = f"item:{name}:{rater}"
if st.session_state.get(key) is None:
    st.session_state[key] = attempt(lambda: next_item(store(), name, rater, who=who))
item: RatingItem | None = st.session_state[key]

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

st.subheader(md(spec.rating_question))
st.markdown("**Prompt**")
with st.container(border=True):
    st.markdown(plain_block(item.prompt, empty="(empty prompt)"), unsafe_allow_html=True)
a, b = st.columns(2)
with a:
    st.markdown("**A**")
    output_box(item.left_text, lead=prompt_tail(item.prompt))
with b:
    st.markdown("**B**")
    output_box(item.right_text, lead=prompt_tail(item.prompt))


def vote(shown: RatingItem, rater_name: str, choice: str) -> None:
    """Store the vote on the pair that was on screen, then clear it so the next pair is drawn."""
    st.session_state[f"item:{shown.experiment}:{rater_name}"] = None
    try:
        reveal = record_vote(
            store(), shown.experiment, rater_name, shown.left_id, shown.right_id, choice, identity(), shown.repeat
        )
    except USER_ERRORS as exc:
        st.session_state["vote_problem"] = str(exc)
        return
    st.session_state["revealed"] = (
        f"Vote stored: {CHOICE_LABELS[choice]}. That pair's A was '{shown.left_variant}', B was '{shown.right_variant}'."
        if reveal
        else f"Vote stored: {CHOICE_LABELS[choice]}."
    )


buttons = st.columns(4)
for column, (choice, shortcut) in zip(
    buttons, (("left", "a"), ("right", "b"), ("tie", "t"), ("both_bad", "x")), strict=True
):
    column.button(
        f"{CHOICE_LABELS[choice]}",
        key=f"vote_{choice}",
        on_click=vote,
        args=(item, rater, choice),
        shortcut=shortcut,
        width="stretch",
        help=f"Keyboard: {shortcut}",
        type="primary" if choice in ("left", "right") else "secondary",
    )
st.caption("Keyboard: a = A is better · b = B is better · t = tie · x = both bad")
if not who.signed_in and st.button("Change rater", type="tertiary"):
    set_rater(None)
    st.rerun()
