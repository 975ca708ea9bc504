"""An LLM judge's reading of one pair of outputs, and a local model's deterministic decision.

A judge is shown the prompt, output A and output B, with the experiment's rating question
and the judge's rubric (:func:`judge_messages`), and answers with a label: ``A`` or ``B``.
Each pair is read twice, once in each order, and :func:`combine_orders` turns the two
readings into the vote: the output both readings prefer, otherwise a tie. A judge that
only ever answers "A" (a pure position bias) so votes tie on every pair.

:class:`LocalJudge` does not let the model write: it reads the next-token probabilities
of the two labels after the prompt, so a reading is deterministic and comes with
``p_left``/``p_right`` (the probabilities of "A" and "B", each summed over the spellings a
tokenizer may prefer: "A" and " A"). A label that is several tokens long (SentencePiece
writes " A" as "▁" then "A") is scored token by token. Chat models read the prompt through
their chat template (:mod:`engine.chat`); other models read it as plain text ending in
``Answer:``. Readings are batched, left-padded as generation is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.chat import Message, template_text
from engine.errors import SteerLabError
from engine.generation import left_pad, positions_from_mask
from engine.models import LoadedModel

log = logging.getLogger(__name__)

LABELS = ("A", "B")  # the output shown first, the output shown second
READING_CHOICES = ("left", "right", "tie")  # left: the first shown is better
EMPTY_OUTPUT = "(no text)"
SYSTEM = (
    "You are a careful, impartial judge. You compare two answers to the same prompt by a rubric "
    "and reply with one letter, A or B, naming the better answer. The order in which the answers "
    "are shown does not matter."
)


@dataclass(frozen=True)
class PairText:
    """What a judge reads once: the prompt and two outputs, in the order shown."""

    prompt: str
    first: str
    second: str


@dataclass(frozen=True)
class Reading:
    """A judge's answer to one order of a pair."""

    choice: str  # one of READING_CHOICES: left means the output shown first (A) is better
    p_left: float | None = None  # the probability of label A (a local judge, or an endpoint's logprobs)
    p_right: float | None = None
    answer: str = ""  # an endpoint's reply, as written
    labelled: bool = True  # False: the reply named no label (counted as a tie)


def judge_messages(rubric: str, question: str, pair: PairText) -> list[Message]:
    """The conversation a judge answers: instructions, then the rubric, the prompt and both outputs."""
    user = (
        f"Rubric: {rubric}\n\n"
        f"Prompt:\n{pair.prompt}\n\n"
        f"Answer A:\n{pair.first.strip() or EMPTY_OUTPUT}\n\n"
        f"Answer B:\n{pair.second.strip() or EMPTY_OUTPUT}\n\n"
        f"{question} Reply with one letter: A or B."
    )
    return [Message("system", SYSTEM), Message("user", user)]


def plain_prompt(messages: Sequence[Message]) -> str:
    """The judge's conversation for a model without a chat template: plain text ending in ``Answer:``."""
    return "\n\n".join(m.content for m in messages) + "\n\nAnswer:"


def decide(p_left: float, p_right: float) -> str:
    """The reading's choice from the two labels' probabilities (an exact tie only when they are equal)."""
    if p_left > p_right:
        return "left"
    if p_right > p_left:
        return "right"
    return "tie"


def combine_orders(first_order: str, swapped: str) -> str:
    """The vote on a pair from its two readings, in the pair's first order.

    ``first_order`` is the reading with the pair's first output shown as A, ``swapped`` the
    reading with it shown as B. The vote is "left" (the first output) or "right" only when
    both readings prefer that same output; a disagreement, or a tie in either, is a tie.
    """
    for choice in (first_order, swapped):
        if choice not in READING_CHOICES:
            raise ValueError(f"a reading's choice is one of {READING_CHOICES}, not {choice!r}")
    preferred_first = {"left": "left", "right": "right"}.get(first_order)
    preferred_swapped = {"left": "right", "right": "left"}.get(swapped)  # A was the pair's second output
    if preferred_first is not None and preferred_first == preferred_swapped:
        return preferred_first
    return "tie"


