"""The declarative experiment definition, kept apart from the code that runs it.

An :class:`ExperimentSpec` says which model, which prompts, how to decode, which vectors
(from which pairs) and which variants (baseline, prompting, steering edits). It is
parsed from plain data (an experiment file, a dashboard form or a stored definition) by
:func:`parse_experiment`, which checks every field and names it on error, and turned back
into plain data by :meth:`ExperimentSpec.to_dict` for storage. Checks that need the model
(layer ranges) live in :func:`check_against_model`.

What a file may hold is declared once, as pydantic models (:class:`ExperimentSettings`,
:class:`GenerationSettings`, :class:`VariantSettings`, and each method's and scorer's own
settings): they validate, and :mod:`engine.spec_schema` turns them into the JSON Schema of
experiment files. The specs themselves stay frozen dataclasses (callers ``replace`` them).

Importing this module (and parsing an experiment) loads neither torch nor transformers, so
the store, the dashboard's forms and other front ends can read and check definitions
without them; tests/test_torch_free.py keeps it so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from engine import limits, methods
from engine.conversation import PROMPT_SCHEMA, PromptItem, parse_prompt, prompt_data
from engine.declaration import (
    FLAG,
    NAME,
    TEXT,
    Check,
    Settings,
    choice,
    later_ref,
    number,
    settings_schema,
    where_of,
    whole,
)
from engine.decoding import Decoding
from engine.extraction_choices import EXTRACTION_METHODS, READ_POSITIONS, TEMPLATE_MODES
from engine.fields import (
    MAX_NAME_CHARS,
    Where,
    as_int,
    as_list,
    as_mapping,
    as_name,
    as_str,
    check_keys,
    required,
)
from engine.judge_spec import JudgeSettings, JudgeSpec, parse_judges
from engine.methods.base import ModelFacts, SteeringMethod
from engine.model_reference import MODEL_SCHEMA, parse_model_reference
from engine.null_arms import NULL_ARMS, check_arm_names, check_null_arms, expand_null_arms
from engine.scorers import Scorer, parse_scorer
from engine.statistics_spec import StatisticsSettings, StatisticsSpec, parse_statistics
from engine.sweep_config import parse_sweep
from engine.training_spec import TRAINING_METHODS, TrainingSpec, parse_training

VARIANT_KINDS = ("baseline", "prompting", "steering", "lora", "finetune")
CHAT_TEMPLATE_MODES = ("auto", "off")
DEFAULT_PROBE = "Once upon a time, there was a"
MIN_TEMPERATURE = 0.01
DEFAULT_RATING_QUESTION = "Which output is better?"
DEFAULT_RATING_OVERLAP = 0.2
# Plain openings for measuring side effects (how far a variant moves ordinary text).
DEFAULT_NEUTRAL_PROMPTS = (
    "Once upon a time",
    "The weather today is",
    "Here is a short list of",
    "She opened the door and",
    "In the morning, we",
)


@dataclass(frozen=True)
class GenerationSpec:
    """Decoding settings plus the run's seed and samples per prompt."""

    decoding: Decoding = field(default_factory=Decoding)
    seed: int = 0
    samples_per_prompt: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = self.decoding
        return {
            "max_new_tokens": d.max_new_tokens,
            "do_sample": d.do_sample,
            "temperature": d.temperature,
            "top_k": d.top_k,
            "top_p": d.top_p,
            "seed": self.seed,
            "samples_per_prompt": self.samples_per_prompt,
        }


@dataclass(frozen=True)
class ContrastPair:
    """One contrastive pair: a positive and a negative answer to the same conversation.

    ``user`` and ``system`` are the conversation the two texts answer; None takes the
    vector's own (``VectorSpec.user``, ``VectorSpec.system``), so a plain ``[positive,
    negative]`` pair is two answers to the vector's user message ("" unless given). A pair
    unpacks as ``(positive, negative)``, like the text pairs it generalises.
    """

    positive: str
    negative: str
    user: str | None = None
    system: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter((self.positive, self.negative))

    @property
    def is_text_pair(self) -> bool:
        return self.user is None and self.system is None

    def to_data(self) -> list[str] | dict[str, str]:
        if self.is_text_pair:
            return [self.positive, self.negative]
        out = {"system": self.system, "user": self.user, "positive": self.positive, "negative": self.negative}
        return {key: value for key, value in out.items() if value is not None}


