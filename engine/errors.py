"""Errors a user can act on.

Every problem caused by input (a file, a field, a model id, a number) is raised as a
:class:`SteerLabError` whose message is one sentence saying what was wrong, where, and
what to do. Front ends print the message as it is; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SteerLabError(Exception):
    """A problem with the user's input, explained in one sentence."""


class RunCancelled(Exception):
    """Raised inside a run when its cancel flag is set; finished batches stay stored."""
