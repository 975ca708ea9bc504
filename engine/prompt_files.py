"""Read prompts from CSV, JSONL or plain-text files, naming the line of any problem."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from engine.errors import SteerLabError

PROMPT_FILE_TYPES = (".csv", ".jsonl", ".txt")


def read_prompts(path: Path, named_in: str) -> list[str]:
    """Prompts from ``path``; ``named_in`` says where the path came from, for messages."""
    if not path.is_file():
        raise SteerLabError(
            f"Prompts file '{path}' ({named_in}) does not exist; check the path, relative to the experiment file."
        )
    if path.suffix not in PROMPT_FILE_TYPES:
        raise SteerLabError(
            f"Prompts file '{path}' has type '{path.suffix}'; use one of {', '.join(PROMPT_FILE_TYPES)}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SteerLabError(f"Prompts file '{path}' is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    return parse_prompts(text, path.suffix, f"Prompts file '{path}'")


def parse_prompts(text: str, suffix: str, source: str) -> list[str]:
    """Prompts from file content (also used for uploads in the dashboard)."""
    if suffix == ".jsonl":
        prompts = _jsonl(text, source)
    elif suffix == ".csv":
        prompts = _csv(text, source)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SteerLabError(f"{source} holds no prompts; add at least one.")
    return prompts


def _jsonl(text: str, source: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SteerLabError(
                f"{source}, line {number}: not valid JSON ({exc.msg}); write one JSON object per line."
            ) from exc
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt.strip():
            raise SteerLabError(f'{source}, line {number}: has no non-empty "prompt" text; write {{"prompt": "..."}}.')
        prompts.append(prompt)
    return prompts


def _csv(text: str, source: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "prompt" not in header:
        raise SteerLabError(f"{source}, line 1: the header has no 'prompt' column; name the prompts' column 'prompt'.")
    column = header.index("prompt")
    prompts = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise SteerLabError(
                f"{source}, line {number}: has {len(row)} fields where the header has {len(header)}; quote prompts that contain commas."
            )
        if not row[column].strip():
            raise SteerLabError(f"{source}, line {number}: the prompt is empty; write a prompt or delete the line.")
        prompts.append(row[column])
    return prompts
