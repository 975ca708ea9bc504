"""Bad input: one clear sentence on stderr, exit code 2, and nothing already stored lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from engine.vectors import SteeringVector, save_vector
from service.cli import main
from tests.conftest import MOOD_FILE, needs_models

pytestmark = needs_models


def mood(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=6)
    data["prompts"] = data["prompts"][:2]
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def stored_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stored")
    path = folder / "ok.yaml"
    path.write_text(yaml.safe_dump(mood()))
    db = folder / "steerlab.db"
    assert main(["run", str(path), "--db", str(db), "--device", "cpu"]) == 0
    return db


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in ("experiments", "prompts", "variants", "vectors", "generations", "ratings")
        }


def fails_with(capsys: pytest.CaptureFixture[str], db: Path, args: list[str], *fragments: str) -> str:
    before = snapshot(db)
    assert main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and err.endswith("."), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert snapshot(db) == before, "nothing stored may change"
    return err


def write(tmp_path: Path, data: Any, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_intervention(**fields: Any) -> dict[str, Any]:
    data = mood(name="other")
    data["variants"] = [
        {"name": "baseline"},
        {
            "name": "bad",
            "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1.0, **fields}],
        },
    ]
    return data


def test_layer_out_of_range(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_intervention(layers=[5]))
    fails_with(
        capsys,
        stored_db,
        ["run", str(path)],
        "variants[1].interventions[0].layers[0]",
        "layer 5 is out of range",
        "0 to 1",
    )


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_coefficient(
    tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    text = yaml.safe_dump(with_intervention(coefficient=12345.0)).replace("12345.0", value)
    path = write(tmp_path, text)
    fails_with(capsys, stored_db, ["run", str(path)], "coefficient", "give a finite number")


def test_empty_prompt_list(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, mood(name="x", prompts=[]))
    fails_with(capsys, stored_db, ["run", str(path)], "field prompts", "empty")


def test_variant_naming_a_missing_vector(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, with_intervention(vector="angry"))
    fails_with(capsys, stored_db, ["run", str(path)], "'angry'", "defined: sad")


def test_missing_prompts_file(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mood(name="x")
    del data["prompts"]
    data["prompts_file"] = "nowhere.csv"
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, data))], "nowhere.csv", "does not exist")


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("p.jsonl", '{"prompt": "One day"}\n{"prompt": "Then\n', "line 2"),
        ("p.jsonl", '{"prompt": "One day"}\n{"text": "no prompt"}\n', "line 2"),
        ("p.csv", 'prompt,topic\n"Once upon a time",a\nThe dog ran, fast, far\n', "line 3"),
        ("p.csv", "text\nOnce\n", "line 1"),
    ],
)
def test_malformed_prompts_file(
    tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, fragment: str
) -> None:
    (tmp_path / name).write_text(content)
    data = mood(name="x")
    del data["prompts"]
    data["prompts_file"] = name
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, data))], name, fragment)


def test_yaml_syntax_error_names_the_line(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "name: broken\nmodel: raincandy-u/TinyStories-656K\nprompts:\n  - [unclosed\nvariants: []\n"
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, text))], "YAML syntax error", "line 5")


def test_unknown_model_offline(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, mood(name="x", model="nobody/no-such-model"))
    fails_with(capsys, stored_db, ["run", str(path)], "'nobody/no-such-model'", "HF_HUB_OFFLINE=1")


def test_missing_model_folder(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, mood(name="x", model="./models/missing"))
    fails_with(capsys, stored_db, ["run", str(path)], "does not exist")


def test_vector_file_for_another_hidden_size(
    tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_vector(SteeringVector("v", torch.ones(5, 64), tuple(range(5)), "stories260k"), tmp_path / "v.safetensors")
    data = with_intervention()
    data["vectors"] = {"sad": {"file": "v.safetensors"}}
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, data))], "hidden size 64", "hidden size 128")


def test_changed_definition_needs_a_new_name(
    stored_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = mood()
    data["generation"]["seed"] = 99
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, data))], "different generation", "--replace")


def test_unknown_experiment_on_export(stored_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(
        capsys,
        stored_db,
        ["export", "nope", "-o", str(tmp_path / "x.json")],
        "No experiment named 'nope'",
        "tinystories_mood",
    )


def test_unknown_method_and_scope(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(
        capsys,
        stored_db,
        ["run", str(write(tmp_path, with_intervention(scope="everywhere")))],
        "scope",
        "prompt, generated, all",
    )
    data = with_intervention()
    data["variants"][1]["interventions"][0]["method"] = "teleport"
    fails_with(capsys, stored_db, ["run", str(write(tmp_path, data))], "not a known steering method", "add")


def test_model_that_is_not_a_causal_lm(tmp_path: Path, stored_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from transformers import T5Config

    from tests.conftest import HF_CACHE

    folder = tmp_path / "t5"
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=2048).save_pretrained(folder)
    snapshot = next((HF_CACHE / "models--raincandy-u--TinyStories-656K" / "snapshots").iterdir())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(snapshot / name, folder / name)
    path = write(tmp_path, mood(name="x", model=str(folder)))
    fails_with(capsys, stored_db, ["run", str(path)], "not a causal language model")
