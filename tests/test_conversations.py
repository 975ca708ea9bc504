"""Conversations as prompts, and the ``assistant`` scope (issue 11, item 2).

Parsing and storage need no model; rendering, the scope's hidden states and a whole run use
SmolLM2-135M-Instruct (ChatML template), loaded once per session by the ``smollm2`` fixture.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonschema import Draft202012Validator
from streamlit.testing.v1 import AppTest

from db import repository as repo
from engine.chat import Message
from engine.conversation import Conversation, prompt_display
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file, parse_experiment_text
from engine.fields import Where
from engine.generation import Decoding
from engine.methods.add import AddVector
from engine.methods.base import SCOPES, PreparedEdit
from engine.prompt_files import parse_prompts
from engine.prompting import render_marked_prompt, render_prompt
from engine.runner import PreparedVariant, Unit, run_batch
from engine.spec import GenerationSpec, VariantSpec, parse_experiment
from engine.spec_schema import experiment_json_schema
from engine.vectors import SteeringVector
from service.catalog import get_experiment, save_spec, stored_spec
from service.export import export_csv, export_data
from service.running import run_spec
from tests.conftest import ROOT, SMOLLM2

CHAT = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def _experiment(prompts: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": "chat", "model": "m", "prompts": prompts, "variants": [{"name": "baseline"}], **extra}


# --- parsing: every malformed conversation is one sentence naming the prompt and message --------

YAML_HEAD = "name: chat\nmodel: m\nvariants: [{name: baseline}]\nprompts:\n  - Hello there\n"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: bot, content: Hello}\n      - {role: user, content: Bye}\n",
            "field prompts[1].messages[1].role (line 8): is 'bot', not a known role; use one of system, user, assistant.",
        ),
        (
            "  - messages:\n      - {role: user, content: '  '}\n",
            "field prompts[1].messages[0].content (line 7): is empty; write the message's text, or remove the message.",
        ),
        (
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: system, content: Be nice}\n      - {role: user, content: Bye}\n",
            "field prompts[1].messages[1].role (line 8): is 'system' after other messages; a system message can only come first",
        ),
        (
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: assistant, content: Hello}\n",
            "field prompts[1].messages[1].role (line 8): is 'assistant' in the last message; a conversation ends with the user message the model answers",
        ),
        ("  - messages: Hi\n", "field prompts[1].messages (line 6): expected a list, got the text 'Hi'"),
        ("  - messages: []\n", "field prompts[1].messages (line 6): is an empty list"),
        ("  - {messages: [{role: user}]}\n", "field prompts[1].messages[0].content (line 6): is missing"),
        ("  - {message: []}\n", "field prompts[1].message (line 6): is not a known field; use one of messages."),
        ("  - [{role: user, content: Hi, name: x}]\n", "field prompts[1][0].name (line 6): is not a known field"),
        ("  - 3\n", "field prompts[1] (line 6): is neither a text nor a conversation"),
    ],
)
def test_malformed_conversations_in_yaml_name_the_message(prompt: str, expected: str) -> None:
    with pytest.raises(SteerLabError) as caught:
        parse_experiment_text(YAML_HEAD + prompt, "exp.yaml", None)
    assert str(caught.value).startswith(f"exp.yaml, {expected}"), str(caught.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "x"}, {"role": "user", "content": "y"}]}',
            "p.jsonl, line 3, field messages[1].role: is 'robot', not a known role; use one of system, user, assistant.",
        ),
        (
            '{"messages": [{"role": "user", "content": ""}]}',
            "p.jsonl, line 3, field messages[0].content: is empty; write the message's text, or remove the message.",
        ),
        ('{"messages": {"role": "user"}}', "p.jsonl, line 3, field messages: expected a list, got a dict"),
        (
            '{"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"}',
            'p.jsonl, line 3: has both "prompt" and "messages"; keep one of the two.',
        ),
        ('{"text": "Hi"}', 'p.jsonl, line 3: has no non-empty "prompt" text nor "messages"'),
    ],
)
def test_malformed_conversations_in_jsonl_name_the_line(line: str, expected: str) -> None:
    text = '{"prompt": "Once upon a time"}\n\n' + line + "\n"
    with pytest.raises(SteerLabError) as caught:
        parse_prompts(text, ".jsonl", "p.jsonl")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_prompt_files_mix_texts_and_conversations(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"prompt": "Tell me a story."}) + "\n" + json.dumps({"messages": CHAT}) + "\n", encoding="utf-8"
    )
    (tmp_path / "exp.yaml").write_text(
        "name: chat\nmodel: m\nprompts_file: prompts.jsonl\nvariants: [{name: baseline}]\n", encoding="utf-8"
    )
    spec = load_experiment_file(tmp_path / "exp.yaml")
    assert spec.prompts[0] == "Tell me a story."
    conversation = spec.prompts[1]
    assert isinstance(conversation, Conversation)
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant", "user"]
    assert conversation.system == CHAT[0]["content"] and conversation.has_assistant_turns()


def test_yaml_accepts_a_bare_message_list_and_stores_one_form() -> None:
    spec = parse_experiment(_experiment(["Hi", {"messages": CHAT}, CHAT]), Where("test"))
    assert spec.prompts[1] == spec.prompts[2]
    assert spec.to_dict()["prompts"] == ["Hi", {"messages": CHAT}, {"messages": CHAT}]


def test_definitions_round_trip_and_text_prompts_keep_their_stored_form() -> None:
    spec = parse_experiment(_experiment(["Hi", {"messages": CHAT}]), Where("test"))
    again = parse_experiment(json.loads(json.dumps(spec.to_dict())), Where("stored"))
    assert again == spec and again.definition_hash() == spec.definition_hash()
    # A definition of text prompts only is exactly what it was before conversations existed.
    texts = parse_experiment(_experiment(["Hi", "There"]), Where("test"))
    assert texts.to_dict()["prompts"] == ["Hi", "There"]


def test_json_schema_and_forms_offer_conversations_and_the_assistant_scope() -> None:
    schema = experiment_json_schema()
    validator = Draft202012Validator(schema)
    good = _experiment(["Hi", {"messages": CHAT}, CHAT])
    assert not list(validator.iter_errors(good))
    bad = _experiment([{"messages": [{"role": "bot", "content": "x"}]}])
    assert list(validator.iter_errors(bad))
    assert "assistant" in SCOPES
    scope = next(f for f in AddVector.fields if f.name == "scope")
    assert "assistant" in scope.choices
    assert any("assistant" in s.get("enum", ()) for s in _named(schema, "scope")), "the methods' scope lists it"


def _named(schema: Any, key: str) -> list[dict[str, Any]]:
    """Every sub-schema of property ``key`` anywhere in ``schema``."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if isinstance(schema.get("properties"), dict) and isinstance(schema["properties"].get(key), dict):
            found.append(schema["properties"][key])
        for value in schema.values():
            found.extend(_named(value, key))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(_named(value, key))
    return found


