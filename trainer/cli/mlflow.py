"""`trainer mlflow serve | status`: a local MLflow tracking server over the embedded store."""
from __future__ import annotations

import typer

from trainer.cli._args import number
from trainer.cli._output import OutputOpt, Printer
from trainer.tracking import server

group = typer.Typer(no_args_is_help=True, help="A local MLflow tracking server (UI + REST) over the embedded store.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="mlflow")


@group.command("serve")
def serve(port: int = typer.Option(server.DEFAULT_PORT, "--port", help="Port on 127.0.0.1; 0 picks a free one.",
                                   callback=number("--port", 0, 65535)),
          stop: bool = typer.Option(False, "--stop", help="Stop the running server instead."),
          auth: bool = typer.Option(False, "--auth", help="MLflow's basic-auth app: every request needs a user "
                                    "(for hosts several users share). Admin password: "
                                    "$TRAINER_HOME/mlflow-server/admin_password."),
          output: str = OutputOpt):
    """Start the tracking server on 127.0.0.1 in the background (the store under $TRAINER_HOME:
    mlflow.db and mlartifacts/), or show the one already running; --stop stops it. Jobs send to
    it with: --set tracking.uri=<url> (or MLFLOW_TRACKING_URI=<url>). Without --auth every local
    user of this host can read and write its runs."""
    p = Printer(output)
    if stop:
        stopped = server.stop()
        return p.emit({"stopped": stopped is not None, "url": stopped.url if stopped else None},
                      lambda _: p.line(f"stopped the MLflow server at {stopped.url}" if stopped
                                       else "no MLflow server was running"))
    state, started = server.serve(int(port), progress=p.note, auth=auth)
    p.emit({"started": started, "url": state.url, "pid": state.pid, "backend_store_uri": state.backend_store_uri,
            "artifacts_destination": state.artifacts_destination, "log": state.log, "auth": state.auth},
           lambda _: p.line(f"{'started' if started else 'already running'}: {state.url} "
                            f"(pid {state.pid}, store {state.backend_store_uri})"))
    p.note(f"jobs record to it with: --set tracking.uri={state.url}  (stop it: trainer mlflow serve --stop)")


@group.command("status")
def status(output: str = OutputOpt):
    """Whether the local tracking server runs, and where."""
    p = Printer(output)
    st = server.status()
    p.emit(st, lambda s: p.line(f"running: {s['url']} (pid {s['pid']}, store {s['backend_store_uri']}, "
                                f"log {s['log']})" if s["running"] else
                                "not running (start it: trainer mlflow serve)"))
