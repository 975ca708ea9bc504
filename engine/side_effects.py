"""Side effects of an edit: how far it moves neutral next-token distributions, and fluency.

- ``next_token_kl``: mean over neutral prompts of KL(P_variant || P_plain) between the
  next-token distributions after each prompt, with and without the variant (its prompt
  rendering and its edits). 0 means the variant leaves neutral text alone.
- ``perplexities``: the unsteered model's perplexity of each output given its prompt:
  how natural the variant's text looks to the original model (higher = less fluent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engine.generation import forward, left_pad, positions_from_mask
from engine.measure import probe_logits
from engine.methods.base import PreparedEdit
from engine.models import LoadedModel
from engine.steering import BatchSteering


def next_token_kl(
    model: LoadedModel,
    edits: Sequence[PreparedEdit],
    variant_prompts: Sequence[Sequence[int]],
    plain_prompts: Sequence[Sequence[int]],
    variant_model: LoadedModel | None = None,
) -> float:
    """Mean KL divergence of next-token distributions, variant against plain, over neutral prompts.

    ``variant_model`` is the variant's own weights (an adapter or a fine-tune), if any.
    """
    own = variant_model or model
    total = 0.0
    with model.lock, own.lock, torch.no_grad():
        for variant_tokens, plain_tokens in zip(variant_prompts, plain_prompts, strict=True):
            plain = probe_logits(model, plain_tokens)[0, -1].log_softmax(-1)
            steering = BatchSteering(own, [list(edits)])
            steering.begin([variant_tokens])
            with steering.attached():
                steered = probe_logits(own, variant_tokens, steering)[0, -1].log_softmax(-1)
            total += float((steered.exp() * (steered - plain)).sum())
    return total / len(plain_prompts)


def perplexities(
    model: LoadedModel, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], batch_size: int = 16
) -> list[float]:
    """Perplexity of each continuation given its prompt under the (unsteered) model; NaN if empty."""
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk_prompts = prompts[start : start + batch_size]
        chunk_continuations = continuations[start : start + batch_size]
        texts = [list(p) + list(c) for p, c in zip(chunk_prompts, chunk_continuations, strict=True)]
        ids, mask = left_pad(model, texts)
        with model.lock, torch.no_grad():
            logits = forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits.float()
        log_probs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        width = ids.shape[1]
        for row, continuation in enumerate(chunk_continuations):
            n = len(continuation)
            if n == 0:
                out.append(math.nan)
                continue
            # The continuation is the last n tokens of the row; token t is predicted at t-1.
            nll = -log_probs[row, width - 1 - n :].mean()
            out.append(float(torch.exp(nll)))
    return out