def test_display_is_one_line_per_message() -> None:
    conversation = parse_experiment(_experiment([CHAT]), Where("t")).prompts[0]
    assert prompt_display(conversation) == (
        "System: You answer in one short sentence.\nUser: What is the capital of France?\n"
        "Assistant: The capital of France is Paris.\nUser: And of Italy?"
    )
    assert prompt_display("Just text") == "Just text"


def test_store_keeps_messages_in_the_definition_and_shows_transcripts(store: Any) -> None:
    spec = parse_experiment(_experiment(["Hi", {"messages": CHAT}], model=SMOLLM2), Where("test"))
    with store.session() as session:
        save_spec(session, None, spec)
    with store.session() as session:
        experiment = get_experiment(session, "chat")
        assert stored_spec(experiment) == spec
        assert [p.text for p in experiment.prompts] == ["Hi", prompt_display(spec.prompts[1])]


# --- rendering on SmolLM2's tokenizer -------------------------------------------------------------


def _assistant_text(model: Any, tokens: tuple[int, ...], flags: tuple[bool, ...]) -> str:
    return str(model.tokenizer.decode([t for t, f in zip(tokens, flags, strict=True) if f]))


def test_text_prompts_render_exactly_as_before(smollm2: Any) -> None:
    tok = smollm2.tokenizer
    variant = VariantSpec("p", prefix="Briefly: ", system="Be kind.")
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Briefly: Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert render_prompt(smollm2, "Hi", variant) == list(tok(chat, add_special_tokens=False).input_ids)
    assert render_prompt(smollm2, "Hi", variant, "off") == list(tok("Be kind.\n\nBriefly: Hi").input_ids)
    marked = render_marked_prompt(smollm2, "Hi", variant)
    assert not any(marked.assistant)


