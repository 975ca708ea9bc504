"""Form widgets built from a steering method's declared fields."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import streamlit as st

from dashboard.text import plain_block
from service.editing import FieldInfo


def field_widget(field: FieldInfo, value: Any, key: str, vector_names: Sequence[str], n_layers: int) -> Any:
    """One input for one setting; the returned value goes to the method's ``parse`` as it is."""
    label, help_text = field.name, field.help or None
    if field.kind == "vector":
        names = list(vector_names)
        return st.selectbox(label, names, index=names.index(value) if value in names else 0, help=help_text, key=key)
    if field.kind == "layers":
        default = [x for x in (value or []) if isinstance(x, int) and 0 <= x < n_layers]
        return st.multiselect(
            f"{label} (0–{n_layers - 1})", list(range(n_layers)), default=default, help=help_text, key=key
        )
    if field.kind == "float":
        return st.number_input(
            label, value=float(value if value is not None else 0.0), step=0.25, help=help_text, key=key
        )
    if field.kind == "int":
        return int(st.number_input(label, value=int(value or 0), step=1, help=help_text, key=key))
    if field.kind == "choice":
        choices = list(field.choices)
        return st.selectbox(
            label, choices, index=choices.index(value) if value in choices else 0, help=help_text, key=key
        )
    if field.kind == "bool":
        return st.toggle(label, value=bool(value), help=help_text, key=key)
    if field.kind == "texts":
        text = st.text_area(f"{label} (one per line)", value="\n".join(value or []), help=help_text, key=key)
        return [t for t in text.splitlines() if t.strip()]
    return st.text_input(label, value=str(value or ""), help=help_text, key=key)


def output_box(text: str, height: int = 220, lead: str = "") -> None:
    """A model output in a bordered box, shown as plain text (never rendered as Markdown or HTML).

    ``lead`` is the end of the prompt, shown greyed before the output, so an output that
    completes a word ("ar was very happy") reads as the continuation it is.
    """
    with st.container(border=True, height=height):
        if lead:
            st.markdown(
                f"<div style='color:#8a8f98;white-space:pre-wrap'>{html.escape(lead)}</div>", unsafe_allow_html=True
            )
        st.markdown(plain_block(text, css_class="steerlab-output"), unsafe_allow_html=True)


def prompt_tail(prompt: str, chars: int = 60) -> str:
    """The last words of a prompt (about ``chars`` characters), starting at a word boundary."""
    flat = " ".join(prompt.split())
    if len(flat) <= chars:
        return flat
    cut = flat[-chars:]
    return "…" + (cut[cut.find(" ") + 1 :] if " " in cut else cut)
