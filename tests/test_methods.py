"""The methods beyond addition, on real models: nudging, conditional masks, ablation, norm-preserving addition."""

from __future__ import annotations

import pytest
import torch

from engine.errors import SteerLabError
from engine.extract import extract_vector, read_activations
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.measure import measure_reversibility
from engine.methods import parse, registry
from engine.methods.base import PositionMasks, PreparedEdit
from engine.methods.conditional import ConditionalAdd, calibrate
from engine.models import LoadedModel
from engine.scorers.words import WordListScorer
from engine.steering import BatchSteering
from engine.vectors import SteeringVector
from tests.helpers import batch_logits, tokens
from tests.test_extract import PAIRS

SAD = ["sad", "cried", "cry", "tears", "upset", "lonely"]
PROMPTS = [
    "Once upon a time, there was a little bird who",
    "Tom went to the park with his dad. They",
    "Sara had a new doll. She",
    "The sun was shining and the children",
    "Max the dog wanted to play with",
    "Lily and Ben built a big tower of blocks.",
    "There was a small boat on the lake.",
    "One day, a cat found a red ball under the bed.",
]


def sad_vector(model: LoadedModel) -> SteeringVector:
    return extract_vector(model, "sad", PAIRS, lambda t: tokens(model, t))


def prepared(model: LoadedModel, raw: dict[str, object], vectors: dict[str, SteeringVector]) -> PreparedEdit:
    return parse(raw, Where("test")).prepare(model, vectors)


def test_every_method_is_registered_with_fields() -> None:
    methods = registry()
    assert {"add", "add_norm", "ablate", "conditional", "nudge"} <= set(methods)
    for cls in methods.values():
        assert cls.fields and cls.title and cls.summary


def test_nudging_toward_words_raises_their_rate(tiny: LoadedModel) -> None:
    edit = prepared(
        tiny,
        {
            "method": "nudge",
            "layer": 0,
            "target": "words",
            "words": SAD,
            "steps": 8,
            "step_size": 3.0,
            "max_norm": 20.0,
        },
        {},
    )
    prompts = [tokens(tiny, p) for p in PROMPTS]
    decoding = Decoding(max_new_tokens=32)
    plain = tiny.tokenizer.batch_decode(generate(tiny, prompts, decoding), skip_special_tokens=True)
    steered = tiny.tokenizer.batch_decode(
        generate(tiny, prompts, decoding, steering=BatchSteering(tiny, [[edit]] * len(prompts))),
        skip_special_tokens=True,
    )
    scorer = WordListScorer("sad", tuple(SAD))
    base_rate, nudged_rate = sum(scorer.score(plain)) / len(plain), sum(scorer.score(steered)) / len(steered)
    print(f"target-word rate: plain {base_rate:.4f}, nudged {nudged_rate:.4f}; cost {edit.cost()}")
    assert nudged_rate > base_rate + 0.01
    assert edit.cost()["nudge_forward_backward_passes"] == 8 and edit.cost()["nudge_ms_per_row"] > 0


def test_nudging_other_rows_untouched_and_reapplied(stories260k: LoadedModel) -> None:
    edit = prepared(
        stories260k,
        {
            "method": "nudge",
            "layer": 2,
            "target": "avoid",
            "words": ["the"],
            "steps": 2,
            "step_size": 2.0,
            "max_norm": 4.0,
            "reapply_every": 4,
        },
        {},
    )
    prompts = [tokens(stories260k, p) for p in PROMPTS[:3]]
    decoding = Decoding(max_new_tokens=12)
    plain = generate(stories260k, prompts, decoding)
    mixed = generate(stories260k, prompts, decoding, steering=BatchSteering(stories260k, [[], [edit], []]))
    assert mixed[0] == plain[0] and mixed[2] == plain[2]
    assert edit.cost()["nudge_forward_backward_passes"] == 2 * (1 + 2), (
        "prefill plus re-optimisation after 4 and 8 tokens"
    )


