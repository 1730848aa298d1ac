"""`trainer`: thin commands over trainer.api. Each parses, calls one API function, prints.

User errors print one red line and exit non-zero (the code says which kind: 2 bad spec/usage,
3 preflight, 4 cluster, 5 job, 6 runtime missing, 7/8 conversion/parity); TRAINER_DEBUG=1 shows
the traceback.
"""
from __future__ import annotations

import json
import sys
import time
from typing import List, Optional

import typer
from rich.table import Table

from trainer import api
from trainer.console import err, handles_errors, out
from trainer.errors import UsageError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Distributed training on Ray, tracked in MLflow, converted for the edge.")
cluster_app = typer.Typer(no_args_is_help=True, help="The embedded local Ray cluster.")
spec_app = typer.Typer(no_args_is_help=True, help="Job spec tools.")
app.add_typer(cluster_app, name="cluster")
app.add_typer(spec_app, name="spec")

OutputOpt = typer.Option("table", "--output", "-o", help="table | json")
AddressOpt = typer.Option(None, "--address", help="Ray dashboard address (http://HOST:8265); "
                          "default $TRAINER_ADDRESS, else the local cluster.")


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise UsageError(f"--output must be table or json, got {output!r}")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, "" if v is None else str(v))
    return table


# ---------------------------------------------------------------- jobs

