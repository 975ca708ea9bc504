"""Adaptation baselines on TinyStories-656K: a LoRA adapter and full fine-tuning against steering."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from db.store import Store
from engine.errors import SteerLabError
from service.adaptation import Constraints, adaptation_table, decide
from service.cli import main
from service.running import RunOptions, run_experiment_file
from service.summary import variant_summaries
from tests.conftest import ROOT, needs_models

pytestmark = needs_models
TONE = ROOT / "experiments" / "suite" / "tone_tinystories.yaml"


@pytest.fixture(scope="module")
def tone_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("tone")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEERLAB_CACHE", str(folder / "cache"))  # trained weights cached here, not in the project
        store = Store(str(folder / "tone.db"))
        assert run_experiment_file(store, TONE, RunOptions(device="cpu")).status == "done"
        yield folder / "tone.db"


def test_adapter_and_finetune_move_the_sad_rate_like_the_vector(tone_db: Path) -> None:
    rates = {
        s.name: s.scores["sad_words"].value for s in variant_summaries(Store(str(tone_db)), "suite_tone_tinystories")
    }
    print(f"sad-word rate: {rates}")
    for method in ("steering", "lora", "finetune"):
        assert rates[method] > rates["baseline"], method


def test_comparison_measures_cost_reversibility_and_data(tone_db: Path) -> None:
    rows = {
        r.variant: r for r in adaptation_table(Store(str(tone_db)), "suite_tone_tinystories", "sad_words", rounds=200)
    }
    steering, lora, finetune = rows["steering"], rows["lora"], rows["finetune"]
    # Set-up times are recorded (their comparison is a measured figure in `steerlab suite`, not a
    # test: on a loaded machine wall times can come out in any order).
    assert all(0 < r.setup_seconds < float("inf") for r in (steering, lora, finetune))
    assert lora.undo_logit_diff == 0.0, "disabling the adapter restores the logits bitwise"
    assert finetune.undo_logit_diff == 0.0 and not finetune.reversible
    assert steering.undo_logit_diff == 0.0 and steering.reversible and steering.layers_touched == 1
    assert finetune.extra_parameters == 656000 and 0 < lora.extra_parameters < finetune.extra_parameters
    assert steering.examples == 12 and lora.examples == finetune.examples == 30
    assert finetune.share_of_finetune_gain is not None and finetune.share_of_finetune_gain.value == pytest.approx(1.0)
    best = decide(list(rows.values()), Constraints(max_examples=20, must_be_reversible=True))
    assert [r.kind for r in best] and all(r.kind in ("steering", "prompting") for r in best)


def test_training_is_cached_by_content(tone_db: Path) -> None:
    store = Store(str(tone_db))
    with sqlite3.connect(tone_db) as conn:
        # As when the variant is changed: its outputs and figures go, and the next run trains it again.
        for table in ("generations", "variant_metrics"):
            conn.execute(f"DELETE FROM {table} WHERE variant_id IN (SELECT id FROM variants WHERE name = 'lora')")
    run_experiment_file(store, TONE, RunOptions(device="cpu"))
    figures = next(s for s in variant_summaries(store, "suite_tone_tinystories") if s.name == "lora").figures
    assert figures["training_cached"] == 1.0


def test_empty_training_set_and_missing_references_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(TONE.read_text())
    del data["training_examples"]
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(data))
    db = tmp_path / "x.db"
    assert main(["run", str(path), "--db", str(db), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "variants[3].train: has an empty training set" in err
    data = yaml.safe_load(TONE.read_text())
    data["scorers"].append({"name": "bleu", "kind": "reference", "metric": "bleu"})
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--db", str(db), "--device", "cpu"]) == 2
    assert "(scorer 'bleu') needs references, but the experiment has none" in capsys.readouterr().err
    data = yaml.safe_load(TONE.read_text())
    data["scorers"].append({"name": "emb", "kind": "embedding", "target": "x", "model": "/nowhere/model"})
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--db", str(db), "--device", "cpu"]) == 2
    assert "Embedding model '/nowhere/model' is not installed" in capsys.readouterr().err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0, "nothing was stored"
    with pytest.raises(SteerLabError):
        adaptation_table(Store(str(db)), "suite_tone_tinystories")


def test_suite_command_writes_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str], tone_db: Path) -> None:
    import json

    out = tmp_path / "suite.json"
    assert (
        main(["suite", "--only", "qa", "--db", str(tmp_path / "suite.db"), "--json", str(out), "--device", "cpu"]) == 0
    )
    data = json.loads(out.read_text())
    assert {t["task"] for t in data["tasks"]} == {"suite_qa_tinystories"}
    methods = {m["method"] for t in data["tasks"] for m in t["methods"]}
    assert methods == {"baseline", "steering", "prompting", "lora", "finetune"}
    assert "share of FT gain" in capsys.readouterr().out
