"""Runs, sweeps and judge runs on a Ray cluster: the driver's side.

The driver (``steerlab run --executor ray``, or a worker started with it) holds the run's
row and its lease exactly as a local run does; Ray actors do the work. A run's pending
units are planned into the same prompt-major mixed batches a local run makes and split
into contiguous shards, one per actor, so every row sees the same batch, the same seed and
the same decoding as locally: the texts are identical. Each actor loads the model once and
commits its batches to the shared store (one transaction each), so progress, cancel and
resume work through the run's row as for local runs. Ray restarts an actor that dies and
retries its call; the new actor skips the units already stored.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from db import runs
from db.runs import ClaimedRun
from db.store import Store
from engine.errors import RunCancelled, SteerLabError
from engine.experiment_file import load_experiment_file
from engine.runner import CancelFlag, Progress, Unit, plan_batches
from engine.spec import ExperimentSpec
from service.judging import JudgePlan, JudgeResult, pairs_per_batch, run_judge
from service.lease import Heartbeat, finish_claimed_run, lease_seconds, owner_name
from service.ray_actor import JudgeActor, ShardActor, UnitKey
from service.ray_cluster import NOT_LOCAL, RayPlan, connect, disconnect, require
from service.run_options import GENERATING, PREPARING
from service.running import OpenRun, RunOptions, RunResult, StoreCancel, check_batch_size, describe_error, open_run
from service.vector_store import load_vector_files

log = logging.getLogger(__name__)

ACTOR_RESTARTS = 3  # how often Ray restarts a dead actor (and retries its call) before the run fails
POLL_SECONDS = 0.5  # how often the driver looks at cancel requests and progress while actors work


@dataclass(frozen=True)
class ActorShape:
    count: int
    cpus: float
    gpus: float


def actor_shape(plan: RayPlan, resources: dict[str, float], options: RunOptions, batches: int) -> ActorShape:
    """How many actors, with what resources; refused in one sentence when the cluster lacks them."""
    cluster_gpus = resources.get("GPU", 0.0)
    if plan.gpus_per_actor is not None:
        gpus = plan.gpus_per_actor
    elif options.device in ("cuda", "multi"):
        gpus = 1.0  # asked for GPUs: refused below when the cluster has none
    else:
        gpus = 1.0 if cluster_gpus >= 1 and options.device != "cpu" else 0.0
    if plan.actors is not None:
        count = plan.actors
    elif gpus > 0:
        count = int(cluster_gpus // gpus)
    else:
        count = int(resources.get("CPU", 0.0) // plan.cpus_per_actor)
    count = max(1, min(count, max(batches, 1)))
    if plan.actors is not None and plan.actors < 1:
        raise SteerLabError(f"--actors {plan.actors} is too few; give 1 or more.")
    require(resources, count, plan.cpus_per_actor, gpus, plan.target, "this run")
    return ActorShape(count, plan.cpus_per_actor, gpus)


def shard_batches(run: OpenRun, batch_size: int, actors: int) -> list[list[list[UnitKey]]]:
    """The local run's batches (same planner, same grouping), cut into ``actors`` contiguous shards of similar size."""
    trained = {i for i, v in enumerate(run.spec.variants) if v.train is not None}

    def weights(unit: Unit) -> int:  # a trained variant has weights of its own, as in engine.runner.run_units
        return unit.variant + 1 if unit.variant in trained else 0

    batches = [[(u.prompt, u.sample, u.variant) for u in b] for b in plan_batches(run.pending, batch_size, weights)]
    return [[list(b) for b in shard] for shard in split_contiguous(batches, actors)]