@dataclass(frozen=True)
class VectorSpec:
    """A named vector: extracted from contrastive pairs or personas, or read from a file (safetensors, GGUF, .pt).

    Pairs are answers (see :class:`ContrastPair`); personas are a positive and a negative
    system prompt over shared ``questions``, read where the model starts to answer.
    ``template``: ``auto`` reads them through the chat template when the experiment's prompts
    go through it, ``off`` reads raw text (see :mod:`engine.contrast`).
    """

    name: str
    pairs: tuple[ContrastPair, ...] = ()
    method: str = "mean_diff"
    read: str = "last"
    pair_index: int = 0
    file: str | None = None
    template: str = "auto"
    user: str = ""
    system: str = ""
    personas: tuple[str, str] | None = None
    questions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.file is not None:
            return {"file": self.file}
        out: dict[str, Any] = {"method": self.method, "read": self.read}
        # Only what differs from the defaults, so definitions written before these fields hash as they did.
        if self.personas is not None:
            out["personas"], out["questions"] = list(self.personas), list(self.questions)
        else:
            out["pairs"] = [p.to_data() for p in self.pairs]
        if self.method == "single_pair":
            out["pair_index"] = self.pair_index
        if self.template != "auto":
            out["template"] = self.template
        if self.user:
            out["user"] = self.user
        if self.system:
            out["system"] = self.system
        return out

    @property
    def plain_text_pairs(self) -> bool:
        """Only [positive, negative] pairs with the default user, system and template (what a pairs table holds)."""
        return (
            self.file is None
            and self.personas is None
            and self.template == "auto"
            and not self.user
            and not self.system
            and all(p.is_text_pair for p in self.pairs)
        )

    @property
    def example_count(self) -> int:
        """Contrastive examples it is extracted from: its pairs, or its questions."""
        return len(self.questions) if self.personas is not None else len(self.pairs)


@dataclass(frozen=True)
class VariantSpec:
    """One configuration to compare: plain, prompted, steered, or prompted and steered."""

    name: str
    prefix: str = ""
    system: str = ""
    interventions: tuple[SteeringMethod, ...] = ()
    description: str = ""
    train: TrainingSpec | None = None  # an adaptation baseline: a LoRA adapter or a fine-tuned copy
    null_arms: tuple[str, ...] = ()  # controls derived from this steering variant (engine.null_arms)
    control_of: str = ""  # a null arm: the variant it controls ("" for a declared variant)
    control: str = ""  # a null arm: which ("random" or "flipped")

    @property
    def kind(self) -> str:
        if self.train is not None:
            return self.train.method
        if self.interventions:
            return "steering"
        if self.prefix or self.system:
            return "prompting"
        return "baseline"

    def vector_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for i in self.interventions for n in i.vector_names()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.description:
            out["description"] = self.description
        if self.prefix:
            out["prefix"] = self.prefix
        if self.system:
            out["system"] = self.system
        if self.interventions:
            out["interventions"] = [i.to_dict() for i in self.interventions]
        if self.train is not None:
            out["train"] = self.train.to_dict()
        # null_arms is not written here: this dict is what decides the variant's outputs
        # (service.provenance hashes it), and declaring controls does not change them;
        # ExperimentSpec.to_dict writes it. A derived arm says what it controls.
        if self.control_of:
            out["control_of"], out["control"] = self.control_of, self.control
        return out


