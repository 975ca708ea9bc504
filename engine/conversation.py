"""Prompts that are whole conversations: parsing, the stored form and the text people read.

An experiment prompt is either a single user message (a string, as it always was) or a
:class:`Conversation`: system, user and assistant messages that end with the user
message the model answers. In experiment files and stored definitions a conversation is
``{messages: [{role: ..., content: ...}, ...]}`` (a bare list of messages is accepted in
files too); in a JSONL prompts file it is a line ``{"messages": [...]}``.

The store's prompt rows hold :func:`prompt_display` (for a conversation, one
``Role: content`` line per message), which raters, reports and exports show; the
definition (the experiment's stored ``spec_json``) keeps the messages themselves.

Torch-free: experiment definitions, the store and the forms read these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from engine import limits
from engine.chat import ROLES, Message
from engine.fields import Where, as_list, as_mapping, as_str, check_keys, required

_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Conversation:
    """Messages that end with the user message the model answers (a system message only first)."""

    messages: tuple[Message, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    @property
    def system(self) -> str:
        """The conversation's own system message ('' if it has none)."""
        return self.messages[0].content if self.messages[0].role == "system" else ""

    def turns(self) -> tuple[Message, ...]:
        """The messages after the system message."""
        return self.messages[1:] if self.system else self.messages

    def has_assistant_turns(self) -> bool:
        return any(m.role == "assistant" for m in self.messages)


# One experiment prompt: a user message's text, or a conversation.
PromptItem: TypeAlias = str | Conversation


def prompt_data(prompt: PromptItem) -> str | dict[str, Any]:
    """The stored (and file) form of a prompt: the text, or ``{"messages": [...]}``."""
    return prompt if isinstance(prompt, str) else prompt.to_dict()


def prompt_display(prompt: PromptItem) -> str:
    """What people read for a prompt: the text, or one ``Role: content`` line per message."""
    if isinstance(prompt, str):
        return prompt
    return transcript(prompt.messages)


def transcript(messages: Sequence[Message]) -> str:
    return "\n".join(f"{_LABELS[m.role]}: {m.content}" for m in messages)


def with_variant(conversation: Conversation, prefix: str, system: str) -> Conversation:
    """The conversation a prompting variant sends: ``prefix`` opens the last user message, and the
    variant's ``system`` prompt goes first, before the conversation's own system message if it has one."""
    messages = list(conversation.messages)
    last = messages[-1]  # always the user message the model answers
    messages[-1] = Message(last.role, prefix + last.content)
    if system:
        own = conversation.system
        rest = messages[1:] if own else messages
        messages = [Message("system", f"{system}\n\n{own}" if own else system), *rest]
    return Conversation(tuple(messages))


def plain_chat(conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The text a model without a chat template reads for a conversation, and the character
    spans of its assistant messages' content.

    One ``Role: content`` line per message (roles System, User, Assistant), then a last
    line ``Assistant:`` that the model continues.
    """
    text, spans = "", []
    for message in conversation.messages:
        head = f"{_LABELS[message.role]}: "
        if message.role == "assistant":
            spans.append((len(text) + len(head), len(text) + len(head) + len(message.content)))
        text += f"{head}{message.content}\n"
    return text + f"{_LABELS['assistant']}:", spans


def parse_prompt(raw: Any, where: Where) -> PromptItem:
    """One prompt of a file, form or stored definition: a text, ``{messages: [...]}`` or a list of messages."""
    if isinstance(raw, Conversation):  # read already (from a prompts file, whose errors name lines)
        return raw
    if isinstance(raw, str):
        text = as_str(raw, where)
        limits.check(limits.MAX_PROMPT_CHARS, len(text), str(where), "characters")
        return text
    if isinstance(raw, Mapping):
        check_keys(raw, ("messages",), where)
        return parse_messages(required(raw, "messages", where), where.child("messages"))
    if isinstance(raw, list):
        return parse_messages(raw, where)
    where.fail(
        "is neither a text nor a conversation",
        "write the prompt as text, or as 'messages:' with a list of {role, content} messages",
    )


def parse_messages(raw: Any, where: Where) -> Conversation:
    """A conversation's messages, each error naming the message (``messages[2].role``)."""
    items = as_list(raw, where)
    if not items:
        where.fail("is an empty list", "give at least the user message the model answers")
    messages = tuple(_message(item, where.child(i)) for i, item in enumerate(items))
    for i, message in enumerate(messages):
        if message.role == "system" and i > 0:
            where.child(i).child("role").fail(
                "is 'system' after other messages; a system message can only come first",
                "move it to the start of the conversation or make it a user message",
            )
    if messages[-1].role != "user":
        where.child(len(messages) - 1).child("role").fail(
            f"is '{messages[-1].role}' in the last message; a conversation ends with the user message the model answers",
            "add a user message at the end, or remove the messages after the last user message",
        )
    characters = sum(len(m.content) for m in messages)
    limits.check(limits.MAX_PROMPT_CHARS, characters, str(where), "characters")
    return Conversation(messages)


def _message(raw: Any, where: Where) -> Message:
    data = as_mapping(raw, where)
    check_keys(data, ("role", "content"), where)
    role = required(data, "role", where)
    if role not in ROLES:
        shown = repr(role) if isinstance(role, str) else "not text"
        where.child("role").fail(f"is {shown}, not a known role", f"use one of {', '.join(ROLES)}")
    content = required(data, "content", where)
    if isinstance(content, str) and not content.strip():
        where.child("content").fail("is empty", "write the message's text, or remove the message")
    return Message(str(role), as_str(content, where.child("content")))


_MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "properties": {"role": {"enum": list(ROLES)}, "content": {"type": "string", "minLength": 1}},
        "required": ["role", "content"],
        "additionalProperties": False,
    },
}

PROMPT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1, "description": "A single user message."},
        {
            "type": "object",
            "description": "A conversation: a system message (first only), user and assistant messages, "
            "ending with the user message the model answers.",
            "properties": {"messages": _MESSAGES_SCHEMA},
            "required": ["messages"],
            "additionalProperties": False,
        },
        _MESSAGES_SCHEMA,
    ]
}
