"""Run an experiment: validate, store the definition, extract vectors, generate, measure.

Everything that can be wrong with the input is checked before anything is written.
Generations are stored one batch per transaction, so a run stopped at any moment
(Ctrl-C, kill -9, a crash) keeps every finished batch, and running again continues with
the units still missing; the unique (variant, prompt, sample) key rules out duplicates.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import repository as repo
from db import runs
from db.runs import ClaimedRun
from db.schema import Experiment
from db.store import Store, StoreError
from engine.errors import RunCancelled, SteerLabError
from engine.experiment_file import load_experiment_file
from engine.methods.base import ModelFacts
from engine.models import LoadedModel, load_model
from engine.prompting import render_marked_prompt
from engine.runner import CancelFlag, PreparedVariant, Progress, RowOutput, Unit, run_units
from engine.spec import ExperimentSpec, VariantSpec, check_against_model, training_texts
from engine.training import AdaptedModel, adapt
from engine.vectors import SteeringVector
from service.catalog import get_experiment, import_experiment, stored_spec
from service.lease import Heartbeat, finish_claimed_run, lease_seconds, owner_name
from service.measurements import store_variant_figures
from service.provenance import record_model_source
from service.run_options import EXTRACTING, LOADING, PREPARING, TRAINING, busy_error

# Re-exported: callers import these from here as well as from service.run_options.
from service.run_options import GENERATING as GENERATING
from service.run_options import MEASURING as MEASURING
from service.run_options import SCORING as SCORING
from service.run_options import RunOptions as RunOptions
from service.scoring import score_experiment, score_fluency
from service.vector_store import check_vector_files, ensure_vectors, load_vector_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    experiment: str
    run_id: int
    status: str
    generated: int  # in this run
    total: int  # units of the whole experiment


class StoreCancel:
    """Cancelled by a local event, by a cancel request stored for the run (another tab or
    host), or because the run's lease was lost (another worker took it over)."""

    def __init__(self, store: Store, run_id: int, local: CancelFlag | None, heartbeat: Heartbeat) -> None:
        self._store, self._run_id, self._local, self._heartbeat = store, run_id, local, heartbeat
        self._checked_at = 0.0
        self._stored = False

    @property
    def stopped_locally(self) -> bool:
        """Stopped by this process (a worker shutting down) rather than by a user's cancel."""
        return self._local is not None and self._local.is_set() and not self._stored

    def is_set(self) -> bool:
        if self._heartbeat.lost:
            return True
        now = time.monotonic()
        if now - self._checked_at > 1.0:
            self._checked_at = now
            with self._store.session() as session:
                self._stored = runs.cancel_requested(session, self._run_id)
        return self._stored or (self._local is not None and self._local.is_set())


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
    model = store_spec(store, spec, source, options)
    return run_stored(store, spec.name, options, progress, cancel, model)


def store_spec(store: Store, spec: ExperimentSpec, source: str, options: RunOptions = RunOptions()) -> LoadedModel:
    """Validate ``spec`` against its model and store (or extend) it; returns the loaded model."""
    check_batch_size(options.batch_size)
    model = load_model(
        spec.model, options.device, options.dtype, quantize=options.quantize, batch_size=options.batch_size
    )
    store_checked_spec(store, spec, source, options, model, load_vector_files(spec))
    return model


def store_checked_spec(
    store: Store,
    spec: ExperimentSpec,
    source: str,
    options: RunOptions,
    model: LoadedModel,
    vector_files: dict[str, bytes],
) -> None:
    """Check ``spec`` (and its vector files' bytes) against the loaded model, then store (or extend) it."""
    check_against_model(spec, ModelFacts.of(model), source)
    for scorer in spec.scorers:
        scorer.check_available()
    check_vector_files(spec, vector_files, model, source)
    with store.session() as session:
        import_experiment(session, spec, source, vector_files, options.replace)


