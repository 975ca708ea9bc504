"""Mixed-batch steering's promises on the real instruct model SmolLM2-135M-Instruct, prompted through its template.

Unsteered rows stay bitwise plain beside rows carrying other edits; hooks leave the weights
bitwise unchanged, even when an edit raises; and the fused path for additions gives the
gather/scatter path's results and each variant's result alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from engine.chat import Message, render_chat
from engine.generation import Decoding, forward, generate, left_pad, positions_from_mask
from engine.methods.ablate import Ablate
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering
from engine.vectors import SteeringVector
from tests.helpers import add_edit, batch_logits

QUESTIONS = ("How do I make tea?", "Name a fruit.", "What is the capital of France?", "Say something kind.")
DECODING = Decoding(max_new_tokens=8)


def chat(model: LoadedModel, question: str) -> list[int]:
    return list(render_chat(model.tokenizer, [Message("user", question)]).tokens)


def strong_vector(model: LoadedModel, seed: int) -> SteeringVector:
    """Random directions about as long as SmolLM2's middle hidden states, so greedy text changes."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(model.n_layers, model.hidden_size, generator=g) * 2.0
    return SteeringVector(f"rand{seed}", directions, tuple(range(model.n_layers)), model.model_id)


def ablation(model: LoadedModel, vector: SteeringVector, layers: Sequence[int]) -> PreparedEdit:
    return Ablate(vector.name, tuple(layers)).prepare(model, {vector.name: vector})


def logits(
    model: LoadedModel, prompts: Sequence[Sequence[int]], row_edits: Sequence[Sequence[PreparedEdit]], fuse: bool
) -> torch.Tensor:
    ids, mask = left_pad(model, prompts)
    steering = BatchSteering(model, row_edits, fuse_additions=fuse)
    with torch.no_grad(), steering.attached():
        steering.masks = PositionMasks.prompt_only(mask)
        return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits


def test_unsteered_row_beside_other_edits_is_bitwise_plain(smollm2: LoadedModel) -> None:
    prompts = [chat(smollm2, q) for q in QUESTIONS]
    a, b = strong_vector(smollm2, 1), strong_vector(smollm2, 2)
    rows = [[add_edit(smollm2, a, [10], 4.0)], [], [add_edit(smollm2, b, [12, 16], -3.0)], [ablation(smollm2, a, [14])]]

    assert torch.equal(batch_logits(smollm2, prompts, rows)[1], batch_logits(smollm2, prompts)[1])
    plain = generate(smollm2, prompts, DECODING)
    mixed = generate(smollm2, prompts, DECODING, steering=BatchSteering(smollm2, rows))
    assert mixed[1] == plain[1]
    assert mixed[0] != plain[0] and mixed[2] != plain[2], "the steered rows do change"


class Exploding(PreparedEdit):
    """An edit that fails inside the hook on its third call, as a buggy plug-in method would."""

    def __init__(self, inner: PreparedEdit) -> None:
        self.inner, self.layers, self.calls = inner, inner.layers, 0

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("edit failed")
        return self.inner.apply(layer, hidden, masks)


def test_hooks_leave_the_weights_bitwise_unchanged_even_when_an_edit_raises(smollm2: LoadedModel) -> None:
    prompts = [chat(smollm2, q) for q in QUESTIONS[:2]]
    weights = {name: tensor.clone() for name, tensor in smollm2.model.state_dict().items()}
    before = batch_logits(smollm2, prompts)
    vector = strong_vector(smollm2, 3)
    rows = [[add_edit(smollm2, vector, [5, 20], 3.0, "generated")], [ablation(smollm2, vector, [8])]]
    generate(smollm2, prompts, Decoding(max_new_tokens=4), steering=BatchSteering(smollm2, rows))
    with pytest.raises(RuntimeError, match="edit failed"):
        exploding = Exploding(add_edit(smollm2, vector, [7], 2.0))
        generate(smollm2, prompts, Decoding(max_new_tokens=4), steering=BatchSteering(smollm2, [[exploding], []]))

    assert all(not layer._forward_hooks for layer in smollm2.layers)
    after = smollm2.model.state_dict()
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[name], weights[name]) for name in weights)
    assert torch.equal(batch_logits(smollm2, prompts), before)


def test_fused_additions_match_gather_scatter_and_each_variant_alone(smollm2: LoadedModel) -> None:
    prompts = [chat(smollm2, q) for q in QUESTIONS] + [chat(smollm2, QUESTIONS[0])]
    a, b = strong_vector(smollm2, 4), strong_vector(smollm2, 5)
    shared = add_edit(smollm2, a, [10], 3.0)  # one variant on two rows
    rows: list[list[PreparedEdit]] = [
        [shared],
        [add_edit(smollm2, b, [10], -2.5, "generated"), add_edit(smollm2, a, [10, 14], 1.5, "prompt")],
        [],
        [add_edit(smollm2, b, [14], 2.0), ablation(smollm2, a, [14]), add_edit(smollm2, a, [14], 1.0)],
        [shared],
    ]
    fused = logits(smollm2, prompts, rows, fuse=True)
    gathered = logits(smollm2, prompts, rows, fuse=False)
    torch.testing.assert_close(fused, gathered, rtol=1e-4, atol=1e-4)
    assert torch.equal(fused[2], gathered[2]), "the unsteered row is bitwise equal on both paths"

    mixed = generate(smollm2, prompts, DECODING, steering=BatchSteering(smollm2, rows))
    assert mixed == generate(smollm2, prompts, DECODING, steering=BatchSteering(smollm2, rows, fuse_additions=False))
    alone = generate(smollm2, prompts[1:2], DECODING, steering=BatchSteering(smollm2, rows[1:2]))
    assert alone[0] == mixed[1]
    alone = generate(smollm2, prompts[3:4], DECODING, steering=BatchSteering(smollm2, rows[3:4]))
    assert alone[0] == mixed[3]
    assert mixed[0] == mixed[4], "one variant on two rows with the same prompt"
