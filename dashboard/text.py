"""Show user and model text as the literal characters it holds, never as Markdown or HTML.

Streamlit renders the body of ``st.markdown``, ``st.caption``, ``st.success``, ``st.error`` …
as Markdown, so a prompt, an output, an experiment name or an error message quoting one of
them could become a link, an image fetched from outside, a heading or coloured text. Every
such string goes through :func:`md` (inline text inside a Markdown sentence) or
:func:`plain_block` (a whole multi-line text in a box).
"""

from __future__ import annotations

import html
import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of
# them turns off emphasis, links, images, headings, lists, tables, code, math ($) and
# Streamlit's own :colour[...] and :material/icon: directives.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


# GitHub-flavoured Markdown turns bare URLs into links after escapes are resolved, so escaping
# cannot stop it; a zero-width space inside the pattern does, unseen. (E-mail addresses still
# become mailto: links, which fetch nothing; breaking them would spoil copying an address.)
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|www)(?=[:.])")


def md(text: object) -> str:
    """``text`` escaped for use inside a Markdown string: it renders as exactly these characters."""
    unlinked = _AUTOLINK.sub(lambda m: m.group(0) + "\u200b", str(text))
    escaped = _PUNCTUATION.sub(r"\\\1", unlinked)
    # A newline inside a sentence would start a new Markdown block (a heading, a list, ...).
    return escaped.replace("\r", " ").replace("\n", " ")


def plain_block(text: str, empty: str = "(empty output)", css_class: str = "steerlab-text") -> str:
    """HTML for a whole text shown as is: escaped, line breaks kept, no blank line to end the block.

    Markdown treats an HTML block as raw only up to the first blank line, so newlines
    become ``<br>`` and the block stays a single raw HTML block however the text looks.
    """
    if not text:
        return f"<div class='{css_class}'><i>{html.escape(empty)}</i></div>"
    body = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>")
    return f"<div class='{css_class}' style='white-space:pre-wrap;overflow-wrap:anywhere'>{body}</div>"
