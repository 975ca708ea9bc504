"""The Ray actor that runs one shard of a run: it loads the model once and writes to the shared store.

Each actor opens the store by URL (a PostgreSQL server on a cluster; a SQLite file when
every actor is on this machine) and commits each finished batch in one transaction, as a
local run does. Before every batch it reads which of its units are already stored, so an
actor that Ray restarts after a crash repeats no stored unit and skips none: Ray retries
the interrupted call on the new actor, which continues its shard.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from db import repository as repo
from db import runs
from db.store import Store
from engine.errors import RunCancelled
from engine.models import LoadedModel, load_model
from engine.runner import Unit, run_batch
from engine.spec import ExperimentSpec
from service.catalog import get_experiment
from service.judging import PairReader, open_reader, read_pending
from service.judging import plan as plan_judge
from service.run_options import RunOptions
from service.running import (
    BatchWriter,
    OpenRun,
    PreparedWork,
    measure_and_score,
    open_shard,
    prepare_work,
    store_checked_spec,
)

log = logging.getLogger(__name__)

UnitKey = tuple[int, int, int]  # (prompt, sample, variant): a Unit, as plain data for Ray


class StoreStop:
    """Set once the run is cancelled in the store, or is no longer held by the driver that started this work."""

    def __init__(self, store: Store, run_id: int, holder: str) -> None:
        self._store, self._run_id, self._holder = store, run_id, holder
        self._checked_at = 0.0
        self._stopped = False

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._stopped and now - self._checked_at > 1.0:
            self._checked_at = now
            with self._store.session() as session:
                self._stopped = runs.cancel_requested(session, self._run_id) or not runs.held_by(
                    session, self._run_id, self._holder
                )
        return self._stopped


class ShardActor:
    """Holds one loaded model; prepares, generates shards of, and measures runs of that model."""

    def __init__(self, store_url: str, model_ref: str, options_json: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from service.worker import open_worker_store

        # A failure here (a model not on this node, a store it cannot open) is kept and raised by
        # the first call: raised from __init__, Ray would restart the actor to fail the same way
        # again, and the driver would see only that the actor died, not why.
        self.failure: Exception | None = None
        self.load_seconds = 0.0
        self._work: dict[tuple[str, int], tuple[OpenRun, PreparedWork]] = {}
        try:
            self.options = RunOptions.from_json(options_json)
            self.store = open_worker_store(store_url)
            started = time.perf_counter()
            self.model: LoadedModel = load_model(
                model_ref,
                self.options.device,
                self.options.dtype,
                quantize=self.options.quantize,
                batch_size=self.options.batch_size,
            )
            self.load_seconds = time.perf_counter() - started
            log.info("Actor %s loaded %s on %s in %.1f s", os.getpid(), model_ref, self.model.device, self.load_seconds)
        except Exception as exc:
            log.exception("Actor %s could not start", os.getpid())
            self.failure = exc

    def _ready(self) -> None:
        if self.failure is not None:
            raise self.failure

    def describe(self) -> dict[str, object]:
        """Where this actor runs: pid, device, dtype, and how long its model took to load."""
        self._ready()
        return {
            "pid": os.getpid(),
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "load_seconds": self.load_seconds,
        }

    def store_spec(self, spec: ExperimentSpec, source: str, vector_files: dict[str, bytes]) -> None:
        """Check a file's experiment against the model and store (or extend) it, as a local run does."""
        self._ready()
        store_checked_spec(self.store, spec, source, self.options, self.model, vector_files)

    def prepare(self, name: str, run_id: int, holder: str) -> None:
        """Extract (or read) the vectors and train what trains; the driver calls this on one actor first.

        Only this call shows its phases (extracting, training) on the run: the other actors read the
        stored vectors while the run's phase already says generating.
        """
        self._ready()
        self._prepared(name, run_id, holder, self._phase(run_id, holder))

    def generate(self, name: str, run_id: int, holder: str, batches: Sequence[Sequence[UnitKey]]) -> int:
        """Generate the shard's batches, skipping stored units; returns how many units this call stored."""
        self._ready()
        stop = StoreStop(self.store, run_id, holder)
        opened, work = self._prepared(name, run_id, holder, self._quiet_phase(stop))
        write = BatchWriter(self.store, opened)
        stored = 0
        for keys in batches:
            if stop.is_set():
                raise RunCancelled()
            with self.store.session() as session:
                done = repo.done_keys(session, opened.experiment_id)
            batch = [
                Unit(*key)
                for key in keys
                if (opened.variant_ids[key[2]], opened.prompt_ids[key[0]], key[1]) not in done
            ]
            if not batch:
                continue  # stored before a restart: nothing twice
            write(run_batch(self.model, work.variants, batch, opened.spec.generation, stop))
            stored += len(batch)
        return stored

    def measure(self, name: str, run_id: int, holder: str) -> None:
        """The run's compute and reversibility figures and its automatic scores."""
        self._ready()
        phase = self._phase(run_id, holder)
        opened, work = self._prepared(name, run_id, holder, self._quiet_phase(StoreStop(self.store, run_id, holder)))
        measure_and_score(self.store, opened, self.model, work, phase)

    def _phase(self, run_id: int, holder: str) -> Callable[[str], None]:
        stop = StoreStop(self.store, run_id, holder)

        def phase(now: str) -> None:
            if stop.is_set():
                raise RunCancelled()
            with self.store.session() as session:
                runs.set_run_phase(session, run_id, now)

        return phase

    @staticmethod
    def _quiet_phase(stop: StoreStop) -> Callable[[str], None]:
        """Honours a cancel between preparation steps without writing the run's phase."""

        def phase(_now: str) -> None:
            if stop.is_set():
                raise RunCancelled()

        return phase

    def _prepared(
        self, name: str, run_id: int, holder: str, phase: Callable[[str], None]
    ) -> tuple[OpenRun, PreparedWork]:
        key = (name, run_id)
        if key not in self._work:
            self._work.clear()  # a kept actor's earlier run: its prepared variants are not needed again
            opened = open_shard(self.store, name, run_id)
            self._work[key] = (opened, prepare_work(self.store, name, opened.spec, self.model, phase))
        return self._work[key]


class JudgeActor:
    """Reads one shard of a judge run's pairs with the judge (its own model, loaded once, or its endpoint)."""

    def __init__(self, store_url: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from service.worker import open_worker_store

        self.failure: Exception | None = None
        self._readers: dict[tuple[str, str], PairReader] = {}
        try:
            self.store = open_worker_store(store_url)
        except Exception as exc:  # raised by the first call, not by a restart loop (see ShardActor)
            self.failure = exc

    def read_shard(
        self, name: str, judge: str, run_id: int, holder: str, options_json: str, pairs: Sequence[tuple[int, int]]
    ) -> tuple[int, int]:
        """Read the shard's pairs not yet stored (both orders, then the vote); returns (readings, votes) stored."""
        if self.failure is not None:
            raise self.failure
        options = RunOptions.from_json(options_json)
        with self.store.session() as session:
            p = plan_judge(session, get_experiment(session, name), judge)
        mine = set(pairs)
        pending = [pair for pair in p.pending() if pair in mine]  # after a restart: what is left of the shard
        if not pending:
            return 0, 0
        key = (name, judge)
        if key not in self._readers:
            self._readers[key] = open_reader(self.store, run_id, p, options, name)
        counts = [0, 0]
        stop = StoreStop(self.store, run_id, holder)
        read_pending(self.store, run_id, p, self._readers[key], options.batch_size, None, stop, counts, pending)
        return counts[0], counts[1]