def run_stored(
    store: Store,
    name: str,
    options: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    model: LoadedModel | None = None,
    started: Callable[[int], None] | None = None,
    claimed: ClaimedRun | None = None,
    owner: str | None = None,
    requeue_on_stop: bool = False,
) -> RunResult:
    """Run (or resume) a stored experiment's missing generations.

    The run row is claimed first (``started`` is then called with its id), so every later
    step is watched through it: its phase (``PHASES``) while it works, its heartbeat and
    lease, and its status, error message and traceback when it ends. Errors before that
    (the experiment already has a live run) are only raised.

    ``claimed``: a run a worker has already claimed, held by ``owner``. Without it this is a
    foreground run, which claims a row itself: the experiment's queued run, or a new one
    (a run whose lease expired is marked interrupted first). ``requeue_on_stop``: when the
    local ``cancel`` stops it (a worker shutting down), hand the run back to the queue
    instead of marking it cancelled.
    """
    check_batch_size(options.batch_size)
    lease = lease_seconds()
    holder = owner or owner_name("foreground")
    opened = open_run(store, name, options, claimed, holder, lease, model)
    run_id, spec, pending = opened.run_id, opened.spec, opened.pending
    if started is not None:
        started(run_id)
    heartbeat = Heartbeat(store, run_id, holder, lease)
    stop = StoreCancel(store, run_id, cancel, heartbeat)

    def phase(now: str) -> None:  # between phases is also where a cancel request is honoured
        if stop.is_set():
            raise RunCancelled()
        with store.session() as session:
            runs.set_run_phase(session, run_id, now)

    status, error, trace = "failed", "", ""
    heartbeat.start()
    try:
        if model is None:
            model = load_model(
                spec.model, options.device, options.dtype, quantize=options.quantize, batch_size=options.batch_size
            )
            with store.session() as session:
                runs.set_run_hardware(session, run_id, str(model.device), _dtype_name(model))
        work = prepare_work(store, name, spec, model, phase)
        phase(GENERATING)
        run_units(
            model,
            work.variants,
            pending,
            spec.generation,
            options.batch_size,
            BatchWriter(store, opened),
            progress,
            stop,
            already_done=opened.total - len(pending),
        )
        measure_and_score(store, opened, model, work, phase)
        status = "done"
    except RunCancelled:
        status = "cancelled"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        error, trace = describe_error(exc), traceback.format_exc()
        raise
    finally:
        heartbeat.stop()
        status = finish_claimed_run(
            store, run_id, holder, status, error, trace, heartbeat.lost, requeue_on_stop and stop.stopped_locally
        )
        log.log(
            logging.WARNING if status in ("failed", "interrupted") else logging.INFO,
            "Run %s of '%s' ended: %s%s",
            run_id,
            name,
            status,
            f" ({error})" if error else "",
        )
    return RunResult(name, run_id, status, len(pending), opened.total)


@dataclass(frozen=True)
class OpenRun:
    """A run row claimed for a stored experiment, with the work units still to do."""

    name: str
    run_id: int
    experiment_id: int
    spec: ExperimentSpec
    variant_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    pending: tuple[Unit, ...]
    total: int  # units of the whole experiment


def open_run(
    store: Store,
    name: str,
    options: RunOptions,
    claimed: ClaimedRun | None,
    holder: str,
    lease: float,
    model: LoadedModel | None = None,
) -> OpenRun:
    """Claim the run row (or take over ``claimed``) and list the units not yet stored."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        variant_ids = tuple(v.id for v in experiment.variants)
        prompt_ids = tuple(p.id for p in experiment.prompts)
        done = repo.done_keys(session, experiment.id)
        all_units = [
            Unit(p, s, v)
            for p in range(len(prompt_ids))
            for s in range(spec.generation.samples_per_prompt)
            for v in range(len(variant_ids))
        ]
        pending = tuple(u for u in all_units if (variant_ids[u.variant], prompt_ids[u.prompt], u.sample) not in done)
        total, already = len(all_units), len(all_units) - len(pending)
        if claimed is None:
            run_id = _take(session, experiment, total, already, options, holder, lease)
        else:
            run_id = claimed.run_id
            runs.restart_counts(session, run_id, total, already, options.batch_size)
        runs.set_run_hardware(
            session,
            run_id,
            str(model.device) if model is not None else options.device,
            _dtype_name(model) if model is not None else options.dtype,
        )
        runs.set_run_phase(session, run_id, LOADING if model is None else PREPARING)
        experiment_id = experiment.id
    log.info("Run %s of '%s' started by %s: %s of %s generations to do", run_id, name, holder, len(pending), total)
    return OpenRun(name, run_id, experiment_id, spec, variant_ids, prompt_ids, pending, total)


def open_shard(store: Store, name: str, run_id: int) -> OpenRun:
    """A running run's experiment as a shard's actor sees it: ids and definition, no claim, no unit list."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        return OpenRun(
            name,
            run_id,
            experiment.id,
            stored_spec(experiment),
            tuple(v.id for v in experiment.variants),
            tuple(p.id for p in experiment.prompts),
            (),
            0,
        )


