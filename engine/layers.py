"""Find a causal LM's decoder blocks by structure, not by architecture name.

Every transformers causal LM keeps its blocks in one ``nn.ModuleList`` whose items all
share a class (``model.layers`` for Llama/Qwen2/Gemma/Mistral/Phi, ``transformer.h`` for
GPT-2, ``gpt_neox.layers`` for GPT-NeoX). Mixture-of-experts models also hold lists of
experts, which can be longer than the list of blocks, so a list whose length equals the
config's ``num_hidden_layers`` wins over a merely long one.
"""

from __future__ import annotations

from torch import nn


def find_decoder_layers(model: nn.Module, expected: int | None = None) -> tuple[str, nn.ModuleList]:
    """Return the dotted path and the ModuleList holding the model's decoder blocks."""
    candidates: list[tuple[str, nn.ModuleList]] = []
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            first = type(module[0])
            if all(type(item) is first for item in module):
                candidates.append((path, module))
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no ModuleList of repeated blocks")
    if expected is not None:
        exact = [c for c in candidates if len(c[1]) == expected]
        if exact:
            candidates = exact
    # The longest list wins; among equals the shallowest path (the outer stack, not a
    # list nested inside a block).
    return max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))


def hidden_output(output: object) -> object:
    """The hidden-state tensor in a decoder block's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden_output(output: object, hidden: object) -> object:
    """Rebuild a block's output with a new hidden-state tensor."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden
