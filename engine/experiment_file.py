"""Read experiment files (YAML) into validated specs.

Errors name the file and the field; YAML syntax errors name the line. Paths inside the
file (prompts_file, vector files) are relative to the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.errors import SteerLabError
from engine.fields import Where, as_mapping, as_str
from engine.prompt_files import read_prompts
from engine.spec import ExperimentSpec, VectorSpec, parse_experiment


def load_experiment_file(path: str | Path) -> ExperimentSpec:
    file = Path(path)
    if not file.is_file():
        raise SteerLabError(f"Experiment file '{file}' does not exist; check the path.")
    return parse_experiment_text(file.read_text(encoding="utf-8"), str(file), file.parent)


def parse_experiment_text(text: str, source: str, base_dir: Path) -> ExperimentSpec:
    raw = parse_yaml(text, source)
    where = Where(source)
    data = as_mapping(raw, where)
    prompts = None
    if "prompts_file" in data:
        if "prompts" in data:
            where.child("prompts_file").fail("is given together with 'prompts'", "keep one of the two")
        relative = as_str(data["prompts_file"], where.child("prompts_file"))
        prompts = read_prompts(base_dir / relative, f"named in {source}, field prompts_file")
    spec = parse_experiment(data, where, prompts)
    return _resolve_vector_files(spec, base_dir)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SteerLabError(f"{source}{line}: YAML syntax error ({problem}); fix the YAML there.") from exc
    except yaml.YAMLError as exc:
        raise SteerLabError(f"{source}: YAML syntax error ({exc}); fix the YAML.") from exc


def _resolve_vector_files(spec: ExperimentSpec, base_dir: Path) -> ExperimentSpec:
    if not any(v.file for v in spec.vectors):
        return spec
    vectors = tuple(VectorSpec(v.name, file=str((base_dir / v.file).resolve())) if v.file else v for v in spec.vectors)
    return ExperimentSpec(**{**spec.__dict__, "vectors": vectors})
