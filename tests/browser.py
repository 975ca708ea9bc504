"""Shared pieces of the browser tests: Debian's Chromium, a dashboard server, page helpers.

The server is a real ``streamlit run`` of the dashboard bound to 127.0.0.1 on a free port,
with its own store; every wait is on a condition (the health endpoint, a text on the page),
never a fixed sleep, so the tests hold on a loaded machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 60_000  # a cold model load on a slow, loaded machine takes a while


def require_chromium() -> None:
    """Skip the module without Chromium, except in CI, where the browser tests must run."""
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium package (.ci/run does)")
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser tests cannot run", allow_module_level=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dashboard(
    db: Path, workdir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None, port: int = 0
) -> Iterator[str]:
    """Serve the dashboard on ``db``; yields its URL. No address is given on the command line:
    the project's own .streamlit/config.toml must bind it to 127.0.0.1."""
    port = port or free_port()
    env = {**os.environ, **(env or {}), "STEERLAB_DB": str(db), "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
        "--server.port", str(port), *extra_args,
    ]  # fmt: skip
    log_path = workdir / f"streamlit-{port}.log"
    with log_path.open("w") as log:
        # The project root is the working directory, as with scripts/run.sh, so its config applies.
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(log_path.read_text()) from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def worker(db: Path, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``steerlab worker`` beside the dashboard, as scripts/run.sh starts one: it runs the runs pages queue."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STEERLAB_POLL_SECONDS": "0.2"}
    command = [sys.executable, "-m", "engine", "worker", "--db", str(db), "--create"]
    with (workdir / "worker.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()  # a soft stop: its run, if any, goes back to the queue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright, with every expectation waiting up to WAIT_MS."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A page in a new browser context: its own cookies, so its own dashboard session."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    return context.new_page()


def settled(page: Any) -> None:
    """Wait until the page's script run has finished and drawn everything (no placeholders left)."""
    page.wait_for_function(
        '() => document.querySelector(\'[data-testid="stApp"][data-test-script-state="notRunning"]\') !== null'
        " && document.querySelectorAll('[data-testid=\"stSkeleton\"]').length === 0"
    )
