"""`trainer`: thin commands over trainer.api and converters.api. Each parses, calls one API
function, prints through `trainer.cli._output.Printer`.

One module per command group; a new group is a module with `register(app)` added to GROUPS.
User errors print one red line and exit with their class's code (2 bad spec/usage, 3 preflight,
4 cluster, 5 job, 6 runtime missing, 7/8 conversion/parity, 9 tracking); TRAINER_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import typer

from trainer.cli import cluster, convert, edge, jobs, k8s, mlflow, node, runtime, spec
from trainer.cli._output import ErrorHandlingGroup

GROUPS = (jobs, cluster, node, k8s, spec, runtime, convert, edge, mlflow)

app = typer.Typer(cls=ErrorHandlingGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Distributed training on Ray, tracked in MLflow, converted for the edge.")
for _group in GROUPS:
    _group.register(app)


def main() -> None:
    import logging

    # Ray's client logs every file it skips while packaging the working_dir; users need none of it.
    logging.getLogger("ray").setLevel(logging.ERROR)
    app()
