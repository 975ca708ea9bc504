"""Experiments: list, create (form or YAML upload), duplicate, delete.

Every action that changes the list of experiments reruns the page with its message, so the
sidebar, the table and the forms all show the store as it is after the action, and forms
start empty again.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from dashboard.common import (
    attempt,
    current_experiment,
    experiment_names,
    flash,
    identity,
    may,
    page_header,
    select_experiment,
    store,
    succeeded,
)
from dashboard.text import md
from service import USER_ERRORS
from service.access import ROLES, at_least, grant, members, rater_link_token, revoke, role_in
from service.audit import recent
from service.catalog import list_experiments
from service.editing import (
    create_experiment,
    create_experiment_from_yaml,
    delete_experiment,
    duplicate_experiment,
    parse_uploaded_prompts,
)
from service.examples import EXAMPLES, add_example

NEW_FORM_KEYS = ("new_name", "new_model", "new_description", "new_prompts", "new_prompts_file")

page_header("Experiments")
st.caption("An experiment is a model, shared prompts, generation settings and the variants to compare.")


def _created(name: str, message: str, keys: tuple[str, ...] = ()) -> None:
    """After a successful create or copy: select it, clear the form, say what is next, rerun."""
    for key in keys:
        st.session_state.pop(key, None)
    select_experiment(name)
    flash(message)
    st.rerun()


who = identity()
visible = set(experiment_names())
summaries = [s for s in list_experiments(store()) if s.name in visible]
if summaries:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "experiment": s.name,
                    "model": s.model_id,
                    "prompts": s.prompts,
                    "variants": s.variants,
                    "generations": s.generations,
                    "ratings": s.ratings,
                    "last run": s.last_run_status or "never run",
                }
                for s in summaries
            ]
        ),
        hide_index=True,
        width="stretch",
    )
else:
    st.info("No experiments yet. Start from an example, create one below, or upload an experiment file.")
    for column, example in zip(st.columns(len(EXAMPLES)), EXAMPLES, strict=True):
        column.caption(example.title)
        if column.button(f"Add the example experiment ({example.name})", type="primary", key=f"example:{example.name}"):
            spec = attempt(partial(add_example, store(), example.name, who))
            if spec is not None:
                _created(
                    spec.name,
                    f"Added the example '{md(spec.name)}' with {len(spec.variants)} variants. "
                    "Next: open **Run** in the menu on the left to generate its outputs.",
                )

current = current_experiment()
owner_here = current is not None and may("owner")
tab_names = ["New", "Upload YAML", "Duplicate", "Delete", *(["Team & audit log"] if owner_here else [])]
new_tab, upload_tab, copy_tab, delete_tab, *team_tab = st.tabs(tab_names)

with new_tab, st.form("new_experiment"):
    name = st.text_input("Name", placeholder="mood_test", key="new_name")
    model = st.text_input(
        "Model (hub id, local folder or .gguf file)", value="raincandy-u/TinyStories-656K", key="new_model"
    )
    description = st.text_area("Description (optional)", height=68, key="new_description")
    prompts_text = st.text_area(
        "Prompts, one per line", height=120, placeholder="Once upon a time, there was a", key="new_prompts"
    )
    prompts_file = st.file_uploader(
        "…or upload prompts instead (CSV with a 'prompt' column, JSONL, TXT)",
        type=["csv", "jsonl", "txt"],
        key="new_prompts_file",
    )
    c1, c2, c3, c4 = st.columns(4)
    max_new_tokens = c1.number_input("Max new tokens", 1, 4096, 48)
    do_sample = c2.toggle("Sample (off = greedy)", value=True)
    samples = c3.number_input("Samples per prompt", 1, 1000, 2)
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0)
    c5, c6, c7 = st.columns(3)
    temperature = c5.number_input("Temperature", 0.01, 100.0, 0.8)
    top_k = c6.number_input("Top-k (0 = off)", 0, 100000, 40)
    top_p = c7.number_input("Top-p (1 = off)", 0.01, 1.0, 1.0)
    if st.form_submit_button("Create experiment", type="primary"):
        typed = [line for line in prompts_text.splitlines() if line.strip()]
        prompts: list[Any] | None = typed  # texts, or (uploaded JSONL) conversations too
        if prompts_file is not None and typed:
            st.error(
                "Prompts were both typed and uploaded; clear the typed prompts or remove the file, then create again.",
                icon=":material/error:",
            )
            prompts = None
        elif prompts_file is not None:
            prompts = attempt(partial(parse_uploaded_prompts, prompts_file.getvalue(), prompts_file.name))
        if prompts is not None:
            raw: dict[str, Any] = {
                "name": name,
                "model": model,
                "description": description,
                "prompts": prompts,
                "generation": {
                    "max_new_tokens": int(max_new_tokens),
                    "do_sample": do_sample,
                    "temperature": float(temperature),
                    "top_k": int(top_k),
                    "top_p": float(top_p),
                    "seed": int(seed),
                    "samples_per_prompt": int(samples) if do_sample else 1,
                },
            }
            with st.spinner("Checking the model…"):
                created = attempt(lambda: create_experiment(store(), raw, who=who))
            if created is not None:
                _created(
                    created.name,
                    f"Created '{md(created.name)}' with {len(created.prompts)} prompts and a baseline variant. "
                    "Next: add variants on the **Variants** page.",
                    NEW_FORM_KEYS,
                )

with upload_tab:
    uploaded = st.file_uploader("Experiment YAML file", type=["yaml", "yml"], key="yaml_upload")
    store_as = st.text_input(
        "Store as", key="yaml_store_as", placeholder="the file's own name", help="Another name than the file's."
    )
    if uploaded is not None and st.button("Create from file", type="primary"):
        with st.spinner("Checking the file and the model…"):
            spec = attempt(
                partial(
                    create_experiment_from_yaml,
                    store(),
                    uploaded.getvalue().decode("utf-8", "replace"),
                    uploaded.name,
                    who,
                    store_as,
                )
            )
        if spec is not None:
            _created(
                spec.name,
                f"Created '{md(spec.name)}' with {len(spec.variants)} variants and {len(spec.prompts)} prompts. "
                "Next: run it on the **Run** page.",
                ("yaml_upload", "yaml_store_as"),
            )

names = experiment_names()
with copy_tab:
    if not names:
        st.caption("Nothing to copy yet.")
    else:
        source = st.selectbox("Experiment to copy", names, key="copy_source")
        new_name = st.text_input("Name of the copy", value=f"{source}_copy", key=f"copy_name:{source}")
        if st.button("Duplicate"):
            copied = attempt(lambda: duplicate_experiment(store(), source, new_name, who))
            if copied is not None:
                _created(
                    copied,
                    f"Copied '{md(source)}' to '{md(copied)}' (definition and vectors; no outputs or votes).",
                )


def _delete(doomed: str) -> None:
    """Delete exactly the experiment the confirmation named, once; then reset the form."""
    st.session_state.pop("delete_target", None)
    st.session_state.pop(f"delete_confirm:{doomed}", None)
    if doomed not in experiment_names():  # a repeated click, from this tab or another
        flash(f"'{md(doomed)}' is already deleted; nothing else was deleted.", "info")
        return
    try:
        delete_experiment(store(), doomed, identity())
    except USER_ERRORS as exc:
        flash(md(exc), "error")
        return
    flash(f"Deleted '{md(doomed)}' with its outputs and votes.")


with delete_tab:
    if not names:
        st.caption("Nothing to delete.")
    else:
        doomed = st.selectbox(
            "Experiment to delete", names, index=None, placeholder="Choose an experiment", key="delete_target"
        )
        role = role_in(store(), who, doomed) if doomed is not None else None
        if doomed is not None and not at_least(role, "owner"):
            st.info(
                f"Deleting '{md(doomed)}' needs the owner role, and you are {'a ' + role if role else 'not a member'} "
                "of it; ask its owner.",
                icon=":material/lock:",
            )
        elif doomed is not None:
            counts = next((s for s in summaries if s.name == doomed), None)
            what = f"{counts.generations} outputs and {counts.ratings} votes" if counts else "all its outputs and votes"
            # The checkbox belongs to this one experiment: choosing another needs a new tick.
            sure = st.checkbox(f"Yes, delete '{md(doomed)}' with its {what}", key=f"delete_confirm:{doomed}")
            st.button("Delete experiment", type="primary", disabled=not sure, on_click=_delete, args=(doomed,))


def _member_table(name: str) -> None:
    rows = attempt(lambda: members(store(), who, name)) or []
    if rows:
        st.dataframe(pd.DataFrame(rows, columns=["user", "role"]), hide_index=True, width="stretch")
    else:
        st.caption("No members yet.")


if team_tab and current is not None:
    here: str = current
    with team_tab[0]:
        if not who.signed_in:
            st.info(
                "Sign-in is not configured, so there are no members: whoever opens this dashboard acts as its "
                "single user. See the README's 'Sharing with a team' to set up sign-in and roles."
            )
        else:
            st.markdown(f"**Members of {md(here)}**")
            _member_table(current)
            with st.form("add_member", clear_on_submit=True):
                c1, c2 = st.columns([3, 1])
                email = c1.text_input("E-mail address they sign in with")
                new_role = c2.selectbox("Role", ROLES, index=2) or "rater"
                if st.form_submit_button("Add or change member") and succeeded(
                    lambda: grant(store(), who, here, email, new_role)
                ):
                    flash(f"{md(email.strip().lower())} is now {new_role} of '{md(here)}'.")
                    st.rerun()
            gone = st.selectbox("Remove a member", [u for u, _ in members(store(), who, here)], index=None)
            if (
                gone is not None
                and st.button(f"Remove {md(gone)}")
                and succeeded(partial(revoke, store(), who, here, gone))
            ):
                flash(f"Removed {md(gone)} from '{md(here)}'.")
                st.rerun()
            st.markdown("**Rater link**")
            token = attempt(lambda: rater_link_token(store(), who, here))
            if token:
                # The app's root: a rater's only page (Rate) is served there, not at /rate.
                base = str(st.context.url or "").split("?")[0].rstrip("/")
                base = base.rsplit("/", 1)[0] if base.rsplit("/", 1)[-1] in ("experiments",) else base
                st.code(f"{base}/?{urlencode({'experiment': here, 'invite': token})}", language=None)
                st.caption("Whoever signs in through this link becomes a rater of this experiment only.")
                if st.button("Renew the link (old links stop working)"):
                    attempt(lambda: rater_link_token(store(), who, here, renew=True), "Renewed the rater link.")
        st.markdown("**Audit log**")
        events = recent(store(), current)
        if events:
            st.dataframe(
                pd.DataFrame([{"when": e.at, "who": e.actor, "action": e.action, "detail": e.detail} for e in events]),
                hide_index=True,
                width="stretch",
            )
        else:
            st.caption("Nothing recorded yet.")
