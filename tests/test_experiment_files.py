"""Every shipped experiment file is valid; specs survive a round trip through plain data."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.experiment_file import load_experiment_file
from engine.fields import Where
from engine.spec import parse_experiment
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
