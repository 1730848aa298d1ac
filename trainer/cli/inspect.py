"""`trainer inspect | rerun`: a job from its MLflow record alone, and the same job run again."""
from __future__ import annotations

import time
from typing import List, Optional

import typer

from trainer import api
from trainer.cli._flags import AddressOpt, SetOpt, TrackingOpt
from trainer.cli._output import OutputOpt, Printer



def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.command()(rerun)


def inspect(ref: str = typer.Argument(..., help="A job id or an MLflow run id."),
            lines: int = typer.Option(20, "--lines", "-n",
                                      help="How many of the log's last lines to show."),
            tracking_uri: Optional[str] = TrackingOpt, output: str = OutputOpt):
    """What a job's MLflow run recorded: status and why, what failed (exception, file:line, rank,
    node), the timeline, where it ran, its cost, the last log lines, every metric's last value,
    the conversion and the registered version. Reads only MLflow: works with the cluster gone."""
    p = Printer(output)
    info = api.inspect_run(ref, tracking_uri=tracking_uri, log_lines=lines)
    p.emit(info, lambda i: render_record(p, i))


def _at(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def render_record(p: Printer, i: dict) -> None:
    from trainer.cli.jobs import render_failure

    rows = {"job": i.get("job_id"), "status": i.get("status"), "MLflow run": i.get("run_id")}
    if i.get("reason"):
        rows["reason"] = i["reason"]
    if i.get("rerun_of"):
        rows["rerun of"] = i["rerun_of"]
    cost = i.get("cost")
    if cost:
        rows["cost"] = (f"{cost['cpu_seconds']:g} CPU-s, {cost['gpu_seconds']:g} GPU-s, "
                        f"{cost['worker_groups']} worker group(s)")
        if cost.get("price") is not None:
            rows["price"] = f"{cost['price']:.4f} {cost.get('currency', '')}".strip()
    where = i.get("where") or {}
    if where.get("runtime"):
        rows["runtime"] = (f"{where['runtime']} (lock {str(where.get('lock_sha256') or '?')[:12]}), "
                           f"Python {where.get('python', '?')}, Ray {where.get('ray', '?')}")
    if i.get("code_digest"):
        rows["code"] = i["code_digest"][:12]
    if i.get("data_digest"):
        rows["data"] = i["data_digest"][:12]
    p.kv("record", {k: v for k, v in rows.items() if v is not None})
    if i.get("failure"):
        render_failure(p, i["failure"])
    if i.get("timeline"):
        p.table(["time", "event", "details"],
                [[_at(e.get("time")), e.get("event", ""), _details(e)] for e in i["timeline"]], title="timeline")
    for node in where.get("nodes") or []:
        labels = ", ".join(f"{k}={v}" for k, v in (node.get("labels") or {}).items())
        p.line(f"node {node['node']}: ranks {', '.join(map(str, node.get('ranks') or []))}"
               + (f"; {labels}" if labels else ""))
    metrics = i.get("metrics") or {}
    if metrics:
        steps = i.get("steps") or {}
        p.table(["metric", "last value", "steps"],
                [[k, f"{v:.4f}" if isinstance(v, float) else str(v), str(steps.get(k, ""))]
                 for k, v in metrics.items()], title="metrics")
    conversion = i.get("conversion")
    if conversion:
        p.line(f"conversion {conversion['status']}: "
               + ", ".join(f"{t['target']} {t['verdict']}" for t in conversion["targets"]))
    if i.get("registered"):
        r = i["registered"]
        p.line(f"registered: {r['model']} version {r['version']}", whole=True)
    if i.get("log_tail"):
        p.line(f"last {len(i['log_tail'])} log lines:")
        for line in i["log_tail"]:
            p.line("  " + line, whole=True)
    elif not i.get("log_recorded"):
        p.note("no log recorded in this run")


def _details(e: dict) -> str:
    kind = e.get("event")
    if kind == "group_started":
        return f"group {e.get('group')}: ranks {e.get('ranks')} on {', '.join(e.get('nodes') or [])}"
    if kind == "group_ended":
        return f"group {e.get('group')}"
    if kind == "restore":
        return f"from {e.get('checkpoint')}" + (" (fell back)" if e.get("fell_back") else "")
    if kind == "restart":
        return e.get("reason", "")
    if kind == "ended":
        return e.get("status", "")
    if kind == "driver_started":
        return e.get("host", "")
    return ""


def rerun(ref: str = typer.Argument(..., help="The MLflow run id (or job id) to run again."),
          set_: List[str] = SetOpt,
          allow_data_change: bool = typer.Option(False, "--allow-data-change",
                                                 help="Run even when the data's digest changed since."),
          wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow it to its end and compare."),
          address: Optional[str] = AddressOpt, tracking_uri: Optional[str] = TrackingOpt,
          output: str = OutputOpt):
    """Submit a run's recorded spec with its recorded code and data again (a new run, tagged
    trainer.rerun_of); the summary compares the final metrics with the first run's."""
    from trainer.cli.jobs import _raise_unless_succeeded, render_summary

    p = Printer(output)
    started = time.time()
    job = api.rerun(ref, set=set_, allow_data_change=allow_data_change, address=address,
                    tracking_uri=tracking_uri, progress=p.note)
    old = api.find_recorded_run(ref, tracking_uri=tracking_uri)
    if not wait:
        p.emit({"job_id": job.id, "run_id": job.run_id, "rerun_of": old},
               lambda d: p.line(f"submitted {d['job_id']} (MLflow run {d['run_id']}, rerun of {old})"))
        return
    state = job.wait()
    summary = job.summary(state, started)
    summary["rerun_of"] = old
    summary["compared"] = api.compare_runs(old, job.run_id, tracking_uri=job._store())

    def render(s):
        render_summary(p, s)
        rows = [[c["key"], f"{c['old']:.6g}", f"{c['new']:.6g}", f"{c['diff']:+.3g}",
                 "" if c["max_step_diff"] is None else f"{c['max_step_diff']:.3g}"] for c in s["compared"]]
        if rows:
            p.table(["metric", "first run", "rerun", "diff", "max diff/step"], rows, title=f"against {old}")
    p.emit(summary, render)
    _raise_unless_succeeded(job, state, summary.get("failure"))
