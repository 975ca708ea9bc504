"""Bring a store's schema to this SteerLab's version with Alembic, a backup copy first.

Three cases when a store is opened:
- empty: the tables are created from :mod:`db.schema` and stamped with the newest revision;
- a store of SteerLab 0.1 (``meta.schema_version`` 1, no Alembic table): stamped as
  revision 0001, then upgraded;
- an Alembic store: upgraded when it is behind, refused when it is ahead (a newer SteerLab
  wrote it, and this one cannot know what its tables mean).

The migrations' tables and :mod:`db.schema` must agree; a test upgrades the 0.1 store kept
under ``tests/data`` and compares the result with the models.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from db.schema import Base

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY_REVISION = "0001"  # what SteerLab 0.1's schema_version 1 corresponds to


class SchemaError(Exception):
    """The store's schema cannot be used or upgraded by this SteerLab; the message says why."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def schema_version() -> int:
    """The store schema's number (the newest revision), also written to ``meta`` for older SteerLabs."""
    return int(head_revision())


def current_revision(engine: Engine) -> str | None:
    """The store's revision: None for an empty store, ``LEGACY_REVISION`` for a 0.1 store."""
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" in tables:
            return MigrationContext.configure(connection).get_current_revision()
        if "meta" not in tables:
            return None
        version = connection.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    if version != "1":
        raise SchemaError(f"has schema version {version}, which no SteerLab release wrote; use a new database file")
    return LEGACY_REVISION


@contextmanager
def _preparing_alone(engine: Engine) -> Iterator[None]:
    """Hold a lock that every process opening this store takes, so that only one creates or upgrades it.

    A dashboard, its worker and raters' sessions often open a store at the same moment; without
    the lock two of them can both find it empty (or behind) and both create (or upgrade) it.
    SQLite: an exclusive lock on a file beside the database; PostgreSQL: an advisory lock.
    """
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        lock_path = Path(database).with_name(Path(database).name + ".open-lock")
        try:
            handle = open(lock_path, "a")  # noqa: SIM115 (closed below, after the lock is released)
        except OSError:
            yield  # a read-only folder: nobody can create or upgrade the store there anyway
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
    elif engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            # A fixed key; pg_advisory_lock is held by this session until unlocked.
            connection.execute(text("SELECT pg_advisory_lock(7314159265)"))
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(7314159265)"))
                connection.commit()
    else:
        yield


def prepare(engine: Engine, url_for_messages: str) -> None:
    """Create or upgrade the schema; a store from a newer SteerLab raises :class:`SchemaError`."""
    try:
        if current_revision(engine) == head_revision():
            return  # the common case, without taking the lock
    except SchemaError:
        pass  # maybe half-created by another process right now (SQLite commits each CREATE): look under the lock
    with _preparing_alone(engine):
        _prepare(engine, url_for_messages)


def _prepare(engine: Engine, url_for_messages: str) -> None:
    revision = current_revision(engine)
    head = head_revision()
    if revision is None:
        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            command.stamp(_config(connection), head)
            _write_meta_version(connection)
        return
    if revision == head:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision not in known:
        raise SchemaError(
            f"was written by a newer SteerLab (schema revision {revision}; this one knows up to {head}); "
            "open it with that SteerLab, or use a new database file"
        )
    backup = _backup(engine, revision)
    log.info("Upgrading store %s from schema revision %s to %s (backup: %s)", url_for_messages, revision, head, backup)
    try:
        with engine.connect() as connection:
            sqlite = engine.dialect.name == "sqlite"
            if sqlite:
                # SQLite alters a table by copying it and dropping the original; with foreign
                # keys on, that drop would cascade to every vote and score that points at it.
                # The pragma only takes effect outside a transaction.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            try:
                with connection.begin():
                    if "alembic_version" not in inspect(connection).get_table_names():
                        command.stamp(_config(connection), revision)
                    command.upgrade(_config(connection), head)
                    _write_meta_version(connection)
                    if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise SchemaError("the upgraded tables break a foreign key")
            finally:
                if sqlite:
                    connection.rollback()
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                    connection.commit()
    except Exception as exc:
        where = f"the store as it was is kept at {backup}" if backup else "restore it from your dump"
        raise SchemaError(
            f"could not be upgraded from schema revision {revision} to {head} ({str(exc)[:300]}); {where}"
        ) from exc


def _write_meta_version(connection: Connection) -> None:
    # SteerLab 0.1 reads meta.schema_version and refuses any other number with a clear
    # message, so keeping it current stops an old SteerLab from writing to a newer store.
    version = str(schema_version())
    updated = connection.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": version})
    if updated.rowcount == 0:
        connection.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', :v)"), {"v": version})


def _backup(engine: Engine, revision: str) -> Path | None:
    """A consistent copy of a SQLite store beside it before an upgrade (other databases: use their dump tool)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        log.warning(
            "Upgrading a %s store in place without a copy; dump it first to be able to go back.", engine.dialect.name
        )
        return None
    source = Path(database)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = source.with_name(f"{source.name}.before-upgrade-r{revision}-{stamp}")
    # The backup API copies a consistent snapshot even while another process writes (WAL).
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    shutil.copymode(source, target)
    return target
