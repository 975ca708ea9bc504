"""LLM judges as runs: plan the pairs, read them in both orders, store readings and votes.

A judge run is a row of ``runs`` (so one active run per experiment, queued by
:func:`service.jobs.enqueue_judge` or ``steerlab judge --queue``, claimed by ``steerlab
worker``, with heartbeats, a lease and a cancel flag like a generation run). It reads
the judge's pairs in batches; each batch's readings, the votes they settle and the run's
progress are stored in one transaction (:func:`db.judgements.store_judged_batch`), and a
cancel request is honoured between batches. A run that stopped resumes where it stopped:
orders already read are not read again, and the unique keys of ``judgements`` and
``ratings`` rule out storing anything twice.

Which pairs (:func:`plan_pairs`): by default every variant against the baseline (the
first variant of kind baseline, else the first variant) on each (prompt, sample) where
both have an output (null arms are left out: their figures compare them with their own
variant); with ``pairs: all`` every two variants. Pairs come prompt by prompt for the first
sample, then for the next, so ``max_pairs`` keeps pairs spread over as many prompts as it can. Each pair is read twice, its first output shown as A and
then as B; its vote (rater ``judge:<name>``, kind ``judge``) is the output both readings
prefer, otherwise a tie (:func:`engine.judge.combine_orders`).

A judge's readings belong to its definition: when its rubric, model, endpoint or the
experiment's rating question change after it stored readings, running it again is refused
(rename the judge, or start it over with :func:`forget_judge`).

Importing this module loads no model code (the queue and the pages plan and watch judge
runs); running a judge imports the engine.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import judgements as store_judgements
from db import repository as repo
from db import runs
from db.schema import JUDGE_RATER_PREFIX, Experiment
from db.store import Store
from engine.errors import RunCancelled, SteerLabError
from engine.fields import Where
from engine.judge_spec import JudgeSpec, find_judge
from engine.spec import ExperimentSpec
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment, stored_spec
from service.lease import Heartbeat, finish_claimed_run, lease_seconds, owner_name
from service.run_options import JUDGING, LOADING, RunOptions, busy_error

if TYPE_CHECKING:
    from engine.judge import PairText, Reading
    from engine.runner import Progress

log = logging.getLogger(__name__)

RATER_PREFIX = JUDGE_RATER_PREFIX
MAX_ANSWER_PREVIEW = 200

Pair = tuple[int, int]  # (the pair's first output, its second): generation ids


def rater_name(judge: str) -> str:
    """The rater a judge's votes are stored under (with rater_kind "judge"), apart from any human's name."""
    return f"{RATER_PREFIX}{judge}"


class NothingToJudge(SteerLabError):
    """The judge has read every pair in both orders: a run would do nothing."""


class PairReading(Protocol):
    """Reads a judge run's pending pairs elsewhere (its stop, counts [readings, votes] and holder given)."""

    def __call__(self, p: JudgePlan, run_id: int, stop: CancelFlag, counts: list[int], holder: str) -> None: ...


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class PairReader(Protocol):
    def read(self, pairs: Sequence[PairText]) -> list[Reading]: ...


@dataclass
class JudgePlan:
    """A judge's pairs in an experiment, and what it has stored of them."""

    experiment_id: int
    spec: ExperimentSpec
    judge: JudgeSpec
    index: int  # its position in the experiment's judges
    pairs: list[Pair]
    readings: dict[Pair, str]  # (shown first, shown second) -> choice, as stored
    voted: set[Pair]  # (lower id, higher id) of the pairs it voted on
    fingerprint: str = ""

    @property
    def total(self) -> int:
        """Readings to make: two per pair."""
        return 2 * len(self.pairs)

    @property
    def done(self) -> int:
        return sum((a, b) in self.readings for a, b in self.pairs) + sum((b, a) in self.readings for a, b in self.pairs)

    def pending(self) -> list[Pair]:
        """Pairs with an order still to read, or a vote still to store."""
        return [
            (a, b)
            for a, b in self.pairs
            if (a, b) not in self.readings or (b, a) not in self.readings or (min(a, b), max(a, b)) not in self.voted
        ]


