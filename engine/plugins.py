"""Third-party steering methods and scorers, found through Python entry points.

A package adds a method or a scorer to SteerLab by declaring an entry point in its own
``pyproject.toml``; nothing inside ``engine/`` changes::

    [project.entry-points."steerlab.methods"]
    scale = "my_steering.scale:ScaleHidden"        # a SteeringMethod subclass

    [project.entry-points."steerlab.scorers"]
    length = "my_steering.length:LengthScorer"     # a Scorer subclass

Each group is loaded once, the first time its registry is asked for. A plugin that
cannot be imported, is not the kind of class its group expects, or reuses a built-in
name is skipped with a warning in the log: a broken plugin never stops SteerLab.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

logger = logging.getLogger(__name__)

METHODS_GROUP = "steerlab.methods"
SCORERS_GROUP = "steerlab.scorers"

_loaded: set[str] = set()


def load(group: str, base: type, registered: Callable[[], dict[str, type]], key: str) -> list[str]:
    """Import the entry points of ``group`` (once per process); the names of the plugins accepted.

    ``base`` is the class a plugin must subclass, ``registered`` the registry it must then
    appear in, and ``key`` the class attribute it is registered under (``name``, ``kind``).
    """
    if group in _loaded:
        return []
    _loaded.add(group)
    accepted = []
    for point in entry_points(group=group):
        problem = _load_one(point, base, registered, key)
        if problem is None:
            accepted.append(point.name)
            logger.info("Loaded SteerLab plugin '%s' (%s) from %s.", point.name, group, _origin(point))
        else:
            logger.warning(
                "Skipped SteerLab plugin '%s' (%s) from %s: %s; fix or uninstall that package.",
                point.name,
                group,
                _origin(point),
                problem,
            )
    return accepted


def _load_one(point: EntryPoint, base: type, registered: Callable[[], dict[str, type]], key: str) -> str | None:
    """None if the plugin loaded and registered; otherwise what was wrong, in a few words."""
    try:
        loaded = point.load()
    except Exception as exc:  # any error of foreign code, at import time: the plugin is skipped
        return f"importing '{point.value}' failed ({type(exc).__name__}: {str(exc)[:200]})"
    if not (inspect.isclass(loaded) and issubclass(loaded, base)):
        return f"'{point.value}' is not a {base.__name__} subclass"
    if inspect.isabstract(loaded):
        missing = ", ".join(sorted(getattr(loaded, "__abstractmethods__", ())))
        return f"'{point.value}' does not implement {missing}"
    name = loaded.__dict__.get(key)
    if not isinstance(name, str) or registered().get(name) is not loaded:
        return f"'{point.value}' sets no {key} of its own, so it cannot be named in an experiment file"
    return None


def _origin(point: EntryPoint) -> str:
    dist = point.dist
    return f"package '{dist.name}' {dist.version}" if dist is not None else "an unknown package"


def reset() -> None:
    """Forget which groups were loaded (a test that installs a plugin in-process loads them again)."""
    _loaded.clear()
