"""A throwaway PostgreSQL server for the tests: its own data folder, 127.0.0.1 and a free port.

Debian's ``postgresql`` package provides the server (``scripts/test.sh`` installs it where it
may). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


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

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"steerlab_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=steerlab dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://steerlab@127.0.0.1:{self.port}/{name}"


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
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -F -c max_connections=100"
    log = folder / "server.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres")
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    _run([*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", "60", "start"])
    try:
        yield PostgresServer(port)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], check=False, capture_output=True, timeout=60)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")
