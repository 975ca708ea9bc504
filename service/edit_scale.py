"""Edit size relative to the hidden state: shown beside each steering edit, bounded on save.

The bound (``STEERLAB_MAX_EDIT_RATIO``, default 20 times the typical hidden-state norm at
the edited layer) stops a mistyped coefficient before it fills a run with empty outputs;
the ratio itself is shown in the Variants form, so a user sees how hard an edit pushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.limits import Limit
from engine.models import load_model
from engine.scale import hidden_state_norms
from engine.spec import VariantSpec, parse_variant
from engine.vectors import SteeringVector
from service.catalog import get_experiment, prompt_texts, stored_spec

MAX_EDIT_RATIO = Limit("times the typical hidden-state norm", "STEERLAB_MAX_EDIT_RATIO", 20)
NORM_PROMPTS = 8  # prompts the typical norm is measured on


@dataclass(frozen=True)
class EditScale:
    edit: int  # 1-based, as the form numbers edits
    layer: int
    ratio: float  # |coefficient x direction| / mean hidden-state norm at that layer
    hidden_norm: float


@lru_cache(maxsize=16)
def _norms(model_id: str, prompts: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(hidden_state_norms(load_model(model_id), prompts))


def edit_scales(store: Store, experiment_name: str, variant: VariantSpec) -> list[EditScale]:
    """The scale of every (edit, layer) whose vector is already extracted; others are unknown yet."""
    with store.session() as session:
        experiment = get_experiment(session, experiment_name)
        spec = stored_spec(experiment)
        data = {v.name: v.data for v in experiment.vectors if v.data is not None}
    scales: list[EditScale] = []
    norms: tuple[float, ...] | None = None
    for number, intervention in enumerate(variant.interventions, start=1):
        settings = intervention.to_dict()
        vector_name, coefficient = settings.get("vector"), settings.get("coefficient")
        layers = settings.get("layers")
        if not isinstance(vector_name, str) or vector_name not in data or not isinstance(coefficient, (int, float)):
            continue
        vector = SteeringVector.from_bytes(data[vector_name], source=f"stored vector '{vector_name}'")
        norms = norms or _norms(spec.model, tuple(prompt_texts(spec)[:NORM_PROMPTS]))
        for layer in [layers] if isinstance(layers, int) else list(layers or []):
            if layer in vector.layers and 0 <= layer < len(norms):
                size = abs(float(coefficient)) * float(vector.for_layer(layer).norm())
                scales.append(EditScale(number, layer, size / norms[layer], norms[layer]))
    return scales


def check_edit_scales(store: Store, experiment_name: str, variant: VariantSpec) -> None:
    """Refuse an edit far larger than the activations it edits (one sentence naming it)."""
    limit = MAX_EDIT_RATIO.value
    for scale in edit_scales(store, experiment_name, variant):
        if scale.ratio > limit:
            raise SteerLabError(
                f"Variant '{variant.name}', edit {scale.edit} adds {scale.ratio:.3g} times the typical hidden-state "
                f"norm at layer {scale.layer} (limit {limit}); lower the coefficient, or ask the operator to raise "
                f"{MAX_EDIT_RATIO.variable}."
            )


def draft_scales(store: Store, experiment_name: str, raw: dict[str, object]) -> list[EditScale]:
    """Scales of a form's unsaved variant; an incomplete draft has none yet (its errors show on save)."""
    try:
        with store.session() as session:
            spec = stored_spec(get_experiment(session, experiment_name))
        variant = parse_variant(raw, Where.form("draft"), {v.name for v in spec.vectors})
        return edit_scales(store, experiment_name, variant)
    except SteerLabError:
        return []
