"""Run: start, watch, cancel and resume a run in the background."""

from __future__ import annotations

import streamlit as st

from dashboard.common import attempt, chosen_experiment, run_manager, store
from service.jobs import cancel, status
from service.running import RunOptions

st.title("Run")
name = chosen_experiment()
st.caption(
    f"Experiment **{name}**. The run works in the background: leave this page, reload it, or open it in "
    "another tab, and the progress is the same. A stopped run resumes where it stopped."
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@st.fragment(run_every=1.0)
def live_status() -> None:
    s = status(store(), name)
    running = s.state == "running"
    st.progress(s.fraction, text=f"{s.done} / {s.total} generations · {s.state}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Done", f"{s.done} / {s.total}")
    c2.metric("Rate", f"{s.rate:.1f} gen/s" if s.rate else "–")
    c3.metric("Time left", _duration(s.seconds_left) if running else "–")
    c4.metric("State", s.state)
    error = s.error or run_manager().error(name)
    if error and s.state in ("failed", "interrupted"):
        st.error(error)
    left, right = st.columns(2)
    label = "Resume run" if 0 < s.done < s.total else "Start run"
    if left.button(label, type="primary", disabled=running or (s.total > 0 and s.done >= s.total), key="start_run"):
        batch = int(st.session_state.get("batch_size", 16))
        attempt(lambda: run_manager().start(store(), name, RunOptions(batch_size=batch)), "Run started.")
    if right.button("Cancel run", disabled=not running, key="cancel_run") and cancel(store(), name):
        st.info("Cancelling after the current step; finished batches stay stored.")
    if s.total and s.done >= s.total and not running:
        st.success("All generations are done: rate them on the Rate page, or look at Compare.")


st.number_input(
    "Rows per mixed batch",
    1,
    512,
    16,
    key="batch_size",
    help="Variants share batches: a bigger batch is faster per row on most hardware.",
)
live_status()
