"""The declarative experiment definition, kept apart from the code that runs it.

An :class:`ExperimentSpec` says which model, which prompts, how to decode, which vectors
(from which pairs) and which variants (baseline, prompting, steering edits). It is
parsed from plain data (an experiment file or a dashboard form) by :func:`parse_experiment`,
which checks every field and names it on error, and turned back into plain data by
:meth:`ExperimentSpec.to_dict` for storage. Checks that need the model (layer ranges)
live in :func:`check_against_model`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine import limits, methods
from engine.extract import EXTRACTION_METHODS, READ_POSITIONS
from engine.fields import (
    MAX_NAME_CHARS,
    Where,
    as_bool,
    as_choice,
    as_float,
    as_int,
    as_list,
    as_mapping,
    as_name,
    as_str,
    check_keys,
    required,
)
from engine.generation import Decoding
from engine.methods.base import ModelFacts, SteeringMethod
from engine.scorers import Scorer, parse_scorer
from engine.training import TrainingSpec, parse_training

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
class VectorSpec:
    """A named vector: extracted from contrastive pairs, or read from a safetensors file."""

    name: str
    pairs: tuple[tuple[str, str], ...] = ()
    method: str = "mean_diff"
    read: str = "last"
    pair_index: int = 0
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.file is not None:
            return {"file": self.file}
        out: dict[str, Any] = {"method": self.method, "read": self.read, "pairs": [list(p) for p in self.pairs]}
        if self.method == "single_pair":
            out["pair_index"] = self.pair_index
        return out


@dataclass(frozen=True)
class VariantSpec:
    """One configuration to compare: plain, prompted, steered, or prompted and steered."""

    name: str
    prefix: str = ""
    system: str = ""
    interventions: tuple[SteeringMethod, ...] = ()
    description: str = ""
    train: TrainingSpec | None = None  # an adaptation baseline: a LoRA adapter or a fine-tuned copy

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
        return out


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    model: str
    prompts: tuple[str, ...]
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
            "prompts": list(self.prompts),
            "generation": self.generation.to_dict(),
            "vectors": {v.name: v.to_dict() for v in self.vectors},
            "variants": [v.to_dict() for v in self.variants],
            "scorers": [s.to_dict() for s in self.scorers],
            **({"sweep": self.sweep} if self.sweep is not None else {}),
            **({"references": [list(r) for r in self.references]} if self.references else {}),
            **({"training_examples": list(self.training_examples)} if self.training_examples else {}),
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
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def vector(self, name: str) -> VectorSpec:
        return next(v for v in self.vectors if v.name == name)


EXPERIMENT_KEYS = (
    "name",
    "description",
    "model",
    "chat_template",
    "probe_prompt",
    "reveal_after_vote",
    "rating_question",
    "rating_overlap",
    "neutral_prompts",
    "prompts",
    "prompts_file",
    "generation",
    "vectors",
    "variants",
    "scorers",
    "sweep",
    "references",
    "training_examples",
)


def parse_experiment(raw: Any, where: Where, prompts: Sequence[str] | None = None) -> ExperimentSpec:
    """Validate plain data into an ExperimentSpec.

    ``prompts`` replaces the ``prompts`` field when the caller has read them from a
    prompts file already.
    """
    data = as_mapping(raw, where)
    check_keys(data, EXPERIMENT_KEYS, where)
    name = as_name(required(data, "name", where), where.child("name"))
    prompt_list = (
        list(prompts) if prompts is not None else as_list(required(data, "prompts", where), where.child("prompts"))
    )
    limits.check(limits.MAX_PROMPTS, len(prompt_list), str(where))
    prompts = [as_str(p, where.child("prompts").child(i)) for i, p in enumerate(prompt_list)]
    if not prompts:
        where.child("prompts").fail("is an empty list", "give at least one prompt")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    limits.check(limits.MAX_PROMPT_CHARS, len(prompts[longest]), str(where.child("prompts").child(longest)))
    vectors = _parse_vectors(data.get("vectors") or {}, where.child("vectors"))
    variants = _parse_variants(data.get("variants"), where.child("variants"), {v.name for v in vectors})
    scorers_raw = as_list(data.get("scorers") or [], where.child("scorers"))
    scorers = tuple(parse_scorer(s, where.child("scorers").child(i)) for i, s in enumerate(scorers_raw))
    if len({s.name for s in scorers}) != len(scorers):
        where.child("scorers").fail("has two scorers with the same name", "give each scorer its own name")
    spec = ExperimentSpec(
        name=name,
        description=_text(data.get("description", ""), where.child("description"), allow_empty=True),
        model=as_str(required(data, "model", where), where.child("model")).strip(),
        chat_template=as_choice(data.get("chat_template", "auto"), CHAT_TEMPLATE_MODES, where.child("chat_template")),
        probe_prompt=_text(data.get("probe_prompt", DEFAULT_PROBE), where.child("probe_prompt")),
        reveal_after_vote=as_bool(data.get("reveal_after_vote", False), where.child("reveal_after_vote")),
        rating_question=_text(
            data.get("rating_question", DEFAULT_RATING_QUESTION), where.child("rating_question")
        ).strip(),
        rating_overlap=as_float(
            data.get("rating_overlap", DEFAULT_RATING_OVERLAP), where.child("rating_overlap"), minimum=0.0, maximum=1.0
        ),
        neutral_prompts=_parse_texts(
            data.get("neutral_prompts", list(DEFAULT_NEUTRAL_PROMPTS)), where.child("neutral_prompts")
        ),
        prompts=tuple(prompts),
        generation=_parse_generation(data.get("generation") or {}, where.child("generation")),
        vectors=vectors,
        variants=variants,
        scorers=scorers,
    )
    limits.check(limits.MAX_VARIANTS, len(spec.variants), str(where))
    limits.check(
        limits.MAX_GENERATIONS,
        len(spec.prompts) * len(spec.variants) * spec.generation.samples_per_prompt,
        str(where),
    )
    if data.get("references") is not None:
        spec = replace(spec, references=_parse_references(data["references"], where.child("references"), len(prompts)))
    for i, scorer in enumerate(scorers):
        if scorer.needs_references and not spec.references:
            where.child("scorers").child(i).fail(
                f"(scorer '{scorer.name}') needs references, but the experiment has none",
                "add a 'references' list with one entry per prompt, or remove the scorer",
            )
    if data.get("training_examples") is not None:
        spec = replace(
            spec, training_examples=_parse_texts(data["training_examples"], where.child("training_examples"))
        )
    if data.get("sweep") is not None:
        from engine.sweep import parse_sweep  # the sweep module builds specs, so it imports this one

        config = parse_sweep(data["sweep"], where.child("sweep"), spec)
        spec = ExperimentSpec(**{**spec.__dict__, "sweep": config.to_dict()})
    return spec


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


def _parse_generation(raw: Any, where: Where) -> GenerationSpec:
    data = as_mapping(raw, where)
    keys = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "samples_per_prompt")
    check_keys(data, keys, where)
    do_sample = as_bool(data.get("do_sample", False), where.child("do_sample"))
    samples = as_int(data.get("samples_per_prompt", 1), where.child("samples_per_prompt"), 1, 1000)
    if samples > 1 and not do_sample:
        where.child("samples_per_prompt").fail(
            f"is {samples} with greedy decoding, which gives the same output every time", "set do_sample: true or use 1"
        )
    temperature = as_float(data.get("temperature", 1.0), where.child("temperature"), 0.0, 100.0)
    if temperature < MIN_TEMPERATURE:
        # Below this, logits / temperature overflow to inf and sampling breaks.
        where.child("temperature").fail(
            f"is {temperature:g}, below {MIN_TEMPERATURE}",
            f"give {MIN_TEMPERATURE} or more, or do_sample: false for greedy decoding",
        )
    decoding = Decoding(
        max_new_tokens=as_int(data.get("max_new_tokens", 48), where.child("max_new_tokens"), 1, 4096),
        do_sample=do_sample,
        temperature=temperature,
        top_k=as_int(data.get("top_k", 0), where.child("top_k"), 0),
        top_p=as_float(data.get("top_p", 1.0), where.child("top_p"), 0.0, 1.0),
    )
    if decoding.top_p == 0.0:
        where.child("top_p").fail("is 0, which keeps no token", "give a value in (0, 1]")
    return GenerationSpec(decoding, as_int(data.get("seed", 0), where.child("seed"), 0), samples)


def _parse_vectors(raw: Any, where: Where) -> tuple[VectorSpec, ...]:
    data = as_mapping(raw, where)
    limits.check(limits.MAX_VECTORS, len(data), str(where))
    out = []
    for name, entry in data.items():
        here = where.child(str(name)[:MAX_NAME_CHARS])
        name = as_name(
            str(name), Where(here.source, f"{where.path} name" if where.path else "vector name", here.labels)
        )
        spec = as_mapping(entry, here)
        check_keys(spec, ("method", "read", "pairs", "pair_index", "file"), here)
        if "file" in spec:
            out.append(VectorSpec(str(name), file=as_str(spec["file"], here.child("file"))))
            continue
        pairs_raw = as_list(required(spec, "pairs", here), here.child("pairs"))
        if not pairs_raw:
            here.child("pairs").fail("is an empty list", "give at least one [positive, negative] pair")
        limits.check(limits.MAX_PROMPTS, len(pairs_raw), str(here.child("pairs")), "pairs")
        pairs = tuple(_parse_pair(p, here.child("pairs").child(i)) for i, p in enumerate(pairs_raw))
        method = as_choice(spec.get("method", "mean_diff"), EXTRACTION_METHODS, here.child("method"))
        pair_index = as_int(spec.get("pair_index", 0), here.child("pair_index"), 0, len(pairs) - 1)
        read = as_choice(spec.get("read", "last"), READ_POSITIONS, here.child("read"))
        out.append(VectorSpec(str(name), pairs, method, read, pair_index))
    return tuple(out)


def _parse_pair(raw: Any, where: Where) -> tuple[str, str]:
    if isinstance(raw, Mapping):
        check_keys(raw, ("positive", "negative"), where)
        positive, negative = required(raw, "positive", where), required(raw, "negative", where)
    elif isinstance(raw, list) and len(raw) == 2:
        positive, negative = raw
    else:
        where.fail("is not a pair", "write [positive text, negative text] or positive:/negative: fields")
    return _text(positive, where.child("positive")), _text(negative, where.child("negative"))


def _parse_variants(raw: Any, where: Where, vector_names: set[str]) -> tuple[VariantSpec, ...]:
    if raw is None:
        where.fail("is missing", "add a list of variants, for example '- name: baseline'")
    items = as_list(raw, where)
    if not items:
        where.fail("is an empty list", "define at least one variant, for example 'name: baseline'")
    variants: list[VariantSpec] = []
    for i, item in enumerate(items):
        variant = parse_variant(item, where.child(i), vector_names)
        if any(v.name == variant.name for v in variants):
            where.child(i).child("name").fail(
                f"repeats the variant name {variant.name!r}", "give each variant its own name"
            )
        variants.append(variant)
    return tuple(variants)


def parse_variant(raw: Any, where: Where, vector_names: set[str]) -> VariantSpec:
    """Validate one variant; its interventions' methods come from the registry."""
    data = as_mapping(raw, where)
    check_keys(data, ("name", "kind", "description", "prefix", "system", "interventions", "train"), where)
    interventions_raw = as_list(data.get("interventions") or [], where.child("interventions"))
    limits.check(limits.MAX_EDITS, len(interventions_raw), str(where.child("interventions")))
    interventions = tuple(
        methods.parse(x, where.child("interventions").child(i)) for i, x in enumerate(interventions_raw)
    )
    for i, intervention in enumerate(interventions):
        for vector in intervention.vector_names():
            if vector not in vector_names:
                known = ", ".join(sorted(vector_names)) or "none are defined"
                where.child("interventions").child(i).child("vector").fail(
                    f"names vector {vector!r}, which the experiment does not define (defined: {known})",
                    "define it under 'vectors' or fix the name",
                )
    variant = VariantSpec(
        name=as_name(required(data, "name", where), where.child("name")),
        description=_text(data.get("description", ""), where.child("description"), allow_empty=True),
        prefix=_text(data.get("prefix", ""), where.child("prefix"), allow_empty=True),
        system=_text(data.get("system", ""), where.child("system"), allow_empty=True),
        interventions=interventions,
        train=parse_training(data["train"], where.child("train")) if data.get("train") is not None else None,
    )
    if variant.train is not None and (variant.interventions or variant.prefix or variant.system):
        where.child("train").fail(
            "is combined with prompting or steering in one variant",
            "make the adapter or fine-tune a variant of its own",
        )
    if variant.train is not None and variant.train.examples_from and variant.train.examples_from not in vector_names:
        where.child("train").child("examples_from").fail(
            f"names vector {variant.train.examples_from!r}, which the experiment does not define",
            "name a vector with pairs",
        )
    if "kind" in data:
        kind = as_choice(data["kind"], VARIANT_KINDS, where.child("kind"))
        if kind == "prompting" and not (variant.system.strip() or variant.prefix.strip()):
            where.child("system").fail(
                "and the prefix are both empty", "write a system prompt or a prefix (or make it a baseline)"
            )
        if kind == "steering" and not variant.interventions:
            where.child("interventions").fail("is empty", "add at least one steering edit")
        if kind != variant.kind:
            where.child("kind").fail(
                f"says {kind!r} but the fields given make a {variant.kind!r} variant",
                "baseline has no prefix, system or interventions; prompting has a prefix or system; steering has interventions; lora and finetune have 'train'",
            )
    return variant


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
