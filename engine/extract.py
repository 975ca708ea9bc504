"""Extract steering vectors from contrastive pairs (positive text, negative text).

Activations are read at each decoder block's output (the residual stream, exactly
where steering adds), at the last real token, averaged over real tokens, or averaged over
the answer's tokens (``answer_mean``, from per-token marks); prompts are left-padded, so
padding never leaks into any reading. What the token sequences are (raw text, or pairs
through the chat template) is decided in :mod:`engine.contrast`.

Methods:
- ``mean_diff`` (CAA): mean over pairs of positive minus negative.
- ``pca`` (repeng-style): first principal component of the pair differences, its sign
  turned toward the positive side and its length set to the mean difference's
  projection on it, so coefficients are comparable with ``mean_diff``.
- ``single_pair`` (ActAdd): the difference of one pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from engine.contrast import Reading
from engine.errors import SteerLabError

# The names experiment files may use live in a torch-free module; re-exported here.
from engine.extraction_choices import EXTRACTION_METHODS as EXTRACTION_METHODS
from engine.extraction_choices import READ_POSITIONS as READ_POSITIONS
from engine.generation import forward, left_pad, positions_from_mask
from engine.layers import hidden_output
from engine.models import LoadedModel
from engine.vectors import SteeringVector, hash_pairs


def read_activations(
    model: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    read: str = "last",
    batch_size: int = 16,
    answer_marks: Sequence[Sequence[bool]] | None = None,
) -> torch.Tensor:
    """Hidden states ``[texts, layers, hidden]`` (float32, CPU) at every block's output.

    ``answer_marks`` (one flag per token) say which tokens ``read="answer_mean"`` averages over.
    """
    if read == "answer_mean":
        if answer_marks is None or len(answer_marks) != len(token_lists):
            raise ValueError("read 'answer_mean' needs one answer mark list per token list")
        if not all(any(marks) for marks in answer_marks):
            raise SteerLabError("A contrastive example has no answer tokens to average over; use read: last or mean.")
    chunks = []
    for start in range(0, len(token_lists), batch_size):
        marks = answer_marks[start : start + batch_size] if read == "answer_mean" and answer_marks else None
        chunks.append(_read_batch(model, token_lists[start : start + batch_size], read, marks))
    return torch.cat(chunks)


def _read_batch(
    model: LoadedModel, token_lists: Sequence[Sequence[int]], read: str, answer_marks: Sequence[Sequence[bool]] | None
) -> torch.Tensor:
    ids, mask = left_pad(model, token_lists)
    if answer_marks is not None:  # left-padded like the tokens: only the answer's tokens weigh
        width = mask.shape[1]
        rows = [[False] * (width - len(marks)) + [bool(m) for m in marks] for marks in answer_marks]
        weights = torch.tensor(rows, dtype=torch.float32, device=mask.device).unsqueeze(-1)
    else:
        weights = mask.unsqueeze(-1).to(torch.float32)
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, _args: object, output: object) -> None:
        hidden = hidden_output(output)
        assert isinstance(hidden, torch.Tensor)
        if read == "last":
            captured.append(hidden[:, -1, :].float())
        else:
            captured.append((hidden.float() * weights).sum(1) / weights.sum(1))

    model.lock.acquire()
    handles = [layer.register_forward_hook(capture) for layer in model.layers]
    try:
        with torch.no_grad():
            forward(model, ids, mask, positions_from_mask(mask))
    finally:
        for handle in handles:
            handle.remove()
        model.lock.release()
    return torch.stack(captured, dim=1).cpu()


def extract_vector(
    model: LoadedModel,
    name: str,
    pairs: Sequence[tuple[str, str]],
    tokenize: Callable[[str], list[int]],
    method: str = "mean_diff",
    read: str = "last",
    pair_index: int = 0,
) -> SteeringVector:
    """Extract a vector at every layer from raw-text pairs, timing the extraction.

    Each text is read whole (``answer_mean`` is then the mean over it, like ``mean``).
    """
    readings = []
    for positive, negative in pairs:
        sides = [tuple(tokenize(text)) for text in (positive, negative)]
        readings.append((Reading(sides[0], (True,) * len(sides[0])), Reading(sides[1], (True,) * len(sides[1]))))
    used = [pairs[pair_index]] if method == "single_pair" else list(pairs)
    return extract_from_readings(model, name, readings, method, read, pair_index, hash_pairs(used))


def extract_from_readings(
    model: LoadedModel,
    name: str,
    readings: Sequence[tuple[Reading, Reading]],
    method: str = "mean_diff",
    read: str = "last",
    pair_index: int = 0,
    pairs_hash: str = "",
    extra: dict[str, str] | None = None,
) -> SteeringVector:
    """Extract a vector at every layer from (positive, negative) readings, timing the extraction.

    ``pairs_hash`` is stored with the vector as its provenance (see :mod:`engine.contrast`).
    """
    if method not in EXTRACTION_METHODS or read not in READ_POSITIONS:
        raise ValueError(f"unknown method {method!r} or read position {read!r}")
    started = time.perf_counter()
    used = [readings[pair_index]] if method == "single_pair" else list(readings)
    sides = [side for pair in used for side in pair]
    marks = [side.answer for side in sides] if read == "answer_mean" else None
    acts = read_activations(model, [side.tokens for side in sides], read, answer_marks=marks)
    positives, negatives = acts[0::2], acts[1::2]
    differences = positives - negatives  # [pairs, layers, hidden]
    if method == "pca":
        directions = torch.stack([_principal_direction(differences[:, layer]) for layer in range(model.n_layers)])
    else:
        directions = differences.mean(dim=0)
    return SteeringVector(
        name=name,
        directions=directions.contiguous(),
        layers=tuple(range(model.n_layers)),
        model_id=model.model_id,
        method=method,
        read=read,
        pairs_hash=pairs_hash,
        extraction_seconds=time.perf_counter() - started,
        extra=dict(extra or {}),
    )


def _principal_direction(differences: torch.Tensor) -> torch.Tensor:
    mean = differences.mean(dim=0)
    centred = differences - mean
    # With one pair (or identical differences) the centred data has no variance left:
    # the difference itself is then the only direction there is.
    basis = centred if differences.shape[0] > 1 and float(centred.abs().max()) > 0 else differences
    _, _, vh = torch.linalg.svd(basis.double(), full_matrices=False)
    unit = vh[0].float()
    projection = float(mean @ unit)
    if projection < 0:
        unit, projection = -unit, -projection
    return unit * projection
