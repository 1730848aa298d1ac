"""`trainer submit | run | status | wait | logs | list | cancel`: the job lifecycle."""
from __future__ import annotations

import sys
import time
from typing import List, Optional

import typer

from trainer import api
from trainer.cli._args import number
from trainer.cli._output import OutputOpt, Printer
from trainer.credentials import redact
from trainer.errors import JobError, UsageError

AddressOpt = typer.Option(None, "--address", help="Ray dashboard address (http://HOST:8265); "
                          "default $TRAINER_ADDRESS, else the local cluster. A cluster with token auth takes "
                          "its token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.")
SetOpt = typer.Option([], "--set", help="Override a spec value: config.lr=0.1")


def register(app: typer.Typer) -> None:
    for fn in (submit, run, status, logs, wait, cancel):
        app.command()(fn)
    app.command("list")(list_)


def submit(spec: str = typer.Argument(..., help="Job spec YAML."),
           set_: List[str] = SetOpt,
           wait: bool = typer.Option(False, "--wait", help="Follow progress until the job ends."),
           address: Optional[str] = AddressOpt,
           cluster_spec: Optional[str] = typer.Option(
               None, "--cluster-spec", help="The target's KubeRay RayCluster (YAML file, or NAMESPACE/NAME read "
               "through the Kubernetes API): groups that can scale up count as capacity in preflight."),
           k8s: bool = typer.Option(False, "--k8s", help="Create a KubeRay RayJob (see trainer k8s render) "
                                    "instead of submitting to a running Ray cluster."),
           overlay: str = typer.Option("dev", "--overlay", help="--k8s: the environment, k8s/overlays/<name>."),
           namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="--k8s: namespace; default the overlay's."),
           code_uri: Optional[str] = typer.Option(None, "--code-uri", help="--k8s: the project as a .zip the "
                                                  "cluster can fetch (s3://, gs://, https://)."),
           context: Optional[str] = typer.Option(None, "--context", help="--k8s: kubeconfig context."),
           output: str = OutputOpt):
    """Validate, preflight and submit a job (starting the local cluster if needed), or with --k8s
    create it as a KubeRay RayJob."""
    p = Printer(output)
    started = time.time()
    if k8s and (address or cluster_spec):
        raise UsageError("--k8s creates the job's own KubeRay cluster: drop --address/--cluster-spec "
                         "(they target a running Ray cluster)")
    if k8s:
        return _submit_k8s(p, spec, set_, wait, overlay, namespace, code_uri, context, started)
    job = api.submit(spec, address=address, set=set_, progress=p.note, cluster_spec=cluster_spec)
    if not wait:
        p.emit({"job_id": job.id, "run_id": job.run_id, "address": redact(job.address)},
               lambda _: p.line(f"submitted {job.id} (MLflow run {job.run_id}); follow with: trainer logs {job.id} -f"))
        return
    if p.json:
        state = job.wait()
    else:
        p.line(f"submitted {job.id} (MLflow run {job.run_id}) to {redact(job.address)}")
        state = _follow_progress(job, p)
    p.emit(_summary(job, state, started), title="job summary")
    if not p.json and job.tracking_uri and job.tracking_uri.startswith("sqlite:///"):
        p.note(f"browse: mlflow ui --backend-store-uri {job.tracking_uri}")
    _raise_unless_succeeded(job, state)


