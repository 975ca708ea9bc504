"""The Playground: a chat with one variant of an experiment, beside the plain model.

Every user message is answered twice, in one mixed batch of two rows: row 0 carries the
chosen steering, row 1 is the plain model (no edits, no prompting). The steering is any
variant of the experiment, prepared as a run prepares it (its prefix and system prompt,
its interventions of every method, the conditional gate framed like the prompts), or a
quick custom edit (one vector at one layer times a coefficient: the behaviour knob).

The user's messages are shared; each side keeps its own earlier answers, so a steered
conversation drifts as steering makes it drift, and the plain column is exactly what the
model says unsteered to the same messages. A conversation is rendered like an experiment
prompt (:func:`engine.prompting.render_marked_prompt`): through the chat template when the
model has one, else as plain ``User:``/``Assistant:`` lines (the first message alone is read
as plain text, as an experiment's text prompt is). Earlier steered answers are marked as
assistant content, so the ``assistant`` scope edits them as the run edits such turns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from db.store import Store
from engine.chat import Message, RenderedChat
from engine.conversation import Conversation, PromptItem
from engine.errors import SteerLabError
from engine.fields import Where
from engine.generation import Decoding, generate, row_seed
from engine.methods.add import AddVector
from engine.methods.base import SCOPES as SCOPES  # re-exported: the page's scope picker offers them
from engine.methods.base import ModelFacts, PreparedEdit
from engine.models import LoadedModel, cached_models, load_model
from engine.prompting import render_marked_prompt
from engine.spec import ExperimentSpec, VariantSpec
from engine.steering import BatchSteering
from service.catalog import load_spec
from service.vector_store import ensure_vectors

log = logging.getLogger(__name__)

CUSTOM_EDIT = "custom edit"  # the choice beside the experiment's variants: one vector, one layer, a coefficient
_PLAIN = VariantSpec("plain")


@dataclass(frozen=True)
class CustomEdit:
    """The behaviour knob: ``vector`` times ``coefficient`` added at ``layer`` (off: the plain model)."""

    vector: str
    layer: int
    coefficient: float
    scope: str = "all"
    steering_on: bool = True

    @property
    def label(self) -> str:
        if not self.steering_on:
            return "custom edit, steering off"
        return f"custom edit: '{self.vector}' × {self.coefficient:g} at layer {self.layer} ({self.scope})"


Steering = str | CustomEdit  # a variant's name, or a custom edit


@dataclass(frozen=True)
class Turn:
    """One user message and the two answers to it; ``steering`` names what steered the left one."""

    user: str
    steered: str
    plain: str
    steering: str
    prefix: str = ""  # the prefix the steered side sent before ``user`` (a prompting variant's)
    edited: bool = True  # the steered row carried edits or prompting (False: it should equal the plain row)

    @property
    def identical(self) -> bool:
        return self.steered == self.plain


@dataclass(frozen=True)
class Chat:
    """A conversation so far: plain data, so a dashboard session can keep it."""

    turns: tuple[Turn, ...] = ()

    def history(self, side: str) -> list[Message]:
        """The messages ``side`` (``steered`` or ``plain``) has seen and written so far."""
        messages: list[Message] = []
        for turn in self.turns:
            steered = side == "steered"
            messages.append(Message("user", (turn.prefix if steered else "") + turn.user))
            messages.append(Message("assistant", turn.steered if steered else turn.plain))
        return messages


def steering_choices(spec: ExperimentSpec) -> list[str]:
    """What the steered column can be: every variant that runs on the shared weights, then the custom edit.

    Adaptation baselines (LoRA, fine-tune) have weights of their own, so they cannot share a
    batch with the plain model; the Adaptation page compares them.
    """
    names = [v.name for v in spec.variants if v.train is None]
    return names + ([CUSTOM_EDIT] if spec.vectors else [])


def steering_variant(spec: ExperimentSpec, steering: Steering) -> VariantSpec:
    """The variant the steered column runs: an experiment variant, or the custom edit as one."""
    if isinstance(steering, CustomEdit):
        return _custom_variant(spec, steering)
    variant = next((v for v in spec.variants if v.name == steering), None)
    if variant is None:
        choices = ", ".join(f"'{c}'" for c in steering_choices(spec))
        raise SteerLabError(f"Variant '{steering}' is not in experiment '{spec.name}'; pick one of {choices}.")
    if variant.train is not None:
        raise SteerLabError(
            f"Variant '{steering}' is a {variant.train.method} baseline with weights of its own, so the Playground "
            "cannot run it beside the plain model; compare it on the Adaptation page."
        )
    return variant


def reveal(variant: VariantSpec) -> list[str]:
    """What a variant is, one line per part: its kind, description, prompting and each edit's settings."""
    lines = [f"kind: {variant.kind}"]
    if variant.description:
        lines.append(f"description: {variant.description}")
    if variant.system:
        lines.append(f"system prompt: {variant.system!r}")
    if variant.prefix:
        lines.append(f"prefix: {variant.prefix!r}")
    for edit in variant.interventions:
        settings = ", ".join(f"{k}={v}" for k, v in edit.to_dict().items() if k != "method")
        lines.append(f"{edit.name}: {settings}")
    if not (variant.system or variant.prefix or variant.interventions):
        lines.append("no edits and no prompting: the plain model")
    return lines


