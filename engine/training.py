"""The adaptation baselines steering is compared with: a LoRA adapter and full fine-tuning.

Both train a copy of the model on the experiment's training texts (causal-LM loss), so
the shared model that steering hooks into is never changed. Figures recorded: training
time, trainable parameters, peak memory, examples used, and the extra memory the method
needs (the adapter's weights; for fine-tuning, the copy of the original weights that is
the only way to undo it). Trained weights are cached on disk by a hash of everything that
decides them, so a re-run does not retrain.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.errors import SteerLabError
from engine.generation import forward, left_pad, positions_from_mask
from engine.measure import PeakMemory
from engine.models import LoadedModel, wrap_model

# The settings live in a torch-free module (experiment definitions hold them); re-exported here.
from engine.training_spec import TRAINING_METHODS as TRAINING_METHODS
from engine.training_spec import TrainingSpec as TrainingSpec
from engine.training_spec import parse_training as parse_training


@dataclass(frozen=True)
class TrainingFigures:
    training_seconds: float
    trainable_parameters: int
    peak_memory_bytes: int
    examples: int
    extra_parameter_bytes: int  # adapter weights, or the saved copy of the original weights
    layers_touched: int
    final_loss: float
    cached: bool = False


@dataclass
class AdaptedModel:
    """A trained copy of the model, with the means to undo the adaptation."""

    loaded: LoadedModel
    figures: TrainingFigures
    spec: TrainingSpec
    original_state: dict[str, torch.Tensor] | None = None  # fine-tuning's undo copy

    def undo_difference(self, base: LoadedModel, tokens: Sequence[int]) -> float:
        """Largest logit difference between the base model and this model with the adaptation undone."""
        before = _logits(base, tokens)
        if self.spec.method == "lora":
            with self.loaded.model.disable_adapter():
                after = _logits(self.loaded, tokens)
        else:
            assert self.original_state is not None
            tuned = {k: v.detach().clone() for k, v in self.loaded.model.state_dict().items()}
            self.loaded.model.load_state_dict(self.original_state)
            after = _logits(self.loaded, tokens)
            self.loaded.model.load_state_dict(tuned)
        return float((after - before).abs().max())


def _logits(model: LoadedModel, tokens: Sequence[int]) -> torch.Tensor:
    ids, mask = left_pad(model, [tokens])
    with torch.no_grad():
        return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits.float()


def cache_dir() -> Path:
    return Path(os.environ.get("STEERLAB_CACHE", ".steerlab-cache"))


def content_hash(model: LoadedModel, examples: Sequence[str], spec: TrainingSpec) -> str:
    text = json.dumps([model.model_id, str(model.dtype), list(examples), spec.to_dict(), 1], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def adapt(
    base: LoadedModel,
    examples: Sequence[str],
    spec: TrainingSpec,
    source: str,
    progress: Callable[[int, int], None] | None = None,
) -> AdaptedModel:
    """Train (or load from the cache) a LoRA adapter or a fine-tuned copy of ``base``."""
    if not examples:
        raise SteerLabError(
            f"{source}: the training set is empty; add 'training_examples' to the experiment or point 'examples_from' at a vector with pairs."
        )
    key = content_hash(base, examples, spec)
    folder = cache_dir()
    weights_file, figures_file = folder / f"{key}.safetensors", folder / f"{key}.json"
    with base.lock:
        model, original = _fresh_copy(base, spec)
        if weights_file.is_file() and figures_file.is_file():
            _load_trained(model, spec, load_file(str(weights_file)))
            figures = TrainingFigures(**{**json.loads(figures_file.read_text()), "cached": True})
        else:
            figures = _train(model, base, examples, spec, progress)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(_trained_state(model, spec), str(weights_file))
            figures_file.write_text(json.dumps(asdict(figures)))
    model.eval()
    return AdaptedModel(wrap_model(f"{base.model_id}+{spec.method}", model, base.tokenizer), figures, spec, original)


def _fresh_copy(base: LoadedModel, spec: TrainingSpec) -> tuple[Any, dict[str, torch.Tensor] | None]:
    model = copy.deepcopy(base.model)
    if spec.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=spec.rank, lora_alpha=2 * spec.rank, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=True
        )
        return get_peft_model(model, config), None
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, original


def _trained_state(model: Any, spec: TrainingSpec) -> dict[str, torch.Tensor]:
    if spec.method == "lora":
        return {k: v.detach().contiguous() for k, v in model.state_dict().items() if "lora_" in k}
    # Cloned: tied weights (embeddings and output layer) share storage, which safetensors refuses.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _load_trained(model: Any, spec: TrainingSpec, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(state, strict=spec.method == "finetune")


def _train(
    model: Any,
    base: LoadedModel,
    examples: Sequence[str],
    spec: TrainingSpec,
    progress: Callable[[int, int], None] | None,
) -> TrainingFigures:
    torch.manual_seed(spec.seed)
    texts = [list(base.tokenizer(t).input_ids) for t in examples]
    trainable = (
        [p for p in model.parameters() if p.requires_grad] if spec.method == "lora" else list(model.parameters())
    )
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=spec.lr)
    steps = spec.epochs * ((len(texts) + spec.batch_size - 1) // spec.batch_size)
    loss_value = float("nan")
    model.train()
    started = time.perf_counter()
    with PeakMemory(base.device) as memory, torch.enable_grad():
        step = 0
        generator = torch.Generator().manual_seed(spec.seed)
        for _ in range(spec.epochs):
            order = torch.randperm(len(texts), generator=generator).tolist()
            for start in range(0, len(texts), spec.batch_size):
                batch = [texts[i] for i in order[start : start + spec.batch_size]]
                ids, mask = left_pad(base, batch)
                labels = ids.masked_fill(mask == 0, -100)
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), labels=labels)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                loss_value = out.loss.detach().item()
                memory.sample()
                step += 1
                if progress is not None:
                    progress(step, steps)
    seconds = time.perf_counter() - started
    for p in model.parameters():
        p.requires_grad_(False)
    n_trainable = sum(p.numel() for p in trainable)
    bytes_per = next(iter(trainable)).element_size()
    n_layers = len(base.layers)
    return TrainingFigures(
        training_seconds=seconds,
        trainable_parameters=n_trainable,
        peak_memory_bytes=memory.peak_bytes,
        examples=len(texts),
        extra_parameter_bytes=n_trainable * bytes_per,
        layers_touched=n_layers,
        final_loss=loss_value,
    )
