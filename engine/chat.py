"""Render chat messages through a tokenizer's chat template, knowing which tokens are the assistant's.

Steering a chat model must read and edit the same text the model sees: the templated
conversation, not the raw message texts. :func:`render_chat` gives that text's token ids and,
per token, whether it lies inside an assistant message's content (a turn earlier in the
conversation, or the answer being read after the generation prompt). Extraction reads
"the mean over the assistant's answer" from that mask, and the ``assistant`` scope edits
exactly those tokens plus every generated one.

Torch-free: experiment definitions hold messages, and the store and the forms read them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class RenderedChat:
    """Token ids of a templated conversation, and per token whether it is assistant content."""

    tokens: tuple[int, ...]
    assistant: tuple[bool, ...]

    @property
    def answer_start(self) -> int:
        """Index of the first token after the last non-assistant token (len(tokens) if none)."""
        index = len(self.assistant)
        while index > 0 and self.assistant[index - 1]:
            index -= 1
        return index


def template_text(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The conversation as the chat template writes it.

    A template that refuses a system role (Gemma's) gets the system text folded into the
    first user turn, which is what such models are trained on.
    """
    plain = [m.to_dict() for m in messages]
    try:
        return str(tokenizer.apply_chat_template(plain, add_generation_prompt=add_generation_prompt, tokenize=False))
    except Exception:
        if not messages or messages[0].role != "system":
            raise
        folded = fold_system(messages)
        return str(
            tokenizer.apply_chat_template(
                [m.to_dict() for m in folded], add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """The system message folded into the first user message (for templates without a system role)."""
    system, rest = messages[0].content, list(messages[1:])
    for i, message in enumerate(rest):
        if message.role == "user":
            rest[i] = Message("user", f"{system}\n\n{message.content}")
            return rest
    return [Message("user", system), *rest]


def render_chat(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True, answer: str = ""
) -> RenderedChat:
    """Tokens of ``messages`` through the chat template, then ``answer`` (the assistant's reply so far).

    ``answer`` is appended after the generation prompt without closing the turn: that is the
    text the model sees while it writes an answer, so it is what steering must be read from.
    """
    text = template_text(tokenizer, messages, add_generation_prompt or bool(answer))
    spans = _assistant_spans(text, messages)
    if answer:
        spans.append((len(text), len(text) + len(answer)))
        text += answer
    marked = marked_tokens(tokenizer, text, spans, add_special_tokens=False)
    if marked is None:
        log.warning("This tokenizer cannot map tokens to characters; the assistant scope edits generated tokens only.")
        tokens = tuple(int(t) for t in tokenizer(text, add_special_tokens=False).input_ids)
        return RenderedChat(tokens, (False,) * len(tokens))
    return marked


def marked_tokens(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool = True
) -> RenderedChat | None:
    """Tokens of ``text``, each marked if its characters overlap one of ``spans``.

    None for a slow (Python) tokenizer, which cannot map tokens to characters: the caller
    decides what to mark instead.
    """
    try:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError:
        return None
    tokens = tuple(int(t) for t in encoded["input_ids"])
    flags = tuple(_inside(start, end, spans) for start, end in encoded["offset_mapping"])
    return RenderedChat(tokens, flags)


def _assistant_spans(text: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
    """Character spans of each assistant message's content in the templated text.

    Templates copy a message's content verbatim between their role markers, so each one is
    found after the previous message's; a template that rewrites content (strips it, say)
    falls back to the stripped text, and a content it drops is simply not marked.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in messages:
        content = message.content
        found = text.find(content, cursor) if content else -1
        if found < 0 and content.strip():
            content = content.strip()
            found = text.find(content, cursor)
        if found < 0:
            continue
        if message.role == "assistant":
            spans.append((found, found + len(content)))
        cursor = found + len(content)
    return spans


def _inside(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    # A token belongs to a span when its characters overlap it (a merged "Ġword" token at the edge counts).
    return end > start and any(start < span_end and end > span_start for span_start, span_end in spans)