def test_conditional_steers_matching_rows_and_leaves_others_bitwise_plain(tiny: LoadedModel) -> None:
    vector = sad_vector(tiny)
    raw = {
        "method": "conditional",
        "vector": "sad",
        "layers": [0],
        "coefficient": 2.0,
        "condition": {
            "applies": ["The dog was lost and alone.", "The girl was sick in bed.", "The bird broke its wing."],
            "not_applies": ["The sun was shining.", "They ate cake at the party.", "The children played in the park."],
            "threshold": 0.22,  # between the two groups' similarities (about 0.25-0.29 vs 0.16-0.19)
            "layer": 1,
        },
    }
    spec = parse(raw, Where("test"))
    assert isinstance(spec, ConditionalAdd)
    edit = spec.prepare(tiny, {"sad": vector})
    matching = ["The puppy was lost and cried.", "Ben fell and hurt his knee."]
    other = ["The children played a fun game.", "They had a party with cake."]
    prompts = [tokens(tiny, t) for t in [matching[0], other[0], matching[1], other[1]]]
    steering = BatchSteering(tiny, [[edit]] * 4)
    steering.begin(prompts)
    gate = (edit.last_similarities > 0.22).tolist()  # type: ignore[attr-defined]
    assert gate == [True, False, True, False], f"similarities {edit.last_similarities}"  # type: ignore[attr-defined]

    plain = batch_logits(tiny, prompts)
    with torch.no_grad(), steering.attached():
        from engine.generation import forward, left_pad, positions_from_mask

        ids, mask = left_pad(tiny, prompts)
        steering.masks = PositionMasks.prompt_only(mask)
        steered = forward(tiny, ids, mask, positions_from_mask(mask), last_only=False).logits
    assert torch.equal(steered[1], plain[1]) and torch.equal(steered[3], plain[3])
    assert not torch.equal(steered[0], plain[0]) and not torch.equal(steered[2], plain[2])

    decoding = Decoding(max_new_tokens=16)
    generated = generate(tiny, prompts, decoding, steering=BatchSteering(tiny, [[edit]] * 4))
    alone_plain = generate(tiny, prompts, decoding)
    assert generated[1] == alone_plain[1] and generated[3] == alone_plain[3]
    assert generated[0] != alone_plain[0]

    result = calibrate(tiny, spec)
    assert -1.0 <= result.lowest <= result.threshold <= result.highest <= 1.0
    assert result.f1 == 1.0 and result.examples == 6


def test_soft_conditional_scales_per_token(tiny: LoadedModel) -> None:
    vector = sad_vector(tiny)
    raw = {
        "method": "conditional",
        "vector": "sad",
        "layers": [1],
        "coefficient": 2.0,
        "condition": {"applies": ["sad"], "not_applies": ["happy"], "threshold": 0.0, "mode": "soft", "sharpness": 5.0},
    }
    edit = prepared(tiny, raw, {"sad": vector})
    prompts = [tokens(tiny, PROMPTS[0])]
    assert not torch.equal(batch_logits(tiny, prompts, [[edit]]), batch_logits(tiny, prompts))


def test_ablation_removes_the_direction(stories260k: LoadedModel) -> None:
    vector = sad_vector(stories260k)
    edit = prepared(stories260k, {"method": "ablate", "vector": "sad", "layers": [2]}, {"sad": vector})
    prompts = [tokens(stories260k, p) for p in PROMPTS[:4]]
    unit = vector.for_layer(2) / vector.for_layer(2).norm()
    before = read_activations(stories260k, prompts, "last")[:, 2] @ unit
    seen: list[torch.Tensor] = []
    handle = stories260k.layers[2].register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    try:
        generate(stories260k, prompts, Decoding(max_new_tokens=1), steering=BatchSteering(stories260k, [[edit]] * 4))
    finally:
        handle.remove()
    # The capture hook ran before the steering hook (registered first), so apply the edit by hand:
    after = edit.apply(2, seen[0], PositionMasks.prompt_only(torch.ones(seen[0].shape[:2]))) @ unit
    assert before.abs().max() > 0.1
    assert after.abs().max() < 1e-4