def model_loaded(spec: ExperimentSpec) -> bool:
    """Whether the experiment's model is in memory already (the first load of a model takes a while)."""
    return spec.model in cached_models()


def chat_template_used(spec: ExperimentSpec) -> bool:
    """Whether conversations go through the model's chat template (loads the model, cached)."""
    return spec.chat_template == "auto" and load_model(spec.model).has_chat_template


def reply(
    store: Store,
    experiment_name: str,
    chat: Chat,
    message: str,
    steering: Steering,
    max_new_tokens: int = 40,
    greedy: bool = True,
) -> Chat:
    """``chat`` with ``message`` answered by both sides (row 0 steered, row 1 plain, one batch)."""
    if not message.strip():
        raise SteerLabError("The message is empty; type what the user says.")
    spec = load_spec(store, experiment_name)
    variant = steering_variant(spec, steering)
    model = load_model(spec.model)
    where = Where(f"the playground of '{experiment_name}'")
    for i, intervention in enumerate(variant.interventions):
        intervention.check(ModelFacts.of(model), where.child("interventions").child(i))
    vectors = ensure_vectors(store, experiment_name, spec, model, only=set(variant.vector_names()))
    edits: list[PreparedEdit] = [i.framed(spec.chat_template).prepare(model, vectors) for i in variant.interventions]
    steered = render_marked_prompt(model, _prompt(chat.history("steered"), message), variant, spec.chat_template)
    plain = render_marked_prompt(model, _prompt(chat.history("plain"), message), _PLAIN, spec.chat_template)
    _check_length(model, (steered, plain), max_new_tokens)
    decoding = Decoding(max_new_tokens=max_new_tokens)
    if not greedy:
        decoding = replace(spec.generation.decoding, max_new_tokens=max_new_tokens, do_sample=True)
    # Both rows draw from the same seed (as a run's variants of one prompt do), so with sampling
    # on, the columns differ by the steering, not by the dice.
    seed = row_seed(spec.generation.seed, len(chat.turns), 0)
    rows = generate(
        model,
        [steered.tokens, plain.tokens],
        decoding,
        seeds=[seed, seed],
        steering=BatchSteering(model, [edits, []]),
        assistant=[steered.assistant, plain.assistant],
    )
    steered_text, plain_text = model.tokenizer.batch_decode(rows, skip_special_tokens=True)
    label = steering.label if isinstance(steering, CustomEdit) else variant.name
    edited = bool(edits or variant.prefix or variant.system)
    turn = Turn(message, steered_text, plain_text, label, variant.prefix, edited)
    log.info("Playground of '%s': turn %s answered (%s)", experiment_name, len(chat.turns) + 1, label)
    return Chat((*chat.turns, turn))


def _custom_variant(spec: ExperimentSpec, edit: CustomEdit) -> VariantSpec:
    if edit.vector not in {v.name for v in spec.vectors}:
        raise SteerLabError(f"Vector '{edit.vector}' is not defined in '{spec.name}'; add it on the Variants page.")
    if not edit.steering_on:
        return VariantSpec(CUSTOM_EDIT, description="Steering off: the plain model.")
    where = Where(f"the playground's custom edit of '{spec.name}'")
    method = AddVector.parse(
        {"vector": edit.vector, "layers": [edit.layer], "coefficient": edit.coefficient, "scope": edit.scope}, where
    )
    return VariantSpec(CUSTOM_EDIT, interventions=(method,), description=edit.label)


def _prompt(history: Sequence[Message], message: str) -> PromptItem:
    """The first message alone is a text prompt (as an experiment's); later ones continue a conversation."""
    if not history:
        return message
    return Conversation((*history, Message("user", message)))


def _check_length(model: LoadedModel, rendered: Sequence[RenderedChat], max_new_tokens: int) -> None:
    limit = getattr(model.model.config, "max_position_embeddings", None)
    longest = max(len(r.tokens) for r in rendered)
    if isinstance(limit, int) and longest + max_new_tokens > limit:
        raise SteerLabError(
            f"The conversation is {longest} tokens long, and {max_new_tokens} new tokens would pass the model's "
            f"limit of {limit}; start a new conversation or ask for fewer new tokens."
        )
