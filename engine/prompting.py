"""Turn an experiment prompt into the token ids a variant feeds the model.

Prompting variants add a prefix and/or a system prompt. When the tokenizer has a chat
template (and the experiment does not switch it off), every prompt is sent through it: a
text as one user message, a conversation as its messages, so all variants of a chat model
see the same framing. The prefix opens the last user message; the variant's system prompt
comes first, before a conversation's own system message.

Without a template (or with ``chat_template: off``) a text is read as it always was
(``system\\n\\n`` + prefix + text) and a conversation as plain lines (see
:func:`engine.conversation.plain_chat`): ``System: ...``, ``User: ...``, ``Assistant: ...``,
then ``Assistant:`` for the model to continue.

:func:`render_marked_prompt` also says which tokens are assistant content (earlier assistant
turns of a conversation): the ``assistant`` scope edits those and every generated token.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.chat import Message, RenderedChat, marked_tokens, render_chat, template_text
from engine.conversation import Conversation, PromptItem, plain_chat, with_variant
from engine.models import LoadedModel
from engine.spec import VariantSpec

log = logging.getLogger(__name__)


def render_prompt(
    model: LoadedModel, prompt: PromptItem, variant: VariantSpec, chat_template: str = "auto"
) -> list[int]:
    """Token ids of ``prompt`` as ``variant`` sends it."""
    return list(render_marked_prompt(model, prompt, variant, chat_template).tokens)


def render_marked_prompt(
    model: LoadedModel, prompt: PromptItem, variant: VariantSpec, chat_template: str = "auto"
) -> RenderedChat:
    """Token ids of ``prompt`` as ``variant`` sends it, and per token whether it is assistant content."""
    tokenizer = model.tokenizer
    templated = chat_template == "auto" and model.has_chat_template
    if isinstance(prompt, Conversation):
        conversation = with_variant(prompt, variant.prefix, variant.system)
        if templated:
            return render_chat(tokenizer, conversation.messages, add_generation_prompt=True)
        text, spans = plain_chat(conversation)
        return _marked(tokenizer, text, spans)
    if templated:
        messages = [
            *([Message("system", variant.system)] if variant.system else []),
            Message("user", variant.prefix + prompt),
        ]
        tokens = tuple(tokenizer(template_text(tokenizer, messages, True), add_special_tokens=False).input_ids)
    else:
        system = f"{variant.system}\n\n" if variant.system else ""
        tokens = tuple(tokenizer(system + variant.prefix + prompt).input_ids)
    return RenderedChat(tokens, (False,) * len(tokens))


def _marked(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> RenderedChat:
    """Tokens of a plain text read from the start of a document, marking those inside ``spans``."""
    marked = marked_tokens(tokenizer, text, spans) if spans else None
    if marked is None:
        if spans:
            log.warning(
                "This tokenizer cannot map tokens to characters; the assistant scope edits generated tokens only."
            )
        tokens = tuple(tokenizer(text).input_ids)
        return RenderedChat(tokens, (False,) * len(tokens))
    return marked


def plain_tokens(model: LoadedModel, text: str) -> list[int]:
    """Token ids of a text as the model would read it at the start of a document."""
    return list(model.tokenizer(text).input_ids)