class LocalJudge:
    """A local causal LM that reads pairs and decides from its next-token label probabilities."""

    def __init__(self, model: LoadedModel, name: str, rubric: str, question: str) -> None:
        self.model, self.name, self.rubric, self.question = model, name, rubric, question
        self.templated = model.has_chat_template  # a chat model answers best inside its own template
        self.spellings = tuple(_spellings(model.tokenizer, label) for label in LABELS)
        clash = set(self.spellings[0]) & set(self.spellings[1])
        if clash:
            raise SteerLabError(
                f"Judge '{name}': model '{model.model_id}' spells the labels A and B with the same tokens; "
                "use another judge model."
            )
        config = getattr(model.model, "config", None)
        self.max_tokens: int | None = getattr(config, "max_position_embeddings", None)

    def prompt_tokens(self, pair: PairText) -> list[int]:
        """The tokens the model reads before its label."""
        messages = judge_messages(self.rubric, self.question, pair)
        tokenizer = self.model.tokenizer
        if self.templated:
            text = template_text(tokenizer, messages, add_generation_prompt=True)
            return list(tokenizer(text, add_special_tokens=False).input_ids)
        return list(tokenizer(plain_prompt(messages)).input_ids)

    def read(self, pairs: Sequence[PairText]) -> list[Reading]:
        """One reading per pair, in one batch: the labels' probabilities and the choice they make."""
        if not pairs:
            return []
        prompts = [self.prompt_tokens(p) for p in pairs]
        longest = max(len(p) + max(len(s) for label in self.spellings for s in label) for p in prompts)
        if self.max_tokens is not None and longest > self.max_tokens:
            raise SteerLabError(
                f"Judge '{self.name}': a pair of outputs makes a prompt of {longest} tokens, more than the "
                f"{self.max_tokens} model '{self.model.model_id}' can read; use a judge model with a longer "
                "context, a shorter rubric, or shorter outputs (generation.max_new_tokens)."
            )
        with self.model.lock, torch.no_grad():
            probabilities = self._label_probabilities(prompts)
        return [Reading(decide(left, right), left, right) for left, right in probabilities]

    def _label_probabilities(self, prompts: list[list[int]]) -> list[tuple[float, float]]:
        first = _next_token_probabilities(self.model, prompts)
        longer = [(row, s) for row in range(len(prompts)) for label in self.spellings for s in label if len(s) > 1]
        scored = _sequence_probabilities(self.model, [prompts[row] + list(s) for row, s in longer], longer)
        out = []
        for row in range(len(prompts)):
            sums = []
            for label in self.spellings:
                total = 0.0
                for spelling in label:
                    total += float(first[row, spelling[0]]) if len(spelling) == 1 else scored[(row, spelling)]
                sums.append(total)
            out.append((sums[0], sums[1]))
        return out


def _spellings(tokenizer: Any, label: str) -> tuple[tuple[int, ...], ...]:
    """The token sequences a label may be written as right after the prompt: "A" and " A"."""
    out: list[tuple[int, ...]] = []
    for text in (label, f" {label}"):
        ids = tuple(int(t) for t in tokenizer(text, add_special_tokens=False).input_ids)
        if ids and ids not in out:
            out.append(ids)
    return tuple(out)


def _next_token_probabilities(model: LoadedModel, prompts: list[list[int]]) -> torch.Tensor:
    """``[rows, vocab]`` probabilities of the token after each prompt (float32, on the CPU)."""
    ids, mask = left_pad(model, prompts)
    logits = _logits(model, ids, mask, keep=1)[:, -1, :]
    return torch.softmax(logits.float(), dim=-1).cpu()


def _sequence_probabilities(
    model: LoadedModel, rows: list[list[int]], keys: list[tuple[int, tuple[int, ...]]]
) -> dict[tuple[int, tuple[int, ...]], float]:
    """The probability of each key's spelling after its prompt (each row is prompt + spelling), token by token."""
    if not rows:
        return {}
    ids, mask = left_pad(model, rows)
    longest = max(len(s) for _, s in keys)
    # Only the positions that predict spelling tokens are projected onto the vocabulary.
    log_probs = torch.log_softmax(_logits(model, ids, mask, keep=longest + 1).float(), dim=-1).cpu()
    out: dict[tuple[int, tuple[int, ...]], float] = {}
    for i, (row, spelling) in enumerate(keys):
        start = log_probs.shape[1] - len(spelling) - 1  # the position before the spelling's first token
        total = sum(float(log_probs[i, start + j, token]) for j, token in enumerate(spelling))
        out[(row, spelling)] = math.exp(total)
    return out


def _logits(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    result = model.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        use_cache=False,
        logits_to_keep=keep,
    )
    return result.logits
