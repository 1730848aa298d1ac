"""`trainer ui`: the MLflow UI for the configured store and the Ray dashboard, on 127.0.0.1."""
from __future__ import annotations

import typer

from trainer.cli._output import OutputOpt, Printer


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)


def ui(output: str = OutputOpt):
    """Start (or find) the MLflow UI for the configured tracking store and print its URL with the
    Ray dashboard's."""
    from trainer import api

    p = Printer(output)
    found = api.ui(progress=p.note)

    def render(d):
        p.line(f"MLflow: {d['mlflow_url']}" + ("  (started)" if d["mlflow_started"] else ""))
        p.line(f"Ray dashboard: {d['ray_dashboard'] or 'no local cluster running (trainer cluster up)'}")
        if d.get("ray_token_file"):
            p.note(f"the dashboard asks for the token in {d['ray_token_file']}")
    p.emit(found, render)
