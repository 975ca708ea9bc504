"""Batched, left-padded generation with a KV cache and per-row random streams.

SteerLab runs its own decode loop instead of ``model.generate`` for three reasons:
the steering hooks must know which positions are prompt and which are generated at
every step; each row samples from its own seeded generator, so a row's output does not
depend on which other rows share its batch (and a resumed run reproduces an
uninterrupted one); and cancellation is checked between steps. A conversation prompt's
assistant turns are marked per token (``assistant``), so the ``assistant`` scope edits
them at the prefill pass and every generated token after it.

A row whose logits stop making sense (an absurd steering coefficient) is finished at that
step with what it generated so far and flagged, instead of sampling from NaN or argmaxing
over an overflowed, flat distribution: see :func:`broken_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

# Decoding is plain settings that experiment definitions hold, so it lives in a torch-free module; re-exported here.
from engine.decoding import Decoding as Decoding
from engine.errors import RunCancelled
from engine.kv_cache import new_cache
from engine.methods.base import PositionMasks
from engine.models import LoadedModel
from engine.steering import BatchSteering


def left_pad_flags(model: LoadedModel, flags: Sequence[Sequence[bool]], width: int) -> torch.Tensor:
    """Per-token flags of each row (``[rows, width]`` booleans), padded on the left like the prompts."""
    rows = [[False] * (width - len(f)) + [bool(x) for x in f] for f in flags]
    return torch.tensor(rows, dtype=torch.bool, device=model.device)


def left_pad(model: LoadedModel, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left to the longest prompt."""
    width = max(len(p) for p in prompts)
    pad = model.pad_token_id
    ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return (
        torch.tensor(ids, dtype=torch.long, device=model.device),
        torch.tensor(mask, dtype=torch.long, device=model.device),
    )


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    # Padded rows must see the same positions they would alone: count real tokens only.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def forward(
    model: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    past: Any = None,
    last_only: bool = True,
) -> Any:
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "past_key_values": past,
        "use_cache": True,
    }
    if last_only:
        kwargs["logits_to_keep"] = 1  # the vocabulary projection of earlier positions is wasted work
    return model.model(**kwargs)


@dataclass(frozen=True)
class Generated:
    """New tokens per row, and which rows were stopped because their logits broke down."""

    tokens: list[list[int]]
    non_finite: list[bool]


def generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    decoding: Decoding,
    seeds: Sequence[int] | None = None,
    steering: BatchSteering | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
    assistant: Sequence[Sequence[bool]] | None = None,
) -> list[list[int]]:
    """Generate new tokens for each prompt (token ids, without the prompt, without EOS).

    ``assistant``: per row, per prompt token, whether it is assistant content of a
    conversation (what the ``assistant`` scope edits besides the generated tokens).
    """
    return generate_checked(model, prompts, decoding, seeds, steering, should_stop, on_step, assistant).tokens


def generate_checked(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    decoding: Decoding,
    seeds: Sequence[int] | None = None,
    steering: BatchSteering | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
    assistant: Sequence[Sequence[bool]] | None = None,
    preallocate: bool = True,
) -> Generated:
    """Like :func:`generate`, with a per-row flag: its logits became non-finite (or collapsed).

    ``preallocate=False`` keeps transformers' dynamic cache (the reference benchmarks compare against).
    """
    if assistant is not None and [len(f) for f in assistant] != [len(p) for p in prompts]:
        raise ValueError("assistant flags need one flag per prompt token of every row")
    if not prompts:
        return Generated([], [])
    generators = _generators(model, seeds, len(prompts)) if decoding.do_sample else None
    with model.lock:
        if steering is not None:
            steering.begin(prompts)
        context = steering.attached() if steering is not None else nullcontext()
        with torch.no_grad(), context:
            return _decode(model, prompts, decoding, generators, steering, should_stop, on_step, assistant, preallocate)


