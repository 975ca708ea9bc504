"""The ``judges`` section of an experiment file: LLM judges that rate pairs of outputs.

A judge is a rater of kind ``judge``: a local causal LM (the experiment's own model unless
``model`` names another hub id, folder or GGUF file) or an OpenAI-compatible ``endpoint``,
with a ``rubric`` that says what makes one output better than the other. It reads each
pair of outputs in both orders and stores a vote only when both readings agree (see
:mod:`engine.judge` and :mod:`service.judging`).

Which pairs a judge reads (``pairs``): ``baseline`` (the default) pairs every variant with
the baseline on each (prompt, sample), as a sweep of 60 variants would otherwise make
1,770 pairs per row; ``all`` pairs every two variants. ``max_pairs`` caps the number of
pairs, taken prompt by prompt so that every variant is compared on the same prompts.

Declared as pydantic settings (:class:`JudgeSettings`) like every other section, so
``steerlab schema`` describes it; the spec itself is the frozen :class:`JudgeSpec`.
Torch-free: experiment definitions are read without torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import Field, ValidationInfo, model_validator

from engine import limits
from engine.declaration import NAME, Check, Settings, choice, nested, number, where_of, whole
from engine.errors import SteerLabError
from engine.fields import Where, as_list, as_str
from engine.model_reference import MODEL_SCHEMA, parse_model_reference, resolve_beside

JUDGE_PAIRS = ("baseline", "all")
MAX_JUDGES = 16
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_TOKENS = 16
# How an environment variable may be named (POSIX): a key pasted in its place fails this.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class EndpointSpec:
    """An OpenAI-compatible chat completions endpoint; the key is read from ``api_key_env`` at run time."""

    base_url: str
    model: str
    api_key_env: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_tokens: int = DEFAULT_MAX_TOKENS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env}
        if self.timeout_seconds != DEFAULT_TIMEOUT_SECONDS:
            out["timeout_seconds"] = self.timeout_seconds
        if self.max_tokens != DEFAULT_MAX_TOKENS:
            out["max_tokens"] = self.max_tokens
        return out


@dataclass(frozen=True)
class JudgeSpec:
    """One judge: a rubric, and a local model (None: the experiment's own) or an endpoint."""

    name: str
    rubric: str
    model: str | None = None
    endpoint: EndpointSpec | None = None
    pairs: str = "baseline"
    max_pairs: int | None = None

    @property
    def kind(self) -> str:
        return "endpoint" if self.endpoint is not None else "local"

    def model_for(self, experiment_model: str) -> str:
        """The local model this judge loads: its own, or the experiment's."""
        return self.model or experiment_model

    def describe(self, experiment_model: str) -> str:
        """What judges, in words, for pages and logs."""
        if self.endpoint is not None:
            return f"model '{self.endpoint.model}' at {self.endpoint.base_url}"
        own = "" if self.model else " (the experiment's own)"
        return f"local model '{self.model_for(experiment_model)}'{own}"

    def fingerprint(self, experiment_model: str, question: str) -> str:
        """A hash of what decides its readings (not which pairs it reads): stored readings made
        under another fingerprint were made by a different judge."""
        data = {
            "rubric": self.rubric,
            "question": question,
            "model": None if self.endpoint is not None else self.model_for(experiment_model),
            "endpoint": None if self.endpoint is None else [self.endpoint.base_url, self.endpoint.model],
        }
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "rubric": self.rubric}
        if self.model is not None:
            out["model"] = self.model
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint.to_dict()
        if self.pairs != "baseline":
            out["pairs"] = self.pairs
        if self.max_pairs is not None:
            out["max_pairs"] = self.max_pairs
        return out


def _rubric(value: Any, where: Where) -> str:
    text = as_str(value, where, allow_empty=True).strip()
    if not text:
        where.fail(
            "is empty",
            "write what makes one output better, for example 'Prefer the reply that is more upbeat "
            "and still answers the message'",
        )
    limits.check(limits.MAX_PROMPT_CHARS, len(text), str(where), "characters")
    return text


def _base_url(value: Any, where: Where) -> str:
    url = as_str(value, where).strip()
    if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
        where.fail(f"is '{url}', not an http(s) URL", "give the endpoint's base URL, like http://127.0.0.1:8000/v1")
    return url.rstrip("/")


def _env_name(value: Any, where: Where) -> str:
    name = as_str(value, where).strip()
    if not _ENV_NAME.fullmatch(name):
        # Never quote it: a key pasted here by mistake must not reach logs or pages.
        where.fail(
            "is not an environment variable's name (it may be the key itself)",
            "name the variable that holds the key, like OPENAI_API_KEY, and keep the key out of the file",
        )
    return name