def store_url_for_actors(store: Store) -> str:
    """The store's URL as another process sees it: a SQLite path made absolute (actors have their own cwd)."""
    url = make_url(store.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not str(url.database).startswith("file:") and not path.is_absolute():
            return url.set(database=str(path.resolve())).render_as_string(hide_password=False)
    return store.url


class _Actors:
    """The run's actors: created with the model loaded, killed (never restarted) when the run ends."""

    def __init__(self, store: Store, model_ref: str, options: RunOptions, shape: ActorShape) -> None:
        import ray

        remote = ray.remote(ShardActor).options(
            num_cpus=shape.cpus,
            num_gpus=shape.gpus,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )
        url = store_url_for_actors(store)
        self.handles: list[Any] = [remote.remote(url, model_ref, options.to_json()) for _ in range(shape.count)]

    def kill(self) -> None:
        import ray

        for handle in self.handles:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # already gone
                log.debug("Actor already gone", exc_info=True)


KEEP_ENV = "STEERLAB_RAY_KEEP_SECONDS"
DEFAULT_KEEP_SECONDS = 300.0


class ActorPool:
    """A worker's Ray actors, kept between runs of the same model: a queue of runs pays Ray's start once.

    Ray's cost is a start cost (a fresh process importing torch and loading the model: seconds);
    a worker that runs run after run of one model (a sweep's cells, a team's queue) keeps its
    actors and their loaded model. Actors idle for ``keep_seconds`` are released, so that a
    quiet worker does not hold the cluster's GPUs.
    """

    def __init__(self, plan: RayPlan, keep_seconds: float | None = None) -> None:
        self.plan = plan
        self.keep_seconds = keep_seconds if keep_seconds is not None else _keep_seconds()
        self.resources: dict[str, float] | None = None
        self.reused = 0  # runs that found their actors ready (for the log and the tests)
        self._key: tuple[Any, ...] | None = None
        self._actors: _Actors | None = None
        self._idle_since = time.monotonic()

    def connect(self) -> dict[str, float]:
        if self.resources is None:
            self.resources = connect(self.plan.target)
        return self.resources

    def actors_for(self, store: Store, model_ref: str, options: RunOptions, shape: ActorShape) -> _Actors:
        """The kept actors when they fit this run (same model, loading options and shape) and still answer."""
        key = (
            store_url_for_actors(store),
            model_ref,
            options.device,
            options.dtype,
            options.quantize,
            options.batch_size,
            shape,
        )
        if self._actors is not None and self._key == key and self._alive(self._actors):
            self.reused += 1
            log.info("Reusing %d Ray actors with %s loaded", len(self._actors.handles), model_ref)
        else:
            self.discard()
            self._actors, self._key = _Actors(store, model_ref, options, shape), key
        self._idle_since = time.monotonic()
        return self._actors

    @staticmethod
    def _alive(actors: _Actors) -> bool:
        import ray

        try:
            ray.get([h.describe.remote() for h in actors.handles], timeout=60)
            return True
        except Exception:  # a node lost while idle, an actor killed: make new ones
            log.warning("Kept Ray actors no longer answer; starting new ones", exc_info=True)
            return False

    def release_if_idle(self) -> None:
        """Let go of actors idle for longer than ``keep_seconds`` (and of the cluster)."""
        if self._actors is not None and time.monotonic() - self._idle_since > self.keep_seconds:
            log.info("Releasing Ray actors idle for %.0f s", time.monotonic() - self._idle_since)
            self.close()

    def discard(self) -> None:
        if self._actors is not None:
            self._actors.kill()
        self._actors, self._key = None, None

    def close(self) -> None:
        self.discard()
        if self.resources is not None:
            disconnect()
            self.resources = None


def _keep_seconds() -> float:
    import os

    raw = os.environ.get(KEEP_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_KEEP_SECONDS
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise SteerLabError(
            f"{KEEP_ENV}={raw!r} is not a number of seconds; set it like {KEEP_ENV}=300 (0: never keep)."
        )
    return value


def wait_for(
    refs: Sequence[Any],
    stop: CancelFlag,
    on_poll: Callable[[], None] | None = None,
) -> list[Any]:
    """Wait for every call, checking ``stop`` between polls; an actor's own error is raised as itself."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=POLL_SECONDS)
        for ref in ready:
            try:
                ray.get(ref)
            except RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else None
                if cause is not None:
                    raise cause from None
                raise
            except RayActorError as exc:
                raise SteerLabError(
                    f"A Ray actor of this run died {ACTOR_RESTARTS + 1} times ({_first_line(exc)}); see the Ray "
                    "logs of its node (session_latest/logs under Ray's temp folder); what it stored stays, and "
                    "running again continues from there."
                ) from exc
        if on_poll is not None:
            on_poll()
        if remaining and stop.is_set():
            raise RunCancelled()
    return [ray.get(r) for r in refs]


def _first_line(exc: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def let_actors_stop(refs: Sequence[Any], seconds: float = 5.0) -> None:
    """After a stored cancel, give the actors (which see it too) a moment to stop between batches by themselves."""
    import ray

    try:
        ray.wait(list(refs), num_returns=len(refs), timeout=seconds)
    except Exception:  # stopping anyway: the actors are killed next
        log.debug("Waiting for actors to stop failed", exc_info=True)


def run_file_on_ray(
    store: Store,
    path: str | Path,
    options: RunOptions,
    plan: RayPlan,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> RunResult:
    """``steerlab run FILE --executor ray``: store the file's experiment (checked on an actor), then run it there."""
    spec = load_experiment_file(path, [Path(d) for d in options.allowed_dirs])
    if options.model:
        spec = replace(spec, model=options.model)
    if options.name:
        spec = replace(spec, name=options.name)
    return run_spec_on_ray(store, spec, str(path), options, plan, progress, cancel)


def run_spec_on_ray(
    store: Store,
    spec: ExperimentSpec,
    source: str,
    options: RunOptions,
    plan: RayPlan,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
) -> RunResult:
    """As :func:`service.running.run_spec` on Ray: the spec is checked against the model on an actor, then run."""
    vector_files = load_vector_files(spec)  # read here, where the files are; checked on an actor

    def store_it(actors: _Actors) -> None:
        wait_for([actors.handles[0].store_spec.remote(spec, source, vector_files)], _Never())

    return run_on_ray(store, spec.name, options, plan, progress, cancel, before_claim=(spec.model, store_it))


class _Never:
    def is_set(self) -> bool:
        return False


def run_on_ray(
    store: Store,
    name: str,
    options: RunOptions,
    plan: RayPlan,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    claimed: ClaimedRun | None = None,
    owner: str | None = None,
    requeue_on_stop: bool = False,
    before_claim: tuple[str, Callable[[_Actors], None]] | None = None,
    pool: ActorPool | None = None,
) -> RunResult:
    """Run (or resume) a stored experiment's missing generations on Ray actors; see :func:`service.running.run_stored`.

    ``before_claim``: the model to load and what to do with the actors before the run row
    is claimed (a file run stores its experiment then). ``pool``: a worker's actors, kept
    (with their loaded model) for its next run of the same model; without it the run's own
    actors are made for it and killed at its end.
    """
    check_batch_size(options.batch_size)
    resources = pool.connect() if pool is not None else connect(plan.target)
    actors: _Actors | None = None
    try:
        if before_claim is not None:
            model_ref, first = before_claim
            actors = _Actors(store, model_ref, options, actor_shape(plan, resources, options, batches=1 << 30))
            first(actors)
        return _run(
            store, name, options, plan, resources, actors, progress, cancel, claimed, owner, requeue_on_stop, pool
        )
    finally:
        if actors is not None:
            actors.kill()
        if pool is None:
            disconnect()


def _run(
    store: Store,
    name: str,
    options: RunOptions,
    plan: RayPlan,
    resources: dict[str, float],
    actors: _Actors | None,
    progress: Callable[[Progress], None] | None,
    cancel: CancelFlag | None,
    claimed: ClaimedRun | None,
    owner: str | None,
    requeue_on_stop: bool,
    pool: ActorPool | None = None,
) -> RunResult:
    lease = lease_seconds()
    holder = owner or owner_name("ray driver")
    opened = open_run(store, name, options, claimed, holder, lease)
    run_id = opened.run_id
    heartbeat = Heartbeat(store, run_id, holder, lease)
    stop = StoreCancel(store, run_id, cancel, heartbeat)
    already = opened.total - len(opened.pending)
    started = time.perf_counter()

    def report() -> None:
        if progress is None:
            return
        with store.session() as session:
            done = runs.units_done(session, run_id)
        progress(Progress(done, opened.total, time.perf_counter() - started, max(done - already, 0)))

    def phase(now: str) -> None:
        if stop.is_set():
            raise RunCancelled()
        with store.session() as session:
            runs.set_run_phase(session, run_id, now)

    status, error, trace = "failed", "", ""
    heartbeat.start()
    own_actors = actors is None
    try:
        shards = shard_batches(opened, options.batch_size, 1)
        if actors is None:
            shape = actor_shape(plan, resources, options, len(shards[0]) if shards else 1)
            if pool is not None:
                actors = pool.actors_for(store, opened.spec.model, options, shape)
                own_actors = False
            else:
                actors = _Actors(store, opened.spec.model, options, shape)
        shards = shard_batches(opened, options.batch_size, len(actors.handles))
        described = wait_for([h.describe.remote() for h in actors.handles], stop)
        _record_hardware(store, run_id, described)
        phase(PREPARING)
        first = actors.handles[0]
        wait_for([first.prepare.remote(name, run_id, holder)], stop)
        phase(GENERATING)
        report()
        calls = [h.generate.remote(name, run_id, holder, s) for h, s in zip(actors.handles, shards, strict=False)]
        try:
            wait_for(calls, stop, report)
        except RunCancelled:
            let_actors_stop(calls)
            raise
        wait_for([first.measure.remote(name, run_id, holder)], stop)
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
        if actors is not None and own_actors:
            actors.kill()  # stops every actor now: a cancelled batch is not committed, so nothing is half-stored
        elif pool is not None and status != "done":
            pool.discard()  # a stopped or failed run's actors may still be busy: the next run gets new ones
        heartbeat.stop()
        status = finish_claimed_run(
            store, run_id, holder, status, error, trace, heartbeat.lost, requeue_on_stop and stop.stopped_locally
        )
        log.log(
            logging.WARNING if status in ("failed", "interrupted") else logging.INFO,
            "Run %s of '%s' on Ray ended: %s%s",
            run_id,
            name,
            status,
            f" ({error})" if error else "",
        )
    return RunResult(name, run_id, status, len(opened.pending), opened.total)


def _record_hardware(store: Store, run_id: int, described: list[dict[str, Any]]) -> None:
    devices = sorted({str(d["device"]) for d in described})
    dtypes = sorted({str(d["dtype"]) for d in described})
    with store.session() as session:
        runs.set_run_hardware(session, run_id, f"ray: {len(described)} x {'/'.join(devices)}", "/".join(dtypes))


def judge_on_ray(
    store: Store,
    name: str,
    judge: str | None,
    options: RunOptions,
    plan: RayPlan,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    claimed: ClaimedRun | None = None,
    owner: str | None = None,
    requeue_on_stop: bool = False,
) -> JudgeResult:
    """A judge run whose pairs are read by Ray actors; see :func:`service.judging.run_judge`.

    The driver holds the run (claim, lease, how it ended) as for a local judge run. The pending
    pairs are cut into the local run's batches, and those into contiguous shards, one per actor,
    so each pair is read in the batch it would be read in locally: the same readings. Each
    actor loads the judge once (or talks to its endpoint) and stores each batch's readings and
    votes in one transaction; a restarted actor reads what is left of its shard.
    """
    import ray

    resources = connect(plan.target)
    started = time.perf_counter()

    def read_with(p: JudgePlan, run_id: int, stop: CancelFlag, counts: list[int], holder: str) -> None:
        pending = p.pending()
        per_batch = pairs_per_batch(options.batch_size)
        batches = [pending[i : i + per_batch] for i in range(0, len(pending), per_batch)]
        endpoint = p.judge.endpoint is not None
        shape = actor_shape(replace(plan, gpus_per_actor=0.0) if endpoint else plan, resources, options, len(batches))
        remote = ray.remote(JudgeActor).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS
        )
        url = store_url_for_actors(store)
        actors: list[Any] = [remote.remote(url) for _ in range(shape.count)]
        done_before = p.done

        def report() -> None:
            if progress is not None:
                with store.session() as session:
                    done = runs.units_done(session, run_id)
                progress(Progress(done, p.total, time.perf_counter() - started, max(done - done_before, 0)))

        try:
            calls = [
                actor.read_shard.remote(
                    name, p.judge.name, run_id, holder, options.to_json(), [x for b in shard for x in b]
                )
                for actor, shard in zip(actors, split_contiguous(batches, shape.count), strict=False)
            ]
            try:
                results = wait_for(calls, stop, report)
            except RunCancelled:
                let_actors_stop(calls)
                raise
            counts[0] += sum(r[0] for r in results)
            counts[1] += sum(r[1] for r in results)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    try:
        holder = owner or owner_name("ray driver")
        return run_judge(store, name, judge, options, progress, cancel, claimed, holder, requeue_on_stop, read_with)
    finally:
        disconnect()


def split_contiguous(batches: Sequence[Sequence[Any]], parts: int) -> list[list[Sequence[Any]]]:
    """``batches`` cut into at most ``parts`` contiguous runs of similar total length (empty ones dropped)."""
    shards: list[list[Sequence[Any]]] = [[] for _ in range(max(parts, 1))]
    total = sum(len(b) for b in batches)
    done = 0
    for batch in batches:
        shards[min(len(shards) - 1, done * len(shards) // max(total, 1))].append(batch)
        done += len(batch)
    return [s for s in shards if s]


__all__ = ["NOT_LOCAL", "RayPlan", "judge_on_ray", "run_file_on_ray", "run_on_ray", "run_spec_on_ray"]