class BatchWriter:
    """Stores a finished batch in one transaction (the run's progress advances with it)."""

    def __init__(self, store: Store, run: OpenRun) -> None:
        self._store, self._run = store, run

    def __call__(self, rows: list[RowOutput]) -> None:
        run = self._run
        with self._store.session() as session:
            ids = repo.record_batch(
                session,
                run.experiment_id,
                run.run_id,
                [
                    repo.NewGeneration(
                        run.variant_ids[r.unit.variant],
                        run.prompt_ids[r.unit.prompt],
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


@dataclass(frozen=True)
class PreparedWork:
    """What generation needs beyond the model: vectors, trained variants, prepared variants."""

    vectors: dict[str, SteeringVector]
    adapted: dict[str, AdaptedModel]
    variants: list[PreparedVariant]


def prepare_work(
    store: Store, name: str, spec: ExperimentSpec, model: LoadedModel, phase: Callable[[str], None]
) -> PreparedWork:
    """Check the model, extract (or read) the vectors, train what trains, prepare every variant."""
    check_against_model(spec, ModelFacts.of(model), f"stored experiment '{name}'")
    with store.session() as session:
        record_model_source(session, name, model.source)  # the GGUF file's SHA-256, the hub revision
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
    return PreparedWork(vectors, adapted, [_prepared(model, spec, v, vectors, adapted) for v in spec.variants])


def measure_and_score(
    store: Store, run: OpenRun, model: LoadedModel, work: PreparedWork, phase: Callable[[str], None]
) -> None:
    """After generation: each variant's compute and reversibility figures, then every automatic score."""
    phase(MEASURING)
    store_variant_figures(
        store, run.experiment_id, run.run_id, run.spec, model, work.variants, work.vectors, work.adapted
    )
    phase(SCORING)
    score_experiment(store, run.name)
    score_fluency(store, run.name, model)


def _prepared(
    model: LoadedModel,
    spec: ExperimentSpec,
    variant: VariantSpec,
    vectors: Mapping[str, SteeringVector],
    adapted: Mapping[str, AdaptedModel],
) -> PreparedVariant:
    """A variant's prompt tokens (with their assistant-content marks) and its edits, ready to generate."""
    rendered = [render_marked_prompt(model, p, variant, spec.chat_template) for p in spec.prompts]
    marked = any(any(r.assistant) for r in rendered)
    return PreparedVariant(
        variant.name,
        tuple(r.tokens for r in rendered),
        tuple(i.framed(spec.chat_template).prepare(model, vectors) for i in variant.interventions),
        adapted[variant.name].loaded if variant.name in adapted else None,
        tuple(r.assistant for r in rendered) if marked else (),
    )


def _take(
    session: Session, experiment: Experiment, total: int, done: int, options: RunOptions, owner: str, lease: float
) -> int:
    """Claim a run row for a foreground run: the queued one, or a new one; refuse while another run lives."""
    active = runs.active_run(session, experiment.id)
    if active is not None:
        if active.status == "queued" and not active.cancel_requested:
            if runs.claim_run(session, active.id, owner, lease):
                runs.restart_counts(session, active.id, total, done, options.batch_size)
                return active.id
        elif active.status == "queued":
            runs.cancel_queued(session, active.id)
        elif not runs.interrupt_expired(
            session, active.id, f"its process ({active.owner}) stopped sending heartbeats before the run finished"
        ):
            raise busy_error(experiment.name, active.id)
    try:
        with session.begin_nested():  # a concurrent claim loses here, with the database's word
            run = runs.start_run(
                session,
                experiment,
                total,
                done,
                options.batch_size,
                options.device,
                options.dtype,
                owner,
                lease,
                options.to_json(),
            )
    except IntegrityError:
        again = runs.active_run(session, experiment.id)
        raise busy_error(experiment.name, again.id if again is not None else 0) from None
    return run.id


def describe_error(exc: Exception) -> str:
    """The stored error of a failed run: a user error's sentence, else the exception's type too."""
    if isinstance(exc, SteerLabError | StoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _dtype_name(model: LoadedModel) -> str:
    return str(model.dtype).removeprefix("torch.")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise SteerLabError(f"Batch size {batch_size} is too small; give 1 or more.")
