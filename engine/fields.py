"""Read typed fields out of parsed YAML/JSON with one-sentence errors.

Every reader takes a :class:`Where` naming the file, the field path and (for a YAML file)
the line, so a bad value reads as: ``experiments/mood.yaml, field
variants[1].interventions[0].coefficient (line 23): is nan; give a finite number.``
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from engine.errors import SteerLabError

# How a form names a list item that a file names by index (interventions[0] -> "edit 1").
_FORM_ITEMS = {"interventions": "edit", "pairs": "pair", "prompts": "prompt", "variants": "variant"}


@dataclass(frozen=True)
class Where:
    """A place in an input: the source (file or form) and a dotted field path.

    A file's errors name the field path (``variants[1].interventions[0].coefficient``);
    a form's (``labels`` given) name what the form shows: ``edit 1, 'coefficient'``, with
    ``labels`` mapping field names to the form's labels where they differ.
    """

    source: str
    path: str = ""
    labels: Mapping[str, str] | None = None
    # The line of each field path in a YAML file (from engine.experiment_file), so that a
    # file's errors name the line too; None for forms and stored definitions.
    lines: Mapping[str, int] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def form(cls, source: str, labels: Mapping[str, str] | None = None) -> Where:
        return cls(source, "", dict(labels or {}))

    def name_of(self, field: str) -> str:
        """How a message names one of this place's fields: the form's label, or the file's key."""
        if self.labels is None:
            return field
        return f"'{self.labels.get(field, field.replace('_', ' '))}'"

    def child(self, key: str | int) -> Where:
        if isinstance(key, int):
            return Where(self.source, f"{self.path}[{key}]", self.labels, self.lines)
        # A key comes from the input: keep it printable and short, so a message stays one line.
        key = short(printable(key), 40)
        return Where(self.source, f"{self.path}.{key}" if self.path else key, self.labels, self.lines)

    def parent(self) -> Where:
        """The place that holds this one (``variants[1].name`` -> ``variants[1]``; a top-level field -> the source)."""
        cut = max(self.path.rfind("."), self.path.rfind("["))
        return Where(self.source, self.path[: max(cut, 0)], self.labels, self.lines)

    def line(self) -> int | None:
        """The file line of this field, or of the nearest enclosing one that the file has (a missing field)."""
        if not self.lines:
            return None
        place: Where = self
        while place.path:
            if place.path in self.lines:
                return self.lines[place.path]
            place = place.parent()
        return None

    def __str__(self) -> str:
        if not self.path:
            return self.source
        if self.labels is None:
            line = self.line()
            return f"{self.source}, field {self.path}" + (f" (line {line})" if line is not None else "")
        return f"{self.source}, {self._form_words()}"

    def _form_words(self) -> str:
        assert self.labels is not None
        words: list[str] = []
        for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", self.path):
            if index:
                if words and words[-1] in _FORM_ITEMS:
                    words.append(f"{_FORM_ITEMS[words.pop()]} {int(index) + 1}")
                # else: an entry of a plain list field ('layers'); the field's label says enough
            else:
                words.append(name)
        *items, last = words
        if last in _FORM_ITEMS or any(last.startswith(f"{item} ") for item in _FORM_ITEMS.values()):
            return " ".join([*items, last]) if not items else f"{', '.join(items)}, {last}"
        label = self.labels.get(last, last.replace("_", " "))
        return ", ".join([*items, f"'{label}'"])

    def fail(self, problem: str, fix: str) -> NoReturn:
        # The problem often quotes the input (a method's name, a vector's name): bound it,
        # and escape line breaks and control characters, so the message stays one sentence.
        raise SteerLabError(
            f"{short(printable(str(self)), MAX_WHERE_CHARS)}: {middle(printable(problem), MAX_PROBLEM_CHARS)}; "
            f"{short(printable(fix), MAX_FIX_CHARS)}."
        )


# Longest parts of a field error's sentence (the input they quote is cut with "…").
MAX_WHERE_CHARS = 240
MAX_PROBLEM_CHARS = 200
MAX_FIX_CHARS = 240


def as_mapping(value: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        where.fail(f"expected a mapping of fields, got {_kind(value)}", "write it as 'key: value' lines")
    return value


def as_list(value: Any, where: Where) -> Sequence[Any]:
    if not isinstance(value, list):
        where.fail(f"expected a list, got {_kind(value)}", "write it as a YAML list")
    return value


def check_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: Where) -> None:
    # Keys of any type (YAML allows 1:, null: and true: keys): sorted as text.
    unknown = sorted(set(raw) - set(allowed), key=str)
    if unknown:
        where.child(str(unknown[0])).fail("is not a known field", f"use one of {', '.join(allowed)}")


