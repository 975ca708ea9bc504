"""A real local Ray cluster for the tests: ``ray start --head`` on this machine, two CPUs.

One cluster per test session (starting one takes seconds). It runs with token
authentication, as Ray 2.60 clusters do by default, under a token made for the session;
the tests' drivers get it through ``RAY_AUTH_TOKEN``. Ray's GCS listens on every
interface (Ray does not let a node use the loopback address); the token keeps strangers
out. Stopping the ``ray start --block`` process stops every process of this cluster and
no other Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class RayCluster:
    address: str  # the GCS address, host:port (what RAY_ADDRESS takes)
    client_address: str  # ray://host:port, the Ray Client server
    token: str
    temp_dir: Path
    pid: int = 0  # the `ray start --block` process: this cluster's processes descend from it

    @property
    def env(self) -> dict[str, str]:
        """What a driver process needs in its environment to join this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    found = Path(sys.executable).parent / "ray"
    if found.exists():
        return str(found)
    which = shutil.which("ray")
    if which is None:
        pytest.skip("the `ray` command is not installed (requirements.txt pins ray[serve])")
    return which


@contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[RayCluster]:
    """Start a head node; yield once a driver can connect; stop it and its processes."""
    temp = Path(tempfile.mkdtemp(prefix="steerlab-ray-"))
    port, client_port = _free_port(), _free_port()
    token = secrets.token_hex(32)
    cluster = RayCluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", token, temp)
    env = {**os.environ, **cluster.env, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        _ray_bin(),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--ray-client-server-port={client_port}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--object-store-memory=300000000",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    log = (temp / "ray-start.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = RayCluster(cluster.address, cluster.client_address, token, temp, process.pid)
    try:
        _wait_until_ready(cluster, process, temp / "ray-start.log")
        yield cluster
    finally:
        # SIGTERM to `ray start --block` stops the node's processes; the group kill is for stragglers.
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_until_ready(cluster: RayCluster, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the head says it started (not a fixed sleep: a loaded machine is slow)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text() and _port_open(cluster.client_address.rsplit(":", 1)[1]):
            return
        time.sleep(0.2)
    raise RuntimeError(f"`ray start --head` did not start within 180 s:\n{log.read_text()[-3000:]}")


def _port_open(port: str) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", int(port))) == 0


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """The session's local Ray cluster; drivers in this process get its token."""
    with ray_cluster() as cluster:
        saved = {k: os.environ.get(k) for k in cluster.env}
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