def _declared(variant: VariantSpec) -> dict[str, Any]:
    """A declared variant as a definition stores it: its own dict and the null arms it asks for."""
    out = variant.to_dict()
    if variant.null_arms:
        out["null_arms"] = list(variant.null_arms)
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    model: str
    prompts: tuple[PromptItem, ...]  # a user message's text, or a conversation (engine.conversation)
    variants: tuple[VariantSpec, ...]
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    vectors: tuple[VectorSpec, ...] = ()
    scorers: tuple[Scorer, ...] = ()
    description: str = ""
    chat_template: str = "auto"
    probe_prompt: str = DEFAULT_PROBE
    reveal_after_vote: bool = False  # raters never learn the variants unless the owner says so
    # What raters answer on the Rate page, so "better" means the same thing to all of them.
    rating_question: str = DEFAULT_RATING_QUESTION
    # Share of the pairs that every rater is shown, so that rater agreement can be measured.
    rating_overlap: float = DEFAULT_RATING_OVERLAP
    neutral_prompts: tuple[str, ...] = DEFAULT_NEUTRAL_PROMPTS
    sweep: dict[str, Any] | None = None  # a layer/strength sweep, validated by engine.sweep
    references: tuple[tuple[str, ...], ...] = ()  # acceptable outputs per prompt, for reference scorers
    training_examples: tuple[str, ...] = ()  # texts adapter/fine-tune baselines learn from
    judges: tuple[JudgeSpec, ...] = ()  # LLM raters of pairs (engine.judge_spec)
    statistics: StatisticsSpec = field(default_factory=StatisticsSpec)  # how Compare decides (engine.statistics_spec)

    def __post_init__(self) -> None:
        # Null arms are derived, never stored: however a spec is built (parsed, or replace()d
        # with other variants or another seed), each declared variant is followed by its arms.
        object.__setattr__(self, "variants", expand_null_arms(self.variants, self.generation.seed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "chat_template": self.chat_template,
            "probe_prompt": self.probe_prompt,
            "reveal_after_vote": self.reveal_after_vote,
            "rating_question": self.rating_question,
            "rating_overlap": self.rating_overlap,
            "neutral_prompts": list(self.neutral_prompts),
            "prompts": [prompt_data(p) for p in self.prompts],
            "generation": self.generation.to_dict(),
            "vectors": {v.name: v.to_dict() for v in self.vectors},
            # Declared variants only: null arms are derived again from their variant's null_arms.
            "variants": [_declared(v) for v in self.variants if not v.control_of],
            "scorers": [s.to_dict() for s in self.scorers],
            **({"sweep": self.sweep} if self.sweep is not None else {}),
            **({"references": [list(r) for r in self.references]} if self.references else {}),
            **({"training_examples": list(self.training_examples)} if self.training_examples else {}),
            **({"judges": [j.to_dict() for j in self.judges]} if self.judges else {}),
            # Only what differs from the defaults, so definitions stored before the section stay as they were.
            **({"statistics": stats} if (stats := self.statistics.to_dict()) else {}),
        }

    def definition_hash(self) -> str:
        """Fingerprint of everything that decides the outputs (not the description)."""
        data = self.to_dict()
        data.pop("description")
        data.pop("reveal_after_vote")
        data.pop("rating_question")
        data.pop("rating_overlap")
        data.pop("scorers")
        data.pop("neutral_prompts")
        data.pop("sweep", None)
        data.pop("references", None)
        data.pop("judges", None)  # judges rate outputs; they do not decide them
        data.pop("statistics", None)  # how outputs are judged, not what they are
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def vector(self, name: str) -> VectorSpec:
        return next(v for v in self.vectors if v.name == name)


def _parse_references(raw: Any, where: Where, prompts: int) -> tuple[tuple[str, ...], ...]:
    items = as_list(raw, where)
    if len(items) != prompts:
        where.fail(
            f"has {len(items)} entries for {prompts} prompts", "give one entry (a text or a list of texts) per prompt"
        )
    out = []
    for i, item in enumerate(items):
        texts = [item] if isinstance(item, str) else list(as_list(item, where.child(i)))
        out.append(tuple(_text(t, where.child(i)) for t in texts))
    return tuple(out)


def _parse_texts(raw: Any, where: Where) -> tuple[str, ...]:
    items = as_list(raw, where)
    if not items:
        where.fail("is an empty list", "give at least one text")
    limits.check(limits.MAX_PROMPTS, len(items), str(where), "texts")
    return tuple(_text(t, where.child(i)) for i, t in enumerate(items))


def _text(value: Any, where: Where, allow_empty: bool = False) -> str:
    """Text that is read into the model or shown on a page: at most as long as a prompt may be."""
    text = as_str(value, where, allow_empty)
    limits.check(limits.MAX_PROMPT_CHARS, len(text), str(where), "characters")
    return text


def _parse_vectors(raw: Any, where: Where) -> tuple[VectorSpec, ...]:
    data = as_mapping(raw, where)
    limits.check(limits.MAX_VECTORS, len(data), str(where))
    out = []
    for name, entry in data.items():
        here = where.child(str(name)[:MAX_NAME_CHARS])
        name = as_name(
            str(name), Where(here.source, f"{where.path} name" if where.path else "vector name", here.labels)
        )
        out.append(VectorSettings.checked(entry, here).to_spec(str(name)))
    return tuple(out)


def _pairs(raw: Any, where: Where) -> tuple[ContrastPair, ...]:
    items = as_list(raw, where)
    if not items:
        where.fail("is an empty list", "give at least one [positive, negative] pair")
    limits.check(limits.MAX_PROMPTS, len(items), str(where), "pairs")
    return tuple(_parse_pair(p, where.child(i)) for i, p in enumerate(items))


def _personas(raw: Any, where: Where) -> tuple[str, str]:
    items = as_list(raw, where)
    if len(items) != 2:
        count = f"{len(items)} entry" if len(items) == 1 else f"{len(items)} entries"
        where.fail(f"has {count}", "give two system prompts: [positive persona, negative persona]")
    return _text(items[0], where.child(0)), _text(items[1], where.child(1))


_PAIRS_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "anyOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            {
                "type": "object",
                "properties": {
                    "positive": {"type": "string", "description": "The positive answer."},
                    "negative": {"type": "string", "description": "The negative answer."},
                    "user": {"type": "string", "description": "The user message both answer (default: the vector's)."},
                    "system": {"type": "string", "description": "A system prompt before it (default: the vector's)."},
                },
                "required": ["positive", "negative"],
                "additionalProperties": False,
            },
        ]
    },
}
_PERSONAS_SCHEMA = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 2}
_ANY_TEXT = Check(lambda value, where: _text(value, where, allow_empty=True), {"type": "string"}, "text")


