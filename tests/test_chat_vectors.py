"""Chat-consistent vectors and gates: pairs written as chat, read through the template, at the answer.

Parsing and errors need no model; rendering uses SmolLM2's tokenizer (the session fixture);
raw text pairs on the story models must give exactly the vectors SteerLab always extracted.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.contrast import vector_recipe
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.extract import extract_vector
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.methods import parse
from engine.methods.conditional import ConditionalAdd, calibrate, condition_directions, example_tokens
from engine.models import LoadedModel
from engine.prompting import render_prompt
from engine.spec import ContrastPair, VariantSpec, VectorSpec, parse_experiment
from engine.steering import BatchSteering
from engine.vectors import SteeringVector, hash_pairs
from service.vector_store import extract, usable_vector
from tests.conftest import ROOT
from tests.helpers import add_edit, tokens

TONE_FILE = ROOT / "experiments" / "smollm2_tone.yaml"

PAIRS = [
    ("Lily was very sad and she cried.", "Lily was very happy and she smiled."),
    ("Tom felt lonely.", "Tom felt glad."),
    ("The sad dog cried all night long in the rain.", "The happy dog played."),
]
BASE = {"name": "x", "model": "m", "prompts": ["Hi"], "variants": [{"name": "baseline"}]}


def vector_of(raw: dict[str, Any]) -> VectorSpec:
    return parse_experiment({**BASE, "vectors": {"v": raw}}, Where("x.yaml")).vectors[0]


# --- the experiment file's forms ---------------------------------------------------------


def test_pairs_personas_and_text_pairs_parse_and_round_trip() -> None:
    chat = vector_of(
        {
            "read": "answer_mean",
            "system": "Be brief.",
            "pairs": [{"user": "How was it?", "positive": "Great!", "negative": "Awful."}, ["Yes!", "No."]],
        }
    )
    assert chat.pairs == (ContrastPair("Great!", "Awful.", user="How was it?"), ContrastPair("Yes!", "No."))
    assert chat.system == "Be brief." and chat.template == "auto" and chat.read == "answer_mean"
    personas = vector_of({"personas": ["You are cheerful.", "You are gloomy."], "questions": ["Hi?", "Why?"]})
    assert personas.personas == ("You are cheerful.", "You are gloomy.") and personas.example_count == 2
    for spec in (chat, personas):
        assert vector_of(spec.to_dict()) == spec, "the stored form parses back to the same vector"
    # Text pairs keep exactly their old stored form, so stored definitions keep their hashes.
    text = vector_of({"pairs": [list(p) for p in PAIRS]})
    assert text.to_dict() == {"method": "mean_diff", "read": "last", "pairs": [list(p) for p in PAIRS]}
    assert [list(p) for p in text.pairs] == [list(p) for p in PAIRS], "a pair still unpacks as (positive, negative)"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {"personas": ["a", "b"], "questions": ["q"], "read": "answer_mean"},
            "field vectors.v.read: is 'answer_mean', but persona pairs have no answer to average over; use read: last",
        ),
        (
            {"personas": ["a", "b"], "questions": ["q"], "pairs": [["x", "y"]]},
            "field vectors.v.personas: is given together with pairs",
        ),
        ({"personas": ["a"], "questions": ["q"]}, "field vectors.v.personas: has 1 entry; give two system prompts"),
        ({"questions": ["q"]}, "field vectors.v.personas: is missing while questions are given"),
        ({"personas": ["a", "b"]}, "field vectors.v.questions: is missing"),
        ({"personas": ["a", "b"], "questions": ["q"], "user": "u"}, "field vectors.v.user: is given with personas"),
        ({"pairs": [{"user": "u", "positive": "p"}]}, "field vectors.v.pairs[0].negative: is missing"),
        (
            {"pairs": [{"user": "u", "positive": "p", "negative": "n", "assistant": "a"}]},
            "field vectors.v.pairs[0].assistant: is not a known field",
        ),
        ({"pairs": [{"user": "u", "positive": "", "negative": "n"}]}, "field vectors.v.pairs[0].positive"),
        ({"pairs": [["p", "n"]], "template": "on"}, "field vectors.v.template: is the text 'on'; use one of auto, off"),
        ({"pairs": [["p", "n"]], "read": "first"}, "field vectors.v.read"),
        (
            {"personas": ["a", "b"], "questions": ["q"], "method": "single_pair", "pair_index": 1},
            "field vectors.v.pair_index",
        ),
    ],
)
def test_impossible_vectors_are_one_sentence_naming_the_field(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SteerLabError) as error:
        vector_of(raw)
    message = str(error.value)
    assert fragment in message and message.startswith("x.yaml, ") and "\n" not in message


# --- what is read: templated text and answer positions ----------------------------------


def test_templated_pairs_read_the_answer_after_the_generation_prompt(smollm2: LoadedModel) -> None:
    tokenizer = smollm2.tokenizer
    spec = vector_of(
        {
            "read": "answer_mean",
            "pairs": [{"user": "How was your day?", "positive": "Wonderful, thanks!", "negative": "Dreadful."}],
        }
    )
    recipe = vector_recipe(smollm2, spec, "auto")
    assert recipe.templated
    positive, negative = recipe.readings[0]
    for reading, answer in ((positive, "Wonderful, thanks!"), (negative, "Dreadful.")):
        start = reading.answer.index(True)
        assert all(reading.answer[start:]) and not any(reading.answer[:start]), "the answer is the tail"
        assert tokenizer.decode(reading.tokens[start:]) == answer
        # Before the answer: exactly the prompt as a steered prompt is rendered (user message + generation prompt).
        assert list(reading.tokens[:start]) == render_prompt(smollm2, "How was your day?", VariantSpec("p"), "auto")
    # A plain [positive, negative] pair answers the vector's user message (empty by default).
    plain = vector_recipe(smollm2, vector_of({"pairs": [["Yes!", "No."]]}), "auto").readings[0][0]
    assert list(plain.tokens[: plain.answer.index(True)]) == render_prompt(smollm2, "", VariantSpec("p"), "auto")
    # Personas: two system prompts over each question, read where the model starts to answer.
    personas = vector_of({"personas": ["You are cheerful.", "You are gloomy."], "questions": ["How are you?"]})
    cheerful, gloomy = vector_recipe(smollm2, personas, "auto").readings[0]
    assert not any(cheerful.answer) and not any(gloomy.answer)
    assert list(cheerful.tokens) == render_prompt(
        smollm2, "How are you?", VariantSpec("p", system="You are cheerful."), "auto"
    )
    assert tokenizer.decode(gloomy.tokens).endswith("<|im_start|>assistant\n")


def test_off_or_no_template_reads_raw_text(smollm2: LoadedModel, stories260k: LoadedModel) -> None:
    chat = vector_of(
        {
            "read": "answer_mean",
            "pairs": [{"user": "Q: Was it fun? A: ", "positive": "Yes, great fun.", "negative": "No."}],
        }
    )
    for model, setting in ((smollm2, "off"), (stories260k, "auto")):
        recipe = vector_recipe(model, chat, setting)
        reading = recipe.readings[0][0]
        assert not recipe.templated
        assert list(reading.tokens) == tokens(model, "Q: Was it fun? A: Yes, great fun.")
        assert (
            model.tokenizer.decode([t for t, a in zip(reading.tokens, reading.answer, strict=True) if a]).strip()
            == "Yes, great fun."
        )
    assert not vector_recipe(smollm2, replace(chat, template="off"), "auto").templated


@pytest.mark.parametrize("read", ["last", "mean", "answer_mean"])
def test_text_pairs_on_story_models_are_bit_identical_to_raw_extraction(
    tiny: LoadedModel, stories260k: LoadedModel, read: str
) -> None:
    for model in (tiny, stories260k):
        tokenize = partial(tokens, model)
        for method in ("mean_diff", "pca", "single_pair"):
            spec = VectorSpec("sad", tuple(ContrastPair(p, n) for p, n in PAIRS), method, read, pair_index=1)
            # As SteerLab extracted before templating; on raw text the answer is the whole text (answer_mean = mean).
            before = extract_vector(model, "sad", PAIRS, tokenize, method, "mean" if read == "answer_mean" else read, 1)
            for setting in ("auto", "off"):
                now = extract(model, spec, setting)
                assert torch.equal(now.directions, before.directions), (model.model_id, method, read)
                assert (
                    now.pairs_hash == before.pairs_hash == hash_pairs([PAIRS[1]] if method == "single_pair" else PAIRS)
                )


def test_a_changed_recipe_is_a_changed_vector(smollm2: LoadedModel, stories260k: LoadedModel) -> None:
    spec = VectorSpec("v", tuple(ContrastPair(p, n) for p, n in PAIRS), read="answer_mean")
    stored = extract(smollm2, spec, "auto")
    data = stored.to_bytes()
    assert stored.extra == {
        "template": "chat",
        "norm_convention": "mean_difference",
    } and stored.pairs_hash != hash_pairs(PAIRS)
    assert usable_vector(data, spec, smollm2, "x", "auto") is not None
    assert usable_vector(data, spec, smollm2, "x", "off") is None, "the experiment's prompts stopped using the template"
    assert usable_vector(data, replace(spec, template="off"), smollm2, "x", "auto") is None
    assert usable_vector(data, replace(spec, user="Tell me a story."), smollm2, "x", "auto") is None
    assert usable_vector(data, replace(spec, read="mean"), smollm2, "x", "auto") is None
    # Without a template nothing changes with the setting: the raw vector stays valid.
    raw = extract(stories260k, spec, "auto").to_bytes()
    assert usable_vector(raw, replace(spec, template="off"), stories260k, "x", "auto") is not None


# --- conditional gates read their examples as prompts are read ---------------------------


def test_conditional_examples_are_rendered_as_the_experiments_prompts(smollm2: LoadedModel) -> None:
    raw = {
        "method": "conditional",
        "vector": "v",
        "layers": [3],
        "coefficient": 1.0,
        "condition": {
            "applies": ["My dog died today.", "I failed my exam."],
            "not_applies": ["What is two plus two?", "List three colours."],
            "threshold": 0.0,
        },
    }
    edit = parse(raw, Where("x"))
    assert isinstance(edit, ConditionalAdd)
    framed = edit.framed("auto")
    assert framed.to_dict() == edit.to_dict(), "framing is not a setting: the stored definition is unchanged"
    add = parse({"method": "add", "vector": "v", "layers": [3], "coefficient": 1.0}, Where("x"))
    assert add.framed("auto") is add, "methods without example prompts are unchanged"
    texts = ["My dog died today."]
    assert example_tokens(smollm2, texts, "auto") == [render_prompt(smollm2, texts[0], VariantSpec("p"), "auto")]
    assert example_tokens(smollm2, texts, "off") == [tokens(smollm2, texts[0])]
    templated = condition_directions(smollm2, edit.condition, "auto")
    assert not torch.equal(templated, condition_directions(smollm2, edit.condition, "off"))
    assert torch.equal(templated, condition_directions(smollm2, framed.condition, framed.chat_template))
    result = calibrate(smollm2, framed)
    assert result.examples == 4 and result.f1 == 1.0 and result.lowest < result.threshold < result.highest


# --- behaviour on a real chat model --------------------------------------------------------


def test_templated_vector_steers_held_out_replies_both_ways_and_more_than_raw(smollm2: LoadedModel) -> None:
    """The demo's vector on SmolLM2, on its held-out prompts, greedy, in one mixed batch.

    Raw is what SteerLab extracted before templating: the same answers as raw text (read over
    the whole text). At layer 12 a raw text's first token carries this model's outsized
    "attention sink" state, which the raw difference picks up; through the template every
    pair starts with the same template tokens, so the templated vector keeps the behaviour.
    Raw is scaled to the templated vector's length, so both edits are equally strong.
    """
    spec = load_experiment_file(TONE_FILE)
    vector = spec.vector("upbeat")
    prompts = list(spec.prompts)
    assert not {p.user for p in vector.pairs} & set(prompts), "held-out prompts: none is among the pairs"
    templated = extract(smollm2, vector, spec.chat_template)
    raw_spec = replace(vector, pairs=tuple(ContrastPair(p.positive, p.negative) for p in vector.pairs), template="off")
    raw = extract(smollm2, raw_spec, spec.chat_template)
    layer, coefficient = 12, 2.0
    length = templated.for_layer(layer).norm() / raw.for_layer(layer).norm()
    raw_scaled = SteeringVector("raw", raw.directions * length, raw.layers)
    edits = {
        "baseline": [],
        "templated +2": [add_edit(smollm2, templated, [layer], coefficient)],
        "templated -2": [add_edit(smollm2, templated, [layer], -coefficient)],
        "raw +2 (same length)": [add_edit(smollm2, raw_scaled, [layer], coefficient)],
        "raw +2 (as extracted)": [add_edit(smollm2, raw, [layer], coefficient)],
    }
    rendered = [render_prompt(smollm2, p, VariantSpec("p"), spec.chat_template) for p in prompts]
    rows = [(name, tokens_) for name in edits for tokens_ in rendered]
    out = generate(
        smollm2,
        [r for _, r in rows],
        Decoding(max_new_tokens=30),
        steering=BatchSteering(smollm2, [edits[name] for name, _ in rows]),
    )
    texts = smollm2.tokenizer.batch_decode(out, skip_special_tokens=True)
    scorer = next(s for s in spec.scorers if s.name == "upbeat_embedding")
    scores = scorer.score(texts)
    mean = {name: sum(s for (n, _), s in zip(rows, scores, strict=True) if n == name) / len(prompts) for name in edits}
    print("upbeat_embedding (mean over 8 held-out prompts): " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    base = mean["baseline"]
    assert mean["templated +2"] > base + 0.05, "the vector clearly raises the upbeat score"
    assert mean["templated -2"] < base, "and the negative coefficient lowers it"
    shift_templated, shift_raw = mean["templated +2"] - base, mean["raw +2 (same length)"] - base
    assert shift_templated > shift_raw, f"templated moves it by {shift_templated:.3f}, raw by {shift_raw:.3f}"


def test_a_vector_an_earlier_version_read_raw_is_kept_while_outputs_were_made_with_it(
    smollm2: LoadedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade changed how text pairs on a chat model are read; stored outputs keep their vector."""
    from db import repository as repo
    from db.store import Store
    from service.catalog import get_experiment
    from service.running import run_stored, store_spec
    from service.vector_store import ensure_vectors
    from tests.conftest import SMOLLM2

    raw = {
        "name": "upgraded",
        "model": SMOLLM2,
        "prompts": ["Tell me about the sea."],
        "generation": {"max_new_tokens": 2},
        "vectors": {"v": {"pairs": [list(p) for p in PAIRS]}},
        "variants": [
            {"name": "baseline"},
            {"name": "steered", "interventions": [{"vector": "v", "layers": [3], "coefficient": 2.0}]},
        ],
    }
    spec = parse_experiment(raw, Where("x.yaml"))
    earlier = extract(smollm2, replace(spec.vectors[0], template="off"), "auto")  # what SteerLab read before
    store = Store(str(tmp_path / "s.db"))
    try:
        for name, with_outputs in (("upgraded", True), ("fresh", False)):
            named = replace(spec, name=name)
            store_spec(store, named, "x.yaml")
            if with_outputs:
                run_stored(store, name, model=smollm2)
            with store.session() as session:
                row = get_experiment(session, name).vectors[0]
                repo.store_vector_data(
                    session, row, earlier.to_bytes(), smollm2.model_id, 576, "mean_diff", earlier.pairs_hash, 0.1
                )
            with caplog.at_level("WARNING", logger="service.vector_store"):
                used = ensure_vectors(store, name, named, smollm2)["v"]
            with store.session() as session:
                data = get_experiment(session, name).vectors[0].data
            assert data is not None
            stored = SteeringVector.from_bytes(data, source="the stored vector")
            if with_outputs:
                assert torch.equal(used.directions, earlier.directions)
                assert torch.equal(stored.directions, earlier.directions) and stored.pairs_hash == earlier.pairs_hash
                assert "kept because outputs were generated with it" in caplog.text
            else:  # nothing was generated with it yet: read it as this version does
                assert used.extra == stored.extra == {
                    "template": "chat",
                    "norm_convention": "mean_difference",
                } and torch.equal(stored.directions, used.directions)
    finally:
        store.close()
