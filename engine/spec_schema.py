"""The JSON Schema of experiment files, from the same declarations that validate them.

``steerlab schema`` writes it; point an editor at it (VS Code with the YAML extension:
``# yaml-language-server: $schema=steerlab.schema.json`` as a file's first line, or the
``yaml.schemas`` setting) and experiment files get completion, descriptions and checks
as they are typed. Steering methods and scorers come from their registries, so a method
added to ``engine/methods`` or installed as a plugin is in the schema too.

The schema checks the shape of a file; :func:`engine.spec.parse_experiment` stays the
judge (it also checks what a schema cannot say: vector names, references per prompt).
"""

from __future__ import annotations

from typing import Any

from engine import methods, scorers
from engine.declaration import resolve_later_refs, settings_schema
from engine.spec import ExperimentSettings, VariantSettings

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def experiment_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of experiment files, with every registered method and scorer."""
    schema = settings_schema(ExperimentSettings)
    # Either the prompts themselves or a file of them.
    schema["required"] = [key for key in schema.get("required", []) if key != "prompts"]
    schema["oneOf"] = [{"required": ["prompts"]}, {"required": ["prompts_file"]}]
    defs: dict[str, Any] = {"variant": settings_schema(VariantSettings)}
    method_refs = []
    for name, cls in sorted(methods.registry().items()):
        entry = settings_schema(cls.settings)
        # 'method' may be left out for vector addition (the default), so only 'add' matches without it.
        entry["properties"] = {"method": {"const": name, "description": cls.summary}, **entry["properties"]}
        if name != "add":
            entry["required"] = ["method", *entry.get("required", [])]
        entry["title"], entry["description"] = cls.title, cls.summary
        defs[f"method_{name}"] = entry
        method_refs.append({"$ref": f"#/$defs/method_{name}"})
    defs["intervention"] = {"oneOf": method_refs}
    scorer_refs = []
    for kind, scorer in sorted(scorers.registry().items()):
        entry = settings_schema(scorer.settings)
        entry["properties"] = {
            "name": {"type": "string", "minLength": 1, "description": "The scorer's name (unique)."},
            "kind": {"const": kind, "description": scorer.summary},
            **entry["properties"],
        }
        entry["required"] = ["name", "kind", *entry.get("required", [])]
        entry["title"], entry["description"] = f"{kind} scorer", scorer.summary
        defs[f"scorer_{kind}"] = entry
        scorer_refs.append({"$ref": f"#/$defs/scorer_{kind}"})
    defs["scorer"] = {"oneOf": scorer_refs}
    return resolve_later_refs(
        {
            "$schema": DIALECT,
            **{k: v for k, v in schema.items() if k != "title"},
            "title": "SteerLab experiment file",
            "$defs": {**schema.get("$defs", {}), **defs},
        }
    )