def _submit_k8s(p: Printer, spec, set_, wait, overlay, namespace, code_uri, context, started) -> None:
    job = api.submit_k8s(spec, overlay, namespace=namespace, code_uri=code_uri, set=set_, context=context,
                         progress=p.note)
    where = f"{job.namespace}/{job.name}"
    if not wait:
        p.emit({"rayjob": job.name, "namespace": job.namespace, "run_id": job.run_id},
               lambda _: p.line(f"created RayJob {where} (MLflow run {job.run_id or 'opened by the driver'}); "
                                f"follow with: kubectl get rayjob -n {job.namespace} {job.name} -w"))
        return
    p.line(f"created RayJob {where} (MLflow run {job.run_id or 'opened by the driver'})")
    last = job.wait(on_change=lambda o: p.note(o.describe()))
    summary = {"rayjob": job.name, "namespace": job.namespace, "status": last.state.value,
               "deployment_status": last.deployment, "ray_job_status": last.job_status,
               "mlflow_run_id": job.run_id, "wall_time_s": round(time.time() - started, 1)}
    if last.reason or last.message:
        summary["reason"] = " ".join(x for x in (last.reason, last.message) if x)
    p.emit(summary, title="job summary")
    if last.state.value != "SUCCEEDED":
        why = summary.get("reason") or last.note or "see the pod logs in its MLflow run"
        raise JobError(f"RayJob {where} {last.state.value}: {why}")


def _raise_unless_succeeded(job: api.Job, state) -> None:
    if state.value == "SUCCEEDED":
        return
    tail = [line for line in job.logs().splitlines() if line.startswith("error:")][-1:]
    raise JobError(f"job {job.id} {state.value}" + (f": {tail[0][7:]}" if tail else f"; see: trainer logs {job.id}"))


def _follow_progress(job: api.Job, p: Printer):
    """A live bar from the rank-0 progress lines: epoch, loss, accuracy, ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    total = job.spec.get("config", {}).get("epochs")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=p.out, transient=False) as bar:
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


def run(spec: str = typer.Argument(..., help="Job spec YAML."),
        local: bool = typer.Option(False, "--local", help="Run in this process, world size 1, no Ray."),
        set_: List[str] = SetOpt, output: str = OutputOpt):
    """Run the job's training function in-process (debugging, GPU benchmarks)."""
    p = Printer(output)
    if not local:
        raise UsageError("trainer run executes in this process only: pass --local (or use trainer submit)")
    result = api.run_local(spec, set=set_)
    shown = {k: v for k, v in result.metrics.items() if not k.startswith("parity.") or k == "parity.passed"}
    p.emit({"run_id": result.run_id, "wall_time_s": result.wall_time_s,
            **{k: round(v, 4) for k, v in sorted(shown.items())}}, title="local run")


def status(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's state: PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
    p = Printer(output)
    info = api.Job.get(job_id, address).info()
    p.emit(info, lambda i: p.line(i["status"]))


def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f"),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's driver and worker output (with --output json: one document once the logs are read)."""
    p = Printer(output)
    job = api.Job.get(job_id, address)
    if p.json:
        if follow:
            job.wait()
        p.emit({"job_id": job_id, "logs": job.logs()})
    elif follow:
        for line in job.follow():
            print(line, flush=True)
    else:
        sys.stdout.write(job.logs())


def list_(address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Jobs submitted by trainer to this cluster."""
    p = Printer(output)
    jobs = api.list_jobs(address)

    def render(jobs):
        p.table(["job id", "name", "status", "MLflow run", "started"],
                [[j["job_id"], j["name"] or "", j["status"], j["run_id"] or "",
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["start_time"])) if j["start_time"] else ""]
                 for j in jobs])
    p.emit(jobs, render)


def cancel(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Stop a running job; its state becomes CANCELLED."""
    p = Printer(output)
    state = api.Job.get(job_id, address).cancel()
    p.emit({"job_id": job_id, "status": state.value}, lambda d: p.line(d["status"]))


def wait(job_id: str, timeout: Optional[float] = typer.Option(None, help="Seconds.",
                                                               callback=number("--timeout", 0)),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Block until the job ends; exit 0 only if it SUCCEEDED."""
    p = Printer(output)
    job = api.Job.get(job_id, address)
    state = job.wait(timeout=timeout)
    p.emit({"job_id": job_id, "status": state.value}, lambda d: p.line(d["status"]))
    _raise_unless_succeeded(job, state)
