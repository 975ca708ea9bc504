"""What a request runs: the served experiments' variants, and the resolution of ``model`` and ``steering``.

``model`` names one of:

- ``EXPERIMENT/VARIANT``: that variant's framing (prefix, system prompt) and edits, exactly
  as ``steerlab run`` prepares them;
- a deployment of a served experiment: its traffic split assigns an arm by the ``user``
  field (a stopped arm serves the baseline);
- the served model's own id: the plain model; or an experiment's bare name, together with
  a per-request steering spec that reads that experiment's vectors.

``steering: "off"`` serves the plain model whatever variant ``model`` names (no edits, no
variant framing): the per-request safety net. A deployment decides its steering itself, so a
request to one that carries ``steering`` is refused (its responses are the A/B's data).
The catalog is read once at start: variants and vectors added to an experiment later are
served after a restart (their errors say so), since preparing them may extract vectors
with the model the batcher owns. A steering spec ``{"experiment", "edits"}`` is read by
the methods' own parsers, so its errors name the field, within the operator's limits.

Adapter and fine-tune variants need weights of their own and are not served on one model.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where, printable, short
from engine.methods.base import ModelFacts, PreparedEdit, SteeringMethod, parse_intervention
from engine.models import LoadedModel, load_model
from engine.spec import ExperimentSpec, VariantSpec, check_against_model
from engine.vectors import SteeringVector
from service.catalog import get_experiment, stored_spec
from service.deployments import Deployment, assign
from service.serving.deployment_board import DeploymentBoard
from service.serving.errors import ApiError, bad_request, field_sentence
from service.serving.options import ServeOptions
from service.vector_store import ensure_vectors

log = logging.getLogger(__name__)

PLAIN = VariantSpec("plain")
_PREPARED_CACHE = 1024  # distinct request specs whose prepared edits are kept


@dataclass(frozen=True)
class ServedVariant:
    experiment: str
    spec: VariantSpec
    methods: tuple[SteeringMethod, ...]  # framed as the experiment renders its prompts
    shared_edits: tuple[PreparedEdit, ...] | None  # None: the edits keep per-request state

    def edits(self, model: LoadedModel, vectors: Mapping[str, SteeringVector]) -> tuple[PreparedEdit, ...]:
        if self.shared_edits is not None:
            return self.shared_edits
        return tuple(m.prepare(model, vectors) for m in self.methods)


@dataclass
class ServedExperiment:
    name: str
    spec: ExperimentSpec
    vectors: dict[str, SteeringVector]
    variants: dict[str, ServedVariant]
    unservable: dict[str, str]  # variant -> its kind (lora, finetune)


@dataclass(frozen=True)
class Target:
    """What one request runs, and what is stored about it."""

    experiment: str | None
    deployment: str | None
    assigned: str | None
    served: str | None  # the variant served; None for the plain model or a request's spec
    steering_json: str  # "" / "off" / the request's spec as JSON
    framing: VariantSpec  # prefix and system prompt (PLAIN for none)
    chat_template: str
    edits: tuple[PreparedEdit, ...] = ()
    show_variant: bool = False
    header_variant: str | None = None  # the x-steerlab-variant header, when the deployment shows it


@dataclass
class Catalog:
    model: LoadedModel
    experiments: dict[str, ServedExperiment]
    options: ServeOptions
    _prepared: OrderedDict[str, tuple[PreparedEdit, ...]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, store: Store, options: ServeOptions, model: LoadedModel | None = None) -> Catalog:
        """Read the experiments, load their one model (unless given), prepare every servable variant."""
        specs: dict[str, ExperimentSpec] = {}
        for name in dict.fromkeys(options.experiments):
            with store.session() as session:
                specs[name] = stored_spec(get_experiment(session, name))
        models = {spec.model for spec in specs.values()}
        if len(models) > 1:
            listed = "; ".join(f"'{n}' uses {s.model}" for n, s in specs.items())
            raise SteerLabError(
                f"The experiments to serve use different models ({listed}); one server serves one model, "
                "so start one server per model."
            )
        if model is None:
            first = next(iter(specs.values()))
            model = load_model(first.model, options.device, options.dtype, batch_size=options.max_rows)
        experiments = {}
        for name, spec in specs.items():
            check_against_model(spec, ModelFacts.of(model), f"stored experiment '{name}'")
            vectors = ensure_vectors(store, name, spec, model, only={v.name for v in spec.vectors})
            experiments[name] = _served(name, spec, model, vectors)
        return cls(model, experiments, options)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def model_names(self) -> list[str]:
        """Every ``model`` a request may name, except deployments (the board lists those)."""
        return [self.model_id] + [f"{e.name}/{v}" for e in self.experiments.values() for v in e.variants]

    def resolve(self, model_name: str, steering: object, user: str | None, board: DeploymentBoard) -> Target:
        if steering is not None and steering != "off" and not isinstance(steering, Mapping):
            raise bad_request(
                'Field \'steering\' must be "off" or a spec {"experiment": ..., "edits": [...]}; fix or leave it out.',
                "steering",
            )
        target = self._by_name(model_name, user, board, steering)
        if steering is not None and target.deployment is not None:
            # Its responses are the deployment's A/B data: a request must not change what they ran.
            raise bad_request(
                f"Model '{_shown(model_name)}' is a deployment, which decides the steering itself; leave 'steering' "
                f"out, or name EXPERIMENT/VARIANT or the model '{self.model_id}' to steer it yourself or switch it off.",
                "steering",
            )
        if steering == "off":
            return Target(
                target.experiment,
                target.deployment,
                target.assigned,
                None,
                "off",
                PLAIN,
                target.chat_template,
                show_variant=target.show_variant,
            )
        if isinstance(steering, Mapping):
            if target.served is not None:
                raise bad_request(
                    f"Model '{_shown(model_name)}' already picks a variant, and a steering spec would replace it; "
                    f"send the spec with the model '{self.model_id}' or an experiment's name instead.",
                    "steering",
                )
            return self._spec_target(steering, target.experiment)
        return target

    def _by_name(self, name: str, user: str | None, board: DeploymentBoard, steering: object) -> Target:
        if name == self.model_id:
            return Target(None, None, None, None, "", PLAIN, "auto")
        if name in self.experiments:
            if steering is None:
                raise ApiError(
                    404,
                    f"Model '{_shown(name)}' is an experiment, not a variant; name one of its variants as "
                    f"{name}/VARIANT ({self._variant_list(name)}), or send a steering spec.",
                    param="model",
                    code="model_not_found",
                )
            return Target(name, None, None, None, "", PLAIN, self.experiments[name].spec.chat_template)
        experiment_name, _, variant_name = name.partition("/")
        if variant_name and experiment_name in self.experiments:
            return self._variant_target(self.experiments[experiment_name], variant_name)
        deployment = board.get(name)
        if deployment is not None:
            return self._deployment_target(deployment, user)
        if board.served_elsewhere(name):
            raise ApiError(
                404,
                f"Deployment '{_shown(name)}' belongs to an experiment this server does not serve; "
                "send it to the server of that experiment.",
                param="model",
                code="model_not_found",
            )
        raise ApiError(
            404,
            f"Model '{_shown(name)}' is not served here (served: {self._served_list()}); GET /v1/models lists them all.",
            param="model",
            code="model_not_found",
        )

    def _variant_target(
        self, experiment: ServedExperiment, name: str, deployment: Deployment | None = None, assigned: str | None = None
    ) -> Target:
        variant = experiment.variants.get(name)
        if variant is None:
            if name in experiment.unservable:
                raise bad_request(
                    f"Variant '{_shown(name)}' of '{experiment.name}' is a {experiment.unservable[name]} baseline "
                    "with weights of its own, which this one-model server cannot serve; pick a steering or "
                    "prompting variant.",
                    "model",
                )
            raise ApiError(
                404,
                f"Experiment '{experiment.name}' has no variant '{_shown(name)}' served here (variants: "
                f"{self._variant_list(experiment.name)}); pick one of those, or restart the server to serve "
                "variants added since it started.",
                param="model",
                code="model_not_found",
            )
        show = deployment is not None and deployment.show_variant
        return Target(
            experiment.name,
            deployment.name if deployment is not None else None,
            assigned if deployment is not None else name,
            name,
            "",
            variant.spec,
            experiment.spec.chat_template,
            variant.edits(self.model, experiment.vectors),
            show,
            name if show else None,
        )

    def _deployment_target(self, deployment: Deployment, user: str | None) -> Target:
        if not deployment.live:
            raise ApiError(
                404,
                f"Deployment '{deployment.name}' has ended and takes no more requests; ask its operator "
                "which deployment or variant serves now.",
                param="model",
                code="deployment_ended",
            )
        assignment = assign(deployment, user)
        experiment = self.experiments[deployment.experiment]
        return self._variant_target(experiment, assignment.served, deployment, assignment.assigned)

    def _spec_target(self, raw: Mapping[str, object], default_experiment: str | None) -> Target:
        options = self.options
        if not options.request_steering:
            raise ApiError(
                403,
                "This server does not take steering specs in requests (it was started with "
                "--no-request-steering); name a variant in 'model' instead.",
                param="steering",
                code="request_steering_off",
            )
        where = Where("request", "steering")
        unknown = sorted(set(raw) - {"experiment", "edits"})
        try:
            if unknown:
                where.child(unknown[0]).fail("is not a field of a steering spec", "use 'experiment' and 'edits'")
            experiment = self._spec_experiment(raw.get("experiment"), default_experiment, where.child("experiment"))
            edits_raw = raw.get("edits")
            edits_where = where.child("edits")
            if not isinstance(edits_raw, list) or not edits_raw:
                edits_where.fail(
                    "is missing or not a non-empty list", 'give a list of edits like {"method": "add", ...}'
                )
            if len(edits_raw) > options.max_edits:
                edits_where.fail(
                    f"has {len(edits_raw)} edits, more than this server's limit of {options.max_edits}",
                    f"send at most {options.max_edits}",
                )
            methods = tuple(self._spec_edit(item, experiment, edits_where.child(i)) for i, item in enumerate(edits_raw))
        except SteerLabError as exc:
            raise bad_request(field_sentence(str(exc)), "steering") from None
        framed = tuple(m.framed(experiment.spec.chat_template) for m in methods)
        text = json.dumps({"experiment": experiment.name, "edits": [m.to_dict() for m in methods]}, sort_keys=True)
        return Target(
            experiment.name,
            None,
            None,
            None,
            text,
            PLAIN,
            experiment.spec.chat_template,
            self._prepared_edits(text, framed, experiment.vectors),
        )

    def _spec_experiment(self, raw: object, default: str | None, where: Where) -> ServedExperiment:
        if raw is None:
            if default is not None:
                return self.experiments[default]
            if len(self.experiments) == 1:
                return next(iter(self.experiments.values()))
            where.fail(
                "is missing, and this server serves several experiments", f"name one of {self._experiment_list()}"
            )
        if not isinstance(raw, str) or raw not in self.experiments:
            shown = short(printable(str(raw)), 60)
            where.fail(f"is '{shown}', which this server does not serve", f"name one of {self._experiment_list()}")
        if default is not None and raw != default:
            where.fail(f"is '{raw}' but 'model' names '{default}'", "name the same experiment in both")
        return self.experiments[raw]

    def _spec_edit(self, raw: object, experiment: ServedExperiment, where: Where) -> SteeringMethod:
        options = self.options
        method_name = raw.get("method", "add") if isinstance(raw, Mapping) else None
        if isinstance(raw, Mapping) and method_name not in options.request_methods:
            where.child("method").fail(
                f"is '{short(printable(str(method_name)), 40)}', which this server does not take in a request",
                f"use {' or '.join(options.request_methods)}",
            )
        method = parse_intervention(raw, where)
        coefficient = getattr(method, "coefficient", None)
        if isinstance(coefficient, int | float) and abs(coefficient) > options.max_coefficient:
            where.child("coefficient").fail(
                f"is {coefficient:g}, beyond this server's limit of {options.max_coefficient:g}",
                f"use a coefficient between -{options.max_coefficient:g} and {options.max_coefficient:g}",
            )
        for name in method.vector_names():
            if name not in experiment.vectors:
                known = ", ".join(sorted(experiment.vectors)) or "none"
                where.child("vector").fail(
                    f"is '{short(printable(name), 40)}', not a vector this server loaded for experiment "
                    f"'{experiment.name}' (loaded: {known})",
                    "use one of those, or restart the server to serve vectors added since it started",
                )
        method.check(ModelFacts.of(self.model), where)
        return method

    def _prepared_edits(
        self, key: str, methods: tuple[SteeringMethod, ...], vectors: Mapping[str, SteeringVector]
    ) -> tuple[PreparedEdit, ...]:
        """A spec's edits, prepared once per distinct spec (stateless edits are shared by its requests)."""
        with self._lock:
            cached = self._prepared.get(key)
            if cached is not None:
                self._prepared.move_to_end(key)
                return cached
        edits = tuple(m.prepare(self.model, vectors) for m in methods)
        if all(stateless(e) for e in edits):
            with self._lock:
                self._prepared[key] = edits
                while len(self._prepared) > _PREPARED_CACHE:
                    self._prepared.popitem(last=False)
        return edits

    def _served_list(self) -> str:
        names = self.model_names()
        shown = ", ".join(names[:8])
        return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    def _variant_list(self, experiment: str) -> str:
        return ", ".join(self.experiments[experiment].variants) or "none servable"

    def _experiment_list(self) -> str:
        return ", ".join(self.experiments)


def stateless(edit: PreparedEdit) -> bool:
    """Whether one prepared edit may serve many requests (it keeps no per-request state)."""
    return type(edit).begin is PreparedEdit.begin and edit.refresh_every == 0


def _served(
    name: str, spec: ExperimentSpec, model: LoadedModel, vectors: Mapping[str, SteeringVector]
) -> ServedExperiment:
    variants: dict[str, ServedVariant] = {}
    unservable: dict[str, str] = {}
    for variant in spec.variants:
        if variant.train is not None:
            unservable[variant.name] = variant.kind
            continue
        methods = tuple(i.framed(spec.chat_template) for i in variant.interventions)
        edits = tuple(m.prepare(model, vectors) for m in methods)
        variants[variant.name] = ServedVariant(
            name, variant, methods, edits if all(stateless(e) for e in edits) else None
        )
    if unservable:
        log.info("Experiment '%s': %s not served (weights of their own)", name, ", ".join(unservable))
    return ServedExperiment(name, spec, dict(vectors), variants, unservable)


def _shown(name: str) -> str:
    return short(printable(name), 80)
