"""`trainer submit | run | status | wait | logs | list | cancel`: the job lifecycle."""
from __future__ import annotations

import sys
import time
from typing import List, Optional

import typer

from trainer import api
from trainer.api.handle import SUMMARY_METRICS, SUMMARY_TABLE_METRICS, JobHandle
from trainer.cli._args import number
from trainer.cli._flags import AddressOpt, CodeUriOpt, ContextOpt, NamespaceOpt, OverlayOpt, SetOpt
from trainer.cli._output import OutputOpt, Printer
from trainer.credentials import redact
from trainer.errors import ClusterError, JobError, ParityError, UsageError, first_line



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
                                    "instead of submitting to a running Ray cluster; with --overlay, --namespace, "
                                    "--code-uri, --context."),
           overlay: str = OverlayOpt, namespace: Optional[str] = NamespaceOpt, code_uri: Optional[str] = CodeUriOpt,
           context: Optional[str] = ContextOpt,
           output: str = OutputOpt):
    """Validate, preflight and submit a job (starting the local cluster if needed), or with --k8s
    create it as a KubeRay RayJob."""
    p = Printer(output)
    started = time.time()
    if k8s and (address or cluster_spec):
        raise UsageError("--k8s creates the job's own KubeRay cluster: drop --address/--cluster-spec "
                         "(they target a running Ray cluster)")
    if k8s:
        job = api.submit_k8s(spec, overlay, namespace=namespace, code_uri=code_uri, set=set_, context=context,
                             progress=p.note)
        submitted = {"rayjob": job.name, "namespace": job.namespace, "run_id": job.run_id}
        lines = [f"created RayJob {job.namespace}/{job.name} (MLflow run {job.run_id or 'opened by the driver'})"]
        follow = f"kubectl get rayjob -n {job.namespace} {job.name} -w"
    else:
        job = api.submit(spec, address=address, set=set_, progress=p.note, cluster_spec=cluster_spec)
        submitted = {"job_id": job.id, "run_id": job.run_id, "address": redact(job.address)}
        lines = [f"submitted {job.id} to {redact(job.address)}", f"  MLflow run {job.run_id}"]
        follow = f"trainer logs {job.id} -f"
    if not wait:
        p.emit(submitted, lambda _: ([p.line(x) for x in lines], p.note(f"follow with: {follow}")))
        return
    if p.json:
        state = job.wait()
    else:
        for x in lines:
            p.line(x)
        state = _follow(job, p)
    summary = job.summary(state, started)
    p.emit(summary, lambda s: render_summary(p, s))
    if not p.json and "mlflow_url" not in summary and job.run_id:
        _render_run_page(p, summary)
    _raise_unless_succeeded(job, state, summary.get("failure"), summary.get("conversion"))


def _raise_unless_succeeded(job: JobHandle, state, failure: dict | None = None,
                            conversion: dict | None = None) -> None:
    """Exit non-zero unless the job SUCCEEDED, naming what failed (the handle's `failure()`); a
    job that succeeded but whose conversion missed its parity gate exits with ParityError's code,
    so a pipeline stops there too."""
    if state.value == "SUCCEEDED":
        missed = conversion_failure(conversion)
        if missed:
            raise ParityError(f"job {job.job_id} succeeded, but its conversion FAILED: {missed}")
        return
    if state.value == "FAILED":
        failure = failure or job.failure()
    if failure:
        raise JobError(f"job {job.job_id} {state.value}: {failure.get('summary') or failure.get('message')}; "
                       f"full log: {job.logs_command}")
    raise JobError(f"job {job.job_id} {state.value}; see: {job.logs_command}")


def conversion_failure(conversion: dict | None) -> str | None:
    """A failed conversion (the summary's `conversion`) in one line: the failing targets with
    their figures and where the first one broke, what was kept, the report; None if it passed."""
    if not conversion or conversion.get("status") != "FAILED":
        return None
    failed = [t for t in conversion["targets"] if t["verdict"] != "pass"]
    text = ", ".join(f"{t['target']} ({t['figure']})" for t in failed)
    text += next((f"; {t['target']}: {t['diagnosis']}" for t in failed if t.get("diagnosis")), "")
    kept = [t["target"] for t in conversion["targets"] if t.get("path") or t.get("uri")]
    text += f"; kept: {', '.join(kept)}" if kept else "; no target kept"
    if conversion.get("report"):
        text += f"; report: {conversion['report']}"
    return text


