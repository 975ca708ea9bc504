"""Run: queue, watch, cancel and resume a run; a worker process runs it."""

from __future__ import annotations

import streamlit as st

from dashboard.common import chosen_experiment, page_header
from dashboard.run_status import health_warnings, run_status
from dashboard.text import md
from service.run_options import RunOptions

page_header("Run")
name = chosen_experiment()
st.caption(
    f"Experiment **{md(name)}**. Start queues the run for a worker process (`steerlab worker`; `scripts/run.sh` "
    "starts one beside the dashboard), so it goes on whatever happens to this page: leave it, reload it, or open it "
    "in another tab or on another host, and the progress is the same. If the worker stops (stopping "
    "`scripts/run.sh` stops both), the run waits in the queue and the next worker resumes it where it stopped."
)
st.number_input(
    "Rows per mixed batch",
    1,
    512,
    32,
    key="batch_size",
    help="Variants share batches: a bigger batch is faster per row on most hardware.",
)
run_status(
    name,
    key="run",
    options=lambda: RunOptions(batch_size=int(st.session_state.get("batch_size", 32))),
    done_message="All generations are done: rate them on the Rate page, or look at Compare.",
)
health_warnings(name)
