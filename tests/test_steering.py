"""The properties mixed-batch steering promises, on the real TinyStories-656K model."""

from __future__ import annotations

import pytest
import torch

from engine.errors import RunCancelled
from engine.generation import Decoding, generate
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering
from tests.helpers import add_edit, batch_logits, random_vector, tokens

PROMPTS = ["Once upon a time", "The dog was", "Lily and Tom went to the park and saw a big"]


class RecordingEdit(PreparedEdit):
    """Adds a vector like the real method, and records the masks of every call."""

    def __init__(self, inner: PreparedEdit) -> None:
        self.inner = inner
        self.layers = inner.layers
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        self.calls.append((hidden.shape[1], masks.prompt.clone(), masks.generated.clone()))
        return self.inner.apply(layer, hidden, masks)


def test_unsteered_row_in_steered_batch_is_bitwise_plain(tiny: LoadedModel) -> None:
    prompts = [tokens(tiny, p) for p in PROMPTS]
    edit = add_edit(tiny, random_vector(tiny), [0, 1], 3.0)
    plain = batch_logits(tiny, prompts)
    steered = batch_logits(tiny, prompts, [[edit], [], [edit]])
    assert torch.equal(steered[1], plain[1])
    assert not torch.equal(steered[0], plain[0])

    decoding = Decoding(max_new_tokens=16)
    plain_out = generate(tiny, prompts, decoding)
    mixed_out = generate(tiny, prompts, decoding, steering=BatchSteering(tiny, [[edit], [], [edit]]))
    assert mixed_out[1] == plain_out[1]
    assert mixed_out[0] != plain_out[0]


def test_row_output_is_the_same_alone_and_in_a_mixed_batch(tiny: LoadedModel) -> None:
    vector = random_vector(tiny, scale=2.0)
    edits = [[add_edit(tiny, vector, [0], 1.5)], [], [add_edit(tiny, vector, [1], -2.0, "generated")]]
    prompts = [tokens(tiny, p) for p in PROMPTS]
    decoding = Decoding(max_new_tokens=20)
    mixed = generate(tiny, prompts, decoding, steering=BatchSteering(tiny, edits))
    for prompt, row_edits, expected in zip(prompts, edits, mixed, strict=True):
        alone = generate(tiny, [prompt], decoding, steering=BatchSteering(tiny, [row_edits]))
        assert alone[0] == expected


def test_generated_scope_steers_every_cached_decode_step(tiny: LoadedModel) -> None:
    vector = random_vector(tiny, scale=3.0)
    recorder = RecordingEdit(add_edit(tiny, vector, [0], 3.0, "generated"))
    prompt = tokens(tiny, PROMPTS[0])
    steps = 12
    steered = generate(tiny, [prompt], Decoding(max_new_tokens=steps), steering=BatchSteering(tiny, [[recorder]]))
    plain = generate(tiny, [prompt], Decoding(max_new_tokens=steps))

    prefill, *decode = recorder.calls
    assert prefill[0] == len(prompt) and not prefill[2].any(), "the prompt pass has no generated position"
    assert len(decode) == steps - 1, "every decode step after the first token goes through the edit"
    for width, prompt_mask, generated_mask in decode:
        assert width == 1 and generated_mask.all() and not prompt_mask.any()
    # The first token comes from the unsteered prompt; the steered decode steps then diverge.
    assert steered[0][0] == plain[0][0]
    assert steered[0] != plain[0]


def test_prompt_scope_steers_only_prompt_positions(tiny: LoadedModel) -> None:
    vector = random_vector(tiny, scale=3.0)
    inner = add_edit(tiny, vector, [0], 3.0, "prompt")
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Spy(PreparedEdit):
        layers = inner.layers

        def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
            out = inner.apply(layer, hidden, masks)
            seen.append((hidden, out, masks.prompt))
            return out

    spy = Spy()
    prompts = [tokens(tiny, PROMPTS[0]), tokens(tiny, PROMPTS[2])]  # different lengths: left padding
    generate(tiny, prompts, Decoding(max_new_tokens=6), steering=BatchSteering(tiny, [[spy], [spy]]))
    (hidden, out, prompt_mask), *decode = seen
    delta = 3.0 * vector.for_layer(0)
    torch.testing.assert_close(out[prompt_mask] - hidden[prompt_mask], delta.expand(int(prompt_mask.sum()), -1))
    assert torch.equal(out[~prompt_mask], hidden[~prompt_mask]), "padding is not steered"
    assert decode and all(torch.equal(h, o) for h, o, _ in decode), "generated tokens are not steered"


def test_edit_is_removed_even_when_generation_raises(tiny: LoadedModel) -> None:
    prompts = [tokens(tiny, p) for p in PROMPTS]
    before = batch_logits(tiny, prompts)
    edit = add_edit(tiny, random_vector(tiny), [0, 1], 5.0)
    calls = iter(range(100))
    with pytest.raises(RunCancelled):
        generate(
            tiny,
            prompts,
            Decoding(max_new_tokens=10),
            steering=BatchSteering(tiny, [[edit]] * 3),
            should_stop=lambda: next(calls) >= 3,
        )
    assert all(not layer._forward_hooks for layer in tiny.layers)
    assert torch.equal(batch_logits(tiny, prompts), before)
