"""Runs as queued jobs: enqueue, watch, cancel, from any tab, process or host.

The dashboard and ``steerlab run --queue`` only enqueue: they store a 'queued' run with
its options, and a worker process (``steerlab worker``, :mod:`service.worker`) claims and
runs it. Everything about a run lives in the store (the runs table): progress, the phase
it is in (generating, measuring, scoring, ...), the worker holding it and its last
heartbeat, and a failed run's error and traceback, so any tab, reload or host shows the
same. Cancelling sets a flag in the store that the run checks between decode steps and
between phases; a queued run that is cancelled never starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from db import judgements as judge_store
from db import repository as repo
from db import runs
from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.judge_spec import find_judge
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment, stored_spec
from service.judging import NothingToJudge as NothingToJudge  # re-exported: callers catch it from here
from service.judging import forget_judge, judge_options, nothing_to_judge, plan, refuse_if_changed
from service.lease import poll_seconds
from service.run_options import JUDGING, RunOptions, busy_error
from service.staleness import all_current


@dataclass(frozen=True)
class RunStatus:
    state: str  # "never run", "queued", "running", "done", "incomplete", "cancelled", "failed", "interrupted"
    run_id: int | None
    done: int
    total: int
    rate: float  # generations per second in the current or last run
    seconds_left: float | None
    error: str
    started_at: datetime | None
    updated_at: datetime | None
    # What the run does now ("generating", "measuring side effects", "scoring", ...; see
    # service.running.PHASES); a run that stopped keeps the phase it stopped in; "" when done.
    phase: str = ""
    cancel_requested: bool = False  # asked to stop; it does so after its current step
    worker: str = ""  # who holds (or last held) the run: host:pid
    heartbeat_at: datetime | None = None
    traceback: str = ""  # of a failed run
    attempts: int = 0  # claims: 2 or more means a worker took it over from one that died
    requested_by: str = ""
    unit: str = "generations"  # what done and total count ("readings" for a judge run)
    device: str = ""  # where it runs: "cpu", "cuda:0", "ray: 2 x cuda:0" (a Ray run's actors)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def active(self) -> bool:
        """Queued or running: the experiment cannot be started again until it ends."""
        return self.state in ("queued", "running")

    def heartbeat_age(self, now: datetime | None = None) -> float | None:
        if self.heartbeat_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.heartbeat_at).total_seconds()

    def describe(self) -> str:
        """One line for a progress bar: "240 / 240 generations · running · scoring"."""
        line = f"{self.done} / {self.total} {self.unit} · {self.state}"
        if self.phase and self.state in ("running", "failed", "cancelled", "interrupted"):
            line += f" · {self.phase}" if self.running else f" while {self.phase}"
        return line


@dataclass(frozen=True)
class VariantHealth:
    """Outputs of one variant that should not be read as ordinary text."""

    variant: str
    generations: int
    non_finite: int  # decoding stopped because its logits became inf/NaN or collapsed
    empty: int  # empty or whitespace-only text (non-finite rows stopped at once are empty too)

    @property
    def ok(self) -> bool:
        return self.non_finite == 0 and self.empty == 0


class NothingToRun(SteerLabError):
    """The experiment is complete and every derived figure is current: a run would do nothing."""


def enqueue(store: Store, name: str, options: RunOptions | None = None, who: Identity = LOCAL) -> int:
    """Queue a run of the stored experiment ``name`` for a worker (owners only); returns the run's id."""
    options = options or RunOptions()
    require(store, who, name, "owner", "start or resume its runs")
    with store.session() as session:
        experiment = get_experiment(session, name)
        total = len(experiment.prompts) * len(experiment.variants) * _samples(experiment.spec_json)
        done = len(repo.done_keys(session, experiment.id))
        experiment_id = experiment.id
        latest = judge_store.latest_generation_run(session, experiment_id)
        finished = latest is not None and latest.status == "done"
    if total and done >= total and finished and all_current(store, name):
        raise NothingToRun(
            f"Experiment '{name}' is complete: all {total} outputs are generated and every score and figure "
            "follows its current definition, so there is nothing to run."
        )
    try:
        with store.session() as session:
            run_id = runs.enqueue_run(session, experiment_id, total, done, options.to_json(), who.user).id
            audit.record(session, who.user, "run queued", name, f"run {run_id}")
    except IntegrityError:  # the database allows one queued-or-running run per experiment
        with store.session() as session:
            active = runs.active_run(session, experiment_id)
        raise busy_error(name, active.id if active is not None else 0) from None
    return run_id


