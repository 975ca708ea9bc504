"""The behaviour knob: one prompt, steered and unsteered, side by side in one mixed batch."""

from __future__ import annotations

from dataclasses import dataclass

from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.methods.add import AddVector
from engine.methods.base import ModelFacts
from engine.models import load_model
from engine.prompting import render_prompt
from engine.spec import VariantSpec
from engine.steering import BatchSteering
from service.catalog import load_spec
from service.vector_store import ensure_vectors


@dataclass(frozen=True)
class Preview:
    steered: str
    plain: str
    steering_on: bool

    @property
    def identical(self) -> bool:
        return self.steered == self.plain


def preview(
    store: Store,
    experiment_name: str,
    vector: str,
    layer: int,
    coefficient: float,
    prompt: str,
    steering_on: bool = True,
    max_new_tokens: int = 40,
    scope: str = "all",
) -> Preview:
    """Greedy outputs of the prompt with and without the edit (row 0 steered, row 1 plain)."""
    where = Where(f"the playground of '{experiment_name}'")
    if not prompt.strip():
        raise SteerLabError("The prompt is empty; type a prompt to steer.")
    spec = load_spec(store, experiment_name)
    if vector not in {v.name for v in spec.vectors}:
        raise SteerLabError(f"Vector '{vector}' is not defined in '{experiment_name}'; add it on the Variants page.")
    edit_spec = AddVector.parse(
        {"vector": vector, "layers": [layer], "coefficient": coefficient, "scope": scope}, where
    )
    model = load_model(spec.model)
    edit_spec.check(ModelFacts.of(model), where)
    vectors = ensure_vectors(store, experiment_name, spec, model, only={vector})
    tokens = render_prompt(model, prompt, VariantSpec("playground"), spec.chat_template)
    edits = [[edit_spec.prepare(model, vectors)] if steering_on else [], []]
    rows = generate(
        model, [tokens, tokens], Decoding(max_new_tokens=max_new_tokens), steering=BatchSteering(model, edits)
    )
    steered, plain = model.tokenizer.batch_decode(rows, skip_special_tokens=True)
    return Preview(steered, plain, steering_on)
