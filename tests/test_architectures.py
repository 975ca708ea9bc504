"""Decoder blocks are found by structure, and steering works, on every family we support."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.generation import Decoding, generate
from engine.models import LoadedModel, wrap_model
from engine.steering import BatchSteering
from tests.helpers import add_edit, batch_logits, random_vector

SMALL = {"vocab_size": 2048, "num_hidden_layers": 3}
LLAMA_LIKE = {**SMALL, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


def _configs() -> dict[str, tuple[str, dict[str, Any], str]]:
    return {
        "gpt2": (
            "GPT2Config",
            {"vocab_size": 2048, "n_layer": 3, "n_embd": 64, "n_head": 4, "n_positions": 256},
            "transformer.h",
        ),
        "llama": ("LlamaConfig", LLAMA_LIKE, "model.layers"),
        "qwen2": ("Qwen2Config", LLAMA_LIKE, "model.layers"),
        "gemma": ("GemmaConfig", {**LLAMA_LIKE, "head_dim": 16}, "model.layers"),
        "mistral": ("MistralConfig", LLAMA_LIKE, "model.layers"),
        "gpt_neox": (
            "GPTNeoXConfig",
            {**SMALL, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4},
            "gpt_neox.layers",
        ),
        "phi": (
            "PhiConfig",
            {**SMALL, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4},
            "model.layers",
        ),
        "mixtral": ("MixtralConfig", {**LLAMA_LIKE, "num_local_experts": 8, "num_experts_per_tok": 2}, "model.layers"),
    }


def build(family: str, tokenizer: Any) -> LoadedModel:
    import transformers

    config_name, kwargs, _ = _configs()[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return wrap_model(f"random-{family}", model, tokenizer)


@pytest.mark.parametrize("family", list(_configs()))
def test_blocks_found_and_steering_is_per_row_and_reversible(family: str, tiny: LoadedModel) -> None:
    model = build(family, tiny.tokenizer)
    assert model.layers_path == _configs()[family][2]
    assert model.n_layers == 3

    prompts = [[1, 80, 147, 201, 282, 57], [1, 80, 1158], [1, 300, 400, 500]]
    edit = add_edit(model, random_vector(model), layers=[1], coefficient=4.0)
    before = batch_logits(model, prompts)
    steered = batch_logits(model, prompts, [[edit], [], [edit]])
    after = batch_logits(model, prompts)

    assert not torch.equal(steered[0], before[0]), "the steered row must change"
    if family == "mixtral":
        # A mixture-of-experts layer batches tokens per expert, so a row's float rounding
        # depends on which other tokens go to the same expert: equal, not bitwise equal.
        torch.testing.assert_close(steered[1], before[1])
    else:
        assert torch.equal(steered[1], before[1]), (
            "an unsteered row in a steered batch must be bitwise the plain model's"
        )
    assert torch.equal(after, before), "removing the edit must restore the model exactly"
    assert all(not layer._forward_hooks for layer in model.layers)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2"])
def test_left_padded_batch_generates_like_single_rows(family: str, tiny: LoadedModel) -> None:
    model = build(family, tiny.tokenizer)
    prompts = [[1, 80, 147, 201, 282, 57], [1, 80, 1158]]
    edit = add_edit(model, random_vector(model), layers=[0, 2], coefficient=2.0)
    decoding = Decoding(max_new_tokens=8)
    alone = [
        generate(model, [p], decoding, steering=BatchSteering(model, [e]))
        for p, e in zip(prompts, [[edit], []], strict=False)
    ]
    mixed = generate(model, prompts, decoding, steering=BatchSteering(model, [[edit], []]))
    assert mixed == [a[0] for a in alone]
