"""Steering methods: one module per method, found by :func:`registry`.

To add a method, add a module here with one :class:`SteeringMethod` subclass that sets
``name``, or ship it in a package of your own under the ``steerlab.methods`` entry point
(:mod:`engine.plugins`); experiment files, the CLI and the dashboard pick it up from the registry.
Import torch inside ``prepare`` and the edit's methods, not at the top of the module: parsing an
experiment imports every method, and definitions are read where torch is not loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from engine import plugins
from engine.fields import Where
from engine.methods.base import SteeringMethod, parse_intervention, registered_methods


def registry() -> dict[str, type[SteeringMethod]]:
    """Every steering method, by name: this package's modules, then installed plugins (each imported once)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    plugins.load(plugins.METHODS_GROUP, SteeringMethod, registered_methods, "name")
    return registered_methods()


def parse(raw: Mapping[str, Any], where: Where) -> SteeringMethod:
    registry()
    return parse_intervention(raw, where)


__all__ = ["SteeringMethod", "parse", "registry"]
