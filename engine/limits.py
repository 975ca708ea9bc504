"""Limits on what one experiment may ask for, with defaults a team would choose.

An operator changes them with environment variables (``STEERLAB_MAX_PROMPTS=50000``);
every refusal is one sentence naming the limit and the variable. They are checked when an
experiment is parsed, before anything is stored, so a run never starts that could not end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import SteerLabError


@dataclass(frozen=True)
class Limit:
    name: str  # what is limited, in words
    variable: str
    default: int

    @property
    def value(self) -> int:
        raw = os.environ.get(self.variable, "")
        if not raw.strip():
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise SteerLabError(
                f"{self.variable}={raw[:40]!r} is not a whole number; set it to a number or unset it."
            ) from None
        if value < 1:
            raise SteerLabError(f"{self.variable}={value} is below 1; set it to 1 or more, or unset it.")
        return value


MAX_PROMPTS = Limit("prompts per experiment", "STEERLAB_MAX_PROMPTS", 10_000)
MAX_PROMPT_CHARS = Limit("characters per prompt", "STEERLAB_MAX_PROMPT_CHARS", 20_000)
MAX_VARIANTS = Limit("variants per experiment", "STEERLAB_MAX_VARIANTS", 64)
MAX_GENERATIONS = Limit("outputs per experiment (prompts x variants x samples)", "STEERLAB_MAX_GENERATIONS", 200_000)
MAX_VECTORS = Limit("vectors per experiment", "STEERLAB_MAX_VECTORS", 64)
MAX_EDITS = Limit("steering edits per variant", "STEERLAB_MAX_EDITS_PER_VARIANT", 16)
# A prompts or vector file is read whole into memory: bound it before reading.
MAX_FILE_BYTES = Limit("bytes", "STEERLAB_MAX_FILE_BYTES", 50_000_000)
ALL = (MAX_PROMPTS, MAX_PROMPT_CHARS, MAX_VARIANTS, MAX_GENERATIONS, MAX_VECTORS, MAX_EDITS, MAX_FILE_BYTES)


def check(limit: Limit, count: int, where: str, what: str | None = None) -> None:
    """Refuse ``count`` over the limit; ``what`` names the things counted where the limit's name does not fit."""
    if count > limit.value:
        raise SteerLabError(
            f"{where} has {count:,} {what or limit.name}, over the limit of {limit.value:,}; "
            f"use fewer, or ask the operator to raise {limit.variable}."
        )
