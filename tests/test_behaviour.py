"""The shipped mood experiment really steers TinyStories-656K, measured on held-out prompts."""

from __future__ import annotations

from pathlib import Path

from db.store import Store
from engine.experiment_file import load_experiment_file
from service.comparison import compare
from service.running import RunOptions, run_experiment_file
from service.summary import variant_summaries
from tests.conftest import MOOD_FILE, needs_models


@needs_models
def test_sad_vector_moves_sad_word_rate_both_ways(tmp_path: Path) -> None:
    spec = load_experiment_file(MOOD_FILE)
    pair_texts = {t for v in spec.vectors for pair in v.pairs for t in pair}
    assert not pair_texts & set(spec.prompts), "the prompts must not be among the extraction pairs"

    store = Store(str(tmp_path / "mood.db"))
    result = run_experiment_file(store, MOOD_FILE, RunOptions(batch_size=32, device="cpu"))
    assert result.status == "done"
    rates = {s.name: s.scores["sad_words"] for s in variant_summaries(store, spec.name)}
    base, sad, happy = rates["baseline"], rates["sad_layer1_x2"], rates["happy_x2"]
    print(f"sad-word rate: baseline {base.describe()}, sad_layer1_x2 {sad.describe()}, happy_x2 {happy.describe()}")
    assert (sad.prompts, sad.generations) == (base.prompts, base.generations) == (10, 30)
    # A clear margin at the layer the sweep recommends: at least double, its interval above the baseline's mean.
    assert sad.value >= 2 * base.value and sad.low > base.value
    assert happy.value < base.value and happy.high < sad.low
    # Paired on (prompt, sample) against the baseline: layer 1 at 2 and layer 0 at 1 raise the sad-word
    # share (intervals above 0); layer 0 at 2 degrades the text and, over 10 prompts, its rise is not
    # distinguishable from none (see the README's example table).
    decisions = compare(store, spec.name, bootstrap_rounds=50).decisions
    assert decisions is not None
    paired = {d.variant: d.score.difference for d in decisions.people if d.metric == "sad_words" and d.score}
    assert paired["sad_layer1_x2"].low > 0 and paired["sad_x1"].low > 0
    assert paired["sad_x2"].value > 0 and paired["happy_x2"].high < 0
