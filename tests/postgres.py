"""A throwaway PostgreSQL server for the tests: its own data folder, 127.0.0.1 and a free port.

Debian's ``postgresql`` package provides the server (``scripts/test.sh`` installs it where it
may). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.

One server serves the whole test session (the ``postgres`` fixture). Every test gets its own
database, copied from a template that is created and migrated once (``CREATE DATABASE ...
TEMPLATE``: a file copy, far cheaper than creating the schema again). User ``steerlab`` is
trusted; user ``pw_user`` must give its password (scram-sha-256), for the wrong-credentials tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PASSWORD_USER = "pw_user"
PASSWORD = "right-Passw0rd"
TEMPLATE = "steerlab_template"


def _server_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self._template_lock = threading.Lock()
        self._template_ready = False

    def url(self, database: str, user: str = "steerlab", password: str | None = None) -> str:
        credentials = f"{user}:{password}" if password is not None else user
        return f"postgresql+psycopg://{credentials}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=steerlab dbname=postgres", autocommit=True) as c:
            c.execute(sql)  # test-made names, never user input

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"steerlab_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def new_store_url(self) -> str:
        """A new database with SteerLab's current schema, copied from the migrated template; its URL."""
        with self._template_lock:
            if not self._template_ready:
                from db.store import Store

                self._admin(f'CREATE DATABASE "{TEMPLATE}"')
                Store(self.url(TEMPLATE)).close()  # no connection may stay open on a template
                self._template_ready = True
        name = f"steerlab_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return self.url(name)

    def copy(self, url: str) -> str:
        """A new database holding a copy of ``url``'s (nothing may be connected to that one); its URL."""
        name = f"steerlab_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{url.rsplit("/", 1)[1]}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop a test's database (its connections too), so that the session's disk use stays small."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session, started when a test first needs it."""
    with postgres_server() as running:
        yield running


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _server_bin()
    if bin_dir is None:
        if os.environ.get("CI"):  # CI must run these tests, not skip them
            raise RuntimeError("CI must run the PostgreSQL tests: install Debian's postgresql package (.ci/run does)")
        pytest.skip("PostgreSQL's server is not installed (Debian package 'postgresql'); scripts/test.sh installs it")
    # Not under pytest's tmp folder: as root that is private to root, and the server cannot
    # run as root.
    folder = Path(tempfile.mkdtemp(prefix="steerlab-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    try:
        with _started(bin_dir, folder, as_user) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _started(bin_dir: Path, folder: Path, as_user: list[str]) -> Iterator[PostgresServer]:
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if as_user:
        shutil.chown(sockets, "postgres")
    _run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "steerlab", "-N"])
    # pg_hba.conf is read top down: the password user's rule comes before the trust lines.
    hba = data / "pg_hba.conf"
    hba.write_text(f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -F -c max_connections=200"
    log = folder / "server.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres")
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    _run([*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", "60", "start"])
    try:
        server = PostgresServer(port)
        server._admin(f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], check=False, capture_output=True, timeout=60)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")


def new_store_url(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """Where a new store goes on ``backend``: a SQLite file in ``folder``, or a new migrated PostgreSQL
    database on the session's server, dropped when ``request``'s scope ends."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_store_url()
        request.addfinalizer(lambda: server.drop(url))
        return url
    return f"sqlite:///{folder / 'store.db'}"


def copy_store_url(url: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """A copy of the store at ``url`` (closed: nothing connected to it), for one test to change: a SQLite
    backup in ``folder``, or a PostgreSQL database copied from it and dropped when ``request``'s scope ends."""
    if url.startswith("postgresql"):
        server: PostgresServer = request.getfixturevalue("postgres")
        copied = server.copy(url)
        request.addfinalizer(lambda: server.drop(copied))
        return copied
    import sqlite3
    from contextlib import closing

    target = folder / "copy.db"
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)  # includes what is still in the WAL file
    return f"sqlite:///{target}"
