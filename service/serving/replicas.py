"""``steerlab serve --replicas N``: N copies of the server behind Ray Serve's HTTP proxy.

Each replica is a Ray Serve replica (a Ray actor) that builds the very app ``steerlab serve``
runs alone (:func:`~service.serving.server.load_context` and
:func:`~service.serving.app.build_app`) in its own process: its own model, continuous batcher,
response-log writer and deployments poller, for the same store. Everything the replicas share
(deployments, traffic weights, kill switches, served responses, feedback) is in that store, so a
switch thrown through one replica, the CLI or the dashboard reaches all of them within the
poll time. Serve's proxy (on the head node, at ``--host``/``--port``) routes each request to a
replica; Serve's controller replaces a replica whose process dies or whose health check fails.

The command stays in the foreground; Ctrl-C or SIGTERM deletes the application (each replica
drains its open requests and stores its queued responses through the app's lifespan) and shuts
Serve down when no other application uses it. A requested cluster that cannot host the replicas
is an error: a local server is never started in its place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.store import Store
from engine.errors import SteerLabError
from service.catalog import get_experiment
from service.ray_cluster import NOT_LOCAL, RayTarget, connect, disconnect, require
from service.serving.options import ServeOptions, is_loopback

log = logging.getLogger(__name__)

APP_NAME = "steerlab-serve"  # the Serve application (one per cluster: Serve's HTTP port is the cluster's)
DEPLOYMENT_NAME = "SteerLabServer"
REPLICA_HEADER = "x-steerlab-replica"  # the Serve replica that answered (as `serve status` names it)
PROCESS_HEADER = "x-steerlab-replica-process"  # HOST:PID of that replica's process
BATCHER_THREAD = "steerlab-batcher"
WRITER_THREAD = "steerlab-response-log"
HEALTH_PERIOD_S = 2.0
HEALTH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, on which cluster, with what each one reserves there."""

    replicas: int
    target: RayTarget
    cpus: float = 1.0  # per replica
    gpus: float | None = None  # per replica; None: 1 when the cluster has GPUs and --device is not cpu

    def check(self) -> None:
        if self.replicas < 1:
            raise SteerLabError(f"--replicas {self.replicas} is too few; give 1 or more replicas.")
        if not self.cpus > 0:
            raise SteerLabError(f"--cpus-per-replica {self.cpus:g} is not a positive number; give one like 1.")
        if self.gpus is not None and not self.gpus >= 0:
            raise SteerLabError(f"--gpus-per-replica {self.gpus:g} is negative; give 0, 1 or more.")

    def gpus_for(self, device: str, resources: dict[str, float]) -> float:
        """GPUs each replica reserves: asked for, implied by --device, or 1 when the cluster has any."""
        if self.gpus is not None:
            if self.gpus > 0 and device == "cpu":
                raise SteerLabError(
                    f"--gpus-per-replica {self.gpus:g} and --device cpu contradict each other; drop one of them."
                )
            return self.gpus
        if device == "cpu":
            return 0.0
        if device in ("cuda", "multi") or device.startswith("cuda:"):
            return 1.0  # refused by require() below when the cluster has none
        return 1.0 if resources.get("GPU", 0.0) >= 1 else 0.0


@dataclass(frozen=True)
class Replicas:
    """What the running application looks like, for the ready message and the operator."""

    url: str  # http://HOST:PORT/v1, as the proxy listens (on the head node)
    replicas: int
    cpus: float
    gpus: float
    cluster: str


def shared_store_url(store: Store) -> str:
    """The store's URL as every replica must open it: a SQLite path made absolute; no in-memory store."""
    url = make_url(store.url)
    if url.get_backend_name() != "sqlite":
        return store.url
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise SteerLabError(
            "Replicas cannot share an in-memory SQLite store; give --db a file path or a PostgreSQL URL."
        )
    return url.set(database=str(Path(database).expanduser().resolve())).render_as_string(hide_password=False)


