"""Per-framework runtimes: one venv per framework, built from the same lock file its image uses.

A runtime is `$TRAINER_RUNTIMES/<name>` (default `~/.trainer/runtimes/<name>`), a venv made
from `images/<name>/requirements.lock` - the file `images/<name>/Dockerfile` installs too, so a
laptop and a cluster pod run the same versions. This repo's `trainer` and `converters`
packages are put on the venv's path (symlinks + a `.pth` file), without their dependencies: the lock
already holds everything a worker needs.

Code that needs another framework runs `python_for(name) -m <module>` as a subprocess; the
main process never imports tensorflow or mxnet.

The `torch` runtime is special: the project's own venv (`.venv`, set up from
`images/torch/requirements.lock`) is used as is when it satisfies that lock.

    table.py    which runtimes exist (RuntimeSpec, RUNTIMES)
    lockfile.py the lock format, stdlib only (pins, build variants; the Dockerfiles run it)
    lock.py     lock files: path, digest, pins, variants; what this interpreter has installed
    venvs.py    finding installed runtimes (python_for, path, list_runtimes) - no subprocess
    installer.py building a runtime's venv from its lock (install)
"""
from __future__ import annotations

from trainer.runtimes.installer import InstallReport, install
from trainer.runtimes.lock import lock_digest, lock_path, lock_variants, parse_lock, unmet_pins
from trainer.runtimes.table import RUNTIMES, RuntimeSpec
from trainer.runtimes.venvs import RuntimeStatus, list_runtimes, path, python_for

__all__ = [
    "RUNTIMES", "RuntimeSpec", "RuntimeStatus", "InstallReport",
    "lock_path", "lock_digest", "lock_variants", "parse_lock", "unmet_pins", "python_for", "path", "install", "list_runtimes",
]