@dataclass(frozen=True)
class JudgeResult:
    experiment: str
    judge: str
    run_id: int
    status: str
    read: int  # readings made in this run
    total: int  # readings of all the judge's pairs
    votes: int  # votes stored in this run


@dataclass(frozen=True)
class JudgeOverview:
    """A declared judge, for pages: what judges, and how far it got."""

    name: str
    description: str
    rubric: str
    pairs: str
    max_pairs: int | None
    readings: int  # stored
    warnings: tuple[str, ...] = ()  # why its verdicts may be noise (see reading_warnings)


# A judge's readings say little when its model barely predicts either label, or when it nearly
# always prefers whatever it is shown first (the both-orders rule then turns its votes into ties).
MIN_LABEL_MASS = 0.1
MAX_FIRST_SHOWN_SHARE = 0.9
MIN_READINGS_FOR_WARNINGS = 10


def reading_warnings(stats: store_judgements.ReadingStats | None) -> tuple[str, ...]:
    """One sentence per sign that a judge's readings are noise, from its stored readings."""
    if stats is None or stats.readings < MIN_READINGS_FOR_WARNINGS:
        return ()
    out = []
    if stats.label_mass is not None and stats.label_mass < MIN_LABEL_MASS:
        out.append(
            f"Its model gives the answer labels 'A' and 'B' little probability (on average {stats.label_mass:.2g} "
            f"of the next token over {stats.readings} readings): it does not answer in the rubric's format, so its "
            "verdicts are noise; use a stronger model (model: or endpoint:)."
        )
    if stats.decisive and stats.first_shown / stats.decisive > MAX_FIRST_SHOWN_SHARE:
        out.append(
            f"It preferred the output shown first in {stats.first_shown} of {stats.decisive} readings: a position "
            "bias, which the both-orders rule turns into ties, so its votes decide little."
        )
    return tuple(out)


@dataclass(frozen=True)
class Verdict:
    """A pair the judge read in both orders, and the vote it stored."""

    prompt: str
    prompt_index: int
    sample: int
    first_variant: str  # shown as A in the first reading
    second_variant: str
    first_order: str  # the reading with the first variant as A: left means A (the first variant) is better
    swapped: str  # the reading with the second variant as A
    vote: str  # left: the first variant; right: the second; tie
    p_first: tuple[float | None, float | None] = (None, None)  # (P(A), P(B)) of the first reading
    p_swapped: tuple[float | None, float | None] = (None, None)
    answers: tuple[str, str] = field(default=("", ""))  # an endpoint's replies

    @property
    def first_prefers(self) -> str:
        """The variant the first reading prefers, or "tie"."""
        return {"left": self.first_variant, "right": self.second_variant}.get(self.first_order, "tie")

    @property
    def swapped_prefers(self) -> str:
        """The variant the swapped reading prefers (its A was the second variant), or "tie"."""
        return {"left": self.second_variant, "right": self.first_variant}.get(self.swapped, "tie")

    @property
    def winner(self) -> str:
        """The variant the vote is for, or "tie"."""
        return {"left": self.first_variant, "right": self.second_variant}.get(self.vote, "tie")


def baseline_position(spec: ExperimentSpec) -> int:
    """The variant every other one is judged against: the first of kind baseline, else the first."""
    return next((i for i, v in enumerate(spec.variants) if v.kind == "baseline"), 0)


def plan_pairs(
    keys: Sequence[store_judgements.OutputKey], judge: JudgeSpec, baseline: int, arms: Collection[int] = ()
) -> list[Pair]:
    """The pairs a judge reads, every prompt of a sample before the next sample (see the module's docstring).

    Each pair is (the baseline's output, the other's), or with ``pairs: all`` (the lower
    variant position's output, the higher's); variants at the positions ``arms`` (null arms)
    are not judged against the baseline.
    """
    rows: dict[tuple[int, int], dict[int, int]] = {}
    for key in keys:
        rows.setdefault((key.sample_index, key.prompt_position), {})[key.variant_position] = key.generation_id
    pairs: list[Pair] = []
    for row in sorted(rows):
        outputs = rows[row]
        positions = sorted(outputs)
        if judge.pairs == "all":
            pairs.extend((outputs[a], outputs[b]) for i, a in enumerate(positions) for b in positions[i + 1 :])
        elif baseline in outputs:
            pairs.extend((outputs[baseline], outputs[v]) for v in positions if v != baseline and v not in arms)
    return pairs[: judge.max_pairs] if judge.max_pairs is not None else pairs


