"""Logging for the command line and workers: to stderr and to a log file beside the store.

Library code only creates loggers (``logging.getLogger(__name__)``); the entry points
(``steerlab ...``, a worker) call :func:`configure_logging` once, so a run's or worker's
story (claims, takeovers, failures with their tracebacks) is on screen and kept in the
store's log file, e.g. ``steerlab.db.log`` beside a SQLite ``steerlab.db``. For other
databases the file is ``steerlab.log`` in the working directory.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

# The packages whose records are SteerLab's own; everything else stays at WARNING.
OUR_LOGGERS = ("service", "engine", "db")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_steerlab_handler"  # tells our handlers from anyone else's


def log_file_for(url: str) -> Path:
    """Where the log of a store at ``url`` goes: beside a SQLite file, else the working directory."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return Path.cwd() / "steerlab.log"
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
    ):
        return Path(database).with_name(Path(database).name + ".log")
    return Path.cwd() / "steerlab.log"


def configure_logging(url: str, level: int = logging.INFO, stderr_level: int = logging.INFO) -> Path | None:
    """Send SteerLab's records to stderr and to the store's log file; returns that file (None if unwritable).

    ``stderr_level``: a command whose output is its own (``steerlab run`` prints progress
    and one-sentence errors) keeps stderr for what is worse than that; the file gets all.

    Calling it again (another command in the same process, as tests do) replaces the
    handlers it added before instead of adding more.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    screen = logging.StreamHandler(sys.stderr)
    screen.setLevel(stderr_level)
    handlers.append(screen)
    path: Path | None = log_file_for(url)
    if path is not None and os.access(path.parent, os.W_OK):
        # Opened at the first record, so a command that fails at once leaves no empty log behind.
        handlers.append(logging.FileHandler(path, encoding="utf-8", delay=True))
    else:
        path = None  # a read-only or missing folder: stderr alone still tells the story
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return path
