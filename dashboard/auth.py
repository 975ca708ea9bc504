"""Sign-in for the dashboard: Streamlit's built-in OIDC login, when the operator configures it.

Configured (an ``[auth]`` section in ``.streamlit/secrets.toml``): every visitor signs in,
acts under the address the provider vouches for, and sees what their role in each
experiment allows. Not configured: a single-user tool for whoever can open the page, which
is why the server binds to 127.0.0.1 by default and warns on every page when it does not.
"""

from __future__ import annotations

import streamlit as st

from dashboard.text import md
from service.access import LOCAL, Identity

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def sign_in_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def me() -> Identity:
    """The visitor; without sign-in configured, the single local user. Asks to sign in otherwise."""
    if not sign_in_configured():
        return LOCAL
    if not st.user.is_logged_in:
        st.title("SteerLab")
        st.write("This SteerLab is shared by a team: sign in to see your experiments.")
        if st.query_params.get("invite"):
            st.info("You opened a rater link: after signing in, open the same link again to start rating.")
        st.button("Sign in", type="primary", on_click=st.login)
        st.stop()
    email = st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub")
    if not isinstance(email, str) or not email.strip():
        st.error("Your sign-in did not give an e-mail address; ask the operator to request the 'email' scope.")
        st.button("Sign out", on_click=st.logout)
        st.stop()
    return Identity(email.strip().lower(), signed_in=True)


def exposed_without_sign_in() -> bool:
    """Served on an address other machines can reach, with nobody signing in."""
    address = str(st.get_option("server.address") or "")
    return not sign_in_configured() and address not in LOOPBACK


def account_box(who: Identity) -> None:
    """The sidebar's line about who is acting, and a warning when anyone could be."""
    if who.signed_in:
        st.caption(f"Signed in as {md(who.user)}")
        st.button("Sign out", on_click=st.logout, type="tertiary")
    elif exposed_without_sign_in():
        st.warning(
            "Reachable from the network without sign-in: anyone who can open this page can rate, export "
            "and delete. Configure sign-in (README, 'Sharing with a team') or bind to 127.0.0.1.",
            icon=":material/warning:",
        )
    else:
        st.caption("Single-user mode: no sign-in configured, served on this machine only (127.0.0.1).")