def plan(session: Session, experiment: Experiment, judge_name: str | None) -> JudgePlan:
    """The named judge's plan (None: the first judge), refusing in one sentence what cannot be judged."""
    spec = stored_spec(experiment)
    judge = find_judge(spec.judges, judge_name, experiment.name)
    keys = store_judgements.output_keys(session, experiment.id)
    if not keys:
        raise SteerLabError(
            f"Experiment '{experiment.name}' has no outputs to judge yet; run it first "
            "(the Run page, or `steerlab run` with its file)."
        )
    arms = {i for i, v in enumerate(spec.variants) if v.control_of}
    pairs = plan_pairs(keys, judge, baseline_position(spec), arms)
    if not pairs:
        against = "" if judge.pairs == "all" else f" with the baseline '{spec.variants[baseline_position(spec)].name}'"
        raise SteerLabError(
            f"Experiment '{experiment.name}' has no pair for judge '{judge.name}' to read: no prompt and sample has "
            f"outputs of two variants{against} yet; run the experiment to generate them."
        )
    return JudgePlan(
        experiment.id,
        spec,
        judge,
        spec.judges.index(judge),
        pairs,
        store_judgements.stored_readings(session, experiment.id, judge.name),
        store_judgements.voted_pairs(session, experiment.id, rater_name(judge.name)),
        judge.fingerprint(spec.model, spec.rating_question),
    )


def refuse_if_changed(session: Session, experiment: Experiment, p: JudgePlan, before: int | None = None) -> None:
    """Refuse to add readings of a judge whose definition changed since its stored readings were made."""
    if not p.readings:
        return
    earlier = store_judgements.judge_runs(session, experiment.id, p.judge.name, before)
    made_by = next((r.options_json for r in earlier), None)
    stored_hash = RunOptions.from_json(made_by).judge_hash if made_by is not None else ""
    if stored_hash and stored_hash != p.fingerprint:
        raise SteerLabError(
            f"Judge '{p.judge.name}' of experiment '{experiment.name}' changed (its rubric, model or endpoint, or "
            f"the rating question) since it stored {len(p.readings)} readings; give the changed judge a new name "
            f"to keep both, or start it over with `steerlab judge {experiment.name} --judge {p.judge.name} "
            "--restart` (which deletes its readings and votes)."
        )


def judge_options(p: JudgePlan, options: RunOptions) -> RunOptions:
    """``options`` as a run of this plan's judge."""
    return RunOptions(
        batch_size=options.batch_size,
        device=options.device,
        dtype=options.dtype,
        quantize=options.quantize,
        task="judge",
        judge=p.judge.name,
        judge_hash=p.fingerprint,
    )


def nothing_to_judge(name: str, p: JudgePlan) -> NothingToJudge:
    return NothingToJudge(
        f"Judge '{p.judge.name}' has read all {len(p.pairs)} pairs of experiment '{name}' in both orders, "
        "so there is nothing to judge; add outputs, or start the judge over (--restart, or the Judge page) "
        "to judge them again."
    )


def forget_judge(store: Store, name: str, judge: str, who: Identity = LOCAL) -> tuple[int, int]:
    """Delete a declared judge's readings and votes (owners only), to judge again; returns (readings, votes)."""
    require(store, who, name, "owner", "delete a judge's verdicts")
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        find_judge(spec.judges, judge, name)
        active = runs.active_run(session, experiment.id)
        if active is not None and store_judgements.judge_of_run(active.options_json) == judge:
            raise busy_error(name, active.id)
        counts = store_judgements.forget_judge(session, experiment.id, judge, rater_name(judge))
        audit.record(session, who.user, "judge restarted", name, f"{judge}: {counts[0]} readings, {counts[1]} votes")
    log.info("Judge '%s' of '%s' starts over: %s readings and %s votes deleted", judge, name, *counts)
    return counts


