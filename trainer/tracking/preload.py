"""MLflow imported ahead of its first use, on one background thread.

Importing MLflow costs seconds (its package imports GenAI tracing eagerly), and every job paid it
on its critical path: the client before submitting, the driver before connecting to Ray, rank 0
before its first checkpoint. `start()` begins the import (then, optionally, opening a store) on
one daemon thread while the caller does work that does not need MLflow; `wait()` returns once the
import is done. `trainer.tracking.runs.client` waits, so every use of MLflow through it comes
after the import. Nothing waits for what follows the import (`then`): MLflow builds one store
per URI under its own lock, so a caller that needs the store before `then` opened it just opens
it too, and a store that hangs (a tracking server down) holds up no one but that thread.

Only one thread may import MLflow at a time: two importing it at once can hand one of them a
half-initialised protobuf module ("Couldn't build proto file into descriptor pool: Depends on
file 'databricks.proto'"), which failed sweep drivers once. So once `start()` ran, code that
imports `mlflow` directly (not through `client`) calls `wait()` first.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from trainer.errors import first_line

log = logging.getLogger(__name__)

THREAD_NAME = "trainer-mlflow-import"

_lock = threading.Lock()
_thread: threading.Thread | None = None
_imported = threading.Event()      # set once the thread's import is over (done or failed)
_imported_at: float | None = None  # when it was done (time.time())


def start(then: Callable[[], object] | None = None) -> None:
    """Import MLflow on one daemon thread, then run `then` there (e.g. open the job's store, so
    the first real call finds it open). Once per process: later calls do nothing. A failure is
    only logged: the first real use of MLflow raises it where it can be reported."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_preload, args=(then,), name=THREAD_NAME, daemon=True)
        _thread.start()


def started() -> bool:
    """Whether `start()` ran in this process (MLflow is imported, or being imported, by its thread)."""
    return _thread is not None


def wait() -> None:
    """Return once the preload thread has imported MLflow (at once when none was started, or
    when called from that thread itself)."""
    thread = _thread
    if thread is not None and thread is not threading.current_thread():
        _imported.wait()


def imported_at() -> float | None:
    """When the preload thread finished importing MLflow (None: not started, not done, or failed)."""
    return _imported_at


def _preload(then: Callable[[], object] | None) -> None:
    global _imported_at
    try:
        try:
            import mlflow  # noqa: F401

            _imported_at = time.time()
        finally:
            _imported.set()
        if then is not None:
            then()
    except Exception as e:  # noqa: BLE001 - only a head start: the first real use reports it
        log.info("preloading MLflow failed (the first use will say why): %s", first_line(e))
