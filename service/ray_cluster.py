"""Which Ray cluster to use, and joining it with one clear sentence when that fails.

``--executor`` takes ``local`` (no Ray), ``ray`` (the cluster in ``RAY_ADDRESS``, else a
new local Ray instance) or ``ray://HOST:PORT`` (a Ray Client address). A requested cluster
that cannot be used is an error: a run is never started locally in its place.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from engine.errors import SteerLabError

log = logging.getLogger(__name__)

EXECUTOR_ENV = "STEERLAB_EXECUTOR"  # the default of --executor (so scripts/run.sh's worker can use Ray)
LOCAL_EXECUTOR = "local"
RAY_EXECUTOR = "ray"
NAMESPACE = "steerlab"  # every SteerLab actor and Serve application lives in this Ray namespace
EXECUTOR_HELP = (
    "where the work runs: local (this process), ray (the Ray cluster in $RAY_ADDRESS, else the one `ray start` "
    "began on this machine, else a new local instance) or ray://HOST:PORT (a Ray cluster's client address); "
    "default: $STEERLAB_EXECUTOR, else local"
)
NOT_LOCAL = "Nothing was run locally in its place."


@dataclass(frozen=True)
class RayTarget:
    """A Ray cluster to join; ``address`` None starts a local Ray instance."""

    address: str | None

    @property
    def shown(self) -> str:
        return self.address or "a new local Ray instance"


@dataclass(frozen=True)
class RayPlan:
    """Where and on how many actors a run executes."""

    target: RayTarget
    actors: int | None = None  # None: one per GPU (or per CPU on a CPU-only cluster), at most one per batch
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and --device is not cpu
    cpus_per_actor: float = 1.0


def plan_from(executor: str | None, actors: int | None = None, gpus_per_actor: float | None = None) -> RayPlan | None:
    """The command line's --executor, --actors and --gpus-per-actor: None for a local run."""
    target = parse_executor(executor)
    if target is None:
        if actors is not None or gpus_per_actor is not None:
            raise SteerLabError("--actors and --gpus-per-actor need a Ray executor; add --executor ray.")
        return None
    if actors is not None and actors < 1:
        raise SteerLabError(f"--actors {actors} is too few; give 1 or more.")
    if gpus_per_actor is not None and not gpus_per_actor >= 0:
        raise SteerLabError(f"--gpus-per-actor {gpus_per_actor:g} is not a number of GPUs; give 0, 0.5, 1, 2...")
    return RayPlan(target, actors, gpus_per_actor)


def parse_executor(value: str | None, where: str = "--executor") -> RayTarget | None:
    """None for local execution, else the Ray cluster ``value`` names (default: ``$STEERLAB_EXECUTOR``, else local)."""
    if value is None and os.environ.get(EXECUTOR_ENV, "").strip():
        value, where = os.environ[EXECUTOR_ENV], EXECUTOR_ENV
    raw = (value or LOCAL_EXECUTOR).strip()
    if raw == LOCAL_EXECUTOR:
        return None
    if raw == RAY_EXECUTOR:
        return RayTarget(os.environ.get("RAY_ADDRESS", "").strip() or None)
    if raw.startswith("ray://"):
        host, _, port = raw.removeprefix("ray://").rpartition(":")
        if host and port.isdigit():
            return RayTarget(raw)
        raise SteerLabError(
            f"{where} {raw!r} is not a Ray Client address; write it as ray://HOST:PORT (e.g. ray://head:10001)."
        )
    raise SteerLabError(f"{where} {raw!r} is not an executor; use local, ray or ray://HOST:PORT.")