# --- running -------------------------------------------------------------------------


def run_judge(
    store: Store,
    name: str,
    judge: str | None = None,
    options: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    claimed: runs.ClaimedRun | None = None,
    owner: str | None = None,
    requeue_on_stop: bool = False,
    read_with: PairReading | None = None,
) -> JudgeResult:
    """Run (or resume) a judge over the experiment's pairs; the run's row records how it went.

    ``claimed``: a judge run a worker has claimed, held by ``owner`` (its options name the
    judge). Without it this is a foreground run (``steerlab judge``), which takes the
    experiment's queued run of this judge or starts one, and refuses while another run is
    active. ``requeue_on_stop``: when the local ``cancel`` stops it (a worker shutting down),
    hand the run back to the queue. A failure is stored on the run and raised. ``read_with``:
    who reads the pending pairs (Ray actors, :mod:`service.ray_runs`) instead of this process.
    """
    if options.batch_size < 1:
        raise SteerLabError(f"Batch size {options.batch_size} is too small; give 1 or more.")
    lease = lease_seconds()
    holder = owner or owner_name("foreground")
    with store.session() as session:
        experiment = get_experiment(session, name)
        p = plan(session, experiment, judge if claimed is None else options.judge)
        if claimed is None:
            refuse_if_changed(session, experiment, p)
            if not p.pending():
                raise nothing_to_judge(name, p)
            run_id = _take(session, experiment, p, options, holder, lease)
        else:
            run_id = claimed.run_id
            refuse_if_changed(session, experiment, p, before=run_id)
            runs.restart_counts(session, run_id, p.total, p.done, options.batch_size)
            if options.judge_hash != p.fingerprint:  # changed while queued: the run records what it runs
                store_judgements.set_run_options(session, run_id, judge_options(p, options).to_json())
        runs.set_run_phase(session, run_id, LOADING if p.judge.endpoint is None else JUDGING)
    log.info(
        "Judge run %s of '%s' (judge '%s') started by %s: %s of %s readings to do",
        run_id,
        name,
        p.judge.name,
        holder,
        p.total - p.done,
        p.total,
    )
    heartbeat = Heartbeat(store, run_id, holder, lease)
    stop = _Stop(store, run_id, cancel, heartbeat)
    counts = [0, 0]  # readings, votes stored by this run
    status, error, trace = "failed", "", ""
    heartbeat.start()
    try:
        if p.pending() and read_with is not None:
            with store.session() as session:
                runs.set_run_phase(session, run_id, JUDGING)
            read_with(p, run_id, stop, counts, holder)
        elif p.pending():  # a claimed run whose work is done (a second queueing) loads nothing
            reader = open_reader(store, run_id, p, options, name)
            with store.session() as session:
                runs.set_run_phase(session, run_id, JUDGING)
            read_pending(store, run_id, p, reader, options.batch_size, progress, stop, counts)
        status = "done"
    except RunCancelled:
        status = "cancelled"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        from service.running import describe_error  # the engine: only where a judge runs

        error, trace = describe_error(exc), traceback.format_exc()
        raise
    finally:
        heartbeat.stop()
        status = finish_claimed_run(
            store, run_id, holder, status, error, trace, heartbeat.lost, requeue_on_stop and stop.local
        )
        log.log(
            logging.WARNING if status in ("failed", "interrupted") else logging.INFO,
            "Judge run %s of '%s' ended: %s, %s readings and %s votes stored%s",
            run_id,
            name,
            status,
            counts[0],
            counts[1],
            f" ({error})" if error else "",
        )
    return JudgeResult(name, p.judge.name, run_id, status, counts[0], p.total, counts[1])