def _follow(job: JobHandle, p: Printer):
    """Until the job ends: a Ray job's progress (rank 0's lines), a RayJob's status changes."""
    if isinstance(job, api.K8sJob):
        return job.wait(on_change=lambda o: p.note(o.describe()))
    if job.is_sweep:
        return _follow_sweep(job, p)
    return _follow_progress(job, p)


def _follow_sweep(job: api.Job, p: Printer):
    """A sweep's progress: one line whenever its counts or its best value change (fits 80 columns)."""
    shown = None
    for event in job.sweep_progress():
        line = sweep_progress_line(event)
        if line != shown:
            p.line(line)
            shown = line
    return job.status()


def sweep_progress_line(e: dict) -> str:
    """`trials 3/8: 2 running, 1 done, 0 stopped, 0 failed; best accuracy 0.9123 (trial 0)`."""
    finished = e["done"] + e["stopped"] + e["failed"]
    line = (f"trials {finished}/{e['total']}: {e['running']} running, {e['done']} done, "
            f"{e['stopped']} stopped, {e['failed']} failed")
    if e.get("best") is not None:
        # The longest that fits: the metric's name (it is in the spec) goes last.
        metric, value, trial = e["metric"][:16], f"{e['best']:.4g}", e["best_trial"]
        line += next((best for best in (f"; best {metric} {value} (trial {trial})", f"; best {metric} {value} (#{trial})")
                      if len(line + best) <= 80), f"; best {value} (#{trial})")
    return line[:80]


def _follow_progress(job: api.Job, p: Printer):
    """A live bar from rank 0's progress lines: epoch (or step) of the spec's `config.epochs`,
    the latest metrics, elapsed time and ETA. Without a terminal (CI logs, a pipe): one plain line
    per epoch, at most one every PLAIN_EVERY_S seconds, and the last."""
    config = job.spec.get("config", {}) or {}
    total = config.get("epochs") if isinstance(config.get("epochs"), int) else None
    if not p.out.is_terminal:
        return _follow_plain(job, p, total)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
               TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=p.out, transient=False) as bar:
        task = bar.add_task("epoch", total=total, metrics="starting workers...")
        for event in job.progress(on_retry=lambda text: p.line(text, style="yellow")):
            label, done, shown = _progress_fields(event)
            bar.update(task, description=label, completed=done, metrics=shown)
        state = job.status()
        if state.value != "SUCCEEDED":
            bar.update(task, metrics=f"{bar.tasks[0].fields['metrics']}  {state.value}".strip())
    return state


PLAIN_EVERY_S = 10.0


def _follow_plain(job: api.Job, p: Printer, total: int | None):
    started = last_shown = time.monotonic()
    pending = None
    for event in job.progress(on_retry=p.line):
        label, done, shown = _progress_fields(event)
        pending = f"{label} {done}/{total or '?'}  {shown}  ({time.monotonic() - started:.0f}s)"
        if time.monotonic() - last_shown >= PLAIN_EVERY_S or (total and done >= total):
            p.line(pending)
            pending, last_shown = None, time.monotonic()
    if pending:
        p.line(pending)
    return job.status()


def _progress_fields(event: dict) -> tuple[str, int, str]:
    """(label, completed, metrics text) of a progress event: epochs when reported, else steps."""
    metrics = dict(event.get("metrics", {}))
    if "epoch" in metrics:
        label, done = "epoch", int(metrics.pop("epoch")) + 1
    else:
        label, done = "step", int(event.get("step", 0)) + 1
    shown = "  ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3])
    return label, done, shown


