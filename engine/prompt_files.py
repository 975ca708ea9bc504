"""Read prompts from CSV, JSONL or plain-text files, naming the line of any problem.

A JSONL line is ``{"prompt": "..."}`` (a user message) or ``{"messages": [...]}`` (a
conversation, see :mod:`engine.conversation`); CSV and text files hold texts only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine import limits
from engine.conversation import PromptItem, parse_messages
from engine.errors import SteerLabError
from engine.fields import Where, middle, printable, short

PROMPT_FILE_TYPES = (".csv", ".jsonl", ".txt")


def read_prompts(path: Path, named_in: str) -> list[PromptItem]:
    """Prompts from ``path``; ``named_in`` says where the path came from, for messages."""
    shown = middle(printable(str(path)))
    try:
        is_file = path.is_file()
    except OSError as exc:  # a name too long, a folder that cannot be entered
        raise SteerLabError(
            f"Prompts file '{shown}' ({named_in}) cannot be opened ({exc.strerror}); check the path."
        ) from exc
    if not is_file:
        raise SteerLabError(
            f"Prompts file '{shown}' ({named_in}) does not exist; check the path, relative to the experiment file."
        )
    if path.suffix not in PROMPT_FILE_TYPES:
        raise SteerLabError(
            f"Prompts file '{shown}' has type '{short(printable(path.suffix), 20)}'; use one of {', '.join(PROMPT_FILE_TYPES)}."
        )
    limits.check(limits.MAX_FILE_BYTES, path.stat().st_size, f"Prompts file '{shown}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SteerLabError(f"Prompts file '{shown}' is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    except OSError as exc:
        raise SteerLabError(f"Prompts file '{shown}' cannot be read ({exc.strerror}); check its permissions.") from exc
    return parse_prompts(text, path.suffix, f"Prompts file '{shown}'")


def parse_prompts(text: str, suffix: str, source: str) -> list[PromptItem]:
    """Prompts from file content (also used for uploads in the dashboard).

    Reading stops past the prompt limit, so a huge file is refused without holding all its lines.
    """
    # Universal line endings (\n, \r\n, \r); the csv module reads them untranslated.
    lines = io.StringIO(text, newline="" if suffix == ".csv" else None)
    found: Iterable[PromptItem]
    if suffix == ".jsonl":
        found = _jsonl(lines, source)
    elif suffix == ".csv":
        found = _csv(lines, source)
    else:
        found = (line.strip() for line in lines if line.strip())
    prompts: list[PromptItem] = []
    most = limits.MAX_PROMPTS.value
    for prompt in found:
        if len(prompts) == most:
            raise SteerLabError(
                f"{source} holds more than {most:,} prompts, the limit per experiment; "
                f"use fewer, or ask the operator to raise {limits.MAX_PROMPTS.variable}."
            )
        prompts.append(prompt)
    if not prompts:
        raise SteerLabError(f"{source} holds no prompts; add at least one.")
    return prompts


def _jsonl(lines: Iterable[str], source: str) -> Iterator[PromptItem]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SteerLabError(
                f"{source}, line {number}: not valid JSON ({exc.msg}); write one JSON object per line."
            ) from exc
        except RecursionError as exc:
            raise SteerLabError(
                f"{source}, line {number}: nests JSON too deeply; write one flat JSON object per line."
            ) from exc
        if isinstance(item, dict) and "messages" in item:
            if "prompt" in item:
                raise SteerLabError(f'{source}, line {number}: has both "prompt" and "messages"; keep one of the two.')
            # Errors name the line and the message: "..., line 7, field messages[1].role: ...".
            yield parse_messages(item["messages"], Where(f"{source}, line {number}", "messages"))
            continue
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt.strip():
            raise SteerLabError(
                f'{source}, line {number}: has no non-empty "prompt" text nor "messages"; '
                'write {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}.'
            )
        yield prompt


def _csv(lines: Iterable[str], source: str) -> Iterator[str]:
    rows = csv.reader(lines)
    try:
        first = next(rows, None)
        if first is None:
            return
        header = [h.strip().lower() for h in first]
        if "prompt" not in header:
            raise SteerLabError(
                f"{source}, line 1: the header has no 'prompt' column; name the prompts' column 'prompt'."
            )
        column = header.index("prompt")
        for row in rows:
            number = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise SteerLabError(
                    f"{source}, line {number}: has {len(row)} fields where the header has {len(header)}; "
                    "quote prompts that contain commas."
                )
            if not row[column].strip():
                raise SteerLabError(f"{source}, line {number}: the prompt is empty; write a prompt or delete the line.")
            yield row[column]
    except csv.Error as exc:
        raise SteerLabError(f"{source}, line {rows.line_num}: not valid CSV ({exc}); fix the quoting there.") from exc
