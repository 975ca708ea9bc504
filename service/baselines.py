"""The figures of an adaptation baseline (a LoRA adapter or a fine-tuned copy) once trained."""

from __future__ import annotations

from engine.models import LoadedModel
from engine.training import AdaptedModel


def training_figures(adapted: AdaptedModel, base: LoadedModel, probe: list[int]) -> dict[str, float]:
    """Undo check, training cost and size of a trained baseline, in the variant figures' names."""
    f = adapted.figures
    return {
        "reversibility_max_abs_logit_diff": adapted.undo_difference(base, probe),
        "training_seconds": f.training_seconds,
        "trainable_parameters": float(f.trainable_parameters),
        "training_peak_memory_bytes": float(f.peak_memory_bytes),
        "training_examples": float(f.examples),
        "extra_parameter_bytes": float(f.extra_parameter_bytes),
        "layers_touched": float(f.layers_touched),
        "training_final_loss": f.final_loss,
        "training_cached": float(f.cached),
        "steering_parameters": 0.0,
        "extraction_seconds": 0.0,
    }
