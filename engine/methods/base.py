"""The shared interface of steering methods, and their registry.

A *method* is one way of editing hidden states (vector addition, ablation, ...). Its
class holds validated settings (parsed from an experiment file or a form) and turns them
into a :class:`PreparedEdit`: tensors on the model's device plus ``apply``, the per-row
edit at one layer. The batch machinery in :mod:`engine.steering` decides which rows an
edit touches; a method only sees its own rows.

A method declares its settings once, as a :class:`engine.declaration.Settings` model
(``settings``): parsing, the stored form (``to_dict``), the dashboard's form fields
(``fields``) and the JSON Schema of experiment files all come from that declaration; the
method itself only says how to build itself from validated settings (``from_settings``)
and how to edit (``prepare``).

Subclasses register themselves by name when their module is imported; every module in
:mod:`engine.methods` is imported by :func:`engine.methods.registry`, and so is every
installed plugin's ``steerlab.methods`` entry point (:mod:`engine.plugins`), so adding a
method is adding a module.

Parsing an experiment imports every method, and experiment definitions are read where
torch is not wanted (the store, the dashboard's forms), so this module and the built-in
methods never import torch when they are imported: torch and the model and vector types
appear here only in annotations, and a method imports what computes (torch, engine.extract,
engine.generation) inside the functions that build or apply its tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from engine.declaration import LAYERS, VECTOR, Settings, choice, form_fields
from engine.declaration import FieldInfo as FieldInfo  # re-exported: the form widgets import it from here
from engine.errors import SteerLabError
from engine.fields import Where

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    import torch

    from engine.models import LoadedModel
    from engine.vectors import SteeringVector

# prompt: the prompt's tokens; generated: the tokens the model writes; all: both; assistant:
# every token the model writes, through every turn: a conversation prompt's assistant
# messages (their content) and the generated tokens (the same as generated without such turns).
SCOPES = ("prompt", "generated", "all", "assistant")
Scope = Literal["prompt", "generated", "all", "assistant"]


@dataclass(frozen=True)
class PositionMasks:
    """Which positions of the current forward pass are prompt and which are generated.

    Both are ``[rows, tokens]`` booleans; padding is in neither. The generation loop sets
    them before every forward pass, so a ``generated`` scope keeps steering at every
    cached decode step (where the pass sees one token per row). ``assistant`` (optional,
    same shape) marks the prompt positions that are assistant content of a conversation.
    """

    prompt: torch.Tensor
    generated: torch.Tensor
    assistant: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> PositionMasks:
        assistant = None if self.assistant is None else self.assistant.index_select(0, index)
        return PositionMasks(self.prompt.index_select(0, index), self.generated.index_select(0, index), assistant)

    def scoped(self, scope: str, dtype: torch.dtype) -> torch.Tensor:
        """The scope as a ``[rows, tokens, 1]`` multiplier of 0s and 1s."""
        return self.scope(scope).unsqueeze(-1).to(dtype)

    def scope(self, scope: str) -> torch.Tensor:
        if scope == "prompt":
            return self.prompt
        if scope == "generated":
            return self.generated
        if scope == "assistant":
            return self.generated if self.assistant is None else self.generated | self.assistant
        return self.prompt | self.generated

    @staticmethod
    def prompt_only(attention_mask: torch.Tensor, assistant: torch.Tensor | None = None) -> PositionMasks:
        """Masks of a prefill pass: every real token is prompt; ``assistant`` marks assistant content among them."""
        import torch  # here: importing the method interface must not load torch

        prompt = attention_mask.bool()
        return PositionMasks(prompt, torch.zeros_like(prompt), None if assistant is None else assistant & prompt)


class PreparedEdit(ABC):
    """A method's settings made concrete for one model: what ``apply`` needs, on device."""

    layers: tuple[int, ...]

    @abstractmethod
    def apply(self, layer: int, hidden: torch.Tensor, masks: PositionMasks) -> torch.Tensor:
        """Return the edited hidden states ``[rows, tokens, hidden]`` of this edit's rows.

        Must not modify ``hidden`` in place: the caller decides where the result goes.
        """

    @property
    def parameter_count(self) -> int:
        """Floats the edit carries (vector entries): the 'steering parameters' figure."""
        return 0

    def additive(self, layer: int) -> tuple[torch.Tensor, str] | None:
        """``(delta, scope)`` when ``apply`` at ``layer`` is exactly ``h + scope_mask * delta``.

        A batch then folds every such edit at a layer into one per-row delta matrix and one
        op, so 64 distinct additions cost what one does; ``None`` (the default) keeps the
        edit on the gather/apply/scatter path.
        """
        return None

    # Edits that depend on the prompt (conditional gates, gradient nudging) work out their
    # per-row state here, before the batch's first forward pass, with no hooks attached.
    # ``prompts`` are this edit's rows in the order ``apply`` will see them.
    def begin(self, model: LoadedModel, prompts: Sequence[Sequence[int]]) -> None:
        return None

    # Re-run every ``refresh_every`` generated tokens (0 = never) with the tokens so far.
    refresh_every: int = 0

    def refresh(self, model: LoadedModel, sequences: Sequence[Sequence[int]]) -> None:
        return None

    def cost(self) -> dict[str, float]:
        """Extra compute this edit spent so far, by name; ``seconds`` is its own wall time
        (work done in ``begin``/``refresh``), which the runner charges to its rows alone."""
        return {}


@dataclass(frozen=True)
class ModelFacts:
    """What validation needs to know of a model without holding its weights."""

    model_id: str
    n_layers: int
    hidden_size: int

    @staticmethod
    def of(model: LoadedModel) -> ModelFacts:
        return ModelFacts(model.model_id, model.n_layers, model.hidden_size)


_REGISTRY: dict[str, type[SteeringMethod]] = {}