def queue_experiment_file(
    store: Store, path: str | Path, options: RunOptions | None = None, who: Identity = LOCAL
) -> int:
    """Validate and store an experiment file as ``steerlab run`` does, then queue its run; returns the run id."""
    options = options or RunOptions()
    spec = load_experiment_file(path, [Path(d) for d in options.allowed_dirs])
    if options.model:
        spec = replace(spec, model=options.model)
    if options.name:
        spec = replace(spec, name=options.name)
    _refuse_if_busy(store, spec.name)  # before store_spec loads the model: a refusal takes no time
    from service.running import store_spec  # the engine (torch) only where a model is loaded

    store_spec(store, spec, str(path), options)
    return enqueue(store, spec.name, options, who)


def _refuse_if_busy(store: Store, name: str) -> None:
    with store.session() as session:
        experiment = repo.find_experiment(session, name)
        active = runs.active_run(session, experiment.id) if experiment is not None else None
    if active is not None:
        raise busy_error(name, active.id)


def cancel(store: Store, name: str, who: Identity = LOCAL) -> bool:
    """Stop the experiment's active run (owners only): a queued one never starts, a running one stops
    after its current step. False when no run is active."""
    require(store, who, name, "owner", "cancel its runs")
    with store.session() as session:
        run = runs.active_run(session, get_experiment(session, name).id)
        if run is None:
            return False
        if not (run.status == "queued" and runs.cancel_queued(session, run.id)):
            runs.request_cancel(session, run.id)
        audit.record(session, who.user, "run cancelled", name, f"run {run.id}")
        return True


def missing_worker(store: Store) -> str:
    """One sentence when queued runs wait and no worker seems alive; "" otherwise."""
    with store.session() as session:
        queue = runs.queue_health(session)
    # An idle worker claims within one poll; a busy one shows through its run's live lease.
    if queue.queued and queue.live_runs == 0 and queue.oldest_queued_seconds > max(10.0, 3 * poll_seconds()):
        noun = "run is" if queue.queued == 1 else "runs are"
        return (
            f"No worker is running: {queue.queued} queued {noun} waiting; start one with `steerlab worker` "
            "(scripts/run.sh starts one beside the dashboard) against this store."
        )
    return ""


def status(store: Store, name: str) -> RunStatus:
    """Progress of the experiment as stored now; phase, rate and time left from its latest run.

    The rate is generations per second of decoding (the stored batches' wall time), so the
    time before the first batch (loading, extraction) and after the last (measuring,
    scoring) does not distort it; time left is given only while the run is generating.

    Judge runs (:func:`judge_status`) do not count here, except that while one is queued or
    running it is shown (state and run id, phase "judging"): the experiment is busy with it.
    """
    with store.session() as session:
        experiment = get_experiment(session, name)
        total = len(experiment.prompts) * len(experiment.variants) * _samples(experiment.spec_json)
        done = len(repo.done_keys(session, experiment.id))
        run = judge_store.latest_generation_run(session, experiment.id)
        active = runs.active_run(session, experiment.id)
        judging = active is not None and judge_store.is_judge_run(active.options_json)
        if judging:
            run = active
        if run is None:
            return RunStatus("never run", None, done, total, 0.0, None, "", None, None)
        generated, seconds = runs.run_generation_time(session, run.id)
        rate = generated / seconds if seconds > 0 else 0.0
        running = run.status == "running"
        left = (total - done) / rate if rate > 0 and running and run.phase == "generating" else None
        # A finished run with work added since (new variants) is not "done" any more.
        state = "incomplete" if run.status == "done" and done < total else run.status
        return RunStatus(
            state,
            run.id,
            done,
            total,
            rate,
            left,
            run.error,
            _aware(run.started_at),
            _aware(run.updated_at),
            JUDGING if judging else run.phase,
            bool(run.cancel_requested),
            run.owner,
            _aware(run.heartbeat_at) if run.heartbeat_at is not None else None,
            run.traceback,
            run.attempts,
            run.requested_by,
            device=run.device or "",
        )