def broken_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows (of ``batch x vocab`` logits) that no token can sensibly be chosen from.

    Either a logit is NaN or +inf (a hidden state overflowed to inf/NaN), or all logits of
    the row are equal: that happens when a hidden state is finite but so large that its
    square overflows in a normalisation layer (float32 from about 1e19), which then
    returns exactly zero, so the row's logits are flat. No working model gives a perfectly
    flat distribution, so both mean the row's steering broke it. Three reductions per step.
    """
    top = logits.amax(dim=-1)
    healthy = ~logits.isnan().any(dim=-1) & (top < float("inf")) & (top > logits.amin(dim=-1))
    return ~healthy


def _decode(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    decoding: Decoding,
    generators: Sequence[torch.Generator] | None,
    steering: BatchSteering | None,
    should_stop: Callable[[], bool] | None,
    on_step: Callable[[], None] | None,
    assistant: Sequence[Sequence[bool]] | None = None,
    preallocate: bool = True,
) -> Generated:
    batch = len(prompts)
    ids, mask = left_pad(model, prompts)
    positions = positions_from_mask(mask)
    stops = sorted(model.eos_token_ids) if decoding.stop_at_eos else []
    eos = torch.tensor(stops or [-1], device=model.device)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=model.device)
    non_finite = torch.zeros(batch, dtype=torch.bool, device=model.device)
    if steering is not None:
        flags = None if assistant is None else left_pad_flags(model, assistant, mask.shape[1])
        steering.masks = PositionMasks.prompt_only(mask, flags)
    # Written in place and sized for the whole run, so no decode step copies the cache (torch.cat did).
    cache = new_cache(model.model, model.n_layers, mask.shape[1] + decoding.max_new_tokens, preallocate)
    result = forward(model, ids, mask, positions, past=cache)
    for step_index in range(decoding.max_new_tokens):
        if should_stop is not None and should_stop():
            raise RunCancelled()
        if on_step is not None:
            on_step()
        logits = result.logits[:, -1, :]
        broken = broken_rows(logits)
        non_finite |= broken & ~finished
        finished |= broken
        # A broken row keeps what it generated before; its (ignored) draw comes from flat
        # logits, so sampling never sees NaN and the other rows' draws stay their own.
        logits = torch.where(broken[:, None], torch.zeros_like(logits), logits)
        chosen = choose_tokens(logits, decoding, generators)
        newly_done = torch.isin(chosen, eos) & ~finished
        for row in (~finished & ~newly_done).nonzero().flatten().tolist():
            outputs[row].append(int(chosen[row]))
        finished |= newly_done
        if bool(finished.all()) or step_index == decoding.max_new_tokens - 1:
            break
        step = torch.where(finished, torch.full_like(chosen, model.pad_token_id), chosen)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        if steering is not None:
            steering.refresh(step_index + 1, [list(p) + out for p, out in zip(prompts, outputs, strict=True)])
            generated = torch.ones((batch, 1), dtype=torch.bool, device=model.device)
            steering.masks = PositionMasks(torch.zeros_like(generated), generated)
        result = forward(model, step[:, None], mask, positions, past=result.past_key_values)
    return Generated(outputs, [bool(flag) for flag in non_finite.tolist()])


def choose_tokens(
    logits: torch.Tensor, decoding: Decoding, generators: Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Greedy argmax, or a draw per row from its own generator after temperature/top-k/top-p."""
    if not decoding.do_sample or generators is None:
        return logits.argmax(dim=-1)
    probs = sampling_distribution(logits.float(), decoding)
    draws = [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(generators)]
    return torch.cat(draws)


def sampling_distribution(logits: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    scores = logits / decoding.temperature
    if 0 < decoding.top_k < scores.shape[-1]:
        kth = torch.topk(scores, decoding.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if decoding.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_scores.softmax(dim=-1)) >= decoding.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def _generators(model: LoadedModel, seeds: Sequence[int] | None, batch: int) -> list[torch.Generator]:
    if seeds is None or len(seeds) != batch:
        raise ValueError("sampling needs one seed per row")
    return [torch.Generator(device=model.device).manual_seed(int(seed)) for seed in seeds]


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one (prompt, sample) row; every variant of that row shares it.

    Sharing the random stream across variants (common random numbers) makes variant
    differences come from the steering, not from the dice.
    """
    mixed = (seed * 1_000_003 + prompt_index) * 1_000_033 + sample_index
    return mixed % (2**63 - 1)