class SteeringMethod(ABC):
    """Validated settings of one steering edit, and how to prepare it."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    # The one declaration of the method's settings: validation, plain data, the dashboard's
    # form fields and the JSON Schema of experiment files all come from it.
    settings: ClassVar[type[Settings]]
    fields: ClassVar[tuple[FieldInfo, ...]]  # derived from ``settings``

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "settings" in cls.__dict__:
            cls.fields = form_fields(cls.settings)
        if "name" in cls.__dict__:
            if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
                raise RuntimeError(f"two steering methods are named {cls.name!r}")
            if not (isinstance(getattr(cls, "settings", None), type) and issubclass(cls.settings, Settings)):
                raise TypeError(f"steering method {cls.name!r} declares no settings (a Settings subclass)")
            _REGISTRY[cls.name] = cls

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: Where) -> SteeringMethod:
        """Validate settings from a file or form; raise SteerLabError naming the field."""
        return cls.from_settings(cls.settings.checked(raw, where))

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any) -> SteeringMethod:
        """The method with these validated settings (an instance of ``cls.settings``)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, such that ``parse(to_dict())`` gives them back.

        Read from the attributes named like the declared fields (``layers`` is the property).
        """
        values = {key: getattr(self, key) for key in self.settings.model_fields}
        return {"method": self.name, **self.settings.model_construct(**values).plain()}

    @property
    @abstractmethod
    def layers(self) -> tuple[int, ...]:
        """The decoder layers the edit touches."""

    def vector_names(self) -> tuple[str, ...]:
        """Names of experiment vectors the edit reads."""
        return ()

    def check(self, facts: ModelFacts, where: Where) -> None:
        """Validate against a concrete model (layer range and the like)."""
        for i, layer in enumerate(self.layers):
            if not 0 <= layer < facts.n_layers:
                where.child("layers").child(i).fail(
                    f"layer {layer} is out of range for model '{facts.model_id}'",
                    f"use a layer from 0 to {facts.n_layers - 1}",
                )

    @abstractmethod
    def prepare(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> PreparedEdit:
        """Build the edit's tensors on the model's device and dtype."""

    def framed(self, chat_template: str) -> SteeringMethod:
        """This edit for an experiment whose prompts are rendered with ``chat_template`` (auto or off).

        Only an edit that reads example prompts of its own (the conditional gate) must render
        them as the experiment renders its prompts; every other method is itself, unchanged.
        """
        return self


def registered_methods() -> dict[str, type[SteeringMethod]]:
    return dict(_REGISTRY)


def parse_intervention(raw: Any, where: Where) -> SteeringMethod:
    """Parse one entry of a variant's ``interventions`` list (``method:`` picks the class)."""
    if not isinstance(raw, Mapping):
        where.fail("expected a mapping with a 'method' field", "write it as 'method: add' and its settings")
    method = raw.get("method", "add")
    methods = registered_methods()
    if method not in methods:
        where.child("method").fail(
            f"is {method!r}, not a known steering method", f"use one of {', '.join(sorted(methods))}"
        )
    settings = {k: v for k, v in raw.items() if k != "method"}
    return methods[method].parse(settings, where)


def vector_for(vectors: Mapping[str, SteeringVector], name: str) -> SteeringVector:
    if name not in vectors:
        raise SteerLabError(f"Vector '{name}' is not defined; define it under 'vectors' first.")
    return vectors[name]


def read_vector_layers_scope(raw: Mapping[str, Any], where: Where) -> tuple[str, tuple[int, ...], str]:
    """The three settings most methods share: which vector, which layers, which tokens."""
    from engine.fields import as_choice, as_int_list, as_str, required

    return (
        as_str(required(raw, "vector", where), where.child("vector")),
        as_int_list(required(raw, "layers", where), where.child("layers")),
        as_choice(raw.get("scope", "all"), SCOPES, where.child("scope")),
    )


def scaled_deltas(
    vector: SteeringVector, layers: Sequence[int], coefficient: float, model: LoadedModel
) -> dict[int, torch.Tensor]:
    """``coefficient * v[layer]`` for each layer, on that layer's device, in the model's dtype.

    With ``device_map="auto"`` layers sit on several GPUs: an edit's tensors must be where
    the hidden states it edits are.
    """
    return {
        layer: (coefficient * vector.for_layer(layer)).to(model.layer_device(layer), model.dtype) for layer in layers
    }


def unit_directions(vector: SteeringVector, layers: Sequence[int], model: LoadedModel) -> dict[int, torch.Tensor]:
    """The vector's direction at each layer, normalised to length 1, on that layer's device."""
    out = {}
    for layer in layers:
        direction = vector.for_layer(layer)
        norm = float(direction.norm())
        if norm == 0.0:
            raise SteerLabError(
                f"Vector '{vector.name}' is all zeros at layer {layer}, so it has no direction; extract it again."
            )
        out[layer] = (direction / norm).to(model.layer_device(layer), model.dtype)
    return out


class VectorLayersMethod(SteeringMethod):
    """A method that edits with one experiment vector at a list of layers (add, ablate, conditional)."""

    vector: str
    layer_list: tuple[int, ...]

    @property
    def layers(self) -> tuple[int, ...]:
        return self.layer_list

    def vector_names(self) -> tuple[str, ...]:
        return (self.vector,)


class VectorLayersScope(Settings):
    """The settings most methods share: which vector, which layers, which tokens."""

    vector: Annotated[str, VECTOR] = Field(description="Which of the experiment's vectors.")
    layers: Annotated[tuple[int, ...], LAYERS] = Field(
        description="Decoder layers whose output is edited.", examples=[[0]]
    )
    scope: Annotated[str, choice(SCOPES)] = Field("all", description="Which tokens are edited.")