def test_conversations_render_through_the_template_with_the_variant_around_them(smollm2: Any) -> None:
    conversation = parse_experiment(_experiment([CHAT]), Where("t")).prompts[0]
    variant = VariantSpec("p", prefix="Briefly: ", system="Be kind.")
    rendered = render_marked_prompt(smollm2, conversation, variant)
    text = smollm2.tokenizer.decode(rendered.tokens)
    assert text == (
        "<|im_start|>system\nBe kind.\n\nYou answer in one short sentence.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        "<|im_start|>user\nBriefly: And of Italy?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _assistant_text(smollm2, rendered.tokens, rendered.assistant) == "The capital of France is Paris."
    # Without a system message of its own, the variant's comes first.
    plain = render_marked_prompt(smollm2, Conversation(tuple(Message(**m) for m in CHAT[1:])), variant)
    assert smollm2.tokenizer.decode(plain.tokens).startswith("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user")


def test_conversations_without_a_template_are_plain_lines(smollm2: Any) -> None:
    conversation = parse_experiment(_experiment([CHAT]), Where("t")).prompts[0]
    rendered = render_marked_prompt(smollm2, conversation, VariantSpec("p", prefix="Briefly: "), "off")
    expected = (
        "System: You answer in one short sentence.\nUser: What is the capital of France?\n"
        "Assistant: The capital of France is Paris.\nUser: Briefly: And of Italy?\nAssistant:"
    )
    assert list(rendered.tokens) == list(smollm2.tokenizer(expected).input_ids)
    assert _assistant_text(smollm2, rendered.tokens, rendered.assistant).strip() == "The capital of France is Paris."


# --- the assistant scope on the real model ------------------------------------------------------------

LAYER = 4


def test_assistant_scope_edits_assistant_turns_and_generated_tokens_only(smollm2: Any) -> None:
    """Row 0 steers a conversation with scope assistant, row 1 is the same prompt plain; rows 2 and 3
    steer a text prompt with scopes assistant and generated. Layer LAYER's output (the next layer's
    input) differs from the plain row by exactly the vector at the assistant turn's tokens, by nothing
    at every other prompt token, and at every generated token; without assistant turns the two scopes
    give the same outputs."""
    conversation = parse_experiment(_experiment([CHAT]), Where("t")).prompts[0]
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(smollm2.n_layers, smollm2.hidden_size, generator=generator)
    vector = SteeringVector("v", direction / direction.norm(dim=-1, keepdim=True), tuple(range(smollm2.n_layers)))

    def variant(scope: str, prompt: Any, steer: bool = True) -> PreparedVariant:
        rendered = render_marked_prompt(smollm2, prompt, VariantSpec(scope))
        edits: tuple[PreparedEdit, ...] = ()
        if steer:
            settings = {"vector": "v", "layers": [LAYER], "coefficient": 4.0, "scope": scope}
            edits = (AddVector.parse(settings, Where("t")).prepare(smollm2, {"v": vector}),)
        return PreparedVariant(
            scope,
            (rendered.tokens,),
            edits,
            assistant=(rendered.assistant,) if any(rendered.assistant) else (),
        )

    variants = [
        variant("assistant", conversation),
        variant("all", conversation, steer=False),
        variant("assistant", "Tell me about Rome."),
        variant("generated", "Tell me about Rome."),
    ]
    seen: list[torch.Tensor] = []

    def record(_module: Any, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.detach().clone())

    handle = smollm2.layers[LAYER + 1].register_forward_pre_hook(record, with_kwargs=True)
    try:
        rows = run_batch(
            smollm2,
            variants,
            [Unit(0, 0, v) for v in range(4)],
            GenerationSpec(Decoding(max_new_tokens=6)),
        )
    finally:
        handle.remove()
    flags = torch.tensor(variants[0].assistant[0])
    width = seen[0].shape[1]
    conversation_len = len(variants[0].prompt_tokens[0])
    prefill = seen[0][:2, width - conversation_len :]  # the conversation rows are the longest: no padding
    delta = (prefill[0] - prefill[1]).float()
    expected = (4.0 * vector.for_layer(LAYER)).float()
    assert flags.any() and not flags.all()
    assert torch.equal(delta[~flags], torch.zeros_like(delta[~flags])), "user and template tokens must be untouched"
    torch.testing.assert_close(delta[flags], expected.expand(int(flags.sum()), -1), rtol=1e-4, atol=1e-4)
    # The edit has norm 4; whatever tokens the two rows chose, the steered one is that far off.
    assert all(float((step[0] - step[1]).norm()) > 1.0 for step in seen[1:]), "every generated token is edited"
    assert rows[2].token_ids == rows[3].token_ids, "without assistant turns, assistant equals generated"
    assert len(seen) == 6


# --- a run end to end -------------------------------------------------------------------------------


def test_an_experiment_of_conversations_runs_end_to_end(
    smollm2: Any, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {
        "name": "chat_run",
        "model": SMOLLM2,
        "prompts": [{"messages": CHAT}, "Describe a rainy day."],
        "generation": {"max_new_tokens": 16},
        "vectors": {
            "upbeat": {
                "pairs": [
                    ["I love this, it is wonderful!", "I hate this, it is awful."],
                    ["What a happy, sunny day.", "What a sad, gloomy day."],
                ]
            }
        },
        "variants": [
            {"name": "baseline"},
            {
                "name": "upbeat_assistant",
                "interventions": [
                    {"method": "add", "vector": "upbeat", "layers": [LAYER], "coefficient": 8.0, "scope": "assistant"}
                ],
            },
        ],
        "neutral_prompts": ["The weather today is"],
    }
    spec = parse_experiment(raw, Where("test"))
    result = run_spec(store, spec, "test")
    assert result.status == "done" and result.total == 4
    data = export_data(store, "chat_run")
    texts = {(g["variant"], g["prompt_index"]): g["text"] for g in data["generations"]}
    assert len(texts) == 4 and all(texts.values())
    assert texts[("baseline", 0)] != texts[("upbeat_assistant", 0)]
    assert data["prompts"][0]["messages"] == CHAT and "messages" not in data["prompts"][1]
    assert data["prompts"][0]["text"].startswith("System: You answer in one short sentence.\nUser: ")
    # The stored definition reads back with its conversation; the CSV keeps the messages.
    with store.session() as session:
        assert stored_spec(get_experiment(session, "chat_run")).prompts == spec.prompts
        assert len(repo.generation_rows(session, get_experiment(session, "chat_run").id)) == 4
    rows = list(csv.DictReader(io.StringIO(export_csv(store, "chat_run"))))
    assert {json.dumps(CHAT)} == {r["prompt_messages"] for r in rows if r["prompt_index"] == "0"}
    assert {""} == {r["prompt_messages"] for r in rows if r["prompt_index"] == "1"}
    # A rater reads the turns, one "Role: content" line each, not the stored messages.
    monkeypatch.setenv("STEERLAB_DB", str(tmp_path / "test.db"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/rate.py")
    at.run()
    at.text_input[0].set_value("ann")
    next(b for b in at.button if b.label == "Start rating").click().run()
    assert not at.exception
    shown = [html.unescape(m.value.replace("<br>", "\n")) for m in at.markdown if "steerlab-text" in m.value]
    prompts = {prompt_display(p) for p in spec.prompts}
    assert any(re.sub(r"<[^>]+>", "", text) in prompts for text in shown), shown
