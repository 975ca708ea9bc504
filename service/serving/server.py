"""Load what ``steerlab serve`` serves and run it under uvicorn (in the foreground, or in a thread).

:func:`serve` is the command: it loads the one model and the experiments' variants, then
serves until interrupted (uvicorn drains open requests, then the batcher and the response
log are closed, so every response a client received is stored). :class:`ServerThread`
runs the same app in a background thread on a free port (tests, the benchmark).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn

from db.store import Store
from engine.errors import SteerLabError
from engine.models import LoadedModel
from service.serving.app import build_app
from service.serving.context import ServingContext
from service.serving.options import ServeOptions
from service.serving.targets import Catalog

log = logging.getLogger(__name__)


def load_context(store: Store, options: ServeOptions, model: LoadedModel | None = None) -> ServingContext:
    """Check the options, read the experiments and load (or take) their model."""
    options.check()
    return ServingContext(store, Catalog.load(store, options, model), options)


def serve(store: Store, options: ServeOptions, ready: Callable[[ServingContext], None] | None = None) -> None:
    """Serve in the foreground until interrupted (Ctrl-C)."""
    options.check()
    _check_port(options.host, options.port)
    context = load_context(store, options)
    if ready is not None:
        ready(context)
    config = uvicorn.Config(
        build_app(context), host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=30
    )
    uvicorn.Server(config).run()


class ServerThread:
    """The server of ``context`` on 127.0.0.1 (a free port unless given), in a daemon thread."""

    def __init__(self, context: ServingContext, port: int = 0) -> None:
        self.context = context
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(build_app(context), log_level="warning", timeout_graceful_shutdown=10)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="steerlab-serve", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SteerLabError("The test server did not start; see the log for why.")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _check_port(host: str, port: int) -> None:
    """Refuse a taken port in one sentence before uvicorn would log a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SteerLabError(
                f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or stop what uses it."
            ) from None
