"""Our lines on the terminal, our dependencies' logs in a file.

Ray's client ("Uploading package gcs://...", "Directory '.git' is now ignored..."), MLflow
("Creating initial MLflow database tables..."), alembic, urllib3 and Python warnings each install
their own stderr handler when they are first imported (Ray appends one to the `ray` logger, MLflow
assigns `logger.handlers = [...]` directly). `quiet()` routes all of them, whenever they are
configured, into one log file, `$TRAINER_HOME/logs/trainer.log` (rotated at 5 MB): the loggers are
created up front as `RoutedLogger`s, whose handler list swaps any terminal handler for the file.
`quiet(verbose=True)` keeps the terminal handlers too (`trainer -v`).

The file is opened on the first record only, so a command that logs nothing creates nothing.
`written()` says whether this process wrote to it: the CLI prints its path under an error.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from trainer.home import trainer_home

LOG_FILE = "trainer.log"
MAX_BYTES = 5 * 2**20
BACKUPS = 2
# The loggers whose output is theirs, not ours. Their children propagate to them.
FOREIGN = ("ray", "mlflow", "alembic", "sqlalchemy", "huey", "urllib3", "filelock", "py.warnings",
           "onnxruntime", "matplotlib", "git", "fsspec")
# Our own loggers (`logging.getLogger(__name__)`): what went wrong on the way that the user's line
# does not carry (a run that could not be closed, and why) goes to the same file, with context.
OURS = ("trainer", "converters")


def log_path() -> Path:
    return trainer_home() / "logs" / LOG_FILE


class _FileHandler(logging.handlers.RotatingFileHandler):
    """The log file, private (it may quote URLs and paths), created on the first record."""

    def __init__(self, path: Path):
        self.records = 0
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def _open(self):
        path = Path(self.baseFilename)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, record):
        self.records += 1
        super().emit(record)


_handler: _FileHandler | None = None
_verbose = False


def _is_terminal(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _route(handlers) -> list[logging.Handler]:
    """A logger's handlers as we want them: terminal handlers replaced by (or, verbose, joined
    with) the log file."""
    out = [h for h in handlers if _verbose or not _is_terminal(h)]
    if _handler is not None and _handler not in out:
        out.append(_handler)
    return out


class RoutedLogger(logging.Logger):
    """A logger whose handlers go through `_route`, however they are set."""

    @property
    def handlers(self):
        return self._routed

    @handlers.setter
    def handlers(self, value):
        self._routed = _route(value)

    def addHandler(self, hdlr):
        if hdlr not in self._routed:
            self._routed = _route([*self._routed, hdlr])


def _adopt(name: str) -> None:
    manager = logging.Logger.manager
    existing = manager.loggerDict.get(name)
    if isinstance(existing, logging.Logger):
        if not isinstance(existing, RoutedLogger):
            handlers = existing.__dict__.pop("handlers", [])
            existing.__class__ = RoutedLogger
            existing.handlers = handlers
        else:
            existing.handlers = list(existing.handlers)
        return
    saved = manager.loggerClass
    manager.setLoggerClass(RoutedLogger)
    try:
        logger = logging.getLogger(name)
    finally:
        manager.loggerClass = saved
    logger.propagate = False          # routed here, never also through the root logger


def quiet(verbose: bool = False) -> Path:
    """Route the foreign loggers (and Python warnings) to the log file; with `verbose` they also
    stay on the terminal. Idempotent; returns the log file's path."""
    global _handler, _verbose
    path = log_path()
    if _handler is None or Path(_handler.baseFilename) != path:
        _handler = _FileHandler(path)
    _verbose = verbose
    _handler.records = 0      # `written()` is about this command
    logging.captureWarnings(True)     # library warnings (FutureWarning, ...) go to py.warnings
    for name in FOREIGN + OURS:
        _adopt(name)
    warned = logging.getLogger("py.warnings")
    if verbose and not any(_is_terminal(h) for h in warned.handlers):
        warned.addHandler(logging.StreamHandler())     # warnings had no handler but stderr's own
    return path


def written() -> bool:
    """Whether this process wrote anything to the log file."""
    return _handler is not None and _handler.records > 0


def show_path_hint() -> str | None:
    """`details: <path>` when this process logged something there, else None."""
    return f"details: {log_path()}" if written() else None
