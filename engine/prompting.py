"""Turn an experiment prompt into the token ids a variant feeds the model.

Prompting variants add a prefix and/or a system prompt. When the tokenizer has a chat
template (and the experiment does not switch it off), every prompt is sent as a user
message through it, so all variants of a chat model see the same framing.
"""

from __future__ import annotations

from typing import Any

from engine.models import LoadedModel
from engine.spec import VariantSpec


def render_prompt(model: LoadedModel, text: str, variant: VariantSpec, chat_template: str = "auto") -> list[int]:
    tokenizer = model.tokenizer
    if chat_template == "auto" and model.has_chat_template:
        rendered = _chat_text(tokenizer, text, variant)
        return list(tokenizer(rendered, add_special_tokens=False).input_ids)
    system = f"{variant.system}\n\n" if variant.system else ""
    return list(tokenizer(system + variant.prefix + text).input_ids)


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


def plain_tokens(model: LoadedModel, text: str) -> list[int]:
    """Token ids of a text as the model would read it at the start of a document."""
    return list(model.tokenizer(text).input_ids)
