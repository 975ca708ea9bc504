"""The store: SQLite pragmas, schema version, cascades, uniqueness, URL resolution.

Tests marked both_stores run on SQLite and on PostgreSQL; the others are about SQLite files (their
pragmas, a file that is not a database, upgrades of old .db files with their backup copies)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db import repository as repo
from db import runs
from db.migrate import head_revision, schema_version
from db.schema import Base
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
        run = runs.start_run(s, e, total=2, done=0, batch_size=2, device="cpu", dtype="float32", owner="x")
        ids = repo.record_batch(
            s, e.id, run.id, [repo.NewGeneration(e.variants[0].id, p.id, 0, "t", 3, 0.1, 10) for p in e.prompts]
        )
        repo.add_rating(s, e.id, "ann", ids[0], ids[1], "left")
        return e.id


def test_sqlite_is_wal_with_foreign_keys_and_versioned(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        version = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).scalar()
        assert version == str(schema_version()) == "9"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()


@pytest.mark.both_stores
def test_deleting_an_experiment_deletes_everything_it_owns(store: Store) -> None:
    make_experiment(store)
    with store.session() as s:
        assert repo.experiment_summaries(s)[0].generations == 2
        repo.delete_experiment(s, repo.find_experiment(s, "e"))  # type: ignore[arg-type]
    with store.engine.connect() as conn:
        for table in ("prompts", "variants", "vectors", "runs", "generations", "ratings"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table


@pytest.mark.both_stores
def test_a_generation_cannot_be_stored_twice_and_a_failed_batch_stores_nothing(store: Store) -> None:
    experiment_id = make_experiment(store)
    with pytest.raises(IntegrityError), store.session() as s:
        e = repo.find_experiment(s, "e")
        assert e is not None
        run = runs.latest_run(s, e.id)  # the experiment's one active run
        assert run is not None
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


@pytest.mark.both_stores
def test_a_gpu_batchs_peak_memory_is_stored_whole(store: Store) -> None:
    """80 GiB (an H100's batch) does not fit a 32-bit integer: PostgreSQL refused it before revision 0009."""
    experiment_id = make_experiment(store)
    big = 80 * 2**30
    with store.session() as s:
        e = repo.find_experiment(s, "e")
        assert e is not None
        run = runs.latest_run(s, e.id)
        assert run is not None
        repo.record_batch(
            s, experiment_id, run.id, [repo.NewGeneration(e.variants[0].id, e.prompts[0].id, 1, "x", 1, 0.1, big)]
        )
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT max(peak_memory_bytes) FROM generations")).scalar() == big


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
    odd = tmp_path / "odd.db"
    Store(str(odd)).close()
    with sqlite3.connect(odd) as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute("UPDATE meta SET value='99'")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(str(odd))


@pytest.mark.both_stores
def test_a_store_written_by_a_newer_steerlab_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num='9999'"))
    store.close()
    with pytest.raises(StoreError, match=r"written by a newer SteerLab \(schema revision 9999"):
        Store(store.url)


def legacy_store(path: Path) -> Path:
    """A store as SteerLab 0.1 left it, from the SQL text kept in tests/data."""
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "store_v1.sql").read_text())
    return path


def table_counts(path: Path) -> dict[str, int]:
    tables = ("experiments", "prompts", "variants", "vectors", "runs", "generations", "variant_metrics",
              "generation_metrics", "ratings")  # fmt: skip
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_a_store_of_steerlab_0_1_is_upgraded_in_place_with_a_backup(tmp_path: Path) -> None:
    db = legacy_store(tmp_path / "old.db")
    before = table_counts(db)
    store = Store(str(db))
    after = table_counts(db)
    # Everything kept, except the second copy of a vote that 0.1 stored twice (one rater, two tabs).
    assert after == {**before, "ratings": before["ratings"] - 1}
    with sqlite3.connect(db) as conn:
        votes = conn.execute(
            "SELECT rater, pair_low_id, pair_high_id, repeat, choice FROM ratings ORDER BY id"
        ).fetchall()
        assert votes == [("erin", 1, 3, 0, "left"), ("sam", 2, 4, 0, "tie")], "the first of the duplicates is kept"
        assert conn.execute("SELECT count(*) FROM generations WHERE non_finite").fetchone() == (0,)
        assert conn.execute("SELECT phase FROM runs").fetchone() == ("",)
    backups = list(tmp_path.glob("old.db.before-upgrade-r0001-*"))
    assert len(backups) == 1 and table_counts(backups[0]) == before
    # The upgraded tables are exactly those the models declare.
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with store.session() as s:
        e = repo.find_experiment(s, "legacy_mood")
        assert e is not None and [v.name for v in e.variants] == ["baseline", "prompt_sad"]
    store.close()
    Store(str(db)).close()  # opening it again changes nothing and makes no second backup
    assert len(list(tmp_path.glob("old.db.before-upgrade-*"))) == 1
    assert table_counts(db) == after


