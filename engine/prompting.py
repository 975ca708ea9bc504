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

from engine.chat import RenderedChat, render_chat
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
        rendered = _chat_text(tokenizer, prompt, variant)
        tokens = tuple(tokenizer(rendered, add_special_tokens=False).input_ids)
    else:
        system = f"{variant.system}\n\n" if variant.system else ""
        tokens = tuple(tokenizer(system + variant.prefix + prompt).input_ids)
    return RenderedChat(tokens, (False,) * len(tokens))


def _chat_text(tokenizer: Any, text: str, variant: VariantSpec) -> str:
    user = {"role": "user", "content": variant.prefix + text}
    if not variant.system:
        return str(tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False))
    try:
        messages = [{"role": "system", "content": variant.system}, user]
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    except Exception:
        # Some templates (Gemma's) reject a system role: fold it into the user turn.
        folded = {"role": "user", "content": f"{variant.system}\n\n{variant.prefix}{text}"}
        return str(tokenizer.apply_chat_template([folded], add_generation_prompt=True, tokenize=False))


def _marked(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> RenderedChat:
    """Tokens of a plain text read from the start of a document, marking those inside ``spans``."""
    if not spans:
        tokens = tuple(tokenizer(text).input_ids)
        return RenderedChat(tokens, (False,) * len(tokens))
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets
        log.warning("This tokenizer cannot map tokens to characters; the assistant scope edits generated tokens only.")
        tokens = tuple(tokenizer(text).input_ids)
        return RenderedChat(tokens, (False,) * len(tokens))
    flags = tuple(
        end > start and any(start < span_end and end > span_start for span_start, span_end in spans)
        for start, end in encoded["offset_mapping"]
    )
    return RenderedChat(tuple(int(t) for t in encoded["input_ids"]), flags)


def plain_tokens(model: LoadedModel, text: str) -> list[int]:
    """Token ids of a text as the model would read it at the start of a document."""
    return list(model.tokenizer(text).input_ids)
