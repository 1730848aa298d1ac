"""One promotion of a model at a time: an exclusive `flock` per (MLflow store, model) held for the
whole transaction (checks, registry copy, records, alias), so concurrent `trainer promote`s of
one model run one after another and the later ones see the earlier one's result.

The lock is a file under `$TRAINER_HOME/locks/` and so serializes the processes of one host (and
of hosts sharing that folder over a filesystem with working flock). MLflow's model registry has
no lock or compare-and-set a client could use; promotions of one model from several hosts need
one place that runs them (a CI job with a concurrency limit of one, such as Jenkins'
`disableConcurrentBuilds`).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator

from trainer.home import trainer_home


@contextmanager
def promotion_lock(tracking_uri: str, model: str, say: Callable[[str], None] = lambda _: None) -> Iterator[None]:
    folder = trainer_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = hashlib.sha256(f"{tracking_uri}\0{model}".encode()).hexdigest()[:16]
    name = f"promote-{re.sub(r'[^a-z0-9._-]', '_', model.lower())[:64]}-{key}.lock"
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another promotion of {model} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)        # closing the descriptor releases the lock
