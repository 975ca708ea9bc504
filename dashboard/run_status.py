"""The live status of an experiment's run, shared by the Run and Sweep pages, and output health.

:func:`run_status` draws a fragment that refreshes itself every second: progress, rate,
time left, state, phase (generating, measuring side effects, scoring, ...), a failed run's
stored error, and start/resume and cancel buttons. Everything is read from the store, so
another tab, a reload or a run started from the command line shows the same figures.
When it sees the run end, it reruns the whole page once, so what a page draws only for a
finished run (the Sweep page's results, the Run page's warnings) appears without a reload.

:func:`health_warnings` warns about variants whose outputs broke down (non-finite logits,
an absurd coefficient) or came out empty; the Run, Sweep and Compare pages show it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import streamlit as st

from dashboard.common import flash, run_manager, store
from dashboard.text import md
from service import USER_ERRORS
from service.jobs import RunStatus, VariantHealth, cancel, health, status
from service.running import GENERATING, RunOptions

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
    # A run just started by this process may not have stored its row yet: its thread counts.
    under_way = s.running or run_manager().is_alive(name)
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
    _errors(name, s)
    if controls:
        left, right = st.columns(2)
        if options is not None:
            _start_button(left, name, key, options, noun, resume_only, s)
        if right.button(
            f"Cancel {noun}", disabled=not s.running or s.cancel_requested, key=f"cancel:{key}:{name}"
        ) and cancel(store(), name):
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


def _errors(name: str, s: RunStatus) -> None:
    if s.error and s.state in STOPPED:
        where = f" while {md(s.phase)}" if s.phase else ""
        st.error(f"The {s.state} run stopped{where}: {md(s.error)}", icon=":material/error:")
    early = run_manager().error(name)  # a start that failed before its run was stored
    if early and not s.running:
        st.error(f"The run could not start: {md(early)}", icon=":material/error:")


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
    if resume_only and (s.running or not resumable):
        return
    label = f"Resume {noun}" if resumable else f"Start {noun}"
    finished = s.state == "done" and s.done >= s.total
    if column.button(label, type="primary", disabled=s.running or finished or s.total == 0, key=f"start:{key}:{name}"):
        try:
            run_manager().start(store(), name, options())
        except USER_ERRORS as exc:
            flash(md(exc), "error")
        else:
            flash(f"{noun.capitalize()} started.")
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
