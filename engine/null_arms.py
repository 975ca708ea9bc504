"""Null arms: automatic controls of a steering variant, run beside it as variants of their own.

Many steering vectors do no better than a random perturbation of the same size ("Steering
off course", 36 models). A steering variant that declares ``null_arms: [random, flipped]``
(or ``true`` for both) gets, for each arm, a derived variant named ``"<variant> (<arm>)"``
that is the same variant with every vector it reads replaced:

- ``random``: per layer, a random direction with the real vector's norm at that layer, made
  exactly orthogonal to the real direction (a raw draw overlaps it by chance: |cos| about
  0.1 to 0.3 in a 64- or 128-wide model, which would carry part of the real effect into the
  control). It is drawn from a seed derived from the experiment's seed, the real variant's
  name, the vector's name and the layer, so two runs, a resumed run and the playground use
  the same direction.
- ``flipped``: the vector times -1, which for the methods with a coefficient (add,
  add_norm, conditional) is exactly the edit with the coefficient's sign flipped (negation
  is exact in floating point), and for nudging toward a vector turns it toward the
  opposite direction.

Everything else stays as it is: the method, layers, coefficient, scope, condition, prompt
prefix and system prompt, and edits that read no vector. So the arm isolates what the
vector itself contributes. A variant whose edits read no vector (nudging toward words) has
nothing to replace, and a flipped arm of edits blind to the vector's sign (directional
ablation projects out a direction whichever its sign) would be the variant itself: both are
refused in one sentence naming ``null_arms``.

Derived variants are ordinary variants everywhere (store, mixed batches, rating, scores,
Compare, export); ``control_of`` and ``control`` say which variant they control and how.
They are never written into a stored definition: :class:`engine.spec.ExperimentSpec`
derives them from their variant's ``null_arms`` whenever a spec is built, so a definition
round-trips and its hash changes only when ``null_arms`` does.

The replacement happens when an edit is prepared (:class:`NullArmEdit` wraps the real
edit), so every place that prepares a variant's edits (a run, its measurements, the
playground) uses the same null vectors without knowing about arms. Importing this module
loads neither torch nor numpy (:mod:`engine.spec` imports it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.declaration import Check
from engine.errors import SteerLabError
from engine.fields import Where, as_choice, as_list
from engine.methods.base import ModelFacts, PreparedEdit, SteeringMethod, vector_for

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from engine.models import LoadedModel
    from engine.spec import VariantSpec
    from engine.vectors import SteeringVector

RANDOM = "random"
FLIPPED = "flipped"
ARMS = (RANDOM, FLIPPED)
_ARM_WORDS = {
    RANDOM: "a random direction with the same norm at each layer, orthogonal to the real vector",
    FLIPPED: "the same vector with its sign flipped",
}

# Methods whose edit depends on the vector only up to its sign, so a flipped arm would be the
# variant itself. A plugin method says so with a class attribute ``sign_blind = True``.
SIGN_BLIND_METHODS = frozenset({"ablate"})


def arm_name(variant: str, arm: str) -> str:
    """The derived variant's name: ``"sad_x2 (random)"``."""
    return f"{variant} ({arm})"


def parse_null_arms(value: Any, where: Where) -> tuple[str, ...]:
    """``true`` (both arms), ``false`` or ``[]`` (none), or a list of arm names; in the canonical order."""
    if value is True:
        return ARMS
    if value is False:
        return ()
    items = [as_choice(item, ARMS, where.child(i)) for i, item in enumerate(as_list(value, where))]
    if len(set(items)) != len(items):
        where.fail("names an arm twice", f"list each of {', '.join(ARMS)} at most once")
    # Canonical order, so [flipped, random] and true store (and hash) alike.
    return tuple(arm for arm in ARMS if arm in items)


