"""What every page shares: the store, the current experiment and rater, messages.

The current experiment is kept in the session *and* in the page's URL (``?experiment=``),
so a reload, a bookmark or a link sent to a rater opens the same experiment. It is not
kept in the sidebar picker's widget state: Streamlit drops a widget's state in any run
that does not draw it (a page that stops early), which silently switched experiments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from dashboard.auth import account_box, me
from dashboard.text import md
from service import USER_ERRORS, Store, resolve_url
from service.access import AccessDenied, Identity, at_least, join_by_link, require, role_in, visible_experiments

T = TypeVar("T")

EXPERIMENT_PARAM = "experiment"
RATER_PARAM = "rater"
_CURRENT = "current_experiment"
_RATER = "current_rater"
_FLASH = "flash_messages"


def store() -> Store:
    """The store named by ``STEERLAB_DB`` (default ``steerlab.db`` in the working directory)."""
    return _open_store(resolve_url())


@st.cache_resource
def _open_store(url: str) -> Store:
    return Store(url)


def identity() -> Identity:
    """Who is using this page (the single local user when sign-in is not configured)."""
    return me()


def experiment_names() -> list[str]:
    """The experiments this visitor may open."""
    return visible_experiments(store(), identity())


def role_here() -> str | None:
    """The visitor's role in the current experiment (owner of everything without sign-in)."""
    name = current_experiment()
    who = identity()
    if name is None:
        return "owner" if who.admin else None
    return role_in(store(), who, name)


def join_from_link() -> None:
    """A rater link (``?experiment=X&invite=SECRET``) makes the signed-in visitor a rater of X."""
    token = st.query_params.get("invite")
    name = st.query_params.get(EXPERIMENT_PARAM)
    who = identity()
    if not token or not name or not who.signed_in:
        return
    try:
        join_by_link(store(), who, name, token)
    except USER_ERRORS as exc:
        st.error(md(exc), icon=":material/error:")
    del st.query_params["invite"]


def current_experiment() -> str | None:
    """The chosen experiment: from the URL, else this session, else the first stored one."""
    names = experiment_names()
    wanted = st.query_params.get(EXPERIMENT_PARAM) or st.session_state.get(_CURRENT)
    if wanted not in names:
        if wanted and st.query_params.get(EXPERIMENT_PARAM) == wanted:
            st.warning(f"The link names experiment '{md(wanted)}', which is not stored (any more); showing another.")
        wanted = names[0] if names else None
    _remember(EXPERIMENT_PARAM, _CURRENT, wanted)
    return wanted


def select_experiment(name: str) -> None:
    """Make ``name`` the current experiment, here and in the URL."""
    _remember(EXPERIMENT_PARAM, _CURRENT, name)


def chosen_experiment(needed: str = "owner", what: str = "this page") -> str:
    """The current experiment, if the visitor's role there allows ``what``; otherwise the page says why and stops."""
    name = current_experiment()
    if name is None:
        st.info("Create an experiment first, on the Experiments page.")
        st.stop()
    try:
        require(store(), identity(), name, needed, what)
    except AccessDenied as exc:
        st.error(md(exc), icon=":material/lock:")
        st.stop()
    return name


def may(needed: str) -> bool:
    """Whether the visitor's role in the current experiment allows what ``needed`` may do."""
    return at_least(role_here(), needed)


def current_rater() -> str:
    """The rater's name from the URL (a rater link) or this session; empty when not given yet."""
    name = (st.query_params.get(RATER_PARAM) or st.session_state.get(_RATER) or "").strip()
    _remember(RATER_PARAM, _RATER, name or None)
    return name


def set_rater(name: str | None) -> None:
    _remember(RATER_PARAM, _RATER, name)


def _remember(param: str, key: str, value: str | None) -> None:
    # Streamlit clears query parameters when the user switches pages, so every run writes
    # them back from the session.
    if value:
        st.session_state[key] = value
        if st.query_params.get(param) != value:
            st.query_params[param] = value
    else:
        st.session_state.pop(key, None)
        if param in st.query_params:
            del st.query_params[param]


def sidebar() -> None:
    """The experiment picker, drawn before the page: pages that change the list rerun."""
    names = experiment_names()
    with st.sidebar:
        account_box(identity())
        if not names:
            st.caption("No experiments yet: create one on the Experiments page.")
            return
        current = current_experiment()
        st.session_state["experiment_picker"] = current
        st.selectbox("Experiment", names, key="experiment_picker", on_change=_picked)
        st.caption(f"Store: {md(store().display_url)}")


def _picked() -> None:
    select_experiment(st.session_state["experiment_picker"])


def flash(message: str, kind: str = "success") -> None:
    """Show ``message`` at the top of the next run (for actions that rerun the page)."""
    st.session_state.setdefault(_FLASH, []).append((kind, message))


def page_header(title: str) -> None:
    """Every page's title, then the messages of the action that reran it."""
    st.title(title)
    _show_flashes()


def _show_flashes() -> None:
    icons = {"success": ":material/check_circle:", "error": ":material/error:", "info": ":material/info:"}
    for kind, message in st.session_state.pop(_FLASH, []):
        getattr(st, kind)(message, icon=icons.get(kind))


def attempt(action: Callable[[], T], success: str | None = None) -> T | None:
    """Run a service call; a user error is shown as one sentence instead of a traceback.

    Messages quote names and values the user typed, so they are shown literally (``md``);
    ``success`` is Markdown written by the page, with any user text already escaped.
    """
    try:
        result = action()
    except USER_ERRORS as exc:
        st.error(md(exc), icon=":material/error:")
        return None
    if success:
        st.success(success, icon=":material/check_circle:")
    return result


def succeeded(action: Callable[[], object]) -> bool:
    """Like :func:`attempt` for actions that return nothing: whether it worked (errors are shown)."""
    try:
        action()
    except USER_ERRORS as exc:
        st.error(md(exc), icon=":material/error:")
        return False
    return True
