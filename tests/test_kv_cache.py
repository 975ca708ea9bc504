"""The preallocated KV cache: the same logits as transformers' dynamic cache, written in place,
and the row operations continuous batching needs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicCache

from engine.continuous import ContinuousBatcher
from engine.errors import SteerLabError
from engine.generation import Decoding, forward, generate, generate_checked, left_pad, positions_from_mask
from engine.kv_cache import PreallocatedCache, merge, new_cache
from engine.models import LoadedModel
from engine.steering import BatchSteering
from service.cli import main
from tests.helpers import add_edit, random_vector, tokens
from tests.test_architectures import build

PROMPTS = ["Once upon a time", "The dog was", "Lily and Tom went to the park and saw a big"]


def greedy_logits(
    model: LoadedModel, prompts: Sequence[Sequence[int]], steps: int, capacity: int | None
) -> list[torch.Tensor]:
    """Last-position logits of a left-padded prefill and ``steps`` greedy decode steps.

    ``capacity=None``: transformers' dynamic cache; otherwise a preallocated one reserving that many columns.
    """
    ids, mask = left_pad(model, prompts)
    positions = positions_from_mask(mask)
    cache = DynamicCache(config=model.model.config) if capacity is None else PreallocatedCache(model.n_layers, capacity)
    out = []
    with torch.no_grad():
        result = forward(model, ids, mask, positions, past=cache)
        for _ in range(steps):
            logits = result.logits[:, -1, :]
            out.append(logits)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            result = forward(model, logits.argmax(-1)[:, None], mask, positions, past=result.past_key_values)
    out.append(result.logits[:, -1, :])
    assert isinstance(result.past_key_values, DynamicCache if capacity is None else PreallocatedCache)
    return out


@pytest.mark.parametrize("family", ["tiny", "gpt2"])
def test_logits_equal_the_dynamic_cache_bitwise_even_across_regrowth(family: str, tiny: LoadedModel) -> None:
    model = tiny if family == "tiny" else build("gpt2", tiny.tokenizer)
    prompts = [tokens(tiny, p) for p in PROMPTS]
    dynamic = greedy_logits(model, prompts, 12, None)
    width = max(len(p) for p in prompts)
    for capacity in (width + 12, 1):  # exactly enough, and regrowing by doubling from one column
        preallocated = greedy_logits(model, prompts, 12, capacity)
        assert all(torch.equal(a, b) for a, b in zip(dynamic, preallocated, strict=True))


def test_a_run_writes_in_place_without_reallocating(tiny: LoadedModel) -> None:
    prompt = tokens(tiny, PROMPTS[0])
    cache = PreallocatedCache(tiny.n_layers, len(prompt) + 8)
    ids, mask = left_pad(tiny, [prompt])
    with torch.no_grad():
        result = forward(tiny, ids, mask, positions_from_mask(mask), past=cache)
        buffer = cache.preallocated[0].key_buffer
        assert buffer is not None
        pointer = buffer.data_ptr()
        for step in range(8):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            token = result.logits[:, -1].argmax(-1)[:, None]
            result = forward(tiny, token, mask, torch.tensor([[len(prompt) + step]]), past=cache)
    layer = cache.preallocated[0]
    assert layer.key_buffer is not None and layer.key_buffer.data_ptr() == pointer
    assert cache.width == len(prompt) + 8 and layer.allocated_columns == len(prompt) + 8
    # The greedy text of engine.generation (which uses this cache) equals the dynamic cache's.
    decoding = Decoding(max_new_tokens=16, stop_at_eos=False)
    edit = add_edit(tiny, random_vector(tiny), [0, 1], 2.0)
    prompts = [tokens(tiny, p) for p in PROMPTS]
    for steering in (None, BatchSteering(tiny, [[edit], [], [edit]])):
        kept = generate_checked(tiny, prompts, decoding, steering=steering, preallocate=False).tokens
        assert generate(tiny, prompts, decoding, steering=steering) == kept


def test_rows_are_selected_merged_right_aligned_and_leading_padding_dropped() -> None:
    def filled(rows: int, columns: int, base: float) -> PreallocatedCache:
        cache = PreallocatedCache(2, columns)
        for layer in range(2):
            values = base + torch.arange(rows * columns, dtype=torch.float32).reshape(rows, 1, columns, 1)
            cache.update(values, -values, layer)
        return cache

    wide, narrow = filled(2, 5, 0.0), filled(1, 3, 100.0)
    merged = merge(wide, narrow, capacity=16)
    layer = merged.preallocated[1]
    assert merged.rows == 3 and merged.width == 5 and layer.allocated_columns == 16
    assert layer.keys is not None and layer.values is not None
    assert layer.keys[2, 0, :, 0].tolist() == [0.0, 0.0, 100.0, 101.0, 102.0]  # left-padded with zeros
    assert torch.equal(layer.keys[:2], wide.preallocated[1].keys)  # type: ignore[arg-type]
    assert torch.equal(layer.values, -layer.keys)
    merged.select_rows(torch.tensor([2]))
    pointer = merged.preallocated[0].key_buffer.data_ptr()  # type: ignore[union-attr]
    merged.drop_leading(2)
    assert merged.width == 3 and merged.preallocated[0].key_buffer.data_ptr() == pointer  # type: ignore[union-attr]
    assert merged.preallocated[0].keys[0, 0, :, 0].tolist() == [100.0, 101.0, 102.0]  # type: ignore[index]
    merged.update(torch.full((1, 1, 1, 1), 7.0), torch.full((1, 1, 1, 1), -7.0), 0)
    assert merged.preallocated[0].keys[0, 0, :, 0].tolist() == [100.0, 101.0, 102.0, 7.0]  # type: ignore[index]
    # Joining rows are written where they go: narrower ones left-padded, wider ones into the dropped columns.
    first = merged.preallocated[0]
    first.append_rows(filled(1, 2, 200.0).preallocated[0])
    first.append_rows(filled(1, 6, 300.0).preallocated[0])
    assert first.key_buffer is not None and first.key_buffer.data_ptr() == pointer and first.keys is not None
    assert first.keys[:, 0, :, 0].tolist() == [
        [0.0, 0.0, 100.0, 101.0, 102.0, 7.0],
        [0.0, 0.0, 0.0, 0.0, 200.0, 201.0],
        [300.0, 301.0, 302.0, 303.0, 304.0, 305.0],
    ]
    assert first.values is not None and torch.equal(first.values, -first.keys)


def test_leaving_rows_are_filled_by_the_last_rows_in_place() -> None:
    cache = PreallocatedCache(2, 8)
    for layer in range(2):
        values = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 1, 3, 1)
        cache.update(values, -values, layer)
    before = cache.preallocated[1].keys.clone()  # type: ignore[union-attr]
    pointer = cache.preallocated[1].key_buffer.data_ptr()  # type: ignore[union-attr]
    order = cache.remove_rows({0, 2, 4})
    assert order == [3, 1] and cache.rows == 2 and cache.width == 3
    moved = cache.preallocated[1]
    assert moved.key_buffer is not None and moved.key_buffer.data_ptr() == pointer  # moved in place
    assert moved.keys is not None and moved.values is not None
    assert torch.equal(moved.keys, before[order]) and torch.equal(moved.values, -before[order])
    assert cache.remove_rows(set()) == [0, 1] and torch.equal(moved.keys, before[order])


def test_sliding_window_models_keep_transformers_cache_and_still_generate(tiny: LoadedModel) -> None:
    model = build("mistral", tiny.tokenizer)  # MistralConfig has a sliding window
    assert isinstance(new_cache(model.model, model.n_layers, 32), DynamicCache)
    assert not isinstance(new_cache(model.model, model.n_layers, 32), PreallocatedCache)
    assert isinstance(new_cache(tiny.model, tiny.n_layers, 32), PreallocatedCache)
    out = generate(model, [[1, 80, 147], [1, 80]], Decoding(max_new_tokens=5, stop_at_eos=False))
    assert [len(row) for row in out] == [5, 5]
    with pytest.raises(SteerLabError, match="sliding-window or recurrent layers"):
        ContinuousBatcher(model)


def test_bench_decode_quick_reports_step_times_and_batch_throughput(
    tiny: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    steps = figures["generated_tokens"]
    for cache in ("dynamic", "preallocated"):
        assert figures["step_ms"][cache]["start"] > 0 and figures["step_ms"][cache][f"at_{steps}"] > 0
    assert set(figures["mixed_tokens_per_second"]) == {"8", "16"}
    assert figures["mixed_speedup_over_8"]["8"] == 1.0
    assert "decode step of" in capsys.readouterr().out
