"""`trainer`: thin commands over trainer.api and converters.api. Each parses, calls one API
function, prints through `trainer.cli._output.Printer`.

One module per command group; a new group is a module with `register(app)` added to GROUPS.
User errors print one red line and exit with their class's code (2 bad spec/usage, 3 preflight,
4 cluster, 5 job, 6 runtime missing, 7/8 conversion/parity, 9 tracking, 10 promotion
check failed / retrain found the data unchanged, 11 registry, 12 image, 13 verification failed);
TRAINER_DEBUG=1 shows the traceback.

Quiet by default: Ray's, MLflow's and other libraries' logs go to `$TRAINER_HOME/logs/trainer.log`
(trainer.logs), printed under an error; `trainer -v ...` shows them on the terminal too.
Shell completion: `trainer --install-completion` (typer's; bash, zsh, fish, PowerShell).
"""
from __future__ import annotations

import typer

from trainer.cli import (cluster, convert, edge, image, inspect, jobs, k8s, keys, mlflow, monitor, node, promote,
                         registry, runtime, spec, ui, verify)
from trainer.cli._output import ErrorHandlingGroup, Printer

GROUPS = (jobs, inspect, cluster, node, k8s, spec, runtime, convert, edge, promote, registry, image, keys, verify,
          mlflow, monitor, ui)

app = typer.Typer(cls=ErrorHandlingGroup, no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False,
                  help="Distributed training on Ray, tracked in MLflow, converted for the edge.")


def _version(value: bool) -> None:
    if not value:
        return
    from trainer.api import versions

    found = versions()
    width = max(map(len, found))
    for name, version in found.items():
        Printer("table").line(f"{name:<{width}}  {version}")
    raise typer.Exit()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's and MLflow's own logs too "
                                       "(always kept in $TRAINER_HOME/logs/trainer.log)."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Versions of trainer, Ray, MLflow and the frameworks present.")):
    from trainer.logs import quiet

    quiet(verbose)


for _group in GROUPS:
    _group.register(app)


def main() -> None:
    from trainer.logs import quiet

    quiet()   # before any command imports Ray or MLflow (the callback repeats it with -v)
    app(prog_name="trainer")