@app.command()
@handles_errors
def submit(spec: str = typer.Argument(..., help="Job spec YAML."),
           set_: List[str] = typer.Option([], "--set", help="Override a spec value: config.lr=0.1"),
           wait: bool = typer.Option(False, "--wait", help="Follow progress until the job ends."),
           address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Validate, preflight and submit a job (starting the local cluster if needed)."""
    _check_output(output)
    say = None if output == "json" else (lambda text: err.print(f"[dim]{text}[/]"))
    started = time.time()
    job = api.submit(spec, address=address, set=set_, progress=say)
    if not wait:
        if output == "json":
            _print_json({"job_id": job.id, "run_id": job.run_id, "address": job.address})
        else:
            out.print(f"submitted [bold]{job.id}[/] (MLflow run {job.run_id}); "
                      f"follow with: trainer logs {job.id} -f")
        return
    if output == "json":
        state = job.wait()
    else:
        out.print(f"submitted [bold]{job.id}[/] (MLflow run {job.run_id}) to {job.address}")
        state = _follow_progress(job)
    summary = _summary(job, state, started)
    if output == "json":
        _print_json(summary)
    else:
        out.print(_kv_table("job summary", summary))
        if job.tracking_uri and job.tracking_uri.startswith("sqlite:///"):
            out.print(f"[dim]browse: mlflow ui --backend-store-uri {job.tracking_uri}[/]")
    if state.value != "SUCCEEDED":
        tail = [l for l in job.logs().splitlines() if l.startswith("error:")][-1:]
        err.print(f"[bold red]error:[/] job {job.id} {state.value}" + (f": {tail[0][7:]}" if tail else
                  f"; see: trainer logs {job.id}"), highlight=False)
        raise typer.Exit(5)


def _follow_progress(job: api.Job):
    """A live bar from the rank-0 progress lines: epoch, loss, accuracy, ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    total = job.spec.get("config", {}).get("epochs")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task("epoch", total=total, metrics="starting workers...")
        for event in job.progress():
            metrics = event.get("metrics", {})
            if "epoch" in metrics:
                shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
                bar.update(task, completed=int(metrics["epoch"]) + 1, metrics=shown)
    return job.status()


def _summary(job: api.Job, state, started: float) -> dict:
    metrics = job.final_metrics()
    summary = {"job_id": job.id, "status": state.value, "mlflow_run_id": job.run_id,
               "wall_time_s": round(time.time() - started, 1)}
    for key in ("test_accuracy", "accuracy", "loss"):
        if key in metrics:
            summary[key] = round(metrics[key], 4)
    return summary


@app.command()
@handles_errors
def run(spec: str = typer.Argument(..., help="Job spec YAML."),
        local: bool = typer.Option(False, "--local", help="Run in this process, world size 1, no Ray."),
        set_: List[str] = typer.Option([], "--set", help="Override a spec value: config.lr=0.1"),
        output: str = OutputOpt):
    """Run the job's training function in-process (debugging, GPU benchmarks)."""
    _check_output(output)
    if not local:
        raise UsageError("trainer run executes in this process only: pass --local (or use trainer submit)")
    result = api.run_local(spec, set=set_)
    shown = {k: v for k, v in result.metrics.items() if not k.startswith("parity.") or k == "parity.passed"}
    summary = {"run_id": result.run_id, "wall_time_s": result.wall_time_s,
               **{k: round(v, 4) for k, v in sorted(shown.items())}}
    _print_json(summary) if output == "json" else out.print(_kv_table("local run", summary))


@app.command()
@handles_errors
def status(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's state: PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
    _check_output(output)
    info = api.Job.get(job_id, address).info()
    _print_json(info) if output == "json" else out.print(info["status"])


@app.command()
@handles_errors
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f"),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's driver and worker output."""
    _check_output(output)
    job = api.Job.get(job_id, address)
    if output == "json":
        _print_json({"job_id": job_id, "logs": job.logs()})
    elif follow:
        for line in job.follow():
            print(line, flush=True)
    else:
        sys.stdout.write(job.logs())


@app.command("list")
@handles_errors
def list_(address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Jobs submitted by trainer to this cluster."""
    _check_output(output)
    jobs = api.list_jobs(address)
    if output == "json":
        return _print_json(jobs)
    table = Table("job id", "name", "status", "MLflow run", "started")
    for j in jobs:
        table.add_row(j["job_id"], j["name"] or "", j["status"], j["run_id"] or "",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["start_time"])) if j["start_time"] else "")
    out.print(table)


@app.command()
@handles_errors
def cancel(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Stop a running job; its state becomes CANCELLED."""
    _check_output(output)
    state = api.Job.get(job_id, address).cancel()
    _print_json({"job_id": job_id, "status": state.value}) if output == "json" else out.print(state.value)


@app.command()
@handles_errors
def wait(job_id: str, timeout: Optional[float] = typer.Option(None, help="Seconds."),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Block until the job ends; exit 0 only if it SUCCEEDED."""
    _check_output(output)
    state = api.Job.get(job_id, address).wait(timeout=timeout)
    _print_json({"job_id": job_id, "status": state.value}) if output == "json" else out.print(state.value)
    if state.value != "SUCCEEDED":
        raise typer.Exit(5)


# ---------------------------------------------------------------- spec

@spec_app.command("schema")
def spec_schema():
    """Print the job spec's JSON Schema (for editor autocompletion)."""
    from trainer.spec import json_schema

    _print_json(json_schema())


@spec_app.command("validate")
@handles_errors
def spec_validate(spec: str, set_: List[str] = typer.Option([], "--set")):
    """Validate a spec (schema, entrypoint, data, code size) without submitting it."""
    from trainer.scheduling.preflight import check_spec
    from trainer.spec import load_spec

    spec_obj, workdir = load_spec(spec, set_)
    check_spec(spec_obj, workdir)
    out.print(f"{spec}: valid ({spec_obj.framework}, {spec_obj.workers} worker(s), workdir {workdir})")


# ---------------------------------------------------------------- cluster

@cluster_app.command("up")
@handles_errors
def cluster_up(node: List[str] = typer.Option([], "--node", help="Worker node ACCEL:CPUS[:GPUS]; "
                                              "repeatable. Default: one cpu node with all cores.")):
    """Start the local cluster: a CPU-only head plus labelled worker nodes."""
    state, started = api.cluster_up(node or None, progress=lambda t: err.print(f"[dim]{t}[/]"))
    out.print(f"{'started' if started else 'already running'}: dashboard {state.dashboard_url}, "
              f"nodes {', '.join(map(str, state.node_specs))}")


@cluster_app.command("down")
@handles_errors
def cluster_down():
    """Stop the local cluster's processes (only those it started)."""
    out.print(f"stopped {api.cluster_down()} process(es)")


@cluster_app.command("status")
@handles_errors
def cluster_status(address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Nodes with their labels and total / free resources."""
    _check_output(output)
    status = api.cluster_status(address)
    if output == "json":
        return _print_json(status)
    if not status["running"]:
        out.print("no local cluster is running (start one: trainer cluster up)")
        raise typer.Exit(1)
    table = Table("node", "role", "accelerator", "CPUs free/total", "GPUs free/total", title=status["address"])
    for n in status["nodes"]:
        free = lambda f, t: f"{'?' if f is None else f'{f:g}'}/{t:g}"
        table.add_row(n["node_id"][:12], "head" if n["is_head"] else "worker", n["accelerator"] or "-",
                      free(n["cpus_free"], n["cpus"]), free(n["gpus_free"], n["gpus"]))
    out.print(table)


def _mount_command_groups() -> None:
    """Command groups that live beside their packages register themselves here."""
    from converters.cli import register as register_convert
    from converters.edge.cli import register as register_edge
    from trainer.runtimes.cli import register as register_runtime

    for register in (register_runtime, register_convert, register_edge):
        register(app)


_mount_command_groups()


def main() -> None:
    import logging

    # Ray's client logs every file it skips while packaging the working_dir; users need none of it.
    logging.getLogger("ray").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