@pytest.mark.both_stores
def test_the_database_refuses_a_second_vote_on_a_pair(store: Store) -> None:
    experiment_id = make_experiment(store)
    with store.session() as s:
        (low, high), *_ = [(r.pair_low_id, r.pair_high_id) for r in repo.ratings_of(s, experiment_id)]
    with pytest.raises(IntegrityError), store.session() as s:
        repo.add_rating(s, experiment_id, "ann", high, low, "right")  # same pair, sides swapped
    with store.session() as s:
        repo.add_rating(s, experiment_id, "bob", high, low, "right")  # another rater may
        repo.add_rating(s, experiment_id, "ann", high, low, "right", repeat=1)  # a deliberate repeat may
        assert len(repo.ratings_of(s, experiment_id)) == 3


def r0003_store(path: Path, *edits: str) -> Path:
    """A small complete store as SteerLab at schema revision 0003 left it (tests/data, SQL text),
    with ``edits`` (SQL) applied before it is opened by this SteerLab."""
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "store_r0003.sql").read_text())
        for edit in edits:
            conn.execute(edit)
    return path


R0003_TABLES = ("experiments", "prompts", "variants", "vectors", "runs", "generations", "variant_metrics",
                "generation_metrics", "ratings", "memberships", "audit_events")  # fmt: skip
R0003_SAMPLES = (
    "SELECT id, variant_id, prompt_id, sample_index, text, token_count FROM generations ORDER BY id",
    "SELECT generation_id, name, value FROM generation_metrics ORDER BY id",
    "SELECT variant_id, name, value FROM variant_metrics ORDER BY id",
    "SELECT rater, left_generation_id, right_generation_id, choice FROM ratings ORDER BY id",
    "SELECT id, name, position, kind FROM variants ORDER BY id",
    "SELECT name, data, pairs_hash, model_id FROM vectors",
    "SELECT user, role FROM memberships ORDER BY id",
    "SELECT status, done_units, total_units FROM runs",
)


def snapshot(path: Path) -> tuple[dict[str, int], list[list[tuple[object, ...]]]]:
    with sqlite3.connect(path) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in R0003_TABLES}
        return counts, [conn.execute(q).fetchall() for q in R0003_SAMPLES]


def test_a_store_at_revision_0003_is_upgraded_to_head_keeping_every_row(tmp_path: Path) -> None:
    from service.catalog import load_spec
    from service.staleness import stale_figures

    db = r0003_store(tmp_path / "r3.db")
    with sqlite3.connect(db) as conn:
        row_definitions = {n: json.loads(s) for n, s in conn.execute("SELECT name, spec_json FROM variants")}
    before = snapshot(db)
    assert before[0]["generations"] == 18 and before[0]["ratings"] == 12
    store = Store(str(db))
    assert snapshot(db) == before, "every experiment, generation, metric, vote and member is kept"
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    (backup,) = tmp_path.glob("r3.db.before-upgrade-r0003-*")
    assert snapshot(backup) == before
    # One copy of the definition is left, and it holds what the rows held.
    spec = load_spec(store, "small_mood")
    assert {v.name: v.to_dict() for v in spec.variants} == row_definitions
    # Figures from before provenance was recorded are not trusted: each is reported stale.
    stale = {(f.kind, f.name): f for f in stale_figures(store, "small_mood")}
    assert stale[("score", "sad_words")].count == 18
    assert "before SteerLab recorded" in stale[("score", "fluency_ppl")].reason
    assert set(stale) >= {("variant figures", v) for v in ("baseline", "sad_x2", "prompt_sad")}
    store.close()


def test_the_upgrade_folds_definitions_found_only_in_rows_into_the_experiment(tmp_path: Path) -> None:
    from service.catalog import load_spec

    # As if a buggy path had stored a variant and a vector without the experiment's copy.
    db = r0003_store(
        tmp_path / "r3.db",
        "UPDATE experiments SET spec_json = json_remove(spec_json, '$.variants[2]', '$.vectors.sad')",
    )
    with sqlite3.connect(db) as conn:
        prompt_sad = json.loads(conn.execute("SELECT spec_json FROM variants WHERE name = 'prompt_sad'").fetchone()[0])
        sad = json.loads(conn.execute("SELECT spec_json FROM vectors WHERE name = 'sad'").fetchone()[0])
    before = snapshot(db)
    store = Store(str(db))
    assert snapshot(db) == before
    spec = load_spec(store, "small_mood").to_dict()
    assert [v["name"] for v in spec["variants"]] == ["baseline", "sad_x2", "prompt_sad"]
    assert spec["variants"][2] == prompt_sad and spec["vectors"]["sad"] == sad
    store.close()