NULL_ARMS = Check(
    parse_null_arms,
    {
        "anyOf": [
            {"type": "boolean"},
            {"type": "array", "items": {"enum": list(ARMS)}, "uniqueItems": True},
        ],
        "description": "Automatic controls run beside this steering variant: 'random' (a random direction of "
        "the same norm per layer) and 'flipped' (the vector's sign flipped); true for both.",
    },
    "texts",
)


def reads_vectors(edit: SteeringMethod) -> bool:
    return bool(edit.vector_names())


def sign_blind(edit: SteeringMethod) -> bool:
    """Whether the edit is the same with the vector negated (directional ablation)."""
    return bool(getattr(edit, "sign_blind", edit.name in SIGN_BLIND_METHODS))


def check_null_arms(variant: VariantSpec, where: Where) -> None:
    """That ``variant`` can have its null arms: one sentence naming ``where`` (its null_arms field) if not."""
    if not variant.null_arms:
        return
    if variant.kind != "steering":
        where.fail(
            f"is set on a {variant.kind} variant, which reads no steering vector to replace",
            "remove it, or declare null arms on a steering variant",
        )
    vector_edits = [edit for edit in variant.interventions if reads_vectors(edit)]
    if not vector_edits:
        methods = ", ".join(sorted({edit.name for edit in variant.interventions}))
        where.fail(
            f"is set, but none of the variant's edits ({methods}) reads a vector, so a null arm would be the "
            "variant itself",
            "remove null_arms",
        )
    if FLIPPED in variant.null_arms and all(sign_blind(edit) for edit in vector_edits):
        methods = ", ".join(sorted({edit.name for edit in vector_edits}))
        where.fail(
            f"asks for a flipped arm, but {methods} removes the vector's direction whichever its sign, "
            "so the flipped arm would be the variant itself",
            f"use null_arms: [{RANDOM}]",
        )


def check_arm_names(variants: Sequence[VariantSpec], where: Where) -> None:
    """No declared variant has the name of another's null arm; ``where`` is the variants list."""
    declared = {v.name for v in variants if not v.control_of}
    for i, variant in enumerate(variants):
        for arm in variant.null_arms:
            name = arm_name(variant.name, arm)
            if name in declared:
                where.child(i).child("null_arms").fail(
                    f"gives '{variant.name}' a {arm} arm named {name!r}, the name of a variant declared by hand",
                    f"rename that variant or remove {arm!r} from null_arms",
                )


def expand_null_arms(variants: Sequence[VariantSpec], seed: int) -> tuple[VariantSpec, ...]:
    """The declared variants, each followed by its null arms (derived anew: any given ones are dropped)."""
    declared = [v for v in variants if not v.control_of]
    names = {v.name for v in declared}
    out: list[VariantSpec] = []
    for variant in declared:
        out.append(variant)
        for arm in variant.null_arms:
            name = arm_name(variant.name, arm)
            if name in names:
                raise SteerLabError(
                    f"Variant {name!r} is the {arm} null arm of '{variant.name}', derived from it, and cannot also "
                    f"be declared by hand; change '{variant.name}' or its null_arms instead, or give the declared "
                    "variant another name."
                )
            out.append(null_arm(variant, arm, seed))
    return tuple(out)


def null_arm(variant: VariantSpec, arm: str, seed: int) -> VariantSpec:
    """The ``arm`` control of ``variant``: its edits with every vector replaced (see the module's docstring)."""
    if arm not in ARMS:
        raise ValueError(f"unknown null arm {arm!r}")
    edits = tuple(
        NullArmEdit(edit, arm, seed, variant.name) if reads_vectors(edit) else edit for edit in variant.interventions
    )
    return replace(
        variant,
        name=arm_name(variant.name, arm),
        interventions=edits,
        description=f"Null arm of '{variant.name}': {_ARM_WORDS[arm]}.",
        null_arms=(),
        control_of=variant.name,
        control=arm,
    )