class _Stop:
    """Set by the local flag (a worker stopping), a stored cancel request, or a lost lease; checked between batches."""

    def __init__(self, store: Store, run_id: int, local: CancelFlag | None, heartbeat: Heartbeat) -> None:
        self._store, self._run_id, self._local_flag, self._heartbeat = store, run_id, local, heartbeat
        self.local = False  # stopped by this process rather than by a user's cancel

    def is_set(self) -> bool:
        if self._heartbeat.lost:
            return True
        with self._store.session() as session:
            if runs.cancel_requested(session, self._run_id):
                return True
        self.local = self._local_flag is not None and self._local_flag.is_set()
        return self.local


def _take(session: Session, experiment: Experiment, p: JudgePlan, options: RunOptions, owner: str, lease: float) -> int:
    """Claim a run row for a foreground judge run: this judge's queued run, or a new one."""
    active = runs.active_run(session, experiment.id)
    if active is not None:
        ours = active.status == "queued" and store_judgements.judge_of_run(active.options_json) == p.judge.name
        expired = "its process stopped sending heartbeats before the run finished"
        if active.status == "queued" and active.cancel_requested:
            runs.cancel_queued(session, active.id)  # asked to stop before it started: it never will
        elif ours and runs.claim_run(session, active.id, owner, lease):
            runs.restart_counts(session, active.id, p.total, p.done, options.batch_size)
            return active.id
        elif not (active.status == "running" and runs.interrupt_expired(session, active.id, expired)):
            raise busy_error(experiment.name, active.id)
    try:
        with session.begin_nested():  # a concurrent start loses here, with the database's word
            run = runs.enqueue_run(session, experiment.id, p.total, p.done, judge_options(p, options).to_json(), owner)
            runs.claim_run(session, run.id, owner, lease)
    except IntegrityError:
        again = runs.active_run(session, experiment.id)
        raise busy_error(experiment.name, again.id if again is not None else 0) from None
    return run.id


def open_reader(store: Store, run_id: int, p: JudgePlan, options: RunOptions, name: str) -> PairReader:
    """The judge, ready to read: an endpoint client, or the local model (loaded once, through the model cache)."""
    judge, spec = p.judge, p.spec
    if judge.endpoint is not None:
        from engine.judge_endpoint import EndpointJudge

        with store.session() as session:
            runs.set_run_hardware(session, run_id, "endpoint", "")
        return EndpointJudge(judge.endpoint, judge.name, judge.rubric, spec.rating_question)
    from engine.judge import LocalJudge
    from engine.models import load_model

    try:
        model = load_model(
            judge.model_for(spec.model),
            options.device,
            options.dtype,
            quantize=options.quantize,
            batch_size=options.batch_size,
        )
    except SteerLabError as exc:
        if judge.model is None:
            raise  # the experiment's own model: its sentence says it all
        where = Where(f"stored experiment '{name}'", f"judges[{p.index}].model")
        text = str(exc)
        raise SteerLabError(f"{where}: {text[:1].lower()}{text[1:]}") from exc
    with store.session() as session:
        runs.set_run_hardware(session, run_id, str(model.device), str(model.dtype).removeprefix("torch."))
    return LocalJudge(model, judge.name, judge.rubric, spec.rating_question)


