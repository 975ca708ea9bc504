"""SteerLab on a real PostgreSQL server: the store, a run, votes, Compare, exports and deletes.

The server is a throwaway one (tests/postgres.py) on 127.0.0.1; every test has its own database.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, func, inspect, select, text

from db.migrate import head_revision
from db.schema import Generation, Rating, Run
from db.store import Store, StoreError
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from service.catalog import delete_experiment, list_experiments, save_spec
from service.comparison import compare
from service.export import export_csv, export_data
from service.jobs import enqueue, status
from service.rating import next_item, record_vote
from service.running import RunOptions, run_experiment_file
from tests.conftest import MOOD_FILE, needs_models
from tests.postgres import PASSWORD, PASSWORD_USER, PostgresServer
from tests.test_worker import wait_for, worker_process


@pytest.fixture
def server(postgres: PostgresServer) -> PostgresServer:
    """The session's throwaway server (tests/postgres.py)."""
    return postgres


def _open(url: str, results: Any) -> None:
    try:
        store = Store(url)
        with store.engine.connect() as connection:
            results.put(connection.execute(text("SELECT version_num FROM alembic_version")).scalar())
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_four_processes_opening_a_new_postgresql_store_at_once_create_it_once(server: PostgresServer) -> None:
    url = server.new_database()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_open, args=(url, results), daemon=True) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        outcomes = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert outcomes == [head_revision()] * 4


def test_a_password_in_a_postgresql_url_never_shows_in_its_error(server: PostgresServer) -> None:
    url = f"postgresql+psycopg://steerlab:S3cretPassw0rd@127.0.0.1:{server.port}/no_such_database"
    with pytest.raises(StoreError) as caught:
        Store(url)
    assert "S3cretPassw0rd" not in str(caught.value)
    assert "no_such_database" in str(caught.value)


def test_a_wrong_password_gives_one_sentence_from_the_store_and_the_commands(
    server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    wrong = server.url("postgres", PASSWORD_USER, "not-" + PASSWORD)
    masked = f"postgresql+psycopg://{PASSWORD_USER}:***@127.0.0.1:{server.port}/postgres"
    expected = (
        f"PostgreSQL at 127.0.0.1:{server.port} refused the password of user '{PASSWORD_USER}' "
        f"(database URL '{masked}'); correct the user and password in --db or STEERLAB_DB."
    )
    with pytest.raises(StoreError) as caught:
        Store(wrong)
    assert str(caught.value) == expected
    for command in (["list", "--db", wrong], ["worker", "--once", "--db", wrong]):
        assert main(command) == 2, command
        out, err = capsys.readouterr()
        assert err == f"error: {expected}\n" and "Traceback" not in out + err, command
    # The right password opens it: the rule applies to this user, and the message was about the password.
    right = server.url(server.new_database().rsplit("/", 1)[1], PASSWORD_USER, PASSWORD)
    Store(right).close()


def test_a_postgresql_server_that_does_not_answer_gives_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://steerlab:pw@127.0.0.1:{port}/steerlab"
    expected = (
        f"No database server answers at 127.0.0.1:{port} (database URL "
        f"'postgresql+psycopg://steerlab:***@127.0.0.1:{port}/steerlab'); "
        "start the server there, or correct the host and port in --db or STEERLAB_DB."
    )
    with pytest.raises(StoreError) as caught:
        Store(url)
    assert str(caught.value) == expected
    assert main(["list", "--db", url]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


@pytest.mark.parametrize("previous", ["0007", "0008"])  # the schemas of the two previous releases
def test_a_postgresql_store_at_the_previous_revision_with_data_upgrades_keeping_every_row(
    server: PostgresServer, previous: str
) -> None:
    from alembic import command

    from db.migrate import _config
    from service.bench_store import Size, build_store

    url = server.new_store_url()
    store = Store(url)
    build_store(store, Size(variants=3, prompts=6, samples=2, raters=3, votes=30, repeats=1, bootstrap_rounds=10))
    store.close()
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(_config(connection), previous)
    with engine.begin() as connection:
        experiment_id = connection.execute(text("SELECT id FROM experiments LIMIT 1")).scalar()
        generation_ids = connection.execute(text("SELECT id FROM generations ORDER BY id LIMIT 2")).scalars().all()
        connection.execute(
            text(
                "INSERT INTO judgements (experiment_id, judge, left_generation_id, right_generation_id, choice, answer,"
                " created_at) VALUES (:e, 'j', :l, :r, 'left', 'A', '2026-01-01')"
            ),
            {"e": experiment_id, "l": generation_ids[0], "r": generation_ids[1]},
        )
    with engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        assert ("deployments" in tables) == (previous == "0008")
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == previous
        before = {t: connection.execute(text(f'SELECT * FROM "{t}" ORDER BY 1')).all() for t in tables}
    assert sum(len(rows) for rows in before.values()) > 100
    Store(url).close()
    with engine.connect() as connection:
        after = {t: connection.execute(text(f'SELECT * FROM "{t}" ORDER BY 1')).all() for t in before}
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
        assert connection.execute(text("SELECT count(*) FROM deployments")).scalar() == 0
    with engine.begin() as connection:  # a GPU batch's peak memory (gigabytes) fits the column now
        generation_id = connection.execute(text("SELECT id FROM generations ORDER BY id LIMIT 1")).scalar()
        big = 80 * 2**30
        connection.execute(
            text("UPDATE generations SET peak_memory_bytes = :b WHERE id = :i"), {"b": big, "i": generation_id}
        )
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT peak_memory_bytes FROM generations WHERE id = :i"), {"i": generation_id}
        ).scalar()
        assert stored == big
    engine.dispose()
    for table in ("alembic_version", "meta"):
        before.pop(table), after.pop(table)
    assert after == before
    server.drop(url)


@needs_models
def test_run_vote_compare_export_and_delete_on_postgresql(server: PostgresServer, tmp_path: Path) -> None:
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    store = Store(server.new_database())
    result = run_experiment_file(store, path, RunOptions(device="cpu"))
    assert result.status == "done" and result.total == 6
    name = result.experiment
    assert run_experiment_file(store, path, RunOptions(device="cpu")).generated == 0  # complete: nothing twice

    item = next_item(store, name, "erin")
    assert item is not None
    record_vote(store, name, "erin", item.left_id, item.right_id, "left")
    with pytest.raises(SteerLabError, match="already rated this pair"):
        record_vote(store, name, "erin", item.right_id, item.left_id, "right")  # same pair, sides swapped
    comparison = compare(store, name, bootstrap_rounds=50)
    assert comparison is not None
    ratings = export_data(store, name)["ratings"]
    assert [r["rater"] for r in ratings] == ["erin"]
    assert export_csv(store, name).count("\n") == 7  # a header and one row per output

    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 6
        assert session.scalar(select(func.count()).select_from(Rating)) == 1
    delete_experiment(store, name, "test")
    assert [e.name for e in list_experiments(store)] == []
    with store.session() as session:  # the cascade reached every row
        for table in (Generation, Rating, Run):
            assert session.scalar(select(func.count()).select_from(table)) == 0


def _count(store: Store, query: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(text(query)).scalar() or 0)


@needs_models
def test_workers_on_two_hosts_share_a_postgresql_queue_and_take_over_a_killed_run(
    server: PostgresServer, tmp_path: Path
) -> None:
    """What two hosts on one database URL do: one worker is killed mid-run; of the two left, one takes it over."""
    url = server.new_database()
    store = Store(url)
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=2, max_new_tokens=16)
    data["prompts"] = data["prompts"][:4]
    path = tmp_path / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    with store.session() as session:
        save_spec(session, None, load_experiment_file(path))
    run_id = enqueue(store, "tinystories_mood", RunOptions(batch_size=4, device="cpu"))
    with pytest.raises(SteerLabError, match="already has a queued or running run"):
        enqueue(store, "tinystories_mood", RunOptions(device="cpu"))  # the partial unique index, on PostgreSQL
    with worker_process(url) as first:
        wait_for(
            lambda: _count(store, "SELECT count(*) FROM generations") >= 8 or first.poll() is not None,
            120,
            "the first batches",
        )
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        first.send_signal(signal.SIGKILL)
    with worker_process(url) as second, worker_process(url) as third:
        wait_for(lambda: status(store, "tinystories_mood").state in ("done", "failed"), 180, "the takeover")
        for proc in (second, third):
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60)[0] for proc in (second, third)]
    assert "".join(outputs).count("taken over") == 1, outputs
    s = status(store, "tinystories_mood")
    assert (s.state, s.run_id, s.attempts, s.done, s.total) == ("done", run_id, 2, 72, 72), s
    assert _count(store, "SELECT count(*) FROM generations") == 72
    assert _count(store, "SELECT count(DISTINCT (variant_id, prompt_id, sample_index)) FROM generations") == 72


