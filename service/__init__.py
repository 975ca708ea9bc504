"""The service layer: joins the engine (computation) and the store (persistence).

The CLI and the dashboard call only this package; it is the one place that knows both.
"""

from db.store import Store, StoreError, resolve_url
from engine.errors import SteerLabError

# Problems with a user's input or set-up, each explained in one sentence: front ends show
# the message; anything else is a bug and keeps its traceback.
USER_ERRORS = (SteerLabError, StoreError)

__all__ = ["USER_ERRORS", "Store", "resolve_url"]
