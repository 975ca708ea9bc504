"""Open the store: resolve its URL, switch SQLite to WAL with foreign keys, create the schema.

The URL comes from the caller (``--db``), else ``STEERLAB_DB``, else a SQLite file
``steerlab.db`` in the working directory. A plain path is taken as a SQLite file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import SchemaError, prepare

DEFAULT_DB = "steerlab.db"


class StoreError(Exception):
    """The store cannot be opened or is not a SteerLab store; the message says why."""


def resolve_url(url: str | None = None) -> str:
    chosen = url or os.environ.get("STEERLAB_DB") or DEFAULT_DB
    if "://" in chosen:
        return chosen
    return f"sqlite:///{Path(chosen).expanduser()}"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: safe to show on a page or in a message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class Store:
    """An open store: a SQLAlchemy engine and a session factory."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.display_url = mask_url(self.url)
        try:
            parsed = make_url(self.url)
            # A mistyped host must fail in seconds, not hang until the network gives up.
            timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
            if "connect_timeout" in parsed.query:
                timeout = {}
            self.engine: Engine = create_engine(self.url, connect_args=timeout)
        except (ArgumentError, ImportError) as exc:
            raise StoreError(
                f"Database URL '{self.display_url}' is not usable ({exc}); give a SQLAlchemy URL or a file path."
            ) from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_schema()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed together at the end, or not at all."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _create_schema(self) -> None:
        try:
            prepare(self.engine, self.display_url)
        except SchemaError as exc:
            raise StoreError(f"Database '{self.display_url}' {exc}.") from exc
        except (OperationalError, DatabaseError) as exc:
            refused = _refused_connection(str(exc.orig), self.engine.url, self.display_url)
            if refused:
                raise StoreError(refused) from exc
            reason = " ".join(str(exc.orig).split())  # one line
            raise StoreError(
                f"Database '{self.display_url}' cannot be opened as a SteerLab store ({reason}); check the path or URL."
            ) from exc

    def close(self) -> None:
        self.engine.dispose()


def _refused_connection(reason: str, url: URL, display_url: str) -> str | None:
    """One sentence for a database server that refused the connection or did not answer; None for other errors."""
    server = f"{url.host or 'localhost'}:{url.port or 5432}"
    if "password authentication failed" in reason or "no password supplied" in reason:
        return (
            f"PostgreSQL at {server} refused the password of user '{url.username}' (database URL '{display_url}'); "
            "correct the user and password in --db or STEERLAB_DB."
        )
    if re.search(r'role ".*" does not exist', reason):
        return (
            f"PostgreSQL at {server} has no user '{url.username}' (database URL '{display_url}'); "
            "correct the user in --db or STEERLAB_DB, or create that role on the server."
        )
    if re.search(r'database ".*" does not exist', reason):
        return (
            f"PostgreSQL at {server} has no database '{url.database}' (database URL '{display_url}'); "
            "create it (createdb) or correct its name in --db or STEERLAB_DB."
        )
    if any(
        sign in reason
        for sign in ("Connection refused", "timeout expired", "could not translate host name", "No route to host")
    ):
        return (
            f"No database server answers at {server} (database URL '{display_url}'); "
            "start the server there, or correct the host and port in --db or STEERLAB_DB."
        )
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the dashboard read while a run writes; foreign keys make deletes cascade;
    # the busy timeout makes concurrent writers wait instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
