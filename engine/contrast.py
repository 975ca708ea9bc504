"""The texts a vector is extracted from, rendered the way the model will see them when steered.

A vector's contrastive examples (:class:`engine.spec.VectorSpec`) become token sequences here:
two per pair (or per question, for personas), each with a mark on the tokens of the
assistant's answer, which ``read: answer_mean`` averages over.

- **Templated** (the vector's ``template: auto``, the experiment's ``chat_template: auto`` and
  a tokenizer with a chat template): each side is a conversation through the chat template
  (:func:`engine.chat.render_chat`): the system message if any, the user message, the
  generation prompt, then the answer appended without closing the turn: exactly the text the
  model reads while it writes an answer to a steered prompt. A ``[positive, negative]`` pair
  is two answers to the vector's ``user`` message (empty unless given). Personas are the two
  system prompts over each question, with no answer: read at ``last``, the generation prompt's
  last token, where the model starts to answer.
- **Raw** (``template: off``, ``chat_template: off``, or a model without a template): each side
  is the plain text a raw prompt and its continuation would be: ``system\\n\\n`` (if any), the
  user message, then the answer, with nothing in between (as a prompt is continued). A text
  pair with no user or system message is its answer alone, read exactly as SteerLab always
  has; ``answer_mean`` is then the whole text (the same as ``mean``).

:func:`recipe_hash` fingerprints the rendered examples, so a change of pairs, templating or
template is a changed vector; text pairs read raw keep the hash of their texts alone
(:func:`engine.vectors.hash_pairs`), so vectors stored before templating existed stay valid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.chat import Message, marked_tokens, render_chat
from engine.spec import ContrastPair, VectorSpec
from engine.vectors import hash_pairs

if TYPE_CHECKING:  # annotations only: a recipe reads the tokenizer, never the weights
    from engine.models import LoadedModel


@dataclass(frozen=True)
class Reading:
    """One token sequence to read activations from, and per token whether it is the answer's."""

    tokens: tuple[int, ...]
    answer: tuple[bool, ...]


@dataclass(frozen=True)
class Recipe:
    """What a vector is extracted from: the (positive, negative) readings of the examples used."""

    readings: tuple[tuple[Reading, Reading], ...]
    templated: bool
    pairs_hash: str


def is_templated(vector: VectorSpec, model: LoadedModel, chat_template: str) -> bool:
    """Whether the vector's examples go through the chat template (as the experiment's prompts do)."""
    return vector.template == "auto" and chat_template == "auto" and model.has_chat_template


def vector_recipe(model: LoadedModel, vector: VectorSpec, chat_template: str = "auto") -> Recipe:
    """The readings of the examples the vector's method uses, and their fingerprint."""
    templated = is_templated(vector, model, chat_template)
    if vector.personas is not None:
        readings = [_persona_readings(model.tokenizer, vector.personas, q, templated) for q in _used_questions(vector)]
    else:
        readings = [_pair_readings(model.tokenizer, vector, pair, templated) for pair in _used_pairs(vector)]
    if _is_legacy(vector, templated):
        pairs_hash = hash_pairs([(p.positive, p.negative) for p in _used_pairs(vector)])
    else:
        pairs_hash = recipe_hash(readings)
    return Recipe(tuple(readings), templated, pairs_hash)


def recipe_hash(readings: Sequence[tuple[Reading, Reading]]) -> str:
    """A stable fingerprint of the exact token sequences (and answer marks) a vector is read from."""
    data = [[[list(r.tokens), [i for i, a in enumerate(r.answer) if a]] for r in pair] for pair in readings]
    return hashlib.sha256(json.dumps(["recipe/1", data]).encode()).hexdigest()[:16]


def _is_legacy(vector: VectorSpec, templated: bool) -> bool:
    """Text pairs read raw: what every vector was before templating (hashed as before)."""
    return (
        not templated
        and vector.personas is None
        and not vector.user
        and not vector.system
        and all(p.is_text_pair for p in vector.pairs)
    )


def _used_pairs(vector: VectorSpec) -> tuple[ContrastPair, ...]:
    return (vector.pairs[vector.pair_index],) if vector.method == "single_pair" else vector.pairs


def _used_questions(vector: VectorSpec) -> tuple[str, ...]:
    return (vector.questions[vector.pair_index],) if vector.method == "single_pair" else vector.questions


def _pair_readings(tokenizer: Any, vector: VectorSpec, pair: ContrastPair, templated: bool) -> tuple[Reading, Reading]:
    system = vector.system if pair.system is None else pair.system
    user = vector.user if pair.user is None else pair.user
    if templated:
        messages = [*([Message("system", system)] if system else []), Message("user", user)]
        return _chat(tokenizer, messages, pair.positive), _chat(tokenizer, messages, pair.negative)
    prefix = (f"{system}\n\n" if system else "") + user
    return _raw(tokenizer, prefix, pair.positive), _raw(tokenizer, prefix, pair.negative)


def _persona_readings(
    tokenizer: Any, personas: tuple[str, str], question: str, templated: bool
) -> tuple[Reading, Reading]:
    if templated:
        sides = [_chat(tokenizer, [Message("system", s), Message("user", question)], "") for s in personas]
    else:
        sides = [_raw(tokenizer, f"{s}\n\n{question}", "") for s in personas]
    return sides[0], sides[1]


def _chat(tokenizer: Any, messages: Sequence[Message], answer: str) -> Reading:
    rendered = render_chat(tokenizer, messages, add_generation_prompt=True, answer=answer)
    return Reading(rendered.tokens, rendered.assistant)


def _raw(tokenizer: Any, prefix: str, answer: str) -> Reading:
    """A plain text read from the start of a document (as prompts are), its answer's tokens marked."""
    text = prefix + answer
    if not prefix:
        # The answer is the whole text: every token is the answer's, so answer_mean is mean.
        tokens = tuple(int(t) for t in tokenizer(text).input_ids)
        return Reading(tokens, (bool(answer),) * len(tokens))
    marked = marked_tokens(tokenizer, text, [(len(prefix), len(text))] if answer else [])
    if marked is None:  # a slow (Python) tokenizer has no offsets: count the prefix's tokens
        tokens = tuple(int(t) for t in tokenizer(text).input_ids)
        start = len(tokenizer(prefix).input_ids)
        return Reading(tokens, tuple(i >= start and bool(answer) for i in range(len(tokens))))
    return Reading(marked.tokens, marked.assistant)
