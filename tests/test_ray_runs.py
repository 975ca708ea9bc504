"""Runs on a real local Ray cluster (``ray start --head`` on 127.0.0.1's machine, two CPU actors).

The main check: a run sharded over two actors stores exactly the texts a local run stores
(the example samples at temperature 0.8, so this covers every row's seeded stream). Then
an actor killed with SIGKILL mid-run, a cancel from the store, raters voting while a Ray
run writes, a worker that runs queued runs on Ray, and the one-sentence refusals.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from sqlalchemy import func, select

from db.schema import Generation, Rating, Run
from db.store import Store
from service.jobs import queue_experiment_file
from service.rating import next_item, record_vote
from service.ray_cluster import RayPlan, RayTarget
from service.ray_runs import run_file_on_ray
from service.running import RunOptions, RunResult, run_experiment_file
from tests.conftest import MOOD_FILE, ROOT, needs_models
from tests.ray_cluster import RayCluster, ray_head  # noqa: F401  (the session's cluster)

pytestmark = [needs_models, pytest.mark.timeout(300)]

NAME = "tinystories_mood"
LOCAL_NAME = "tinystories_mood_local"


def texts(store: Store, name: str) -> list[tuple[str, str, int, str, int]]:
    """Every stored output of an experiment: (variant, prompt, sample, text, tokens), in a fixed order."""
    from db.schema import Experiment, Prompt, Variant

    with store.session() as session:
        rows = session.execute(
            select(Variant.name, Prompt.text, Generation.sample_index, Generation.text, Generation.token_count)
            .join(Variant, Variant.id == Generation.variant_id)
            .join(Prompt, Prompt.id == Generation.prompt_id)
            .join(Experiment, Experiment.id == Generation.experiment_id)
            .where(Experiment.name == name)
        ).all()
    return sorted((str(a), str(b), int(c), str(d), int(e)) for a, b, c, d, e in rows)


def generation_count(store: Store) -> int:
    with store.session() as session:
        return int(session.execute(select(func.count()).select_from(Generation)).scalar_one())


def latest_run(store: Store) -> Run:
    with store.session() as session:
        run = session.execute(select(Run).order_by(Run.id.desc())).scalars().first()
        assert run is not None
        session.expunge(run)
        return run


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def actor_processes(cluster: RayCluster) -> list[psutil.Process]:
    """The cluster's SteerLab shard actors (Ray titles an actor's process ``ray::ShardActor...``).

    Only this cluster's: other Ray instances on the machine (a benchmark, a developer's) have their own.
    """
    found = []
    for process in psutil.Process(cluster.pid).children(recursive=True):
        try:
            if any("ray::ShardActor" in part for part in process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example run locally, as `steerlab run` does (batch 8); its store, copied by tests that change it."""
    path = tmp_path_factory.mktemp("local") / "local.db"
    store = Store(str(path))
    run_experiment_file(store, MOOD_FILE, RunOptions(batch_size=8))
    store.close()
    return path


@pytest.fixture(scope="module")
def local_texts(local_run: Path) -> list[tuple[str, str, int, str, int]]:
    store = Store(str(local_run))
    out = texts(store, NAME)
    store.close()
    return out


class RunInThread:
    """A Ray run in a background thread (as the CLI runs it), its result or error kept for the test."""

    def __init__(self, call: Callable[[], RunResult]) -> None:
        self.result: RunResult | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = call()
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self, seconds: float) -> RunResult:
        self.thread.join(seconds)
        assert not self.thread.is_alive(), f"the Ray run did not end within {seconds} s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_a_run_on_two_ray_actors_stores_the_local_texts(
    ray_head: RayCluster,  # noqa: F811
    local_run: Path,
    local_texts: list[tuple[str, str, int, str, int]],
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "ray.db"))
    result = run_file_on_ray(store, MOOD_FILE, RunOptions(batch_size=8), RayPlan(RayTarget(ray_head.address), actors=2))

    assert result.status == "done" and result.generated == len(local_texts)
    assert texts(store, NAME) == local_texts  # bitwise the same texts and token counts as a local run
    run = latest_run(store)
    assert run.status == "done" and run.done_units == run.total_units == len(local_texts)
    assert run.device.startswith("ray: 2 x cpu")
    # The run's figures and scores are there, as after a local run: the same names, the same score means.
    from service.summary import variant_summaries

    local = Store(str(local_run))
    on_ray, here = variant_summaries(store, NAME), variant_summaries(local, NAME)
    assert [(v.name, v.generations, v.tokens, sorted(v.figures)) for v in on_ray] == [
        (v.name, v.generations, v.tokens, sorted(v.figures)) for v in here
    ]
    # Scores of the same texts; perplexity is summed by another process with its own thread count: 1e-6 apart.
    assert [{k: e.value for k, e in v.scores.items()} for v in on_ray] == [
        {k: pytest.approx(e.value, rel=1e-6) for k, e in v.scores.items()} for v in here
    ]
    assert all(v.scores for v in on_ray)
    local.close()
    store.close()