@needs_models
def test_deployments_feedback_and_the_kill_switch_on_postgresql(server: PostgresServer) -> None:
    from service.access import LOCAL
    from service.deployments import (
        create_deployment,
        deployments_version,
        get_deployment,
        record_feedback,
        record_preference,
        record_responses,
        stop_variant,
    )
    from service.live_comparison import live_comparison
    from tests.test_deployments import experiment, response

    store = Store(server.new_database())
    experiment(store)
    create_deployment(store, LOCAL, "mood-pg", "live_mood", {"baseline": 50, "sad": 50})
    before = deployments_version(store)
    rows = [response(f"r{i}", "mood-pg", v, f"u{i % 4}") for i, v in enumerate(["baseline", "sad"] * 4)]
    record_responses(store, rows)
    record_responses(store, rows[:3])  # a retried batch: stored once (PostgreSQL's on-conflict path)
    record_feedback(store, "r1", thumbs="down", user="u1")
    record_feedback(store, "r1", thumbs="up", user="u1")  # replaces the first
    record_preference(store, "r1", "r5", user="u1")
    stop_variant(store, LOCAL, "mood-pg", "sad")
    assert deployments_version(store) != before
    assert [a.stopped for a in get_deployment(store, "mood-pg").arms] == [False, True]
    assert _count(store, "SELECT count(*) FROM served_responses") == 8
    assert _count(store, "SELECT count(*) FROM response_feedback") == 1
    figures = live_comparison(store, "mood-pg")
    (sad,) = [v for v in figures.variants if v.variant == "sad"]
    assert (sad.served, sad.thumbs_up.value, sad.thumbs_up.n) == (4, 1.0, 1)
    delete_experiment(store, "live_mood", "test")
    for table in ("deployments", "served_responses", "response_feedback", "response_preferences"):
        assert _count(store, f"SELECT count(*) FROM {table}") == 0, table
    store.close()
