"""The live deployments of the served experiments, as the store holds them now.

The store is the one place a deployment's weights and kill switches live (the CLI, the
dashboard and every server replica write and read it there), so the server reads them
again whenever :func:`deployments_version` changes; polling that one number a few times a
second makes a switch thrown anywhere take effect within the poll time.
"""

from __future__ import annotations

import logging
import threading

from db.store import Store
from service.deployments import Deployment, deployments_version, list_deployments

log = logging.getLogger(__name__)


class DeploymentBoard:
    def __init__(self, store: Store, experiments: set[str]) -> None:
        self._store = store
        self._experiments = experiments
        self._lock = threading.Lock()
        self._deployments: dict[str, Deployment] = {}
        self._others: set[str] = set()  # deployments of experiments this server does not serve
        self.version: int | None = None
        self._failing = False

    def refresh(self, force: bool = False) -> bool:
        """Read the deployments again if their version changed (or ``force``); whether it did. Blocking."""
        try:
            version = deployments_version(self._store)
            if not force and version == self.version:
                return False
            every = list_deployments(self._store)
        except Exception as exc:  # the store is away: keep serving what was read
            if not self._failing:
                log.warning("Reading the deployments failed; serving the last ones read: %s", exc)
            self._failing = True
            return False
        self._failing = False
        with self._lock:
            self._deployments = {d.name: d for d in every if d.experiment in self._experiments}
            self._others = {d.name for d in every if d.experiment not in self._experiments}
            self.version = version
        return True

    def get(self, name: str) -> Deployment | None:
        with self._lock:
            return self._deployments.get(name)

    def served_elsewhere(self, name: str) -> bool:
        with self._lock:
            return name in self._others

    def live(self) -> list[Deployment]:
        with self._lock:
            return [d for d in self._deployments.values() if d.live]