def test_norm_preserving_addition_keeps_norms(stories260k: LoadedModel) -> None:
    vector = sad_vector(stories260k)
    edit = prepared(
        stories260k, {"method": "add_norm", "vector": "sad", "layers": [1], "coefficient": 8.0}, {"sad": vector}
    )
    hidden = torch.randn(3, 5, stories260k.hidden_size)
    masks = PositionMasks.prompt_only(torch.ones(3, 5))
    out = edit.apply(1, hidden, masks)
    torch.testing.assert_close(out.norm(dim=-1), hidden.norm(dim=-1))
    assert not torch.allclose(out, hidden)


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "add", "vector": "sad", "layers": [0, 1], "coefficient": 3.0},
        {"method": "add_norm", "vector": "sad", "layers": [1], "coefficient": 3.0},
        {"method": "ablate", "vector": "sad", "layers": [0, 1]},
        {
            "method": "conditional",
            "vector": "sad",
            "layers": [0],
            "coefficient": 3.0,
            "condition": {"applies": ["a sad day"], "not_applies": ["a happy day"], "threshold": -1.0},
        },
        {"method": "nudge", "layer": 1, "target": "words", "words": ["sad"], "steps": 2},
        {"method": "nudge", "layer": 0, "target": "vector", "vector": "sad", "steps": 2},
    ],
    ids=lambda raw: str(raw["method"]) + "-" + str(raw.get("target", "")),
)
def test_every_method_is_exactly_reversible(tiny: LoadedModel, raw: dict[str, object]) -> None:
    edit = prepared(tiny, raw, {"sad": sad_vector(tiny)})
    figures = measure_reversibility(tiny, [edit], tokens(tiny, PROMPTS[0]))
    assert figures.max_abs_logit_diff == 0.0
    assert figures.steered_max_abs_logit_diff > 0.0, "the edit must do something while attached"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {
                "method": "conditional",
                "vector": "v",
                "layers": [0],
                "coefficient": 1.0,
                "condition": {"applies": ["a"], "not_applies": ["b"], "threshold": 1.5},
            },
            "outside the range of cosine similarity [-1, 1]",
        ),
        (
            {
                "method": "conditional",
                "vector": "v",
                "layers": [0],
                "coefficient": 1.0,
                "condition": {"applies": [], "not_applies": ["b"], "threshold": 0.2},
            },
            "condition.applies: is an empty list",
        ),
        ({"method": "nudge", "layer": 0, "words": ["sad"], "steps": 0}, "steps: is 0, so nothing would be optimised"),
        ({"method": "nudge", "layer": 0, "target": "words", "words": [], "steps": 2}, "words: is an empty list"),
    ],
)
def test_bad_settings_are_one_sentence(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(SteerLabError, match=None) as info:
        parse(raw, Where("exp.yaml", "variants[0].interventions[0]"))
    assert fragment in str(info.value), str(info.value)


def test_form_fields_and_stored_form_come_from_one_declaration() -> None:
    methods = registry()
    assert [(f.name, f.kind, f.default) for f in methods["add"].fields] == [
        ("vector", "vector", None),
        ("layers", "layers", [0]),
        ("coefficient", "float", 4.0),
        ("scope", "choice", "all"),
    ]
    for cls in methods.values():
        declared = set(cls.settings.model_fields)
        assert {f.name.split(".")[0] for f in cls.fields} <= declared
        assert all(f.help for f in cls.fields)
    # The form sends a nested setting flattened ('condition.applies'); files and the store nest it.
    names = [f.name for f in methods["conditional"].fields]
    assert "condition.applies" in names and "condition.layer" not in names  # unset layer: no widget
    form = {
        "method": "conditional",
        "vector": "sad",
        "layers": [0],
        "coefficient": 1.0,
        "condition.applies": ["a sad story"],
        "condition.not_applies": ["a recipe"],
        "condition.threshold": 0.3,
    }
    edit = parse(form, Where.form("Variant form"))
    stored = edit.to_dict()
    assert stored["condition"] == {
        "applies": ["a sad story"],
        "not_applies": ["a recipe"],
        "threshold": 0.3,
        "comparator": ">",
        "mode": "hard",
        "read": "mean",
        "sharpness": 10.0,
    }
    assert parse(stored, Where("stored")) == edit
    with pytest.raises(SteerLabError, match=r"^Variant form, condition, 'threshold': is 2\.0, outside"):
        parse({**form, "condition.threshold": 2.0}, Where.form("Variant form"))
