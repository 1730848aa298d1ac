"""`trainer monitor up | down | status`: a local Prometheus scraping the local cluster's Ray
metrics and trainer's exporter, with trainer's alert rules (trainer.api.monitoring)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.cli._output import OutputOpt, Printer
from trainer.errors import ClusterError
from trainer import api

group = typer.Typer(no_args_is_help=True, help="A local Prometheus for the local cluster's jobs, with trainer's "
                                               "alert rules.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="monitor")


@group.command("up")
def up(port: Optional[int] = typer.Option(None, "--port", help="Prometheus's port on 127.0.0.1 (default 9090, "
                                          "else a free one).", min=1, max=65535),
       rules: Optional[Path] = typer.Option(None, "--rules", help="Another alert rules file (default: trainer's)."),
       output: str = OutputOpt):
    """Start Prometheus (the `prometheus` binary: apt-get install prometheus) and trainer's exporter."""
    p = Printer(output)
    state, started = api.monitor_up(port=port, rules=rules, progress=p.note)
    p.emit({"started": started, "url": state["url"], "exporter": state["exporter_url"], "data": state["data"]},
           lambda _: p.line(f"{'started' if started else 'already running'}: Prometheus {state['url']} "
                            f"(alerts: {state['url']}/alerts; data: {state['data']})"))


@group.command("down")
def down(output: str = OutputOpt):
    """Stop the local Prometheus and the exporter (only the processes `up` started)."""
    p = Printer(output)
    stopped = api.monitor_down()
    p.emit({"stopped_processes": stopped}, lambda _: p.line(f"stopped {stopped} process(es)"))


@group.command("status")
def status(output: str = OutputOpt):
    """Prometheus's URL, each scrape target up or down, and the alerts pending or firing."""
    p = Printer(output)
    found = api.monitor_status()
    if p.json:
        return p.emit(found)
    if not found["running"]:
        raise ClusterError("the local Prometheus is not running (start it: trainer monitor up)")
    p.table(["job", "target", "health", "last error"],
            [[t["job"], t["url"], t["health"], t["error"][:60]] for t in found["targets"]], title=found["url"])
    if found["alerts"]:
        p.table(["alert", "state", "labels"],
                [[a["name"], a["state"], ", ".join(f"{k}={v}" for k, v in a["labels"].items())]
                 for a in found["alerts"]])
    else:
        p.line("no alerts pending or firing")