@dataclass(frozen=True)
class NullArmEdit(SteeringMethod):
    """A real edit whose vectors are replaced by their null arm when it is prepared.

    Not a registered method (it has no ``name`` or ``settings`` of its own, so no file or form
    can ask for it): :func:`null_arm` builds it. It reads and checks like the edit it wraps,
    and shows as that edit with ``null_arm: <arm>`` added.
    """

    title = "Null arm"
    summary = "A steering edit with its vectors replaced by a control: a random direction or the flipped sign."

    inner: SteeringMethod
    arm: str
    seed: int  # the experiment's seed
    variant: str  # the real variant's name: part of the random arm's seed

    def __post_init__(self) -> None:
        # Pages and logs name an edit by its method: the arm shows as the method it wraps.
        object.__setattr__(self, "name", self.inner.name)

    @classmethod
    def from_settings(cls, settings: Any) -> NullArmEdit:
        raise TypeError("a null arm's edit is derived from its variant's edit, never read from settings")

    def to_dict(self) -> dict[str, Any]:
        return {**self.inner.to_dict(), "null_arm": self.arm}

    @property
    def layers(self) -> tuple[int, ...]:
        return self.inner.layers

    def vector_names(self) -> tuple[str, ...]:
        return self.inner.vector_names()

    def check(self, facts: ModelFacts, where: Where) -> None:
        self.inner.check(facts, where)

    def framed(self, chat_template: str) -> NullArmEdit:
        return replace(self, inner=self.inner.framed(chat_template))

    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        arms = {
            name: arm_vector(vector_for(vectors, name), self.arm, self.seed, self.variant)
            for name in self.inner.vector_names()
        }
        return self.inner.prepare(model, {**vectors, **arms})


def arm_vector(vector: SteeringVector, arm: str, seed: int, variant: str) -> SteeringVector:
    """The null arm of ``vector`` for variant ``variant`` of an experiment seeded ``seed``."""
    if arm == RANDOM:
        return random_direction(vector, seed, variant)
    if arm == FLIPPED:
        return flipped(vector)
    raise ValueError(f"unknown null arm {arm!r}")


def flipped(vector: SteeringVector) -> SteeringVector:
    """``-vector`` at every layer (exact: negation only flips the sign bit)."""
    return replace(vector, directions=-vector.directions, extra={**vector.extra, "null_arm": FLIPPED})


def arm_seed(seed: int, variant: str, vector: str, layer: int) -> int:
    """A 64-bit seed from (experiment seed, real variant, vector, layer): the same on every host and run."""
    text = json.dumps(["steerlab null arm", seed, variant, vector, layer], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def random_direction(vector: SteeringVector, seed: int, variant: str) -> SteeringVector:
    """Per layer of ``vector``: a random direction orthogonal to it, with its norm at that layer.

    Drawn in float64 from a Gaussian (a uniformly random direction) with :func:`arm_seed`, so
    a layer's draw does not depend on which other layers the vector covers; a layer where the
    real vector is all zeros stays all zeros (the same norm).
    """
    import numpy as np
    import torch

    real = vector.directions.detach().to(torch.float64).cpu().numpy()
    if real.shape[1] < 2:
        raise SteerLabError(
            f"Vector '{vector.name}' has hidden size {real.shape[1]}, so no direction is orthogonal to it; "
            f"a random null arm needs a model with a wider hidden state (use null_arms: [{FLIPPED}])."
        )
    rows = []
    for row, layer in zip(real, vector.layers, strict=True):
        norm = float(np.linalg.norm(row))
        if norm == 0.0:
            rows.append(np.zeros_like(row))
            continue
        unit = row / norm
        draw = np.random.default_rng(arm_seed(seed, variant, vector.name, layer)).standard_normal(row.shape[0])
        draw -= (draw @ unit) * unit  # orthogonal to the real direction
        draw -= (draw @ unit) * unit  # a second pass removes what rounding left of it
        rows.append(draw * (norm / float(np.linalg.norm(draw))))
    directions = torch.from_numpy(np.stack(rows)).to(torch.float32)
    return replace(vector, directions=directions, extra={**vector.extra, "null_arm": RANDOM})