def _host_port(address: str) -> tuple[str, int] | None:
    """The TCP endpoint of a GCS address (host:port) or a Ray Client address (ray://host:port)."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _probe(address: str, timeout: float) -> str | None:
    """Why ``address`` does not answer, or None if something listens there.

    Ray itself retries an unreachable cluster for a minute or more before failing; a plain
    TCP connection tells in seconds.
    """
    endpoint = _host_port(address)
    if endpoint is None:
        return f"{address!r} is not a HOST:PORT address"
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return None
    except socket.gaierror:
        return f"host {endpoint[0]!r} is unknown"
    except TimeoutError:
        return f"nothing answered within {timeout:g} s"
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else str(exc)


def connect(target: RayTarget, timeout: float = 10.0) -> dict[str, float]:
    """Join (or start) the cluster; returns its resources (CPU, GPU, memory...)."""
    # The address answers a TCP probe first, so Ray's own retries (20 x 1 s by default) would
    # only delay a refusal such as a wrong token. Read when Ray is imported: set before.
    os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "5")
    import ray

    if ray.is_initialized():
        ray.shutdown()  # a driver joins one cluster at a time
    fix = "start it (`ray start --head` on the head node) or correct --executor / RAY_ADDRESS"
    if target.address is not None:
        why = _probe(target.address, timeout)
        if why is not None:
            raise SteerLabError(f"The Ray cluster at {target.address} does not answer ({why}); {fix}. {NOT_LOCAL}")
    try:
        ray.init(
            address=target.address,
            namespace=NAMESPACE,
            runtime_env={"env_vars": forwarded_environment()},
            logging_level=logging.WARNING,
            log_to_driver=False,
            include_dashboard=False if target.address is None else None,
            configure_logging=False,
        )
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types here
        raise SteerLabError(_join_failure(target, exc)) from exc
    resources: dict[str, Any] = ray.cluster_resources()
    log.info("Joined the Ray cluster at %s: %s", target.shown, resources)
    return {k: float(v) for k, v in resources.items()}


# Where actors find models: the driver's Hugging Face cache settings (SteerLab's command line sets
# them to ../shared/hf-cache when that folder exists). Forwarded so that actors on this machine, or
# on nodes that share the path, load what the driver would; a node without the path fails with
# the model loader's one sentence naming the folder. Secrets (HF_TOKEN) are not forwarded.
FORWARDED_VARIABLES = ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "STEERLAB_CACHE")


def forwarded_environment() -> dict[str, str]:
    """The driver's variables every actor and replica of its Ray job gets."""
    return {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}


def _join_failure(target: RayTarget, exc: Exception) -> str:
    text = str(exc)
    chain: list[str] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if any("InvalidAuthToken" in t or ("auth" in t.lower() and "token" in t.lower()) for t in [text, *chain]):
        return (
            f"The Ray cluster at {target.shown} refused SteerLab's authentication token (none, or a wrong one); "
            "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head node's token. "
            f"{NOT_LOCAL}"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"Could not join the Ray cluster at {target.shown} ({first}); check that it runs and that this host may reach it. {NOT_LOCAL}"


def require(
    resources: dict[str, float],
    count: int,
    cpus: float,
    gpus: float,
    target: RayTarget,
    what: str,
    unit: str = "actors",
    flag: str = "--actors",
) -> None:
    """Refuse work the cluster has no room for, rather than let Ray wait for it forever.

    ``count`` processes (``unit``, set by ``flag``) of ``cpus`` CPUs and ``gpus`` GPUs each.
    """
    have_gpus, have_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    each = f"{count} {unit.removesuffix('s') if count == 1 else unit}"
    if gpus * count > have_gpus:
        raise SteerLabError(
            f"The Ray cluster at {target.shown} has {_amount(have_gpus, 'GPU')}, but {what} asks for "
            f"{_amount(gpus * count, 'GPU')} ({each} x {_amount(gpus, 'GPU')}); add GPU nodes, or ask for fewer "
            f"{unit} ({flag}) or --device cpu. {NOT_LOCAL}"
        )
    if cpus * count > have_cpus:
        raise SteerLabError(
            f"The Ray cluster at {target.shown} has {_amount(have_cpus, 'CPU')}, but {what} asks for "
            f"{_amount(cpus * count, 'CPU')} ({each} x {_amount(cpus, 'CPU')}); add nodes or ask for fewer "
            f"{unit} ({flag}). {NOT_LOCAL}"
        )


def _amount(value: float, what: str) -> str:
    return f"{value:g} {what}" if value == 1 else f"{value:g} {what}s"


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