def required(raw: Mapping[str, Any], key: str, where: Where) -> Any:
    if key not in raw or raw[key] is None:
        where.child(key).fail("is missing", "add it")
    return raw[key]


# Characters that no name, prompt or setting needs: NUL cannot be stored in PostgreSQL or
# named on a command line, and the other C0/C1 controls hide text or fool a terminal.
# Tab, newline and carriage return stay allowed (prompts have lines).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Unpaired UTF-16 surrogates: YAML's "\ud800" escape makes them, and no store can encode them.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What a one-line message must not contain as it is: controls, line breaks, surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

# Largest steering coefficient accepted anywhere: far above any useful strength, far below
# where float32 activations overflow to inf. A bound relative to the hidden state's norm is
# checked against the model (engine.spec.check_against_model).
MAX_COEFFICIENT = 1e4


def as_str(value: Any, where: Where, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        where.fail(f"expected text, got {_kind(value)}", "write it as text")
    if not allow_empty and not value.strip():
        where.fail("is empty", "give some text")
    bad = _CONTROL.search(value)
    if bad is not None:
        where.fail(
            f"holds the control character U+{ord(bad.group()):04X} at position {bad.start() + 1}",
            "remove it (only tabs and line breaks are allowed)",
        )
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        where.fail(
            f"holds the unpaired surrogate U+{ord(surrogate.group()):04X} at position {surrogate.start() + 1}",
            "write it as plain Unicode text",
        )
    return value


MAX_NAME_CHARS = 100


def as_name(value: Any, where: Where) -> str:
    """A name (experiment, variant, vector): one line of text, at most :data:`MAX_NAME_CHARS` characters."""
    name = as_str(value, where).strip()
    if any(ch in name for ch in "\t\r\n"):
        where.fail("holds a tab or line break", "write the name on one line")
    if len(name) > MAX_NAME_CHARS:
        where.fail(f"is {len(name)} characters long", f"use at most {MAX_NAME_CHARS}")
    return name


def as_coefficient(value: Any, where: Where) -> float:
    """A steering strength: finite, and at most :data:`MAX_COEFFICIENT` either way."""
    return as_float(value, where, -MAX_COEFFICIENT, MAX_COEFFICIENT)


def as_bool(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        where.fail(f"expected true or false, got {_kind(value)}", "write true or false")
    return value


def as_int(value: Any, where: Where, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"expected a whole number, got {_kind(value)}", "write a whole number")
    if minimum is not None and value < minimum:
        where.fail(f"is {_whole(value)}, below the smallest allowed value {minimum}", f"give {minimum} or more")
    if maximum is not None and value > maximum:
        where.fail(f"is {_whole(value)}, above the largest allowed value {maximum}", f"give {maximum} or less")
    return value


def _whole(value: int) -> str:
    """A whole number for a message: huge ones by their size (str() refuses over 4,300 digits)."""
    if abs(value).bit_length() <= 100:
        return str(value)
    digits = int(abs(value).bit_length() * math.log10(2)) + 1
    return f"a {'negative ' if value < 0 else ''}number of about {digits:,} digits"


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
        where.fail(f"is {_kind(value)}", f"use one of {', '.join(choices)}")
    return str(value)


def as_int_list(value: Any, where: Where) -> tuple[int, ...]:
    """A whole number or a non-empty list of distinct whole numbers."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else list(as_list(value, where))
    if not items:
        where.fail("is an empty list", "list at least one layer")
    numbers = tuple(as_int(item, where.child(i)) for i, item in enumerate(items))
    seen: set[int] = set()
    for number in numbers:
        if number in seen:
            where.fail(f"repeats layer {_whole(number)}", "list each layer once")
        seen.add(number)
    return numbers


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int):
        return f"int {_whole(value)}"
    if isinstance(value, float):
        return f"float {short(repr(value))}"
    if isinstance(value, str):
        return f"the text {short(repr(value))}"
    # Never the repr of a list or mapping: a YAML document with aliases can make it
    # exponentially large (a "billion laughs"), and a message must stay one short sentence.
    return f"a {type(value).__name__}"


def printable(text: str) -> str:
    """``text`` with line breaks, control characters and surrogates escaped (``\\n``, ``\\x00``)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def middle(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters in its middle: a path keeps its file name, a problem its end."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 5
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"
