"""Traffic split of a live deployment: which arm a user gets, sticky per user.

Pure and torch-free. A user's arm comes from a stable hash: SHA-256 of the deployment name,
a NUL byte and the user, whose first 64 bits read as a fraction in [0, 1) pick the arm by
cumulative weight. So a user sees the same arm on every request and every server replica
while the weights stay, and different deployments split users independently. A request
without a user gets a fresh random fraction (``secrets``): it cannot be sticky.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.errors import SteerLabError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_TWO_64 = float(2**64)


@dataclass(frozen=True)
class Arm:
    variant: str
    weight: float  # >= 0; traffic share = weight / sum(weights)
    stopped: bool  # kill switch on: this arm's traffic goes to the baseline


@dataclass(frozen=True)
class Assignment:
    assigned: str  # the arm the user's hash picked
    served: str  # what actually runs: assigned, or the baseline when that arm is stopped


def check_name(name: str) -> str:
    """A deployment name: it is the ``model`` clients send, so it keeps to URL-safe characters."""
    if not NAME_PATTERN.fullmatch(name):
        raise SteerLabError(
            f"Deployment name {name!r} is not usable; use 1 to 100 letters, digits, '_', '.' or '-' (no '/')."
        )
    return name


def parse_weights(text: str) -> dict[str, float]:
    """``"baseline=50,sad=50"`` → ``{"baseline": 50.0, "sad": 50.0}`` (checked by :func:`check_weights`)."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        variant, sep, number = part.partition("=")
        variant = variant.strip()
        if not sep or not variant:
            raise SteerLabError(f"Weight {part!r} is not VARIANT=NUMBER; write weights like baseline=50,sad=50.")
        if variant in weights:
            raise SteerLabError(f"Variant '{variant}' is given two weights; give each variant one.")
        try:
            weights[variant] = float(number)
        except ValueError:
            raise SteerLabError(
                f"Weight of '{variant}' is {number.strip()!r}, not a number; write weights like baseline=50,sad=50."
            ) from None
    return weights


def check_weights(weights: Mapping[str, float], variants: Sequence[str]) -> dict[str, float]:
    """The weights if every variant is known and the numbers make a split; else one sentence."""
    if not weights:
        raise SteerLabError("No weights were given; give at least one variant a weight, like baseline=50,sad=50.")
    known = ", ".join(variants)
    for variant, weight in weights.items():
        if variant not in variants:
            raise SteerLabError(f"Weight names variant '{variant}', which the experiment lacks (it has: {known}).")
        if not math.isfinite(weight) or weight < 0:
            raise SteerLabError(
                f"Weight of '{variant}' is {weight:g}; weights are finite numbers of 0 or more (0 sends it nothing)."
            )
    if sum(weights.values()) <= 0:
        raise SteerLabError(
            "Every weight is 0, so no arm would get traffic; give at least one variant a weight above 0."
        )
    return {v: float(w) for v, w in weights.items()}


def user_fraction(deployment: str, user: str) -> float:
    """The user's stable place in [0, 1) for this deployment."""
    digest = hashlib.sha256(deployment.encode() + b"\0" + user.encode()).digest()
    return int.from_bytes(digest[:8], "big") / _TWO_64


@dataclass(frozen=True)
class TrafficSplit:
    deployment: str
    baseline: str
    arms: tuple[Arm, ...]

    def pick(self, fraction: float) -> Arm:
        """The arm whose cumulative-weight interval holds ``fraction`` (zero-weight arms hold none)."""
        total = sum(a.weight for a in self.arms)
        if total <= 0:
            raise SteerLabError(f"Deployment '{self.deployment}' gives no arm any traffic; set a weight above 0.")
        edge = 0.0
        chosen = None
        for arm in self.arms:
            if arm.weight <= 0:
                continue
            chosen = arm
            edge += arm.weight / total
            if fraction < edge:
                return arm
        assert chosen is not None
        return chosen  # rounding left the last sliver: it belongs to the last arm with weight

    def assign(self, user: str | None) -> Assignment:
        fraction = user_fraction(self.deployment, user) if user else secrets.randbits(64) / _TWO_64
        arm = self.pick(fraction)
        return Assignment(assigned=arm.variant, served=self.baseline if arm.stopped else arm.variant)
