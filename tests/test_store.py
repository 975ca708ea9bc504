"""The store: SQLite pragmas, schema version, cascades, uniqueness, URL resolution."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db import repository as repo
from db.store import Store, StoreError, resolve_url


def make_experiment(store: Store) -> int:
    with store.session() as s:
        e = repo.create_experiment(
            s,
            "e",
            "",
            "m",
            {"name": "e"},
            "h",
            ["p0", "p1"],
            {"v": {"pairs": []}},
            [repo.NewVariant("base", "baseline", {})],
        )
        run = repo.start_run(s, e, total=2, done=0, batch_size=2, device="cpu", dtype="float32", owner="x")
        ids = repo.record_batch(
            s, e.id, run.id, [repo.NewGeneration(e.variants[0].id, p.id, 0, "t", 3, 0.1, 10) for p in e.prompts]
        )
        repo.add_rating(s, e.id, "ann", ids[0], ids[1], "left")
        return e.id


def test_sqlite_is_wal_with_foreign_keys_and_versioned(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).scalar() == "1"


def test_deleting_an_experiment_deletes_everything_it_owns(store: Store) -> None:
    make_experiment(store)
    with store.session() as s:
        assert repo.experiment_summaries(s)[0].generations == 2
        repo.delete_experiment(s, repo.find_experiment(s, "e"))  # type: ignore[arg-type]
    with store.engine.connect() as conn:
        for table in ("prompts", "variants", "vectors", "runs", "generations", "ratings"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table


def test_a_generation_cannot_be_stored_twice_and_a_failed_batch_stores_nothing(store: Store) -> None:
    experiment_id = make_experiment(store)
    with pytest.raises(IntegrityError), store.session() as s:
        e = repo.find_experiment(s, "e")
        assert e is not None
        run = repo.start_run(s, e, 2, 0, 2, "cpu", "float32", "x")
        repo.record_batch(
            s,
            experiment_id,
            run.id,
            [
                repo.NewGeneration(e.variants[0].id, e.prompts[0].id, 1, "new", 1, 0.1, 1),
                repo.NewGeneration(e.variants[0].id, e.prompts[0].id, 0, "dup", 1, 0.1, 1),
            ],
        )
    with store.session() as s:
        assert len(repo.done_keys(s, experiment_id)) == 2, "the whole batch rolled back"


def test_urls_and_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEERLAB_DB", raising=False)
    assert resolve_url() == "sqlite:///steerlab.db"
    monkeypatch.setenv("STEERLAB_DB", str(tmp_path / "x.db"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot be opened as a SteerLab store"):
        Store(str(junk))
    other = tmp_path / "other.db"
    Store(str(other)).close()
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE meta SET value='99'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(str(other))
