"""Each scorer against hand-checked or reference-implementation values."""

from __future__ import annotations

import math

import pytest
import sacrebleu
import torch

from engine.errors import SteerLabError
from engine.fields import Where
from engine.models import LoadedModel
from engine.scorers import Scorer, parse_scorer
from engine.scorers.diversity import distinct_n
from engine.scorers.reference import exact_match, token_f1
from engine.side_effects import perplexities
from tests.helpers import tokens


def scorer(raw: dict[str, object]) -> Scorer:
    return parse_scorer(raw, Where("test"))


def test_bleu_and_chrf_are_sacrebleus_numbers() -> None:
    outputs = ["The cat sat on the mat and cried.", "He was very sad."]
    refs = [("The cat sat on the mat and wept.",), ("He was sad because his friend left.", "He was very sad.")]
    bleu = scorer({"name": "b", "kind": "reference", "metric": "bleu"}).score(outputs, refs)
    chrf = scorer({"name": "c", "kind": "reference", "metric": "chrf"}).score(outputs, refs)
    for i, out in enumerate(outputs):
        assert bleu[i] == pytest.approx(sacrebleu.sentence_bleu(out, list(refs[i])).score)
        assert chrf[i] == pytest.approx(sacrebleu.sentence_chrf(out, list(refs[i])).score)
    assert bleu[1] == pytest.approx(100.0)


def test_exact_match_and_token_f1_by_hand() -> None:
    assert exact_match("The Paris.", ["paris"]) == 1.0
    assert exact_match("Paris is the capital", ["Paris"]) == 1.0  # the answer, then more words
    assert exact_match("Lyon", ["Paris"]) == 0.0
    # "cat sat" vs "cat sat on": precision 2/2, recall 2/3 -> F1 0.8
    assert token_f1("the Cat sat", ["cat sat on"]) == pytest.approx(0.8)
    assert token_f1("dog", ["cat"]) == 0.0


def test_distinct_n_by_hand() -> None:
    assert distinct_n("a a b", 1) == pytest.approx(2 / 3)
    assert distinct_n("a b a b", 2) == pytest.approx(2 / 3)
    assert scorer({"name": "d", "kind": "distinct", "n": 2}).score(["x"]) == [0.0]


def test_embedding_scorer_points_toward_the_target() -> None:
    s = scorer(
        {
            "name": "e",
            "kind": "embedding",
            "target": "a sad story about crying",
            "opposite": "a happy story about laughing",
        }
    )
    sad, happy = s.score(["She cried all night because she was so sad.", "She laughed and played, so happy all day."])
    assert sad > 0 > happy
    missing = scorer({"name": "m", "kind": "embedding", "target": "x", "model": "/nowhere/no-such-embedding-model"})
    with pytest.raises(SteerLabError, match="Embedding model '/nowhere/no-such-embedding-model' is not installed"):
        missing.check_available()


def test_perplexity_of_a_known_text_matches_a_hand_computation(tiny: LoadedModel) -> None:
    prompt = tokens(tiny, "Once upon a time")
    continuation = list(tiny.tokenizer(" there was a little girl", add_special_tokens=False).input_ids)
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        log_probs = tiny.model(input_ids=ids).logits[0].float().log_softmax(-1)
    nll = -sum(float(log_probs[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)) / len(continuation)
    (value,) = perplexities(tiny, [prompt], [continuation])
    assert value == pytest.approx(math.exp(nll), rel=1e-4)
    assert math.isnan(perplexities(tiny, [prompt], [[]])[0])


def test_reference_scorer_needs_references() -> None:
    with pytest.raises(SteerLabError, match="needs references"):
        scorer({"name": "b", "kind": "reference", "metric": "bleu"}).score(["x"])
