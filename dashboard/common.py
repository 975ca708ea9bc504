"""What every page shares: the store, the run manager, the chosen experiment, error display."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from service import USER_ERRORS, Store, resolve_url
from service.catalog import list_experiments
from service.jobs import RunManager

T = TypeVar("T")


def store() -> Store:
    """The store named by ``STEERLAB_DB`` (default ``steerlab.db`` in the working directory)."""
    return _open_store(resolve_url())


@st.cache_resource
def _open_store(url: str) -> Store:
    return Store(url)


@st.cache_resource
def run_manager() -> RunManager:
    return RunManager()


def experiment_names() -> list[str]:
    return [e.name for e in list_experiments(store())]


def sidebar() -> None:
    """The experiment picker. Drawn after the page, so it already lists what the page just created."""
    names = experiment_names()
    with st.sidebar:
        if not names:
            st.caption("No experiments yet: create one on the Experiments page.")
            return
        if st.session_state.get("experiment_picker") not in names:
            st.session_state["experiment_picker"] = names[0]
        st.selectbox("Experiment", names, key="experiment_picker")
        st.caption(f"Store: `{store().url}`")


def select_experiment(name: str) -> None:
    """Make ``name`` the current experiment (the picker is drawn after the page)."""
    st.session_state["experiment_picker"] = name


def chosen_experiment() -> str:
    """The experiment picked in the sidebar; a page without one says so and stops."""
    names = experiment_names()
    name = st.session_state.get("experiment_picker")
    if name not in names:
        if not names:
            st.info("Create an experiment first, on the Experiments page.")
            st.stop()
        name = names[0]
    return str(name)


def attempt(action: Callable[[], T], success: str | None = None) -> T | None:
    """Run a service call; a user error is shown as one sentence instead of a traceback."""
    try:
        result = action()
    except USER_ERRORS as exc:
        st.error(str(exc), icon=":material/error:")
        return None
    if success:
        st.success(success, icon=":material/check_circle:")
    return result