def serve_replicas(
    store: Store,
    options: ServeOptions,
    plan: ReplicaPlan,
    ready: Callable[[Replicas], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run ``plan.replicas`` replicas on the cluster until Ctrl-C, SIGTERM or ``stop``; then remove them."""
    options.check()
    plan.check()
    if options.port == 0:
        raise SteerLabError("--port 0 picks any free port, but Ray Serve's proxy needs a fixed one; give --port PORT.")
    url = shared_store_url(store)
    if store.engine.dialect.name == "sqlite" and plan.target.address is not None and not _local(plan.target):
        log.warning(
            "Replicas on a remote Ray cluster open the SQLite file %s on their own node; "
            "use a PostgreSQL store (--db postgresql+psycopg://...) so every node shares it.",
            url,
        )
    with store.session() as session:
        for name in options.experiments:
            get_experiment(session, name)  # one sentence for a missing experiment, before the cluster
    stop = stop or threading.Event()
    resources = connect(plan.target)
    try:
        gpus = plan.gpus_for(options.device, resources)
        require(
            resources,
            plan.replicas,
            plan.cpus,
            gpus,
            plan.target,
            f"steerlab serve --replicas {plan.replicas}",
            unit="replicas",
            flag="--replicas",
        )
        with _released(plan.target):
            _start_serve(options, plan.target)
            _deploy(url, options, plan, gpus)
            if ready is not None:
                ready(Replicas(_public_url(options), plan.replicas, plan.cpus, gpus, plan.target.shown))
            with _stopping_on_sigterm(stop):
                _watch(stop, plan.replicas)
    finally:
        disconnect()


# ---- the driver's side


def _local(target: RayTarget) -> bool:
    """Whether the cluster's head (where the proxy listens) is this machine, as far as the address tells."""
    if target.address is None:
        return True
    host = target.address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if is_loopback(host):
        return True
    try:  # binding succeeds only to an address of this machine
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False


def _public_url(options: ServeOptions) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{options.port}/v1"


def _start_serve(options: ServeOptions, target: RayTarget) -> None:
    """Start Serve's controller and proxy (on the head node) at --host/--port, or find them running."""
    from ray import serve

    running = _serve_client()
    if running is not None:
        if APP_NAME in serve.status().applications:
            raise SteerLabError(
                f"A SteerLab server already runs on the Ray cluster at {target.shown} (Serve application "
                f"'{APP_NAME}'); stop its `steerlab serve` first (or `serve shutdown` on the head node). "
                f"{NOT_LOCAL}"
            )
        http = running.http_config
        if (http.host, int(http.port)) != (options.host, options.port):
            raise SteerLabError(
                f"Ray Serve already runs on the cluster at {target.shown}, listening on {http.host}:{http.port}, "
                f"and one cluster has one Serve address; give --host {http.host} --port {http.port}, or shut "
                f"that Serve down. {NOT_LOCAL}"
            )
        return
    if _local(target):
        from service.serving.server import _check_port

        _check_port(options.host, options.port)  # the proxy would otherwise retry the bind forever
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": options.port})
    except Exception as exc:
        raise SteerLabError(
            f"Ray Serve could not start on the cluster at {target.shown} ({_first_line(exc)}); "
            f"see the cluster's logs (session_latest/logs/serve on the head node). {NOT_LOCAL}"
        ) from exc


def _serve_client() -> Any:
    """Serve's client when Serve already runs on the cluster, else None."""
    from ray.serve.context import _get_global_client  # no public way to read the running HTTP options

    return _get_global_client(raise_if_no_controller_running=False)


def _deploy(url: str, options: ServeOptions, plan: ReplicaPlan, gpus: float) -> None:
    from ray import serve

    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=plan.replicas,
        ray_actor_options={
            "num_cpus": plan.cpus,
            "num_gpus": gpus,
            # Idle OpenMP threads sleep instead of spinning: the model runs in the batcher's thread.
            "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        },
        # Rows decoded together plus as many queued: beyond that Serve's router holds a request
        # until a replica has room, so a busy replica does not take every request.
        max_ongoing_requests=2 * options.max_rows,
        health_check_period_s=HEALTH_PERIOD_S,
        health_check_timeout_s=HEALTH_TIMEOUT_S,
        graceful_shutdown_timeout_s=30,
    )(serve.ingress()(SteerLabServer))
    app = deployment.bind(url, options)
    log.info("Deploying %s replicas (%g CPUs, %g GPUs each) serving %s", plan.replicas, plan.cpus, gpus, url)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except Exception as exc:
        raise SteerLabError(
            f"The replicas failed to start ({_first_line(exc)}); the replica logs (session_latest/logs/serve "
            f"on their nodes) say why. {NOT_LOCAL}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line and not line.startswith("File ")]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)[:300]


def _watch(stop: threading.Event, wanted: int) -> None:
    """Wait for the stop, logging when the number of running replicas changes (Serve replaces dead ones)."""
    from ray import serve

    seen = wanted
    try:
        while not stop.wait(2.0):
            try:
                status = serve.status().applications.get(APP_NAME)
            except Exception as exc:  # the controller is restarting: ask again next time
                log.warning("Reading Serve's status failed: %s", exc)
                continue
            if status is None:
                raise SteerLabError(
                    f"The Serve application '{APP_NAME}' was deleted from the cluster by something else; "
                    "the replicas are gone, so this command stops."
                )
            deployment = status.deployments.get(DEPLOYMENT_NAME)
            states = {} if deployment is None else deployment.replica_states
            # Keyed by ReplicaState, a str enum (plain strings once read back from the controller).
            running = sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")
            if running != seen:
                log.warning("%s of %s replicas running", running, wanted)
                seen = running
    except KeyboardInterrupt:
        log.info("Interrupted: removing the replicas")


@contextmanager
def _stopping_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM sets ``stop`` (as Ctrl-C does), so the replicas are removed before the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _released(target: RayTarget) -> Iterator[None]:
    """Delete the application at the end; shut Serve down if nothing else uses it."""
    try:
        yield
    finally:
        _release(target)


def _release(target: RayTarget) -> None:
    from ray import serve

    try:
        if _serve_client() is None:
            return
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)  # each replica drains its requests and stores its responses first
        if not serve.status().applications:
            serve.shutdown()  # the proxy too, so the port is free again
    except Exception as exc:
        log.error("Removing the replicas from the cluster at %s failed: %s", target.shown, exc)


# ---- the replica's side


class SteerLabServer:
    """One replica: the single server's app, built in the replica's process (see the module doc)."""

    def __init__(self, store_url: str, options: ServeOptions) -> None:
        self._store_url = store_url
        self._options = options

    async def __serve_build_asgi_app__(self) -> Starlette:
        from ray import serve

        from service.serving.app import build_app
        from service.serving.server import load_context

        store = Store(self._store_url)
        context = await asyncio.to_thread(load_context, store, self._options)
        app = build_app(context)
        replica = serve.get_replica_context().replica_id.unique_id
        process = f"{socket.gethostname()}:{os.getpid()}"
        app.add_middleware(_ReplicaHeaders, headers={REPLICA_HEADER: replica, PROCESS_HEADER: process})
        log.info("Replica %s (%s) serves %s", replica, process, ", ".join(self._options.experiments))
        return app

    def check_health(self) -> None:
        """Raise (so Serve replaces this replica) when the batcher or the response writer has stopped."""
        alive = {t.name for t in threading.enumerate() if t.is_alive()}
        for name, what in ((BATCHER_THREAD, "the batcher"), (WRITER_THREAD, "the response writer")):
            if name not in alive:
                raise RuntimeError(f"{what} of this replica has stopped; Serve replaces the replica")


class _ReplicaHeaders:
    """ASGI middleware: name the replica in every response's headers."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self._app = app
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._headers]}
            await send(message)

        await self._app(scope, receive, send_named)