class VectorSettings(Settings):
    """One entry of ``vectors``: extracted from contrastive pairs or personas, or read from a safetensors file."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": ["pairs"]}, {"required": ["personas", "questions"]}, {"required": ["file"]}]
        }
    )

    method: Annotated[str, choice(EXTRACTION_METHODS)] = Field(
        "mean_diff", description="mean_diff (CAA), pca (repeng-style) or single_pair (ActAdd, one pair)."
    )
    read: Annotated[str, choice(READ_POSITIONS)] = Field(
        "last",
        description="Read the last token's hidden state, the mean over the tokens, or the mean over the answer's "
        "tokens (answer_mean).",
    )
    pairs: Annotated[tuple[ContrastPair, ...] | None, Check(_pairs, _PAIRS_SCHEMA, "text")] = Field(
        None,
        description="Contrastive pairs: [positive, negative], or {user: ..., positive: ..., negative: ...} "
        "(two answers to one user message; optional system).",
    )
    personas: Annotated[tuple[str, str] | None, Check(_personas, _PERSONAS_SCHEMA, "texts")] = Field(
        None, description="Instead of pairs: [positive system prompt, negative system prompt] over the questions."
    )
    questions: Annotated[
        tuple[str, ...] | None,
        Check(_parse_texts, {"type": "array", "items": {"type": "string"}, "minItems": 1}, "texts"),
    ] = Field(None, description="With personas: the user messages both personas answer.")
    user: Annotated[str, _ANY_TEXT] = Field(
        "", description="The user message [positive, negative] pairs answer on a chat model (default empty)."
    )
    system: Annotated[str, _ANY_TEXT] = Field("", description="A system prompt before every pair's user message.")
    template: Annotated[str, choice(TEMPLATE_MODES)] = Field(
        "auto",
        description="auto: read the pairs through the chat template when the experiment's prompts go through it; "
        "off: read them as raw text.",
    )
    pair_index: Annotated[int, whole(0)] = Field(
        0, description="For single_pair: which pair (or question, with personas), from 0."
    )
    file: Annotated[str | None, TEXT] = Field(
        None,
        description="Instead of pairs: a vector file in this file's folder: SteerLab's safetensors, per-layer "
        "safetensors, a llama.cpp/repeng control-vector GGUF, or a steering-vectors layer dict (.pt).",
    )

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> VectorSettings:
        where = where_of(info)
        if self.file is not None:
            return self
        if self.personas is not None or self.questions is not None:
            examples = self._check_personas(where)
        elif self.pairs is None:
            where.child("pairs").fail("is missing", "add contrastive pairs (or personas and questions, or a file)")
        else:
            examples = len(self.pairs)
        as_int(self.pair_index, where.child("pair_index"), 0, examples - 1)
        return self

    def _check_personas(self, where: Where) -> int:
        """The persona fields make sense together; returns the number of questions."""
        if self.pairs is not None:
            where.child("personas").fail(
                "is given together with pairs", "extract one vector from pairs and another from personas"
            )
        if self.personas is None:
            where.child("personas").fail(
                "is missing while questions are given", "add personas: [positive system prompt, negative system prompt]"
            )
        if self.questions is None:
            where.child("questions").fail("is missing", "add the user messages both personas answer")
        if self.read == "answer_mean":
            where.child("read").fail(
                "is 'answer_mean', but persona pairs have no answer to average over",
                "use read: last (where the model starts to answer) or mean",
            )
        if self.user:
            where.child("user").fail(
                "is given with personas, whose user messages are the questions", "remove it or add it to the questions"
            )
        if self.system:
            where.child("system").fail(
                "is given with personas, which are the system prompts", "remove it or write it into both personas"
            )
        return len(self.questions)

    def to_spec(self, name: str) -> VectorSpec:
        if self.file is not None:
            return VectorSpec(name, file=self.file)
        return VectorSpec(
            name,
            self.pairs or (),
            self.method,
            self.read,
            self.pair_index,
            template=self.template,
            user=self.user,
            system=self.system,
            personas=self.personas,
            questions=self.questions or (),
        )


def _parse_pair(raw: Any, where: Where) -> ContrastPair:
    if isinstance(raw, Mapping):
        check_keys(raw, ("positive", "negative", "user", "system"), where)
        positive, negative = required(raw, "positive", where), required(raw, "negative", where)
        user, system = raw.get("user"), raw.get("system")
    elif isinstance(raw, list) and len(raw) == 2:
        (positive, negative), user, system = raw, None, None
    else:
        where.fail("is not a pair", "write [positive text, negative text] or positive:/negative: fields")
    return ContrastPair(
        _text(positive, where.child("positive")),
        _text(negative, where.child("negative")),
        None if user is None else _text(user, where.child("user"), allow_empty=True),
        None if system is None else _text(system, where.child("system"), allow_empty=True),
    )


# --- the declaration of experiment files (and of stored definitions) -----------------------
#
# Each section is declared once, as a Settings model whose fields carry their check and
# description: parse_experiment validates with it, and engine.spec_schema turns the same
# declarations into the JSON Schema of experiment files. The checks are engine.fields'
# readers, so every error stays one sentence naming the source and the field.


def _prompts(value: Any, where: Where) -> tuple[PromptItem, ...]:
    items = as_list(value, where)
    limits.check(limits.MAX_PROMPTS, len(items), str(where.parent()))
    if not items:
        where.fail("is an empty list", "give at least one prompt")
    # Each is a text or a conversation; parse_prompt checks its length too.
    return tuple(parse_prompt(p, where.child(i)) for i, p in enumerate(items))


def _parse_scorers(raw: Any, where: Where) -> tuple[Scorer, ...]:
    items = as_list(raw or [], where)
    scorers = tuple(parse_scorer(s, where.child(i)) for i, s in enumerate(items))
    if len({s.name for s in scorers}) != len(scorers):
        where.fail("has two scorers with the same name", "give each scorer its own name")
    return scorers


def _interventions(raw: Any, where: Where, info: ValidationInfo) -> tuple[SteeringMethod, ...]:
    items = as_list(raw or [], where)
    limits.check(limits.MAX_EDITS, len(items), str(where))
    interventions = tuple(methods.parse(x, where.child(i)) for i, x in enumerate(items))
    vector_names: set[str] = (info.context or {}).get("vector_names", set())
    for i, intervention in enumerate(interventions):
        for vector in intervention.vector_names():
            if vector not in vector_names:
                known = ", ".join(sorted(vector_names)) or "none are defined"
                where.child(i).child("vector").fail(
                    f"names vector {vector!r}, which the experiment does not define (defined: {known})",
                    "define it under 'vectors' or fix the name",
                )
    return interventions


_SHORT_TEXT = Check(lambda value, where: _text(value, where), {"type": "string", "minLength": 1}, "text")
_OPTIONAL_TEXT = Check(lambda value, where: _text(value, where, allow_empty=True), {"type": "string"}, "text")
_TEXTS = Check(
    lambda value, where: _parse_texts(value, where),
    {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "texts",
)
_TRAIN_SCHEMA = {
    "type": "object",
    "description": "An adaptation baseline: a LoRA adapter or a fine-tuned copy, trained when the experiment runs.",
    "properties": {
        "method": {"enum": list(TRAINING_METHODS), "default": "lora"},
        "examples_from": {"type": "string", "description": "A vector whose positive texts are the training set."},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3},
        "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "rank": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 8},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 8},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
    },
    "additionalProperties": False,
}


class VariantSettings(Settings):
    """One entry of ``variants``: plain, prompted, steered (stacked edits) or an adaptation baseline."""

    interventions: Annotated[
        tuple[SteeringMethod, ...],
        Check(
            _interventions,
            {"type": "array", "items": later_ref("intervention")},
            "text",
            with_info=True,
        ),
    ] = Field((), description="Steering edits, applied in order (they stack).")
    name: Annotated[str, NAME] = Field(description="The variant's name (unique in the experiment).")
    description: Annotated[str, _OPTIONAL_TEXT] = Field("", description="Optional free text.")
    prefix: Annotated[str, _OPTIONAL_TEXT] = Field("", description="Text put before every prompt (prompting).")
    system: Annotated[str, _OPTIONAL_TEXT] = Field(
        "", description="A system message, for models with a chat template (prompting)."
    )
    train: Annotated[TrainingSpec | None, Check(parse_training, _TRAIN_SCHEMA, "text")] = Field(
        None, description="Train an adapter or a fine-tuned copy instead of steering."
    )
    kind: Annotated[str | None, choice(VARIANT_KINDS)] = Field(
        None, description="Optional: what the fields make it (checked against them)."
    )
    null_arms: Annotated[tuple[str, ...], NULL_ARMS] = Field(
        (), description="Steering only: controls run beside it, 'random' and/or 'flipped' (true: both)."
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> VariantSettings:
        where = where_of(info)
        variant = self.to_spec()
        vector_names: set[str] = (info.context or {}).get("vector_names", set())
        if variant.train is not None and (variant.interventions or variant.prefix or variant.system):
            where.child("train").fail(
                "is combined with prompting or steering in one variant",
                "make the adapter or fine-tune a variant of its own",
            )
        if (
            variant.train is not None
            and variant.train.examples_from
            and variant.train.examples_from not in vector_names
        ):
            where.child("train").child("examples_from").fail(
                f"names vector {variant.train.examples_from!r}, which the experiment does not define",
                "name a vector with pairs",
            )
        if self.kind is not None:
            if self.kind == "prompting" and not (variant.system.strip() or variant.prefix.strip()):
                where.child("system").fail(
                    "and the prefix are both empty", "write a system prompt or a prefix (or make it a baseline)"
                )
            if self.kind == "steering" and not variant.interventions:
                where.child("interventions").fail("is empty", "add at least one steering edit")
            if self.kind != variant.kind:
                where.child("kind").fail(
                    f"says {self.kind!r} but the fields given make a {variant.kind!r} variant",
                    "baseline has no prefix, system or interventions; prompting has a prefix or system; steering has interventions; lora and finetune have 'train'",
                )
        check_null_arms(variant, where.child("null_arms"))
        return self

    def to_spec(self) -> VariantSpec:
        return VariantSpec(
            name=self.name,
            prefix=self.prefix,
            system=self.system,
            interventions=self.interventions,
            description=self.description,
            train=self.train,
            null_arms=self.null_arms,
        )


def parse_variant(raw: Any, where: Where, vector_names: set[str]) -> VariantSpec:
    """Validate one variant; its interventions' methods come from the registry."""
    return VariantSettings.checked(raw, where, {"vector_names": vector_names}).to_spec()


