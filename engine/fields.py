"""Read typed fields out of parsed YAML/JSON with one-sentence errors.

Every reader takes a :class:`Where` naming the file and the field path, so a bad value
reads as: ``experiments/mood.yaml, field variants[1].interventions[0].coefficient: it is
nan; give a finite number.``
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from engine.errors import SteerLabError


@dataclass(frozen=True)
class Where:
    """A place in an input: the source (file or form) and a dotted field path."""

    source: str
    path: str = ""

    def child(self, key: str | int) -> Where:
        if isinstance(key, int):
            return Where(self.source, f"{self.path}[{key}]")
        return Where(self.source, f"{self.path}.{key}" if self.path else key)

    def __str__(self) -> str:
        return f"{self.source}, field {self.path}" if self.path else self.source

    def fail(self, problem: str, fix: str) -> NoReturn:
        raise SteerLabError(f"{self}: {problem}; {fix}.")


def as_mapping(value: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        where.fail(f"expected a mapping of fields, got {_kind(value)}", "write it as 'key: value' lines")
    return value


def as_list(value: Any, where: Where) -> Sequence[Any]:
    if not isinstance(value, list):
        where.fail(f"expected a list, got {_kind(value)}", "write it as a YAML list")
    return value


def check_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: Where) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        where.child(str(unknown[0])).fail("is not a known field", f"use one of {', '.join(allowed)}")


def required(raw: Mapping[str, Any], key: str, where: Where) -> Any:
    if key not in raw or raw[key] is None:
        where.child(key).fail("is missing", "add it")
    return raw[key]


def as_str(value: Any, where: Where, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        where.fail(f"expected text, got {_kind(value)}", "write it as text")
    if not allow_empty and not value.strip():
        where.fail("is empty", "give some text")
    return value


def as_bool(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        where.fail(f"expected true or false, got {_kind(value)}", "write true or false")
    return value


def as_int(value: Any, where: Where, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"expected a whole number, got {_kind(value)}", "write a whole number")
    if minimum is not None and value < minimum:
        where.fail(f"is {value}, below the smallest allowed value {minimum}", f"give {minimum} or more")
    if maximum is not None and value > maximum:
        where.fail(f"is {value}, above the largest allowed value {maximum}", f"give {maximum} or less")
    return value


def as_float(value: Any, where: Where, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where.fail(f"expected a number, got {_kind(value)}", "write a number")
    number = float(value)
    if not math.isfinite(number):
        where.fail(f"is {number}", "give a finite number")
    if minimum is not None and number < minimum:
        where.fail(f"is {number}, below the smallest allowed value {minimum}", f"give {minimum} or more")
    if maximum is not None and number > maximum:
        where.fail(f"is {number}, above the largest allowed value {maximum}", f"give {maximum} or less")
    return number


def as_choice(value: Any, choices: Sequence[str], where: Where) -> str:
    if value not in choices:
        where.fail(f"is {value!r}", f"use one of {', '.join(choices)}")
    return str(value)


def as_int_list(value: Any, where: Where) -> tuple[int, ...]:
    """A whole number or a non-empty list of distinct whole numbers."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else list(as_list(value, where))
    if not items:
        where.fail("is an empty list", "list at least one layer")
    numbers = tuple(as_int(item, where.child(i)) for i, item in enumerate(items))
    if len(set(numbers)) != len(numbers):
        where.fail(f"repeats a layer in {list(numbers)}", "list each layer once")
    return numbers


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"
