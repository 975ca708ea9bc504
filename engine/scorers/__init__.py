"""Automatic scorers: one module per kind (or a plugin's ``steerlab.scorers`` entry point), found by :func:`registry`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from engine import plugins
from engine.fields import Where, as_choice, as_mapping, as_str, required
from engine.scorers.base import Scorer, registered_scorers


def registry() -> dict[str, type[Scorer]]:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    plugins.load(plugins.SCORERS_GROUP, Scorer, registered_scorers, "kind")
    return registered_scorers()


def parse_scorer(raw: Any, where: Where) -> Scorer:
    data = as_mapping(raw, where)
    kinds = registry()
    kind = as_choice(required(data, "kind", where), sorted(kinds), where.child("kind"))
    name = as_str(required(data, "name", where), where.child("name")).strip()
    settings = {k: v for k, v in data.items() if k not in ("name", "kind")}
    return kinds[kind].parse(name, settings, where)


__all__ = ["Scorer", "parse_scorer", "registry"]