def health(store: Store, name: str) -> list[VariantHealth]:
    """Per variant with stored outputs: how many broke down (non-finite) and how many are empty."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        counts = repo.output_health(session, experiment.id)
        return [
            VariantHealth(v.name, c.generations, c.non_finite, c.empty)
            for v in experiment.variants
            if (c := counts.get(v.id)) is not None
        ]


def enqueue_judge(
    store: Store,
    name: str,
    judge: str | None = None,
    options: RunOptions | None = None,
    who: Identity = LOCAL,
    restart: bool = False,
) -> int:
    """Queue a run of the experiment's judge ``judge`` (None: its first) for a worker (owners only).

    Refused in one sentence: an experiment without outputs, an unknown judge, a judge whose
    definition changed since it stored readings (unless ``restart``, which first deletes its
    readings and votes), one with nothing left to read (:class:`NothingToJudge`), or an
    experiment whose run is active. Returns the run's id.
    """
    options = options or RunOptions()
    require(store, who, name, "owner", "start its judges")
    with store.session() as session:
        experiment = get_experiment(session, name)
        p = plan(session, experiment, judge)
        experiment_id = experiment.id
        active = runs.active_run(session, experiment_id)
        if active is None and not restart:
            refuse_if_changed(session, experiment, p)
    if active is not None:
        raise busy_error(name, active.id)
    if restart:
        forget_judge(store, name, p.judge.name, who)
        with store.session() as session:
            p = plan(session, get_experiment(session, name), p.judge.name)
    if not p.pending():
        raise nothing_to_judge(name, p)
    try:
        with store.session() as session:
            queued = judge_options(p, options).to_json()
            run_id = runs.enqueue_run(session, experiment_id, p.total, p.done, queued, who.user).id
            audit.record(session, who.user, "judge queued", name, f"judge {p.judge.name}, run {run_id}")
    except IntegrityError:  # the database allows one queued-or-running run per experiment
        with store.session() as session:
            again = runs.active_run(session, experiment_id)
        raise busy_error(name, again.id if again is not None else 0) from None
    return run_id


def judge_status(store: Store, name: str, judge: str) -> RunStatus:
    """Progress of a judge of the experiment: its latest run's state, and readings done of all it has to make.

    While a run is under way, done and total are the run's own; otherwise they are the
    readings stored and planned now (total 0 while the experiment has no pairs to judge), so
    a judge whose run is done but that has new pairs since (new outputs) is "incomplete".
    The rate is readings per second of the latest run, from the readings' stored times.
    """
    with store.session() as session:
        experiment = get_experiment(session, name)
        find_judge(stored_spec(experiment).judges, judge, name)  # an unknown judge is an error
        run = next(iter(judge_store.judge_runs(session, experiment.id, judge)), None)
        if run is not None and run.status in ("queued", "running"):
            done, total = run.done_units, run.total_units
        else:
            try:
                p = plan(session, experiment, judge)
                done, total = p.done, p.total
            except SteerLabError:  # no outputs or no pairs yet: nothing planned
                done, total = 0, 0
        if run is None:
            return RunStatus("never run", None, done, total, 0.0, None, "", None, None, unit="readings")
        count, seconds = judge_store.reading_pace(session, experiment.id, judge, _aware(run.started_at))
        rate = (count - 1) / seconds if count > 1 and seconds > 0 else 0.0
        left = (total - done) / rate if rate > 0 and run.status == "running" else None
        return RunStatus(
            "incomplete" if run.status == "done" and done < total else run.status,
            run.id,
            done,
            total,
            rate,
            left,
            run.error,
            _aware(run.started_at),
            _aware(run.updated_at),
            run.phase,
            bool(run.cancel_requested),
            run.owner,
            _aware(run.heartbeat_at) if run.heartbeat_at is not None else None,
            run.traceback,
            run.attempts,
            run.requested_by,
            unit="readings",
        )


def _samples(spec_json: str) -> int:
    return int(json.loads(spec_json).get("generation", {}).get("samples_per_prompt", 1))


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
