"""Run an experiment: validate, store the definition, extract vectors, generate, measure.

Everything that can be wrong with the input is checked before anything is written.
Generations are stored one batch per transaction, so a run stopped at any moment
(Ctrl-C, kill -9, a crash) keeps every finished batch, and running again continues with
the units still missing; the unique (variant, prompt, sample) key rules out duplicates.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import Experiment, Run
from db.store import Store, StoreError
from engine.errors import RunCancelled, SteerLabError
from engine.experiment_file import load_experiment_file
from engine.extract import extract_vector
from engine.measure import measure_reversibility
from engine.methods.base import ModelFacts
from engine.models import LoadedModel, load_model
from engine.prompting import plain_tokens, render_prompt
from engine.runner import CancelFlag, PreparedVariant, Progress, RowOutput, Unit, run_units
from engine.side_effects import next_token_kl
from engine.spec import ExperimentSpec, VariantSpec, VectorSpec, check_against_model, training_texts
from engine.training import AdaptedModel, adapt
from engine.vectors import SteeringVector, hash_pairs, load_vector
from service.catalog import get_experiment, import_experiment, stored_spec
from service.scoring import score_experiment, score_fluency


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    model: str | None = None  # overrides the file's model
    name: str | None = None  # overrides the file's experiment name
    replace: bool = False  # discard a stored experiment whose definition differs
    # Folders besides the experiment file's own from which the file may name prompt and vector files.
    allowed_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    experiment: str
    run_id: int
    status: str
    generated: int  # in this run
    total: int  # units of the whole experiment


class _StoreCancel:
    """Cancelled by a local event, or by a cancel request stored for the run (another tab)."""

    def __init__(self, store: Store, run_id: int, local: CancelFlag | None) -> None:
        self._store, self._run_id, self._local = store, run_id, local
        self._checked_at = 0.0
        self._stored = False

    def is_set(self) -> bool:
        if self._local is not None and self._local.is_set():
            return True
        now = time.monotonic()
        if now - self._checked_at > 1.0:
            self._checked_at = now
            with self._store.session() as session:
                self._stored = repo.cancel_requested(session, self._run_id)
        return self._stored


def run_experiment_file(
    store: Store,
    path: str | Path,
    options: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> RunResult:
    spec = load_experiment_file(path, [Path(d) for d in options.allowed_dirs])
    if options.model:
        spec = replace(spec, model=options.model)
    if options.name:
        spec = replace(spec, name=options.name)
    return run_spec(store, spec, str(path), options, progress, cancel)


def run_spec(
    store: Store,
    spec: ExperimentSpec,
    source: str,
    options: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> RunResult:
    """Validate ``spec`` against its model, store (or extend) it, then run what is missing."""
    _check_batch_size(options.batch_size)
    model = load_model(spec.model, options.device, options.dtype)
    check_against_model(spec, ModelFacts.of(model), source)
    for scorer in spec.scorers:
        scorer.check_available()
    vector_files = _read_vector_files(spec, model, source)
    with store.session() as session:
        import_experiment(session, spec, source, vector_files, options.replace)
    return run_stored(store, spec.name, options, progress, cancel, model)


def run_stored(
    store: Store,
    name: str,
    options: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    model: LoadedModel | None = None,
    started: Callable[[int], None] | None = None,
) -> RunResult:
    """Run (or resume) a stored experiment's missing generations.

    The run row is stored first (``started`` is then called with its id), so every later
    step is watched through it: its phase (``PHASES``) while it works, and its status and
    error message when it ends. Errors before that (another process holds the experiment)
    are only raised.
    """
    _check_batch_size(options.batch_size)
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        _claim(session, experiment)
        variant_ids = [v.id for v in experiment.variants]
        prompt_ids = [p.id for p in experiment.prompts]
        done = repo.done_keys(session, experiment.id)
        all_units = [
            Unit(p, s, v)
            for p in range(len(prompt_ids))
            for s in range(spec.generation.samples_per_prompt)
            for v in range(len(variant_ids))
        ]
        pending = [u for u in all_units if (variant_ids[u.variant], prompt_ids[u.prompt], u.sample) not in done]
        run = repo.start_run(
            session,
            experiment,
            total=len(all_units),
            done=len(all_units) - len(pending),
            batch_size=options.batch_size,
            device=str(model.device) if model is not None else options.device,
            dtype=_dtype_name(model) if model is not None else options.dtype,
            owner=_owner(),
        )
        repo.set_run_phase(session, run.id, LOADING if model is None else PREPARING)
        experiment_id, run_id = experiment.id, run.id
    if started is not None:
        started(run_id)
    stop = _StoreCancel(store, run_id, cancel)

    def phase(now: str) -> None:  # between phases is also where a cancel request is honoured
        if stop.is_set():
            raise RunCancelled()
        with store.session() as session:
            repo.set_run_phase(session, run_id, now)

    def store_batch(rows: list[RowOutput]) -> None:
        with store.session() as session:
            ids = repo.record_batch(
                session,
                experiment_id,
                run_id,
                [
                    repo.NewGeneration(
                        variant_ids[r.unit.variant],
                        prompt_ids[r.unit.prompt],
                        r.unit.sample,
                        r.text,
                        len(r.token_ids),
                        r.seconds,
                        r.peak_memory_bytes,
                    )
                    for r in rows
                ],
            )
            repo.mark_non_finite(session, (i for i, r in zip(ids, rows, strict=True) if r.non_finite))

    status, error = "failed", ""
    try:
        if model is None:
            model = load_model(spec.model, options.device, options.dtype)
            with store.session() as session:
                repo.set_run_hardware(session, run_id, str(model.device), _dtype_name(model))
        check_against_model(spec, ModelFacts.of(model), f"stored experiment '{name}'")
        if spec.vectors:
            phase(EXTRACTING)
        vectors = ensure_vectors(store, name, spec, model)
        if any(v.train is not None for v in spec.variants):
            phase(TRAINING)
        adapted = {
            v.name: adapt(model, training_texts(spec, v.train), v.train, f"variant '{v.name}'")
            for v in spec.variants
            if v.train is not None
        }
        variants = [
            PreparedVariant(
                v.name,
                tuple(tuple(render_prompt(model, p, v, spec.chat_template)) for p in spec.prompts),
                tuple(i.prepare(model, vectors) for i in v.interventions),
                adapted[v.name].loaded if v.name in adapted else None,
            )
            for v in spec.variants
        ]
        phase(GENERATING)
        run_units(
            model,
            variants,
            pending,
            spec.generation,
            options.batch_size,
            store_batch,
            progress,
            stop,
            already_done=len(all_units) - len(pending),
        )
        phase(MEASURING)
        _store_variant_figures(store, experiment_id, run_id, spec, model, variants, vectors, adapted)
        phase(SCORING)
        score_experiment(store, name)
        score_fluency(store, name, model)
        status = "done"
    except RunCancelled:
        status = "cancelled"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        error = describe_error(exc)
        raise
    finally:
        with store.session() as session:
            repo.finish_run(session, run_id, status, error)
            if status == "done":
                repo.set_run_phase(session, run_id, "")
    return RunResult(name, run_id, status, len(pending), len(all_units))


# What a run is doing, stored in ``Run.phase`` (a finished run keeps the phase it stopped in,
# except a run that is done, whose phase is empty).
LOADING = "loading model"
PREPARING = "preparing"
EXTRACTING = "extracting vectors"
TRAINING = "training baselines"
GENERATING = "generating"
MEASURING = "measuring side effects"
SCORING = "scoring"
PHASES = (LOADING, PREPARING, EXTRACTING, TRAINING, GENERATING, MEASURING, SCORING)


def describe_error(exc: Exception) -> str:
    """The stored error of a failed run: a user error's sentence, else the exception's type too."""
    if isinstance(exc, SteerLabError | StoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _dtype_name(model: LoadedModel) -> str:
    return str(model.dtype).removeprefix("torch.")


def _training_figures(adapted: AdaptedModel, base: LoadedModel, probe: list[int]) -> dict[str, float]:
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


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise SteerLabError(f"Batch size {batch_size} is too small; give 1 or more.")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _claim(session: Session, experiment: Experiment) -> None:
    """One run per experiment: refuse if a live run holds it; free it if its process died."""
    active: Run | None = repo.active_run(session, experiment.id)
    if active is None:
        return
    host, _, rest = active.owner.partition(":")
    pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else -1
    alive = host == socket.gethostname() and _pid_alive(pid)
    if alive and pid != os.getpid():
        raise SteerLabError(
            f"Experiment '{experiment.name}' is already being run (run {active.id}, process {pid}); "
            "wait for it to finish or cancel it first."
        )
    if alive:  # same process: another thread (a dashboard worker) holds it
        raise SteerLabError(
            f"Experiment '{experiment.name}' is already being run (run {active.id}); wait or cancel it."
        )
    repo.finish_run(session, active.id, "interrupted", "its process ended before the run finished")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_vector_files(spec: ExperimentSpec, model: LoadedModel, source: str) -> dict[str, bytes]:
    out = {}
    for vector in spec.vectors:
        if vector.file is not None:
            loaded = load_vector(vector.file, vector.name)
            loaded.check_fits(model.hidden_size, model.model_id, f"{source}: vector file '{vector.file}'")
            out[vector.name] = Path(vector.file).read_bytes()
    return out


def ensure_vectors(
    store: Store, name: str, spec: ExperimentSpec, model: LoadedModel, only: set[str] | None = None
) -> dict[str, SteeringVector]:
    """Every vector the variants use, extracted now if not stored for this model and pairs."""
    needed = only if only is not None else {n for v in spec.variants for n in v.vector_names()}
    out: dict[str, SteeringVector] = {}
    for vector_spec in spec.vectors:
        if vector_spec.name not in needed:
            continue
        with store.session() as session:
            row = next(v for v in get_experiment(session, name).vectors if v.name == vector_spec.name)
            stored = row.data
        vector = _usable(stored, vector_spec, model, name)
        if vector is None:
            vector = _extract(model, vector_spec)
            with store.session() as session:
                row = next(v for v in get_experiment(session, name).vectors if v.name == vector_spec.name)
                repo.store_vector_data(
                    session,
                    row,
                    vector.to_bytes(),
                    model.model_id,
                    vector.hidden_size,
                    vector.method,
                    vector.pairs_hash,
                    vector.extraction_seconds,
                )
        out[vector_spec.name] = vector
    return out


def _usable(data: bytes | None, spec: VectorSpec, model: LoadedModel, experiment: str) -> SteeringVector | None:
    if data is None:
        if spec.file is not None:
            raise SteerLabError(
                f"Vector '{spec.name}' of experiment '{experiment}' has no stored data; import its file again."
            )
        return None
    vector = SteeringVector.from_bytes(data, source=f"stored vector '{spec.name}'", name=spec.name)
    if spec.file is not None:
        vector.check_fits(model.hidden_size, model.model_id, f"stored vector '{spec.name}'")
        return vector
    used = [spec.pairs[spec.pair_index]] if spec.method == "single_pair" else list(spec.pairs)
    fresh = vector.model_id == model.model_id and vector.pairs_hash == hash_pairs(used) and vector.method == spec.method
    return vector if fresh and vector.read == spec.read else None


def _extract(model: LoadedModel, spec: VectorSpec) -> SteeringVector:
    return extract_vector(
        model,
        spec.name,
        spec.pairs,
        lambda text: plain_tokens(model, text),
        method=spec.method,
        read=spec.read,
        pair_index=spec.pair_index,
    )


def _store_variant_figures(
    store: Store,
    experiment_id: int,
    run_id: int,
    spec: ExperimentSpec,
    model: LoadedModel,
    variants: list[PreparedVariant],
    vectors: dict[str, SteeringVector],
    adapted: dict[str, AdaptedModel],
) -> None:
    """Reversibility, side effects and compute figures of every variant (a few probes each)."""
    probe = plain_tokens(model, spec.probe_prompt)
    plain_variant = VariantSpec("plain")
    neutral_plain = [render_prompt(model, p, plain_variant, spec.chat_template) for p in spec.neutral_prompts]
    with store.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        for row, variant_spec, prepared in zip(experiment.variants, spec.variants, variants, strict=True):
            costs: dict[str, float] = {}  # read before the probes below add their own passes
            for edit in prepared.edits:
                for key, value in edit.cost().items():
                    if key != "seconds":
                        costs[key] = costs.get(key, 0.0) + value
            neutral = [render_prompt(model, p, variant_spec, spec.chat_template) for p in spec.neutral_prompts]
            kl = next_token_kl(model, prepared.edits, neutral, neutral_plain, prepared.model)
            if variant_spec.name in adapted:
                repo.set_variant_metrics(
                    session,
                    row.id,
                    run_id,
                    _finite({**_training_figures(adapted[variant_spec.name], model, probe), "side_effect_kl": kl}),
                )
                continue
            figures = measure_reversibility(model, prepared.edits, probe)
            used = variant_spec.vector_names()
            repo.set_variant_metrics(
                session,
                row.id,
                run_id,
                _finite(
                    {
                        "reversibility_max_abs_logit_diff": figures.max_abs_logit_diff,
                        "probe_max_abs_logit_shift": figures.steered_max_abs_logit_diff,
                        "toggle_ms": figures.toggle_ms,
                        "steering_parameters": float(sum(e.parameter_count for e in prepared.edits)),
                        "layers_touched": float(len({layer for e in prepared.edits for layer in e.layers})),
                        "extraction_seconds": float(sum(vectors[n].extraction_seconds for n in used)),
                        "prompt_tokens_mean": sum(len(t) for t in prepared.prompt_tokens) / len(prepared.prompt_tokens),
                        "side_effect_kl": kl,
                        **costs,
                    }
                ),
            )


def _finite(values: dict[str, float]) -> dict[str, float]:
    """The figures that are numbers: an absurd coefficient makes some inf/NaN, which are left out
    (pages show a missing figure as missing), so the store never holds NaN."""
    return {k: v for k, v in values.items() if math.isfinite(v)}
