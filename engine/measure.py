"""Compute and reversibility figures: peak memory, toggle time, logit differences."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch

from engine.generation import forward, left_pad, positions_from_mask
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering


class PeakMemory:
    """Peak memory over a stretch of work: CUDA max allocated on GPU, sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._device = device
        self._process = psutil.Process()
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
        self.sample()
        return self

    def sample(self) -> None:
        if not self._cuda:
            self.peak_bytes = max(self.peak_bytes, int(self._process.memory_info().rss))

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self._device))
        else:
            self.sample()


@dataclass(frozen=True)
class Reversibility:
    """How exactly removing an edit restores the model, and how fast it toggles."""

    max_abs_logit_diff: float  # untouched model vs the model after the edit is removed: must be 0.0
    steered_max_abs_logit_diff: float  # how far the edit moved the probe's logits while attached
    toggle_ms: float  # attach + detach, median of several


def probe_logits(model: LoadedModel, tokens: Sequence[int], steering: BatchSteering | None = None) -> torch.Tensor:
    """All-position logits of one prompt; with ``steering`` (already attached) its edits apply."""
    ids, mask = left_pad(model, [tokens])
    if steering is not None:
        steering.masks = PositionMasks.prompt_only(mask)
    with torch.no_grad():
        return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits.float()


def measure_reversibility(
    model: LoadedModel, edits: Sequence[PreparedEdit], probe_tokens: Sequence[int], repeats: int = 25
) -> Reversibility:
    steering = BatchSteering(model, [list(edits)])
    with model.lock:
        before = probe_logits(model, probe_tokens)
        steering.begin([probe_tokens])
        with steering.attached():
            steered = probe_logits(model, probe_tokens, steering)
        after = probe_logits(model, probe_tokens)
    return Reversibility(
        max_abs_logit_diff=float((after - before).abs().max()),
        steered_max_abs_logit_diff=float((steered - before).abs().max()),
        toggle_ms=toggle_milliseconds(steering, repeats),
    )


def toggle_milliseconds(steering: BatchSteering, repeats: int = 25) -> float:
    """Median time to attach and detach an edit's hooks (no forward pass)."""
    times = []
    with steering.model.lock:
        for _ in range(repeats):
            started = time.perf_counter()
            with steering.attached():
                pass
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)
