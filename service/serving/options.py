"""What the operator of ``steerlab serve`` sets, checked before anything is loaded."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from engine.errors import SteerLabError

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeOptions:
    experiments: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /v1 when set
    admin_key: str | None = None  # the kill switch and deployment endpoints; off when unset
    max_rows: int = 64  # rows the batcher decodes together
    max_waiting: int = 4096  # requests queued behind them before new ones get a 503
    request_steering: bool = True  # whether a request may carry its own steering spec
    request_methods: tuple[str, ...] = ("add",)  # the methods such a spec may use
    max_coefficient: float = 8.0  # |coefficient| of a request's edit
    max_edits: int = 4  # edits in one request's spec
    max_tokens: int = 512  # the most new tokens one request may ask for (and the default)
    device: str = "auto"
    dtype: str = "auto"
    poll_seconds: float = 0.2  # how often the deployments' version is read from the store
    max_body_bytes: int = 1_000_000

    def check(self) -> None:
        if not self.experiments:
            raise SteerLabError("No experiment to serve; name one or more with --experiment NAME.")
        if not 0 <= self.port <= 65535:
            raise SteerLabError(
                f"Port {self.port} is not a TCP port; give one from 1 to 65535 (or 0 for any free port)."
            )
        if not is_loopback(self.host) and not self.api_key:
            raise SteerLabError(
                f"Host '{self.host}' makes the server reachable from other machines, so it needs an API key; "
                "set one in $STEERLAB_API_KEY (or the variable --api-key-env names), or bind to 127.0.0.1."
            )
        if self.max_rows < 1:
            raise SteerLabError(f"--max-rows {self.max_rows} is too small; give 1 or more rows.")
        if not (math.isfinite(self.max_coefficient) and self.max_coefficient >= 0):
            raise SteerLabError(f"--max-coefficient {self.max_coefficient:g} is not a number >= 0; give one like 8.")
        if self.max_tokens < 1:
            raise SteerLabError(f"--max-tokens {self.max_tokens} is too small; give 1 or more tokens.")
        if self.max_edits < 1:
            raise SteerLabError(f"--max-edits {self.max_edits} is too small; give 1 or more edits.")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