def render_summary(p: Printer, s: dict) -> None:
    """A job's (or local run's) summary for a person: a short key/value table (fits 80 columns),
    the conversion per target, then links and paths as whole lines (never cut in a cell)."""
    rows = {"job": s.get("job_id"), "status": s.get("status"), "MLflow run": s.get("mlflow_run_id") or s.get("run_id")}
    if s.get("reason"):
        rows["reason"] = s["reason"]
    # The last value of every metric the job reported, by its own name (a summary read from
    # elsewhere may carry only the headline ones, at the top level).
    metrics = s.get("metrics") or {k: s[k] for k in SUMMARY_METRICS if k in s}
    for key, value in list(metrics.items())[:SUMMARY_TABLE_METRICS]:
        rows[key] = f"{value:.4f}" if isinstance(value, float) else str(value)
    if len(metrics) > SUMMARY_TABLE_METRICS:
        rows["..."] = f"{len(metrics) - SUMMARY_TABLE_METRICS} more metrics: --output json"
    if s.get("wall_time_s") is not None:
        rows["wall time"] = f"{s['wall_time_s']:.1f} s"
    cost = s.get("cost")
    if cost:
        rows["cost"] = f"{cost['cpu_seconds']:g} CPU-s, {cost['gpu_seconds']:g} GPU-s" + (
            f" ({cost['price']:.4f} {cost.get('currency', '')})".replace(" )", ")") if cost.get("price") is not None
            else "")
    sweep = s.get("sweep")
    if sweep:
        rows["trials"] = f"{sweep['total']}: " + ", ".join(f"{n} {o}" for o, n in sweep["outcomes"].items())
        best = sweep.get("best")
        if best:
            rows["best trial"] = f"{best['trial']} (MLflow run {best['run_id']})"
            if best.get("value") is not None:
                rows[f"best {sweep['metric']}"] = f"{best['value']:.4f}"
    p.kv("summary", {k: v for k, v in rows.items() if v is not None})
    if sweep and sweep.get("best"):
        p.line("best params: " + ", ".join(f"{k}={v}" for k, v in sweep["best"]["params"].items()), whole=True)
    conversion = s.get("conversion")
    if conversion:
        from converters.parity import fmt_size

        p.table(["target", "result", "size", "parity (judged figure)"],
                [[t["target"], t["verdict"], fmt_size(t["size_bytes"]), t["figure"]] for t in conversion["targets"]],
                title=f"conversion {conversion['status']}")
        for t in conversion["targets"]:
            if t.get("diagnosis"):
                p.line(f"{t['target']}: {t['diagnosis']}", wrap=True)
        if conversion.get("output"):
            p.line(f"output: {conversion['output']}", whole=True)
            files = [(conversion.get("report") or "").rsplit("/", 1)[-1]]
            files += [t["path"][len(conversion["output"]) + 1:] for t in conversion["targets"] if t.get("path")]
            p.line("  " + ", ".join(f for f in files if f))
        run_id = s.get("mlflow_run_id") or s.get("run_id")
        if (s.get("sweep") or {}).get("best"):      # a sweep converts its best trial's model, in that run
            run_id = s["sweep"]["best"]["run_id"]
        if conversion.get("report_uri") and run_id:
            p.line(f"in MLflow: runs:/{run_id}/conversion", whole=True)
    registered = s.get("registered")
    if registered:
        p.line(f"registered: {registered['model']} version {registered['version']}"
               + (f" {registered['reference']} {registered['digest']}" if registered.get("reference")
                  else " (MLflow only)"), whole=True)
    if s.get("mlflow_url"):
        p.line(f"run page: {s['mlflow_url']}", whole=True)
    if s.get("failure"):
        render_failure(p, s["failure"])
    for warning in s.get("warnings") or []:
        p.note(warning)


def render_failure(p: Printer, f: dict) -> None:
    """What failed, in the user's terms, as a few lines."""
    p.line(f"failed: {f.get('type') or 'error'}" + (f": {f['message']}" if f.get("message") else ""), style="red")
    if f.get("where"):
        p.line(f"  at {f['where']}" + (f" in {f['function']}()" if f.get("function") else "")
               + (f": {f['code']}" if f.get("code") else ""))
    where = []
    if f.get("rank") is not None:
        where.append(f"rank {f['rank']}" + (f" on node {f['node']}" if f.get("node") else ""))
    if f.get("epoch") is not None:
        where.append(f"last epoch reported: {f['epoch']}")
    elif f.get("step") is not None:
        where.append(f"last step reported: {f['step']}")
    if f.get("stage") and f["stage"] != "training":
        where.append(f"during {f['stage']}")
    if where:
        p.line("  " + "; ".join(where))


def run(spec: str = typer.Argument(..., help="Job spec YAML."),
        local: bool = typer.Option(False, "--local", help="Run in this process, world size 1, no Ray."),
        set_: List[str] = SetOpt, output: str = OutputOpt):
    """Run the job's training function in-process (debugging, GPU benchmarks)."""
    p = Printer(output)
    if not local:
        raise UsageError("trainer run executes in this process only: pass --local (or use trainer submit)")
    try:
        # With --output json stdout is the one JSON document: the training's own lines go to stderr.
        result = api.run_local(spec, set=set_, progress=_LocalProgress(p), stdout=sys.stderr if p.json else None)
    except JobError as e:
        failure = e.fields.get("failure")
        if failure and not p.json:
            render_failure(p, failure)
        raise
    summary = {"run_id": result.run_id, "status": "SUCCEEDED", "wall_time_s": result.wall_time_s, **result.summary}
    p.emit(summary, lambda s: render_summary(p, {**s, "mlflow_run_id": s["run_id"]}))
    if not p.json and "mlflow_url" not in summary:
        _render_run_page(p, summary)
    missed = conversion_failure(summary.get("conversion"))
    if missed:
        raise ParityError(f"run {result.run_id} succeeded, but its conversion FAILED: {missed}")


