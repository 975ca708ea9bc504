"""Judge: let an LLM judge read pairs of outputs in both orders; watch its run and its latest verdicts.

Owners queue and cancel a judge's run (a worker process runs it, as it runs generation
runs); analysts watch. Everything is read from the store, so every tab shows the same.
"""

from __future__ import annotations

import streamlit as st

from dashboard.common import chosen_experiment, flash, identity, may, page_header, store
from dashboard.run_status import duration, finished_since_last_look
from dashboard.text import md, plain_block
from service import USER_ERRORS
from service.jobs import RunStatus, cancel, enqueue_judge, judge_status, missing_worker
from service.judging import forget_judge, judges_overview, recent_verdicts
from service.run_options import RunOptions

STOPPED = ("failed", "cancelled", "interrupted")
VERDICTS_SHOWN = 20
EXAMPLE = """judges:
  - name: tone
    rubric: Prefer the reply that is more upbeat while still answering the message well.
    # model: another hub id or .gguf file (default: the experiment's own model)
    # endpoint: {base_url: https://api.example.com/v1, model: some-model, api_key_env: JUDGE_API_KEY}
"""

page_header("Judge")
name = chosen_experiment("analyst", "see its judges")
try:
    judges = judges_overview(store(), name)
except USER_ERRORS as exc:
    st.error(md(exc), icon=":material/error:")
    st.stop()
if not judges:
    st.info(
        "This experiment declares no judge. Add a `judges` section to its file, like the one below, and store it "
        "again (`steerlab run` with the file, or the Experiments page).",
        icon=":material/info:",
    )
    st.code(EXAMPLE, language="yaml")
    st.stop()

st.caption(
    f"Experiment **{md(name)}**. A judge reads each pair of outputs twice, each output shown first once, and votes "
    "for an output only when both readings prefer it; otherwise its vote is a tie, so a judge that favours "
    "whatever it reads first cannot decide anything. Its votes are stored as rater `judge:<name>`, apart from "
    "the humans' (Compare shows both, and how often they agree). A worker process runs it, like a run."
)
chosen = st.selectbox("Judge", [j.name for j in judges], key=f"judge_choice:{name}")
judge = next(j for j in judges if j.name == chosen)
scope = "every two variants" if judge.pairs == "all" else "every variant against the baseline"
cap = f", at most {judge.max_pairs} pairs" if judge.max_pairs is not None else ""
st.markdown(f"**{md(judge.name)}** judges with {md(judge.description)}; it reads {scope}{cap}.")
st.markdown(plain_block(judge.rubric), unsafe_allow_html=True)
for warning in judge.warnings:
    st.warning(md(warning), icon=":material/warning:")
owner = may("owner")
if owner:
    st.number_input(
        "Readings per batch",
        1,
        256,
        8,
        key="judge_batch_size",
        help="A local judge reads a batch in one pass; an endpoint judge sends a batch's requests a few at a time.",
    )


def _probabilities(pair: tuple[float | None, float | None]) -> str:
    left, right = pair
    return "–" if left is None or right is None else f"{left:.3f}, {right:.3f}"


def _queue(s: RunStatus) -> None:
    resumable = s.state in STOPPED and 0 < s.done < s.total
    label = "Resume judge" if resumable else "Start judge"
    finished = s.state == "done" and s.done >= s.total
    unavailable = s.state in ("queued", "running") or finished or s.total == 0
    if st.button(label, type="primary", disabled=unavailable, key=f"judge_start:{name}"):
        options = RunOptions(batch_size=int(st.session_state.get("judge_batch_size", 8)))
        try:
            enqueue_judge(store(), name, chosen, options, identity())
        except USER_ERRORS as exc:
            flash(md(exc), "error")
        st.rerun(scope="app")


@st.fragment(run_every=1.0)
def _live() -> None:
    try:
        s = judge_status(store(), name, chosen)
    except USER_ERRORS as exc:
        st.error(md(exc), icon=":material/error:")
        return
    active = s.state in ("queued", "running")
    if finished_since_last_look(st.session_state, f"judge_seen:{name}:{chosen}", s.run_id, active):
        st.rerun(scope="app")  # the verdicts below are drawn for the finished run
    st.progress(s.fraction, text=s.describe())
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Readings", f"{s.done} / {s.total}", help="Two per pair: one in each order")
    c2.metric("Rate", f"{s.rate:.1f}/s" if s.rate else "–", help="Readings per second")
    c3.metric("Time left", duration(s.seconds_left) if s.running else "–")
    c4.metric("State", "cancelling" if s.running and s.cancel_requested else s.state)
    if s.running and s.worker:
        st.caption(f"Judge run {s.run_id} is run by worker {md(s.worker)}.")
    if s.state == "queued":
        st.caption(f"Judge run {s.run_id} is queued; a worker starts it shortly.")
    if s.total == 0:
        st.caption("There is no pair to judge yet: generate the experiment's outputs first (the Run page).")
    if warning := (missing_worker(store()) if active else ""):
        st.warning(warning, icon=":material/warning:")
    if s.error and s.state in STOPPED:
        st.error(f"The {s.state} judge run stopped: {md(s.error)}", icon=":material/error:")
        if s.traceback:
            with st.expander("Traceback (for a bug report)"):
                st.code(s.traceback, language="text")
    if owner:
        left, right = st.columns(2)
        with left:
            _queue(s)
        if right.button(
            "Cancel judge run", disabled=not active or s.cancel_requested, key=f"judge_cancel:{name}"
        ) and cancel(store(), name, identity()):
            st.info("Cancelling after the current batch; finished batches stay stored.", icon=":material/info:")


_live()

st.subheader("Latest verdicts")
verdicts = recent_verdicts(store(), name, chosen, VERDICTS_SHOWN)
if not verdicts:
    st.caption("No pair read in both orders yet.")
else:
    st.dataframe(
        [
            {
                "prompt": v.prompt_index + 1,  # counted from 1, as on every page
                "sample": v.sample + 1,
                "A first": v.first_variant,
                "B first": v.second_variant,
                "reading 1 prefers": v.first_prefers,
                "reading 2 (swapped) prefers": v.swapped_prefers,
                "vote": v.winner,
                "P(A), P(B) in reading 1": _probabilities(v.p_first),
            }
            for v in verdicts
        ],
        hide_index=True,
        width="stretch",
    )
    ties = sum(v.vote == "tie" for v in verdicts)
    st.caption(
        f"{ties} of the {len(verdicts)} latest pairs are ties: the two readings disagreed (or one was a tie). "
        "P(A) and P(B) are the probabilities of the judge's answer labels."
    )

if owner and judge.readings:
    with st.expander("Start this judge over"):
        st.caption(
            "Deletes this judge's readings and votes (humans' votes stay), for a judge whose rubric or model changed."
        )
        sure = st.checkbox(f"Delete the {judge.readings} readings of judge {md(judge.name)}", key=f"forget:{name}")
        if st.button("Delete its verdicts", disabled=not sure, key=f"forget_button:{name}"):
            try:
                readings, votes = forget_judge(store(), name, chosen, identity())
                flash(f"Deleted {readings} readings and {votes} votes of judge {md(chosen)}.")
            except USER_ERRORS as exc:
                flash(md(exc), "error")
            st.rerun(scope="app")