def _parse_variants(raw: Any, where: Where, info: ValidationInfo) -> tuple[VariantSpec, ...]:
    items = as_list(raw, where)
    if not items:
        where.fail("is an empty list", "define at least one variant, for example 'name: baseline'")
    vector_names = {v.name for v in info.data.get("vectors", ())}
    variants: list[VariantSpec] = []
    for i, item in enumerate(items):
        variant = parse_variant(item, where.child(i), vector_names)
        if any(v.name == variant.name for v in variants):
            where.child(i).child("name").fail(
                f"repeats the variant name {variant.name!r}", "give each variant its own name"
            )
        variants.append(variant)
    check_arm_names(variants, where)
    return tuple(variants)


class GenerationSettings(Settings):
    """The ``generation`` section: how outputs are decoded, the seed, and samples per prompt."""

    max_new_tokens: Annotated[int, whole(1, 4096)] = Field(48, description="Tokens generated per output.")
    do_sample: Annotated[bool, FLAG] = Field(False, description="true: sample; false: greedy decoding.")
    temperature: Annotated[float, number(0.0, 100.0)] = Field(
        1.0, description=f"Sampling temperature ({MIN_TEMPERATURE} or more)."
    )
    top_k: Annotated[int, whole(0)] = Field(0, description="Keep the k likeliest tokens (0 = off).")
    top_p: Annotated[float, number(0.0, 1.0)] = Field(1.0, description="Nucleus sampling share (1.0 = off).")
    seed: Annotated[int, whole(0)] = Field(0, description="Seed of the run (each output has its own, derived from it).")
    samples_per_prompt: Annotated[int, whole(1, 1000)] = Field(
        1, description="Outputs per prompt and variant (more than 1 needs do_sample)."
    )

    @model_validator(mode="after")
    def _usable(self, info: ValidationInfo) -> GenerationSettings:
        where = where_of(info)
        if self.samples_per_prompt > 1 and not self.do_sample:
            where.child("samples_per_prompt").fail(
                f"is {self.samples_per_prompt} with greedy decoding, which gives the same output every time",
                "set do_sample: true or use 1",
            )
        if self.temperature < MIN_TEMPERATURE:
            # Below this, logits / temperature overflow to inf and sampling breaks.
            where.child("temperature").fail(
                f"is {self.temperature:g}, below {MIN_TEMPERATURE}",
                f"give {MIN_TEMPERATURE} or more, or do_sample: false for greedy decoding",
            )
        if self.top_p == 0.0:
            where.child("top_p").fail("is 0, which keeps no token", "give a value in (0, 1]")
        return self

    def to_spec(self) -> GenerationSpec:
        decoding = Decoding(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )
        return GenerationSpec(decoding, self.seed, self.samples_per_prompt)


