"""The Playground as a chat (issue 11, item 4): several turns, any variant, steered beside plain.

Service level, on real models and a real SQLite store: the story model TinyStories-656K (no
chat template: turns are joined as plain text) for every method kind, and SmolLM2-135M-Instruct
(ChatML template) for one two-turn chat.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from db.store import Store
from engine.chat import Message
from engine.conversation import Conversation, PromptItem
from engine.errors import SteerLabError
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.models import LoadedModel
from engine.prompting import render_marked_prompt
from engine.spec import ExperimentSpec, VariantSpec, parse_experiment
from engine.steering import BatchSteering
from service.playground import (
    CUSTOM_EDIT,
    Chat,
    CustomEdit,
    chat_template_used,
    reply,
    reveal,
    steering_choices,
    steering_variant,
)
from service.running import store_spec
from service.vector_store import ensure_vectors
from tests.conftest import MOOD_FILE, SMOLLM2, needs_models

pytestmark = needs_models

FIRST, SECOND = "Once upon a time, there was a little bird who ", "The next day, "
EXTRA_VARIANTS: list[dict[str, Any]] = [
    {"name": "ablate", "interventions": [{"method": "ablate", "vector": "sad", "layers": [0, 1]}]},
    {
        "name": "conditional",
        "interventions": [
            {
                "method": "conditional",
                "vector": "sad",
                "layers": [0],
                "coefficient": 3.0,
                "condition": {"applies": ["a sad day"], "not_applies": ["a happy day"], "threshold": -1.0},
            }
        ],
    },
    {
        "name": "nudge",
        "interventions": [
            {
                "method": "nudge",
                "layer": 0,
                "target": "words",
                "words": ["sad", "cried", "tears"],
                "steps": 8,
                "step_size": 3.0,
            }
        ],
    },
    {"name": "lora", "train": {"method": "lora", "examples_from": "sad"}},
]


def mood_spec() -> ExperimentSpec:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"] = data["prompts"][:2]
    data["variants"] += EXTRA_VARIANTS
    return parse_experiment(data, Where("test"))


@pytest.fixture
def mood(store: Store, tiny: LoadedModel) -> Store:
    """The mood experiment stored (not run), with a variant of every method kind."""
    store_spec(store, mood_spec(), "test")
    return store


def lone(model: LoadedModel, prompt: PromptItem, variant: VariantSpec, edits: list[Any], tokens: int) -> str:
    """One row alone, outside the Playground: what the model says to this prompt."""
    rendered = render_marked_prompt(model, prompt, variant)
    steering = BatchSteering(model, [edits]) if edits else None
    rows = generate(model, [rendered.tokens], Decoding(max_new_tokens=tokens), steering=steering)
    return str(model.tokenizer.decode(rows[0], skip_special_tokens=True))


def test_two_turns_each_side_keeps_its_own_history(mood: Store, tiny: LoadedModel) -> None:
    chat = reply(mood, "tinystories_mood", Chat(), FIRST, "sad_x2", 16)
    chat = reply(mood, "tinystories_mood", chat, SECOND, "sad_x2", 16)
    one, two = chat.turns
    print(
        f"turn 1: steered {one.steered!r} / plain {one.plain!r}\nturn 2: steered {two.steered!r} / plain {two.plain!r}"
    )
    assert one.steered != one.plain and two.steered != two.plain
    assert chat.history("steered")[1] == Message("assistant", one.steered)
    assert chat.history("plain")[1] == Message("assistant", one.plain)

    # The plain column is exactly the plain model, alone, on the plain side's own conversation.
    plain = VariantSpec("plain")
    assert one.plain == lone(tiny, FIRST, plain, [], 16)
    plain_chat = Conversation((Message("user", FIRST), Message("assistant", one.plain), Message("user", SECOND)))
    assert two.plain == lone(tiny, plain_chat, plain, [], 16)
    # The steered column continued its own answers, not the plain ones.
    spec = mood_spec()
    variant = steering_variant(spec, "sad_x2")
    vectors = ensure_vectors(mood, "tinystories_mood", spec, tiny, only={"sad"})
    edits = [i.prepare(tiny, vectors) for i in variant.interventions]
    steered_chat = Conversation((Message("user", FIRST), Message("assistant", one.steered), Message("user", SECOND)))
    assert two.steered == lone(tiny, steered_chat, variant, edits, 16)
    assert not chat_template_used(spec), "the story model's turns are joined as plain text"


@pytest.mark.parametrize("variant", ["sad_x2", "ablate", "conditional", "nudge", "prompt_sad"])
def test_every_kind_of_variant_chats(mood: Store, variant: str) -> None:
    chat = reply(mood, "tinystories_mood", Chat(), FIRST, variant, 8)
    chat = reply(mood, "tinystories_mood", chat, SECOND, variant, 8)
    baseline = reply(mood, "tinystories_mood", Chat(), FIRST, "baseline", 8)
    print(variant, [(t.steered, t.plain) for t in chat.turns])
    assert chat.turns[0].plain == baseline.turns[0].plain, "the plain column does not depend on the steering"
    assert chat.turns[0].steered != chat.turns[0].plain and all(t.edited for t in chat.turns)
    if variant == "prompt_sad":
        assert chat.history("steered")[2].content == "This is a sad story. " + SECOND
        assert chat.history("plain")[2].content == SECOND


def test_custom_edit_is_the_behaviour_knob(mood: Store) -> None:
    off = reply(mood, "tinystories_mood", Chat(), FIRST, CustomEdit("sad", 1, 3.0, steering_on=False), 12)
    assert off.turns[0].identical and not off.turns[0].edited
    knob = CustomEdit("sad", 1, 3.0, scope="assistant")
    on = reply(mood, "tinystories_mood", off, SECOND, knob, 12)
    assert on.turns[1].steering == "custom edit: 'sad' × 3 at layer 1 (assistant)" and not on.turns[1].identical
    assert on.turns[0] == off.turns[0], "earlier turns are kept as they were answered"
    # Sampling: both rows draw from one seed, so without steering the columns still agree.
    sampled = reply(mood, "tinystories_mood", Chat(), FIRST, CustomEdit("sad", 1, 3.0, steering_on=False), 12, False)
    assert sampled.turns[0].identical and sampled.turns[0].plain != off.turns[0].plain


def test_choices_and_reveal() -> None:
    spec = mood_spec()
    choices = steering_choices(spec)
    assert "lora" not in choices and choices[-1] == CUSTOM_EDIT and "prompt_sad" in choices
    assert reveal(steering_variant(spec, "sad_x2")) == [
        "kind: steering",
        "description: Sad vector at layer 0, strong.",
        "add: vector=sad, layers=[0], coefficient=2.0, scope=all",
    ]
    assert reveal(steering_variant(spec, "prompt_sad"))[-1] == "prefix: 'This is a sad story. '"


@pytest.mark.parametrize(
    ("message", "steering", "tokens", "expected"),
    [
        ("  ", "sad_x2", 8, "The message is empty; type what the user says."),
        (FIRST, "sad_x9", 8, "Variant 'sad_x9' is not in experiment 'tinystories_mood'; pick one of 'baseline',"),
        (FIRST, "lora", 8, "Variant 'lora' is a lora baseline with weights of its own, so the Playground cannot"),
        (FIRST, CustomEdit("happy", 0, 1.0), 8, "Vector 'happy' is not defined in 'tinystories_mood'; add it on"),
        (FIRST, CustomEdit("sad", 7, 1.0), 8, "layer 7 is out of range for model 'raincandy-u/TinyStories-656K'"),
        (FIRST, "sad_x2", 100_000, "new tokens would pass the model's limit of"),
    ],
)
def test_mistakes_are_one_sentence(mood: Store, message: str, steering: Any, tokens: int, expected: str) -> None:
    with pytest.raises(SteerLabError) as caught:
        reply(mood, "tinystories_mood", Chat(), message, steering, tokens)
    text = str(caught.value)
    assert expected in text and text.count(". ") == 0 and "\n" not in text, text


def test_smollm2_chat_of_two_turns(store: Store, smollm2: LoadedModel) -> None:
    spec = parse_experiment(
        {
            "name": "smollm2_chat",
            "model": SMOLLM2,
            "prompts": ["Tell me about the ocean."],
            "vectors": {
                "upbeat": {
                    "read": "answer_mean",
                    "pairs": [
                        {
                            "user": "How was your weekend?",
                            "positive": "Wonderful, sunny and fun!",
                            "negative": "Miserable, grey and lonely.",
                        },
                        {
                            "user": "Tell me about your job.",
                            "positive": "I love it, every day is a joy!",
                            "negative": "It is draining and I dread it.",
                        },
                        {
                            "user": "What about Mondays?",
                            "positive": "A fresh, exciting start!",
                            "negative": "Dreadful and boring.",
                        },
                    ],
                }
            },
            "variants": [
                {"name": "baseline"},
                {"name": "upbeat", "interventions": [{"vector": "upbeat", "layers": [10], "coefficient": 4.0}]},
            ],
        },
        Where("test"),
    )
    store_spec(store, spec, "test")
    chat = reply(store, "smollm2_chat", Chat(), "What do you think of rainy days?", "upbeat", 12)
    chat = reply(store, "smollm2_chat", chat, "And snow?", "upbeat", 12)
    one, two = chat.turns
    print(f"SmolLM2: {[(t.steered, t.plain) for t in chat.turns]}")
    assert chat_template_used(spec)
    assert one.steered != one.plain
    messages = (Message("user", one.user), Message("assistant", one.plain), Message("user", two.user))
    assert two.plain == lone(smollm2, Conversation(messages), VariantSpec("plain"), [], 12)