_TEXT = Check(lambda value, where: as_str(value, where).strip(), {"type": "string", "minLength": 1}, "text")


class EndpointSettings(Settings):
    """An OpenAI-compatible endpoint (``/chat/completions``): where, which model, which key."""

    base_url: Annotated[str, Check(_base_url, {"type": "string", "pattern": "^https?://"}, "text")] = Field(
        description="The endpoint's base URL, up to /v1 (the client adds /chat/completions)."
    )
    model: Annotated[str, _TEXT] = Field(description="The model name the endpoint serves.")
    api_key_env: Annotated[str, Check(_env_name, {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}, "text")] = (
        Field(description="The environment variable that holds the API key (read at run time, never stored).")
    )
    timeout_seconds: Annotated[float, number(1.0, 3600.0)] = Field(
        DEFAULT_TIMEOUT_SECONDS, description="How long one request may take before the run fails."
    )
    max_tokens: Annotated[int, whole(1, 4096)] = Field(
        DEFAULT_MAX_TOKENS, description="Tokens the endpoint may answer with (the label is read from them)."
    )

    def to_spec(self) -> EndpointSpec:
        return EndpointSpec(self.base_url, self.model, self.api_key_env, self.timeout_seconds, self.max_tokens)


class JudgeSettings(Settings):
    """One entry of ``judges``: a local model or an endpoint, and a rubric."""

    name: Annotated[str, NAME] = Field(description="The judge's name; its votes are stored as rater 'judge:<name>'.")
    rubric: Annotated[str, Check(_rubric, {"type": "string", "minLength": 1}, "text")] = Field(
        description="What makes one output better than the other, in plain words."
    )
    model: Annotated[str | None, Check(parse_model_reference, MODEL_SCHEMA, "text")] = Field(
        None,
        description="A hub id, folder or GGUF file to judge with (default: the experiment's own model).",
    )
    endpoint: Annotated[EndpointSettings | None, nested(EndpointSettings)] = Field(
        None, description="Judge with an OpenAI-compatible endpoint instead of a local model."
    )
    pairs: Annotated[str, choice(JUDGE_PAIRS)] = Field(
        "baseline", description="baseline: every variant against the baseline; all: every two variants."
    )
    max_pairs: Annotated[int | None, whole(1)] = Field(
        None, description="Read at most this many pairs (prompt by prompt)."
    )

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> JudgeSettings:
        if self.model is not None and self.endpoint is not None:
            where_of(info).child("endpoint").fail(
                "is given together with 'model'", "keep one: a local model, or an endpoint"
            )
        return self

    def to_spec(self) -> JudgeSpec:
        return JudgeSpec(
            name=self.name,
            rubric=self.rubric,
            model=self.model,
            endpoint=self.endpoint.to_spec() if self.endpoint is not None else None,
            pairs=self.pairs,
            max_pairs=self.max_pairs,
        )


def parse_judges(raw: Any, where: Where) -> tuple[JudgeSpec, ...]:
    """Validate the ``judges`` list: each entry, and names that differ."""
    items = as_list(raw, where)
    if len(items) > MAX_JUDGES:
        where.fail(f"has {len(items)} judges", f"declare at most {MAX_JUDGES}")
    judges: list[JudgeSpec] = []
    for i, item in enumerate(items):
        judge = JudgeSettings.checked(item, where.child(i)).to_spec()
        if any(j.name == judge.name for j in judges):
            where.child(i).child("name").fail(f"repeats the judge name {judge.name!r}", "give each judge its own name")
        judges.append(judge)
    return tuple(judges)


def find_judge(judges: tuple[JudgeSpec, ...], name: str | None, experiment: str) -> JudgeSpec:
    """The judge called ``name`` (None: the only, or first, judge); one sentence when there is none."""
    if not judges:
        raise_no_judges(experiment)
    if name is None:
        return judges[0]
    found = next((j for j in judges if j.name == name), None)
    if found is None:
        known = ", ".join(repr(j.name) for j in judges)
        raise SteerLabError(
            f"Experiment '{experiment}' has no judge named {name!r}; pick one of {known} (its 'judges' section)."
        )
    return found


def raise_no_judges(experiment: str) -> NoReturn:
    raise SteerLabError(
        f"Experiment '{experiment}' declares no judge; add a 'judges' section to its file, like "
        "'judges: [{name: tone, rubric: Prefer the reply that is more upbeat}]', and store it again."
    )


def judges_beside(judges: tuple[JudgeSpec, ...], base_dir: Path | None) -> tuple[JudgeSpec, ...]:
    """The judges with a relative model path resolved against the experiment file's folder, as its ``model`` is."""
    return tuple(replace(j, model=resolve_beside(j.model, base_dir)) if j.model else j for j in judges)
