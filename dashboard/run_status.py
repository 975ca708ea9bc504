"""The live status of an experiment's run, shared by the Run and Sweep pages, and output health.

:func:`run_status` draws a fragment that refreshes itself every second: progress, rate,
time left, state, phase (generating, measuring side effects, scoring, ...), a failed run's
stored error and traceback, the worker holding it and its last heartbeat, and start/resume
and cancel buttons. Start and Resume only queue the run: a worker process runs it
(``steerlab worker``; scripts/run.sh starts one beside the dashboard), so a restart of the
dashboard does not stop it. Everything is read from the store, so another tab, a reload,
another host or a run started from the command line shows the same figures.
When it sees the run end, it reruns the whole page once, so what a page draws only for a
finished run (the Sweep page's results, the Run page's warnings) appears without a reload.

:func:`health_warnings` warns about variants whose outputs broke down (non-finite logits,
an absurd coefficient) or came out empty; the Run, Sweep and Compare pages show it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import streamlit as st

from dashboard.common import flash, identity, store
from dashboard.text import md
from service import USER_ERRORS
from service.jobs import RunStatus, VariantHealth, cancel, enqueue, health, missing_worker, status
from service.run_options import GENERATING, RunOptions

STOPPED = ("failed", "cancelled", "interrupted")


def run_status(
    name: str,
    *,
    key: str,
    options: Callable[[], RunOptions] | None = None,
    noun: str = "run",
    resume_only: bool = False,
    done_message: str | None = None,
    controls: bool = True,
) -> None:
    """The live status of experiment ``name``'s run (a fragment refreshed every second).

    ``key`` tells this status's widgets apart; ``options`` gives the options of a run the
    start/resume button starts (no button without it; with ``resume_only`` the button shows
    only for a run that stopped part-way); ``noun`` names the run on buttons ("sweep");
    ``done_message`` (Markdown) is shown once every generation is done and the run finished;
    ``controls=False`` (a visitor who may only watch) draws neither start nor cancel button.
    """
    _live_status(name, key, options if controls else None, noun, resume_only, done_message, controls)


@st.fragment(run_every=1.0)
def _live_status(
    name: str,
    key: str,
    options: Callable[[], RunOptions] | None,
    noun: str,
    resume_only: bool,
    done_message: str | None,
    controls: bool,
) -> None:
    s = status(store(), name)
    under_way = s.active  # queued runs count: the page waits for their end as for a running one
    if finished_since_last_look(st.session_state, f"run_status_seen:{key}:{name}", s.run_id, under_way):
        st.rerun(scope="app")  # a fragment rerun would leave the rest of the page as it was
    st.progress(s.fraction, text=s.describe())
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Done", f"{s.done} / {s.total}")
    c2.metric("Rate", f"{s.rate:.1f}/s" if s.rate else "–", help="Generations per second of decoding")
    c3.metric("Time left", duration(s.seconds_left) if s.running else "–")
    c4.metric("State", "cancelling" if s.running and s.cancel_requested else s.state)
    c5.metric("Phase", s.phase if s.phase and (s.running or s.state in STOPPED) else "–")
    if s.running and s.phase and s.phase != GENERATING and s.done >= s.total:
        st.caption(f"Every output is generated; the run is now {md(s.phase)} before it finishes.")
    _worker_line(s)
    _errors(s)
    if controls:
        left, right = st.columns(2)
        if options is not None:
            _start_button(left, name, key, options, noun, resume_only, s)
        if right.button(
            f"Cancel {noun}", disabled=not s.active or s.cancel_requested, key=f"cancel:{key}:{name}"
        ) and cancel(store(), name, identity()):
            st.info("Cancelling after the current step; finished batches stay stored.", icon=":material/info:")
    if done_message and s.state == "done" and s.total and s.done >= s.total:
        st.success(done_message, icon=":material/check_circle:")


def finished_since_last_look(
    state: MutableMapping[str | int, Any], key: str, run_id: int | None, under_way: bool
) -> bool:
    """Whether a run ended since the previous look (remembered in ``state`` under ``key``).

    True when the run seen then was under way and none is now, or when another run has
    finished in between (a run too short for any look to see it under way).
    """
    previous = state.get(key)
    state[key] = (run_id, under_way)
    if previous is None or under_way:
        return False
    seen_run, was_under_way = previous
    return bool(was_under_way) or seen_run != run_id


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _worker_line(s: RunStatus) -> None:
    """Who runs it and how recently it was heard from; or why a queued run is not starting."""
    if s.running and s.worker:
        age = s.heartbeat_age()
        heard = f", last heartbeat {duration(age)} ago" if age is not None else ""
        again = f" (attempt {s.attempts}: taken over from a worker that stopped)" if s.attempts > 1 else ""
        where = f" on {md(s.device)}" if s.device.startswith("ray:") else ""  # its actors, on the Ray cluster
        st.caption(f"Run {s.run_id} is run by worker {md(s.worker)}{where}{heard}{again}.")
    warning = missing_worker(store()) if s.active else ""
    if s.state == "queued":
        st.caption(f"Run {s.run_id} is queued" + ("." if warning else "; a worker starts it shortly."))
    if warning:
        st.warning(warning, icon=":material/warning:")  # our own sentence: its `command` renders as code


def _errors(s: RunStatus) -> None:
    if s.error and s.state in STOPPED:
        where = f" while {md(s.phase)}" if s.phase else ""
        st.error(f"The {s.state} run stopped{where}: {md(s.error)}", icon=":material/error:")
        if s.traceback:
            with st.expander("Traceback (for a bug report)"):
                st.code(s.traceback, language="text")


def _start_button(
    column: Any,
    name: str,
    key: str,
    options: Callable[[], RunOptions],
    noun: str,
    resume_only: bool,
    s: RunStatus,
) -> None:
    # A run that stopped after its last generation (in measuring or scoring) resumes too.
    resumable = s.state != "done" and (0 < s.done < s.total or (s.done > 0 and s.state in STOPPED))
    if resume_only and (s.active or not resumable):
        return
    label = f"Resume {noun}" if resumable else f"Start {noun}"
    finished = s.state == "done" and s.done >= s.total
    if column.button(label, type="primary", disabled=s.active or finished or s.total == 0, key=f"start:{key}:{name}"):
        # No page-level "queued" message on success: it would stay on screen while the live
        # status moves on to running and done; the status line says "queued" while it is true.
        try:
            enqueue(store(), name, options(), who=identity())
        except USER_ERRORS as exc:
            flash(md(exc), "error")
        st.rerun(scope="app")


def health_warnings(name: str) -> list[VariantHealth]:
    """Warn about variants of ``name`` with broken-down or empty outputs; returns those variants."""
    problems = [h for h in health(store(), name) if not h.ok]
    if problems:
        lines = []
        for h in problems:
            parts = []
            if h.non_finite:
                parts.append(
                    f"{h.non_finite} of {h.generations} outputs stopped early because the steered model's "
                    "logits became infinite, NaN or flat (a coefficient far too large?)"
                )
            if h.empty:
                parts.append(f"{h.empty} of {h.generations} outputs are empty")
            lines.append(f"- **{md(h.variant)}**: {'; '.join(parts)}.")
        st.warning(
            "Some outputs are not ordinary text, so their scores and fluency say little:\n" + "\n".join(lines),
            icon=":material/warning:",
        )
    return problems
