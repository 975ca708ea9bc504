"""What every page shares: the store, the run manager, the chosen experiment, error display."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from db.store import Store, StoreError
from engine.errors import SteerLabError
from service.catalog import list_experiments
from service.jobs import RunManager

T = TypeVar("T")
USER_ERRORS = (SteerLabError, StoreError)


@st.cache_resource
def store() -> Store:
    """One store per process: ``STEERLAB_DB``, or ``steerlab.db`` in the working directory."""
    return Store()


@st.cache_resource
def run_manager() -> RunManager:
    return RunManager()


def experiment_names() -> list[str]:
    return [e.name for e in list_experiments(store())]


def sidebar() -> None:
    show_flash()
    names = experiment_names()
    with st.sidebar:
        if not names:
            st.caption("No experiments yet: create one on the Experiments page.")
            return
        current = st.session_state.get("experiment")
        index = names.index(current) if current in names else 0
        st.session_state["experiment"] = st.selectbox("Experiment", names, index=index, key="experiment_picker")
        st.caption(f"Store: `{store().url}`")


def chosen_experiment() -> str:
    """The experiment picked in the sidebar; a page without one says so and stops."""
    name = st.session_state.get("experiment")
    if name not in experiment_names():
        st.info("Create or pick an experiment first (Experiments page, or the sidebar).")
        st.stop()
    return str(name)


def attempt(action: Callable[[], T], success: str | None = None, rerun: bool = False) -> T | None:
    """Run a service call; a user error is shown as one sentence instead of a traceback.

    With ``rerun`` the page is redrawn after success (so tables show the change) and the
    success message is shown at the top of the redrawn page.
    """
    try:
        result = action()
    except USER_ERRORS as exc:
        st.error(str(exc), icon="⚠️")
        return None
    if success and rerun:
        st.session_state["flash"] = success
        st.rerun()
    if success:
        st.success(success)
    return result


def show_flash() -> None:
    message = st.session_state.pop("flash", None)
    if message:
        st.success(message)