class _LocalProgress:
    """While `run --local` trains in this process: rank 0's progress events (what run_local's
    stdout filter parsed) as `epoch 3  loss ...` lines, at most one every LOCAL_EVERY_S seconds;
    nothing with --output json."""

    LOCAL_EVERY_S = 2.0

    def __init__(self, p: Printer):
        self.p = p
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        if self.p.json:
            return
        label, done, shown = _progress_fields(event)
        now = time.monotonic()
        if now - self.last >= self.LOCAL_EVERY_S:
            self.last = now
            sys.stdout.write(f"{label} {done}  {shown}\n")
            sys.stdout.flush()


def status(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's state (PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED), what failed, and its
    run's page in the MLflow UI (or how to open it).

    A job that succeeded but whose conversion missed its parity gate shows
    "SUCCEEDED, conversion FAILED" and what failed.

    Exits 0 whenever the state could be read, whatever it is: `status` reports, it does not judge.
    To exit with the job's outcome (5 unless it SUCCEEDED, 8 if its conversion failed), use
    `trainer wait JOB` or `submit --wait`."""
    p = Printer(output)
    try:
        info = api.Job.get(job_id, address).info()
    except (JobError, ClusterError) as e:
        info = _from_record(p, e, job_id, api.recorded, f"from its MLflow record (trainer inspect {job_id}):")
        sweep = api.sweep_status(info["run_id"]) if info.get("run_id") else None
        if sweep is not None:
            info["sweep"] = sweep

    def render(i):
        missed = conversion_failure(i.get("conversion"))
        p.line(f"{i['status']}, conversion FAILED" if missed else i["status"])
        if missed:
            p.line(f"  {missed}", wrap=True)
        if i.get("sweep"):
            render_trials(p, i["sweep"], job_id)
        if i.get("failure"):
            render_failure(p, i["failure"])
        _render_run_page(p, i)
    p.emit(info, render)


def render_trials(p: Printer, sweep: dict, job_id: str) -> None:
    """A sweep's trials, one row each: state, the metric's last value, the epoch it reached, the
    sampled params; then how many have not started, and each failed trial's reason."""
    trials = sweep["trials"]
    rows = [[t["trial"], t["state"], "" if t["value"] is None else f"{t['value']:.4g}",
             "" if t["epoch"] is None else t["epoch"],
             " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())]
            for t in trials]
    p.table(["trial", "state", sweep["metric"][:12], "epoch", "params"], rows)
    waiting = sweep["total"] - len(trials)
    if waiting > 0:
        p.line(f"{waiting} of {sweep['total']} trials not started yet")
    for t in trials:
        if t["state"] == "failed" and t["reason"]:
            p.line(f"trial {t['trial']} failed: {t['reason']}", wrap=True)
    if trials:
        p.note(f"a trial's output: trainer logs {job_id} --trial N")


def _from_record(p: Printer, error: Exception, job_id: str, read, what: str):
    """When the cluster no longer knows a job (stopped, restarted, its RayCluster deleted): what
    `read(job_id)` finds in the job's MLflow record, saying so; the cluster's error when the
    record has nothing either."""
    found = read(job_id)
    if found is None:
        raise error
    p.note(f"the cluster does not know job {job_id} ({first_line(error)}); {what}")
    return found


def _render_run_page(p: Printer, s: dict) -> None:
    """The run's page in a running MLflow UI, else the command that opens one."""
    if s.get("mlflow_url"):
        p.line(f"run page: {s['mlflow_url']}", whole=True)
    elif s.get("run_id") or s.get("mlflow_run_id"):
        p.note("browse the run: trainer ui")


def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Everything the job printed, as Ray "
                                      "recorded it (protocol lines, Ray's and MLflow's logs, colour codes)."),
         trial: Optional[int] = typer.Option(None, "--trial", min=0, help="A sweep's trial: what its workers "
                                             "printed (without it, a sweep shows its driver's lines)."),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """The job's output: the training code's lines and trainer's, without Ray's and MLflow's log
    lines, trainer's machine-readable lines, lines Ray forwarded twice, or colour codes when not
    on a terminal (-v: all of it, raw). With --output json: one document once the logs are read.

    A sweep: its driver's lines (trials started and ended, the best), or with --trial N what
    trial N's workers printed (-v: every trial's and the driver's, interleaved)."""
    p = Printer(output)
    shown = (lambda text: text) if verbose else api.LogFilter(keep_ansi=sys.stdout.isatty()).text
    try:
        job = api.Job.get(job_id, address)
    except (JobError, ClusterError) as e:
        text = _from_record(p, e, job_id, api.recorded_log, "its log as its MLflow run recorded it:")
        sweep = trial is not None or _sweep_in_log(text)
        part = _sweep_part(p, text, trial, job_id) if sweep and not (verbose and trial is None) else text
        p.emit({"job_id": job_id, "logs": shown(part), "source": "MLflow record", **_trial_key(trial)},
               lambda d: sys.stdout.write(d["logs"]))
        return
    if trial is not None and not job.is_sweep:
        raise UsageError(f"job {job_id} is not a sweep: --trial is for a sweep's trials")
    split = job.is_sweep and not (verbose and trial is None)
    if p.json:
        if follow:
            job.wait()
        text = job.logs()
        p.emit({"job_id": job_id, "logs": shown(_sweep_part(p, text, trial, job_id) if split else text),
                **_trial_key(trial)})
    elif follow:
        keep = None if verbose else api.LogFilter(keep_ansi=sys.stdout.isatty())
        lines = job.follow_trial(trial) if split else job.follow()
        for line in lines:
            if keep is None or (line := keep.feed(line)) is not None:
                print(line, flush=True)
    else:
        text = job.logs()
        sys.stdout.write(shown(_sweep_part(p, text, trial, job_id) if split else text))


def _trial_key(trial: int | None) -> dict:
    return {} if trial is None else {"trial": trial}


def _sweep_in_log(text: str) -> bool:
    from trainer.protocol import SWEEP_PREFIX

    return SWEEP_PREFIX in text


def _sweep_part(p: Printer, text: str, trial: int | None, job_id: str) -> str:
    """Trial `trial`'s lines of a sweep's log, or the driver's (saying where the trials' are)."""
    if trial is None:
        p.note(f"the sweep's driver; a trial's output: trainer logs {job_id} --trial N")
    return api.sweep_log(text, trial, job_id)


def list_(address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Jobs submitted by trainer to this cluster."""
    p = Printer(output)
    jobs = api.list_jobs(address)

    def render(jobs):
        cols = ["job id", "status", "started", "MLflow run"]
        rows = [[j["job_id"], j["status"],
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["start_time"])) if j["start_time"] else "",
                 j["run_id"] or ""] for j in jobs]
        pages = [j.get("mlflow_url") or "" for j in jobs]
        if any(pages) and p.fits(cols + ["run page"], [r + [u] for r, u in zip(rows, pages)]):
            return p.table(cols + ["run page"], [r + [u] for r, u in zip(rows, pages)])
        if p.fits(cols, rows):
            p.table(cols, rows)
        else:
            # Narrow (80 columns): one row per job still; the run ids are in `status JOB` and -o json.
            p.table(cols[:3], [r[:3] for r in rows])
            p.note("MLflow run ids: trainer status JOB, or trainer list -o json")
        if any(pages):
            p.note("run pages: trainer status JOB, or trainer list -o json (mlflow_url)")
        elif any(j["run_id"] for j in jobs):
            p.note("browse the runs: trainer ui")
    p.emit(jobs, render)


def cancel(job_id: str, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Stop a running job; its state becomes CANCELLED."""
    p = Printer(output)
    state = api.Job.get(job_id, address).cancel()
    p.emit({"job_id": job_id, "status": state.value}, lambda d: p.line(d["status"]))


def wait(job_id: str, timeout: Optional[float] = typer.Option(None, help="Seconds.",
                                                               callback=number("--timeout", 0)),
         address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Block until the job ends; exit 0 only if it SUCCEEDED (and its conversion, if any, passed)."""
    p = Printer(output)
    job = api.Job.get(job_id, address)
    state = job.wait(timeout=timeout)
    conversion = job.summary(state).get("conversion") if state.value == "SUCCEEDED" else None
    shown = {"job_id": job_id, "status": state.value}
    if conversion:
        shown["conversion"] = conversion["status"]
    p.emit(shown, lambda d: p.line(d["status"] + (", conversion FAILED" if d.get("conversion") == "FAILED" else "")))
    _raise_unless_succeeded(job, state, conversion=conversion)