def pairs_per_batch(batch_size: int) -> int:
    """Pairs read in one batch: two readings each."""
    return max(1, batch_size // 2)


def read_pending(
    store: Store,
    run_id: int,
    p: JudgePlan,
    reader: PairReader,
    batch_size: int,
    progress: Callable[[Progress], None] | None,
    stop: CancelFlag,
    counts: list[int],
    pending: list[Pair] | None = None,
) -> None:
    """Read the pending pairs (or the given ones) batch by batch, storing each batch's readings and votes together."""
    from engine.judge import PairText, combine_orders
    from engine.runner import Progress

    pending = p.pending() if pending is None else pending
    per_batch = pairs_per_batch(batch_size)
    rater = rater_name(p.judge.name)
    started, done_before = time.monotonic(), p.done
    for start in range(0, len(pending), per_batch):
        if stop.is_set():
            raise RunCancelled()
        chunk = pending[start : start + per_batch]
        with store.session() as session:
            shown = repo.shown_generations(session, [i for pair in chunk for i in pair])
        chunk = [pair for pair in chunk if pair[0] in shown and pair[1] in shown]  # outputs deleted meanwhile
        orders = [order for a, b in chunk for order in ((a, b), (b, a)) if order not in p.readings]
        texts = [PairText(shown[a].prompt, shown[a].text, shown[b].text) for a, b in orders]
        readings = reader.read(texts)
        if readings and not any(r.labelled for r in readings):
            raise SteerLabError(
                f"Judge '{p.judge.name}' named no label (A or B) in any of its {len(readings)} replies in a batch "
                f"(the first: '{readings[0].answer[:MAX_ANSWER_PREVIEW]}'); make the rubric ask for one letter, "
                "raise endpoint.max_tokens, or use another model."
            )
        new = dict(zip(orders, readings, strict=True))
        chosen = {**p.readings, **{order: r.choice for order, r in new.items()}}
        votes = [
            store_judgements.JudgeVote(a, b, combine_orders(chosen[(a, b)], chosen[(b, a)]))
            for a, b in chunk
            if (min(a, b), max(a, b)) not in p.voted
        ]
        rows = [
            store_judgements.NewJudgement(left, right, r.choice, r.p_left, r.p_right, r.answer)
            for (left, right), r in new.items()
        ]
        with store.session() as session:
            store_judgements.store_judged_batch(session, p.experiment_id, run_id, p.judge.name, rater, rows, votes)
        p.readings.update({order: r.choice for order, r in new.items()})
        p.voted.update(
            (min(a, b), max(a, b)) for a, b in ((v.left_generation_id, v.right_generation_id) for v in votes)
        )
        counts[0] += len(rows)
        counts[1] += len(votes)
        unlabelled = sum(not r.labelled for r in readings)
        if unlabelled:
            log.warning("Judge '%s': %s replies named no label and count as ties", p.judge.name, unlabelled)
        if progress is not None:
            done = p.done
            progress(Progress(done, p.total, time.monotonic() - started, done - done_before))


# --- what pages show ---------------------------------------------------------------


def judges_overview(store: Store, name: str) -> list[JudgeOverview]:
    """The experiment's declared judges, with the readings each has stored."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        stats = store_judgements.reading_stats(session, experiment.id)
    return [
        JudgeOverview(
            j.name,
            j.describe(spec.model),
            j.rubric,
            j.pairs,
            j.max_pairs,
            stats[j.name].readings if j.name in stats else 0,
            reading_warnings(stats.get(j.name)),
        )
        for j in spec.judges
    ]


def judges_with_readings(store: Store, name: str) -> list[str]:
    """Names of the judges that stored readings in the experiment (declared now or not)."""
    with store.session() as session:
        return sorted(store_judgements.reading_counts(session, get_experiment(session, name).id))


def recent_verdicts(store: Store, name: str, judge: str, limit: int = 20) -> list[Verdict]:
    """The judge's latest pairs read in both orders, newest first, with both readings and the vote."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        rows = store_judgements.recent_readings(session, experiment.id, judge, 4 * limit)
        by_order = {(r.left_generation_id, r.right_generation_id): r for r in rows}
        pairs: list[Pair] = []
        for r in rows:  # newest first; a pair's first order is the one whose first output has the lower variant
            key = (min(r.left_generation_id, r.right_generation_id), max(r.left_generation_id, r.right_generation_id))
            if key not in pairs and (r.right_generation_id, r.left_generation_id) in by_order:
                pairs.append(key)
        votes = store_judgements.votes_on(session, experiment.id, rater_name(judge), pairs[:limit])
    out = []
    for key in pairs[:limit]:
        vote = votes.get(key)
        if vote is None:
            continue
        first = by_order[(vote.left_generation_id, vote.right_generation_id)]
        swapped = by_order[(vote.right_generation_id, vote.left_generation_id)]
        out.append(
            Verdict(
                first.prompt,
                first.prompt_position,
                first.sample_index,
                first.left_variant,
                first.right_variant,
                first.choice,
                swapped.choice,
                vote.choice,
                (first.p_left, first.p_right),
                (swapped.p_left, swapped.p_right),
                (first.answer, swapped.answer),
            )
        )
    return out