def small_mood(tmp_path: Path, prompts: int = 6, samples: int = 2) -> Path:
    """The example with fewer prompts and samples (the first ones: their seeds, so texts, are the example's)."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"], data["generation"]["samples_per_prompt"] = data["prompts"][:prompts], samples
    path = tmp_path / "small_mood.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.both_stores
def test_a_ray_run_and_raters_write_to_one_store_at_once(
    ray_head: RayCluster,  # noqa: F811
    store: Store,
    local_texts: list[tuple[str, str, int, str, int]],
    tmp_path: Path,
) -> None:
    """SQLite and PostgreSQL: actors commit batches while 4 raters vote on another experiment of the store."""
    from service.bench_store import EXPERIMENT as RATED
    from service.bench_store import Size, build_store

    build_store(store, Size(variants=4, prompts=20, samples=2, raters=1, votes=0, repeats=1, bootstrap_rounds=10))
    path = small_mood(tmp_path)
    plan = RayPlan(RayTarget(ray_head.address), actors=2)
    running = RunInThread(lambda: run_file_on_ray(store, path, RunOptions(batch_size=4), plan))
    served: dict[str, list[tuple[int, int, int]]] = {}
    errors: list[str] = []

    def rater(name: str) -> None:
        rng = random.Random(name)
        mine = served.setdefault(name, [])
        try:
            while len(mine) < 50:
                item = next_item(store, RATED, name, rng)
                assert item is not None
                # A planned repeat (repeat=1, for rater consistency) is its own item.
                mine.append((min(item.left_id, item.right_id), max(item.left_id, item.right_id), item.repeat))
                choice = rng.choice(["left", "right", "tie"])
                record_vote(store, RATED, name, item.left_id, item.right_id, choice, repeat=item.repeat)
        except Exception as exc:  # reported to the test, which names it
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    raters = [threading.Thread(target=rater, args=(f"rater{i}",)) for i in range(4)]
    for t in raters:
        t.start()
    for t in raters:
        t.join(240)
    result = running.wait(240)

    assert not errors
    assert result.status == "done" and result.generated == 6 * 2 * 9
    wanted = [t for t in local_texts if t[2] < 2 and t[1] in {p for _, p, *_ in texts(store, NAME)}]
    assert texts(store, NAME) == wanted  # the example's own texts for these prompts and samples
    with store.session() as session:
        stored = session.execute(
            select(Rating.rater, func.count()).where(Rating.rater.like("rater%")).group_by(Rating.rater)
        ).all()
    assert {str(r): int(n) for r, n in stored} == {f"rater{i}": 50 for i in range(4)}  # no vote lost
    for pairs in served.values():
        assert len(set(pairs)) == len(pairs)  # no pair served twice to one rater


def test_an_actor_killed_mid_run_is_restarted_and_the_run_completes_without_duplicates(
    ray_head: RayCluster,  # noqa: F811
    local_texts: list[tuple[str, str, int, str, int]],
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "kill.db"))
    path = small_mood(tmp_path, prompts=8, samples=2)  # 144 units: 36 batches of 4
    plan = RayPlan(RayTarget(ray_head.address), actors=2)
    running = RunInThread(lambda: run_file_on_ray(store, path, RunOptions(batch_size=4), plan))
    wait_for(lambda: generation_count(store) >= 8 or not running.thread.is_alive(), 180, "the first batches")
    assert generation_count(store) < 144 / 2, "the run ended before an actor could be killed"
    victims = actor_processes(ray_head)
    assert len(victims) == 2
    victims[0].send_signal(signal.SIGKILL)
    result = running.wait(240)

    assert result.status == "done"
    assert generation_count(store) == 144  # nothing lost, nothing stored twice
    assert texts(store, NAME) == [t for t in local_texts if t[2] < 2 and t[1] in {p for _, p, *_ in texts(store, NAME)}]
    assert len({p for _, p, *_ in texts(store, NAME)}) == 8
    assert not victims[0].is_running()
    store.close()


def test_a_cancel_from_the_store_stops_every_actor(ray_head: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    store = Store(str(tmp_path / "cancel.db"))
    plan = RayPlan(RayTarget(ray_head.address), actors=2)
    path = small_mood(tmp_path, prompts=8, samples=2)
    running = RunInThread(lambda: run_file_on_ray(store, path, RunOptions(batch_size=4), plan))
    wait_for(lambda: generation_count(store) >= 4 or not running.thread.is_alive(), 180, "the first batches")
    asked = cli("cancel", NAME, "--db", str(tmp_path / "cancel.db"))  # as the Run page's Cancel button does
    assert asked.returncode == 0 and "Asked the run of 'tinystories_mood' to stop" in asked.stdout, asked.stderr
    result = running.wait(60)
    assert result.status == "cancelled"
    wait_for(lambda: not actor_processes(ray_head), 60, "every actor to stop")
    stored = generation_count(store)
    assert 0 < stored < 144
    assert latest_run(store).status == "cancelled"
    assert generation_count(store) == stored  # the actors are gone: nothing more is written
    store.close()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_worker_with_a_ray_executor_runs_queued_runs_on_the_cluster_and_keeps_its_actors(
    ray_head: RayCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two queued runs of one model: the worker's second run finds the actors (and their model) ready."""
    from tests.test_worker import mood_store

    db = mood_store(tmp_path, "queued", samples=1, tokens=8, prompts=6)
    store = Store(str(db))
    queue_experiment_file(store, tmp_path / "queued.yaml", RunOptions(batch_size=8))
    queue_experiment_file(store, tmp_path / "queued.yaml", RunOptions(batch_size=8, name="queued_again"))
    done = cli("worker", "--db", str(db), "--once", "--executor", "ray", env={"RAY_ADDRESS": ray_head.address})
    assert done.returncode == 0, done.stdout + done.stderr
    with store.session() as session:
        finished = session.execute(select(Run).order_by(Run.id)).scalars().all()
        assert [(r.status, r.done_units, r.total_units) for r in finished] == [("done", 6 * 9, 6 * 9)] * 2
        assert all(r.device.startswith("ray: ") for r in finished)
    assert "Reusing 2 Ray actors" in done.stderr + done.stdout
    shown = cli("status", "queued_again", "--db", str(db))
    assert "runs on    ray: 2 x cpu" in shown.stdout, shown.stdout + shown.stderr
    assert texts(store, "queued_again") == [(v, p, s, t, n) for v, p, s, t, n in texts(store, NAME)]
    wait_for(lambda: not actor_processes(ray_head), 60, "the worker's actors to go with it")
    store.close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket closes


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--executor", "ray://127.0.0.1:{port}"], {}, "The Ray cluster at ray://127.0.0.1:{port} does not answer"),
        (
            ["--executor", "ray"],
            {"RAY_ADDRESS": "127.0.0.1:{port}"},
            "The Ray cluster at 127.0.0.1:{port} does not answer",
        ),
        (["--executor", "ray", "--device", "cuda"], {"RAY_ADDRESS": "{head}"}, "has 0 GPUs, but this run asks for 1"),
        (["--executor", "ray", "--gpus-per-actor", "1", "--actors", "2"], {"RAY_ADDRESS": "{head}"}, "has 0 GPUs"),
        (["--executor", "ray", "--actors", "3"], {"RAY_ADDRESS": "{head}"}, "has 2 CPUs, but this run asks for 3"),
        (["--executor", "slurm"], {}, "--executor 'slurm' is not an executor"),
        # The actors cannot load it: the loader's own sentence, once (not "the actor died 4 times").
        (["--executor", "ray", "--model", "raincandy-u/no-such-model"], {"RAY_ADDRESS": "{head}"}, "no-such-model"),
    ],
)
def test_a_cluster_that_cannot_run_it_is_one_sentence_and_nothing_runs_locally(
    ray_head: RayCluster,  # noqa: F811
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    port = str(closed_port())

    def fill(text: str) -> str:
        return text.replace("{port}", port).replace("{head}", ray_head.address)

    for key, value in env.items():
        monkeypatch.setenv(key, fill(value))
    db = tmp_path / "refused.db"
    code = main(["run", str(MOOD_FILE), "--db", str(db), *[fill(a) for a in args]])  # the command, in-process
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert fill(says) in error, error
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    if db.exists():  # never silently run locally: no run row, no output
        store = Store(str(db))
        with store.session() as session:
            assert session.execute(select(func.count()).select_from(Run)).scalar_one() == 0
        assert generation_count(store) == 0
        store.close()


def test_a_wrong_ray_token_is_one_sentence(ray_head: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    done = cli(
        "run",
        str(MOOD_FILE),
        "--db",
        str(tmp_path / "token.db"),
        "--executor",
        "ray",
        # Fewer of Ray's own retries (5 by SteerLab's default): the refusal reads the same, sooner.
        env={"RAY_ADDRESS": ray_head.address, "RAY_AUTH_TOKEN": "0" * 64, "RAY_NUM_REDIS_GET_RETRIES": "2"},
    )
    assert done.returncode != 0
    error = done.stderr.strip()
    # Ray's C++ client logs a warning line per retry before giving up; our sentence is the last line.
    assert "refused SteerLab's authentication token" in error.splitlines()[-1] and "Traceback" not in error, error


def test_a_sweep_on_ray_stores_the_local_sweep(ray_head: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    from service.sweeps import run_sweep_file

    data = yaml.safe_load(MOOD_FILE.read_text())
    data["prompts"], data["generation"]["samples_per_prompt"] = data["prompts"][:4], 1
    data["sweep"]["coefficients"] = [1, 3]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    local, on_ray = Store(str(tmp_path / "local.db")), Store(str(tmp_path / "ray.db"))
    options = RunOptions(batch_size=8)
    _, local_sweep = run_sweep_file(local, path, options)
    run, ray_sweep = run_sweep_file(on_ray, path, options, ray=RayPlan(RayTarget(ray_head.address), actors=2))
    assert run.status == "done"
    assert texts(on_ray, local_sweep.experiment) == texts(local, local_sweep.experiment)
    assert [(c.layer, c.coefficient) for c in ray_sweep.cells] == [(c.layer, c.coefficient) for c in local_sweep.cells]
    assert ray_sweep.recommended is not None and local_sweep.recommended is not None
    assert (ray_sweep.recommended.layer, ray_sweep.recommended.coefficient) == (
        local_sweep.recommended.layer,
        local_sweep.recommended.coefficient,
    )
    local.close()
    on_ray.close()


def test_a_judge_run_on_ray_reads_what_a_local_judge_reads(
    ray_head: RayCluster,  # noqa: F811
    local_run: Path,
    tmp_path: Path,
) -> None:
    import shutil
    from dataclasses import replace

    from engine.judge_spec import JudgeSpec
    from service.catalog import get_experiment, load_spec, save_spec
    from service.judging import run_judge
    from service.ray_runs import judge_on_ray
    from tests.test_judge import readings

    stores = []
    for copy in ("local.db", "ray.db"):
        shutil.copy(local_run, tmp_path / copy)
        store = Store(str(tmp_path / copy))
        judged = replace(load_spec(store, NAME), judges=(JudgeSpec("mood", "Prefer the sadder story."),))
        with store.session() as session:  # judges decide no output: nothing is regenerated
            save_spec(session, get_experiment(session, NAME), judged)
        stores.append(store)
    local, on_ray = stores
    options = RunOptions(batch_size=32, device="cpu")
    mine = run_judge(local, NAME, "mood", options)
    theirs = judge_on_ray(on_ray, NAME, "mood", options, RayPlan(RayTarget(ray_head.address), actors=2))
    assert (theirs.status, theirs.read, theirs.votes) == (mine.status, mine.read, mine.votes)
    assert mine.status == "done" and mine.votes > 0
    assert readings(on_ray, "mood") == readings(local, "mood")
    with on_ray.session() as session:
        run = session.execute(select(Run).order_by(Run.id.desc())).scalars().first()
        assert run is not None and run.status == "done" and "ray driver" in run.owner
    local.close()
    on_ray.close()
