"""How every `trainer` command talks to a person: stdout for results, stderr for one-line errors.

`handles_errors` is the one place a TrainerError becomes a red `error: ...` line and its exit
code (TRAINER_DEBUG=1 adds the traceback); every command group (jobs, cluster, runtime, convert,
edge) wraps its commands with it.
"""
from __future__ import annotations

import functools
import os

import typer
from rich.console import Console

from trainer.errors import TrainerError

out = Console()
err = Console(stderr=True)


def fail(e: TrainerError) -> None:
    if os.environ.get("TRAINER_DEBUG"):
        err.print_exception()
    err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def handles_errors(fn):
    """User-facing errors become one red line and the error's exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrainerError as e:
            fail(e)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
    return wrapper