_REFERENCES_SCHEMA = {
    "type": "array",
    "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
}


def _references(raw: Any, where: Where, info: ValidationInfo) -> tuple[tuple[str, ...], ...]:
    return _parse_references(raw, where, len(info.data.get("prompts", ())))


def _sweep(raw: Any, where: Where) -> dict[str, Any]:
    # Checked against the vectors and scorers once the whole experiment is read (ExperimentSettings.to_spec).
    return dict(as_mapping(raw, where))


_SWEEP_SCHEMA = {
    "type": "object",
    "description": "A layer x coefficient grid for one vector (python -m engine sweep).",
    "properties": {
        "vector": {"type": "string"},
        "layers": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "coefficients": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        "scorer": {"type": "string", "description": "The scorer that measures the behaviour."},
        "max_cells": {"type": "integer", "minimum": 1, "default": 64},
        "fluency_tolerance": {"type": "number", "minimum": 1.0, "default": 1.5},
    },
    "required": ["vector", "coefficients", "scorer"],
    "additionalProperties": False,
}


class ExperimentSettings(Settings):
    """An experiment file (and a stored definition): every top-level field.

    Fields are checked in this order; a check that needs another field (variants need the
    vectors, references the prompts) comes after it.
    """

    missing_fixes: ClassVar[Mapping[str, str]] = {
        "variants": "add a list of variants, for example '- name: baseline'",
    }

    name: Annotated[str, NAME] = Field(description="The experiment's name in the store.")
    description: Annotated[str, _OPTIONAL_TEXT] = Field("", description="Optional free text.")
    model: Annotated[str, Check(parse_model_reference, MODEL_SCHEMA, "text")] = Field(
        description="A Hugging Face hub id, a local model folder, a GGUF file (a path ending in .gguf, "
        "or {path: folder or hub id, gguf_file: name}); stored as one string."
    )
    chat_template: Annotated[str, choice(CHAT_TEMPLATE_MODES)] = Field(
        "auto", description="auto: prompts go through the tokenizer's chat template if it has one; off: never."
    )
    probe_prompt: Annotated[str, _SHORT_TEXT] = Field(DEFAULT_PROBE, description="Text for the reversibility check.")
    reveal_after_vote: Annotated[bool, FLAG] = Field(
        False, description="Show raters which variants they compared, after each vote."
    )
    rating_question: Annotated[
        str, Check(lambda value, where: _text(value, where).strip(), {"type": "string", "minLength": 1}, "text")
    ] = Field(DEFAULT_RATING_QUESTION, description="What raters answer on the Rate page.")
    rating_overlap: Annotated[float, number(0.0, 1.0)] = Field(
        DEFAULT_RATING_OVERLAP, description="Share of the pairs shown to every rater (for rater agreement)."
    )
    neutral_prompts: Annotated[tuple[str, ...], _TEXTS] = Field(
        DEFAULT_NEUTRAL_PROMPTS, description="Where side effects (KL) are measured."
    )
    prompts: Annotated[
        tuple[PromptItem, ...], Check(_prompts, {"type": "array", "items": PROMPT_SCHEMA, "minItems": 1}, "texts")
    ] = Field(
        description="The prompts every variant answers: a user message's text, or a conversation "
        "({messages: [{role, content}, ...]} ending with a user message). Or give prompts_file."
    )
    prompts_file: Annotated[str | None, TEXT] = Field(
        None,
        description='Instead of prompts: a .csv (column \'prompt\'), .jsonl ({"prompt": ...} or {"messages": [...]}) '
        "or .txt file in this file's folder.",
    )
    generation: Annotated[
        GenerationSettings,
        Check(
            lambda value, where: GenerationSettings.checked(value or {}, where),
            settings_schema(GenerationSettings),
            "text",
        ),
    ] = Field(default_factory=GenerationSettings.model_construct, description="Decoding settings.")
    vectors: Annotated[
        tuple[VectorSpec, ...],
        Check(
            lambda value, where: _parse_vectors(value or {}, where),
            {"type": "object", "additionalProperties": settings_schema(VectorSettings)},
            "text",
        ),
    ] = Field((), description="Named steering vectors: from contrastive pairs, or a vector file.")
    variants: Annotated[
        tuple[VariantSpec, ...],
        Check(
            _parse_variants,
            {"type": "array", "items": later_ref("variant"), "minItems": 1},
            "text",
            with_info=True,
        ),
    ] = Field(description="The configurations compared: baseline, prompting, steering, lora, finetune.")
    scorers: Annotated[
        tuple[Scorer, ...], Check(_parse_scorers, {"type": "array", "items": later_ref("scorer")}, "text")
    ] = Field((), description="Automatic scores of every output.")
    sweep: Annotated[dict[str, Any] | None, Check(_sweep, _SWEEP_SCHEMA, "text")] = Field(
        None, description="A layer x coefficient sweep of one vector."
    )
    references: Annotated[
        tuple[tuple[str, ...], ...] | None, Check(_references, _REFERENCES_SCHEMA, "text", with_info=True)
    ] = Field(
        None, description="Acceptable outputs per prompt (a text or a list of texts each), for reference scorers."
    )
    training_examples: Annotated[tuple[str, ...] | None, _TEXTS] = Field(
        None, description="Texts the adaptation baselines learn from (instead of examples_from)."
    )
    judges: Annotated[
        tuple[JudgeSpec, ...],
        Check(
            lambda value, where: parse_judges(value or [], where),
            {"type": "array", "items": settings_schema(JudgeSettings)},
            "text",
        ),
    ] = Field((), description="LLM judges that rate pairs of outputs in both orders (steerlab judge).")
    # After the scorers: score_differences may only name them.
    statistics: Annotated[
        StatisticsSpec,
        Check(
            lambda value, where, info: parse_statistics(
                value, where, tuple(s.name for s in info.data.get("scorers", ()))
            ),
            settings_schema(StatisticsSettings),
            "text",
            with_info=True,
        ),
    ] = Field(
        default_factory=StatisticsSpec,
        description="How Compare decides: alpha, power, the correction for many comparisons, the effects worth "
        "detecting, votes before a rating is trusted, length control, repeated pairs, raters left out.",
    )

    def to_spec(self, where: Where) -> ExperimentSpec:
        """The experiment, with the checks that need all of it (sizes, references, the sweep)."""
        spec = ExperimentSpec(
            name=self.name,
            description=self.description,
            model=self.model,
            chat_template=self.chat_template,
            probe_prompt=self.probe_prompt,
            reveal_after_vote=self.reveal_after_vote,
            rating_question=self.rating_question,
            rating_overlap=self.rating_overlap,
            neutral_prompts=self.neutral_prompts,
            prompts=self.prompts,
            generation=self.generation.to_spec(),
            vectors=self.vectors,
            variants=self.variants,
            scorers=self.scorers,
            references=self.references or (),
            training_examples=self.training_examples or (),
            judges=self.judges,
            statistics=self.statistics,
        )
        limits.check(limits.MAX_VARIANTS, len(spec.variants), str(where))
        limits.check(
            limits.MAX_GENERATIONS,
            len(spec.prompts) * len(spec.variants) * spec.generation.samples_per_prompt,
            str(where),
        )
        for i, scorer in enumerate(spec.scorers):
            if scorer.needs_references and not spec.references:
                where.child("scorers").child(i).fail(
                    f"(scorer '{scorer.name}') needs references, but the experiment has none",
                    "add a 'references' list with one entry per prompt, or remove the scorer",
                )
        if self.sweep is not None:
            spec = replace(spec, sweep=parse_sweep(self.sweep, where.child("sweep"), spec).to_dict())
        return spec


