"""An experiment's statistics settings, and the switch that leaves a rater out of every statistic.

Leaving a rater out keeps their votes stored (the switch can be turned back); the names are
kept in the definition's ``statistics.exclude_raters``, so the JSON export, the report and
every page read the same list. Only analysts and owners may switch it, and each switch is
written to the audit log.
"""

from __future__ import annotations

import json
from dataclasses import replace

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import printable, short
from engine.statistics_spec import StatisticsSpec
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment, load_spec, stored_spec

# Attempts to store a switch while other changes to the definition keep coming first.
_ATTEMPTS = 10


def statistics_of(store: Store, name: str) -> StatisticsSpec:
    """The experiment's ``statistics`` section (the defaults where it gives none)."""
    return load_spec(store, name).statistics


def excluded_raters(store: Store, name: str) -> tuple[str, ...]:
    """The raters left out of every statistic, in the order they were left out."""
    return statistics_of(store, name).exclude_raters


def set_rater_excluded(store: Store, name: str, rater: str, excluded: bool, who: Identity = LOCAL) -> tuple[str, ...]:
    """Leave ``rater`` out of every statistic (``excluded``) or count them again; returns the raters left out.

    The rater must have votes in the experiment when left out (a typed name that matches no
    rater would change nothing). Setting what is already set changes nothing and logs nothing.
    """
    require(store, who, name, "analyst", "leaving raters out of the statistics")
    rater = rater.strip()
    for _ in range(_ATTEMPTS):
        with store.session() as session:
            experiment = get_experiment(session, name)
            before = experiment.spec_json
            spec = stored_spec(experiment)
            current = spec.statistics.exclude_raters
            if excluded == (rater in current):
                return current
            if excluded:
                voters = repo.voted_raters(session, experiment.id)
                if rater not in voters:
                    raise SteerLabError(
                        f"Rater '{short(printable(rater), 80)}' has no votes in experiment '{name}' "
                        f"(raters: {short(', '.join(voters) or 'none yet', 200)}); pick one of those."
                    )
                chosen = (*current, rater)
            else:
                chosen = tuple(r for r in current if r != rater)
            statistics = replace(spec.statistics, exclude_raters=chosen)
            # Only the statistics section changes: everything else stays as stored, byte for byte.
            data = json.loads(before)
            section = statistics.to_dict()
            if section:
                data["statistics"] = section
            else:
                data.pop("statistics", None)
            if repo.swap_experiment_spec(session, experiment.id, before, data):
                detail = f"rater '{rater}' " + ("left out of every statistic" if excluded else "counted again")
                audit.record(session, who.user, "rater left out" if excluded else "rater counted", name, detail)
                return chosen
    raise SteerLabError(
        f"Experiment '{name}' kept changing while the rater switch was stored; reload the page and switch it again."
    )
