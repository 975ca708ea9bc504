"""Read experiment files (YAML) into validated specs.

Errors name the file and the field; YAML syntax errors name the line. Paths inside the
file (prompts_file, vector files) are relative to the file's folder and must stay inside
it (or inside a folder the user allowed explicitly): a file shared by someone else must
not be able to read the server's own files. An upload carries no folder at all, so it
may not name files.

YAML is bounded before anything else: its size, and the size of the document once its
aliases are expanded (a 600-byte "billion laughs" document otherwise grows to gigabytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from engine.errors import SteerLabError
from engine.fields import Where, as_mapping, as_str, printable, short
from engine.judge_spec import judges_beside
from engine.model_reference import resolve_beside
from engine.prompt_files import read_prompts
from engine.spec import ExperimentSpec, VectorSpec, parse_experiment

MAX_YAML_BYTES = 2_000_000
MAX_YAML_NODES = 200_000  # nodes of the document with every alias expanded


def load_experiment_file(path: str | Path, allowed_dirs: Sequence[Path] = ()) -> ExperimentSpec:
    """Read a file; the files it names must lie in its folder or in one of ``allowed_dirs``."""
    file = Path(path)
    if not file.is_file():
        raise SteerLabError(f"Experiment file '{file}' does not exist; check the path.")
    if file.stat().st_size > MAX_YAML_BYTES:
        raise SteerLabError(
            f"Experiment file '{file}' is {file.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} allowed; "
            "put long prompt lists in a prompts_file."
        )
    roots = [file.resolve().parent, *(Path(d).resolve() for d in allowed_dirs)]
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SteerLabError(
            f"Experiment file '{file}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8."
        ) from exc
    except OSError as exc:
        raise SteerLabError(
            f"Experiment file '{file}' cannot be read ({exc.strerror}); check its permissions."
        ) from exc
    return parse_experiment_text(text, str(file), file.parent, roots)


def parse_experiment_text(
    text: str, source: str, base_dir: Path | None, allowed_roots: Sequence[Path] = ()
) -> ExperimentSpec:
    """Parse YAML text; ``base_dir`` None means it came without files (an upload): it may not name any."""
    raw = parse_yaml(text, source)
    where = Where(source, lines=field_lines(text))
    data = as_mapping(raw, where)
    prompts = None
    if "prompts_file" in data:
        if "prompts" in data:
            where.child("prompts_file").fail("is given together with 'prompts'", "keep one of the two")
        relative = as_str(data["prompts_file"], where.child("prompts_file"))
        path = _confined(relative, base_dir, allowed_roots, where.child("prompts_file"), _PROMPTS_INSTEAD)
        prompts = read_prompts(path, f"named in {source}, field prompts_file")
    spec = parse_experiment(data, where, prompts)
    # A model path is relative to the file's folder when it lies there (models are not confined to it:
    # they are read, never shown, and usually live in a shared models folder).
    spec = ExperimentSpec(
        **{
            **spec.__dict__,
            "model": resolve_beside(spec.model, base_dir),
            "judges": judges_beside(spec.judges, base_dir),  # a judge's own model file, like the model's
        }
    )
    return _resolve_vector_files(spec, base_dir, allowed_roots, where)


def parse_yaml(text: str, source: str) -> Any:
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_YAML_BYTES:
        raise SteerLabError(
            f"{source} is {size:,} bytes, over the {MAX_YAML_BYTES:,} allowed; put long prompt lists in a prompts_file."
        )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise SteerLabError(
                f"{source} expands to more than {MAX_YAML_NODES:,} values through YAML aliases (*name); "
                "write the values out instead of nesting aliases."
            )
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = printable((exc.problem or exc.context or "invalid YAML")[:200])
        raise SteerLabError(f"{source}{line}: YAML syntax error ({problem}); fix the YAML there.") from exc
    except yaml.YAMLError as exc:
        raise SteerLabError(f"{source}: YAML syntax error ({printable(str(exc)[:200])}); fix the YAML.") from exc
    except RecursionError as exc:
        raise SteerLabError(
            f"{source} nests lists or mappings too deeply to read; write the YAML with fewer levels."
        ) from exc
    except (ValueError, OverflowError) as exc:
        # A constructor's own error: a whole number of over 4,300 digits, a date like 2024-13-45.
        if "integer string conversion" in str(exc):
            raise SteerLabError(
                f"{source} holds a whole number of more than 4,300 digits; write a smaller number."
            ) from exc
        raise SteerLabError(
            f"{source}: a value cannot be read ({printable(short(str(exc), 120))}); fix it in the YAML."
        ) from exc


def field_lines(text: str) -> dict[str, int]:
    """The line (from 1) of every field path of a YAML document that :func:`parse_yaml` accepted.

    Paths are spelt as :class:`Where` spells them (``variants[1].interventions[0].coefficient``),
    so an error about a field can name its line. A mapping entry's line is its key's.
    """
    lines: dict[str, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return lines
    stack: list[tuple[yaml.Node, Where]] = [(root, Where(""))]
    while stack and len(lines) < MAX_YAML_NODES:
        node, where = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = where.child(str(key.value))
                lines.setdefault(here.path, key.start_mark.line + 1)
                stack.append((value, here))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = where.child(i)
                lines.setdefault(here.path, item.start_mark.line + 1)
                stack.append((item, here))
    return lines


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Node count with aliases expanded, computed on the shared graph (linear time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle counts once (safe_load refuses recursive documents anyway)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(total, MAX_YAML_NODES + 1)
    return memo[key]


_PROMPTS_INSTEAD = "put the prompts in the file itself, or upload them with the New experiment form"
_VECTOR_INSTEAD = "leave the vector out, and upload its file for the experiment on the Variants page"


def _confined(relative: str, base_dir: Path | None, roots: Sequence[Path], where: Where, instead: str) -> Path:
    """The named file, if it lies inside an allowed folder once symlinks are resolved.

    ``instead`` says what an upload (no ``base_dir``) should do rather than name the file.
    """
    if base_dir is None:
        where.fail(
            "names a file, which an uploaded experiment cannot do (the server's files are not yours to read)",
            instead,
        )
    if any(ch in relative for ch in "\t\r\n"):
        where.fail("holds a tab or line break", "name the file on one line")
    try:
        path = (base_dir / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13), a name too long
        reason = "a symlink loop" if isinstance(exc, RuntimeError) else exc.strerror or "an unusable name"
        where.fail(f"names a path that cannot be followed ({reason})", "name a plain file in the folder")
    allowed = roots or [base_dir.resolve()]
    if not any(path.is_relative_to(root) for root in allowed):
        where.fail(
            f"points outside the experiment file's folder ({allowed[0]})",
            "move the file into that folder, or allow its folder with --allow-path",
        )
    return path


def _resolve_vector_files(
    spec: ExperimentSpec, base_dir: Path | None, roots: Sequence[Path], where: Where
) -> ExperimentSpec:
    if not any(v.file for v in spec.vectors):
        return spec
    vectors = tuple(
        VectorSpec(
            v.name,
            file=str(
                _confined(v.file, base_dir, roots, where.child("vectors").child(v.name).child("file"), _VECTOR_INSTEAD)
            ),
        )
        if v.file
        else v
        for v in spec.vectors
    )
    return ExperimentSpec(**{**spec.__dict__, "vectors": vectors})