EXPERIMENT_KEYS = tuple(ExperimentSettings.model_fields)


def parse_experiment(raw: Any, where: Where, prompts: Sequence[PromptItem] | None = None) -> ExperimentSpec:
    """Validate plain data (a file's, a form's or a stored definition) into an ExperimentSpec.

    ``prompts`` replaces the ``prompts`` field when the caller has read them from a
    prompts file already.
    """
    data = as_mapping(raw, where)
    if prompts is not None:
        data = {**data, "prompts": list(prompts)}
    return ExperimentSettings.checked(data, where).to_spec(where)


def training_texts(spec: ExperimentSpec, train: TrainingSpec) -> list[str]:
    """What an adaptation baseline learns from: a vector's positive texts, or the training examples."""
    if train.examples_from:
        return [positive for positive, _ in spec.vector(train.examples_from).pairs]
    return list(spec.training_examples)


def check_against_model(spec: ExperimentSpec, facts: ModelFacts, source: str) -> None:
    """Checks that need the model: every intervention's layers exist."""
    where = Where(source, "variants")
    for i, variant in enumerate(spec.variants):
        check_variant_against_model(spec, variant, facts, where.child(i))


def check_variant_against_model(spec: ExperimentSpec, variant: VariantSpec, facts: ModelFacts, where: Where) -> None:
    if variant.train is not None and not training_texts(spec, variant.train):
        where.child("train").fail(
            "has an empty training set",
            "add 'training_examples' to the experiment or set 'examples_from' to a vector with pairs",
        )
    for j, intervention in enumerate(variant.interventions):
        intervention.check(facts, where.child("interventions").child(j))
