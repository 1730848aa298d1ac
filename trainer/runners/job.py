"""How a job executes once submitted.

`python -m trainer.runners.job` is the Ray job's entrypoint: it runs in the job's driver process
(under the runtime's interpreter), builds the framework's Ray trainer, fits, runs `convert:` when
the spec has it, and closes the MLflow run. `worker_loop` is what every Ray Train worker runs.
`run_in_process` is the same path with no Ray at all (`trainer run --local`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from trainer import telemetry
from trainer.cluster.reservations import release_orphans
from trainer.context import LocalSession, RayTrainSession
from trainer.errors import ConversionError, JobError, ParityError, SpecError, TrainerError, first_line
from trainer.protocol import (ENV_DATA_DIGEST, ENV_JOB_ID, ENV_RUN_ID, ENV_SPEC, ENV_TRACKING_URI, FAILURE_PREFIX,
                              TIMING_PREFIX, retry_line)
from trainer.runners.base import get_runner, tune_ray_train, without_dataset_manager
from trainer.runners.forwarded import Ended, ForwardedLines, Reported
from trainer.spec import PACKAGE_SCHEME, JobSpec
from trainer.tracking import preload, record
from trainer.tracking.runs import failure_line

SWEEP_DRIVER = "trainer.runners.sweep"
_STARTED = time.time()   # the entrypoint's first line (imports above included: they are its cost)


def load_function(spec: JobSpec, workdir: Path):
    """Import the spec's entrypoint file and return the training function."""
    path = (workdir / spec.entrypoint_file).resolve()
    if not path.is_file():
        raise SpecError(f"file not found: {path}", path="entrypoint")
    module_name = f"trainer_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # so pickling of user classes by reference works
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # sibling modules of the training file import normally
    module_spec.loader.exec_module(module)
    fn = getattr(module, spec.entrypoint_function, None)
    if not callable(fn):
        raise SpecError(f"{spec.entrypoint_file} has no function {spec.entrypoint_function!r}", path="entrypoint")
    return fn


def _data_path(spec: JobSpec, workdir: Path) -> Path | None:
    if spec.data is None:
        return None
    from trainer.data import resolve_data_path

    return resolve_data_path(spec.data.path, workdir)


def pinned_data(spec: JobSpec, workdir: Path, run_id: str | None, tracking_uri: str | None,
                recorded: str | None = None) -> str | None:
    """The data's real path after checking it still has the digest its run recorded at submit
    (trainer.data.pin); None when the spec has none or it lies in the job's uploaded project
    (each worker then resolves it in its own copy). `recorded`: that digest as the client passed
    it (trainer.protocol.ENV_DATA_DIGEST), else it is read from the run (MLflow: seconds)."""
    if spec.data is None:
        return None
    from trainer.data import pin

    if recorded is None and run_id and tracking_uri:
        from trainer.promotion.registration import run_data_digest
        from trainer.tracking.runs import client

        mlc = client(tracking_uri)
        recorded = run_data_digest(mlc, mlc.get_run(run_id))
    root = pin(spec.data.path, workdir, recorded)
    # A package's file (package://) is resolved by each worker in its own interpreter: workers
    # in a runtime image's containers have it at another path, the same version (the image and
    # the venv install one lock: `trainer image check`).
    if spec.data.path.startswith(PACKAGE_SCHEME):
        return None
    return None if root.is_relative_to(workdir.resolve()) else str(root)


def _train(spec: JobSpec, session, workdir: Path, run_id: str | None, tracking_uri: str | None,
           data_path: str | None = None) -> None:
    runner = get_runner(spec.framework)
    ctx = None
    ok = False
    try:
        ctx = runner.make_context(spec, session, run_id=run_id, tracking_uri=tracking_uri,
                                  data_path=Path(data_path) if data_path else _data_path(spec, workdir))
        if isinstance(session, RayTrainSession):
            record.announce_worker(record.WORKER_START, session.rank, session.restore_point)
        fn = load_function(spec, workdir)
        fn(ctx)
        ok = True
    except Exception as e:
        _mark_failure(e, ctx, session, workdir)
        raise
    finally:
        if ctx is not None:
            ctx.close(success=ok)
            if isinstance(session, RayTrainSession):
                record.announce_worker(record.WORKER_END, session.rank)


# ---------------------------------------------------------------- a failure in the user's terms

_FAILURE_ATTR = "trainer_failure"    # on the exception: survives Ray's pickling back to the driver


def failure_record(err: BaseException, workdir: Path | None = None, *, rank: int | None = None,
                   node: str | None = None, epoch=None, stage: str = "training") -> dict:
    """What failed, in the user's terms: the exception's type and message, the innermost frame
    of the user's own code (`file:line`, relative to the project, with its function and source
    line), the rank and node, the last epoch reported, and the traceback."""
    record = {"type": type(err).__name__, "message": first_line(err) if str(err).strip() else "",
              "where": None, "function": None, "code": None, "rank": rank, "node": node,
              "epoch": epoch, "stage": stage,
              "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))[-20000:]}
    frame = _user_frame(err, workdir)
    if frame is not None:
        record.update(where=f"{frame[0]}:{frame[1]}", function=frame[2], code=frame[3])
    return record


def _user_frame(err: BaseException, workdir: Path | None):
    """(file, line, function, source) of the innermost frame in the user's files: under the
    project folder and not trainer's, converters' or an installed package's."""
    ours = Path(__file__).resolve().parents[1]      # trainer/
    libraries = (str(ours), str(ours.parent / "converters"), "site-packages", "dist-packages", "<frozen")
    found = None
    for fs in traceback.extract_tb(err.__traceback__):
        path = str(Path(fs.filename).resolve()) if not fs.filename.startswith("<") else fs.filename
        if any(part in path for part in libraries):
            continue
        shown = path
        if workdir is not None:
            try:
                shown = str(Path(path).relative_to(Path(workdir).resolve()))
            except ValueError:
                pass
        found = (shown, fs.lineno, fs.name, (fs.line or "").strip())
    return found


def _node() -> str:
    """This worker's node: its address and Ray node id (several nodes can share one host)."""
    import socket

    try:
        import ray

        ctx = ray.get_runtime_context()
        return f"{ray.util.get_node_ip_address()} ({ctx.get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - not in Ray: this host
        return socket.gethostname()


def _mark_failure(err: Exception, ctx, session, workdir: Path) -> None:
    """Attach the failure record to the exception and print it in the job's log."""
    rank = getattr(session, "rank", None)
    in_ray = isinstance(session, RayTrainSession)
    record = failure_record(err, workdir, rank=rank if in_ray else None, node=_node() if in_ray else None,
                            epoch=getattr(ctx, "last_epoch", None) if ctx is not None else None)
    if record["epoch"] is None and ctx is not None and getattr(ctx, "last_step", None) is not None:
        record["step"] = ctx.last_step
    try:
        setattr(err, _FAILURE_ATTR, record)
    except (AttributeError, TypeError):   # an exception type with __slots__: the failure line below still says it
        pass
    if in_ray:
        _print_failure(record)


def _print_failure(record: dict) -> None:
    """The failure line in the job's log (trainer.protocol): the client reads it when MLflow cannot tell."""
    shown = {k: v for k, v in record.items() if k != "traceback"}
    print(FAILURE_PREFIX + json.dumps(shown, default=str), flush=True)


def driver_failure(err: BaseException, workdir: Path | None = None) -> dict:
    """The failure record of what `trainer.fit()` (or the job driver) raised: the failed worker
    with the lowest rank when Ray Train reports worker errors, else the error itself."""
    workers = getattr(err, "worker_failures", None)
    if isinstance(workers, dict) and workers:
        records = []
        for rank in sorted(workers):
            exc = workers[rank]
            record = getattr(exc, _FAILURE_ATTR, None)
            if record is None:
                record = failure_record(exc, workdir, rank=rank)
                record["traceback"] = str(exc)
            records.append(record)
        first = dict(records[0])
        if len(records) > 1:
            first["failed_ranks"] = [r["rank"] for r in records]
            first["others"] = [{k: r.get(k) for k in ("rank", "type", "message", "where", "node", "epoch")}
                               for r in records[1:]]
        return first
    record = getattr(err, _FAILURE_ATTR, None)
    if record is not None:
        return record
    stage = "conversion" if isinstance(err, ConversionError) else "driver"
    return failure_record(err, workdir, stage=stage)


def _worker_workdir(drivers: str) -> Path:
    """The job's project on this worker: the driver's copy when this node sees it (a node on the
    driver's host), else this node's own copy of the job's working_dir, which Ray puts first on
    PYTHONPATH (a node in another container or pod; Ray Train has moved the cwd to its artifacts
    folder by now)."""
    if Path(drivers).is_dir():
        return Path(drivers)
    first = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    return Path(first) if first and Path(first).is_dir() else Path.cwd()


def worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker (one per rank)."""
    spec = JobSpec.model_validate_json(config["spec"])
    workdir = _worker_workdir(config["workdir"])
    telemetry.worker_started(config.get("job_id"), config.get("driver_started"))
    _train(spec, RayTrainSession(), workdir, config.get("run_id"), config.get("tracking_uri"), config.get("data_path"))


def scaling_config(spec: JobSpec):
    from ray.train import ScalingConfig

    from trainer.cluster.gpus import ACCELERATOR_LABEL

    res = spec.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(num_workers=spec.workers, use_gpu=res.gpus_per_worker > 0,
                         resources_per_worker=per_worker,
                         label_selector={ACCELERATOR_LABEL: res.accelerator})


def checkpoint_storage(spec: JobSpec) -> str:
    if spec.checkpoint.storage:
        return spec.checkpoint.storage
    from trainer.home import trainer_home

    return str(trainer_home() / "checkpoints")


def convert_after_training(spec: JobSpec, run_id: str | None, tracking_uri: str | None) -> dict | None:
    """The spec's `convert:` step. A target that misses its parity gate does not fail the job:
    the training is done and its model logged, so the job succeeds with the conversion verdict
    FAILED (in the run, its report and the summary; `submit --wait` exits with ParityError's
    code) and the targets that passed kept and logged. Returns the report as a dict (None
    without a `convert:` step); any other conversion error fails the job."""
    if spec.convert is None or run_id is None:
        return None
    from converters.api import convert_run

    p = spec.convert.parity
    print(f"converting the trained model to {', '.join(spec.convert.targets)}", flush=True)
    try:
        report = convert_run(run_id, spec.convert.targets, source=get_runner(spec.framework).frontend,
                             edge=spec.convert.edge, atol=p.atol, rtol=p.rtol,
                             min_agreement=p.min_agreement, max_accuracy_drop=p.max_accuracy_drop,
                             tracking_uri=tracking_uri, diagnose=p.diagnose, int8_repair=p.int8_repair,
                             max_float_fraction=p.max_float_fraction, task=p.task,
                             max_metric_increase=p.max_metric_increase, max_error_ratio=p.max_error_ratio,
                             min_cosine=p.min_cosine, int8_scale_tol=p.int8_scale_tol,
                             output_tolerances={n: t.model_dump(exclude_none=True) for n, t in p.outputs.items()},
                             keep_passed=True)
    except ParityError as e:
        report = e.fields.get("report")
        telemetry.converted(spec.convert.targets, report)
        if report is None:
            raise
    except Exception as e:
        telemetry.converted(spec.convert.targets, getattr(e, "report", None))
        raise
    else:
        telemetry.converted(spec.convert.targets, report)
    print(conversion_line(report), flush=True)
    return report.to_dict()


def conversion_line(report) -> str:
    """The job log's one line on its conversion: each target's verdict, where the first failing
    one broke (its diagnosis), what was kept and where the report is."""
    where = f"{report.out_dir}/{report.files['markdown']}" if report.out_dir and report.files.get("markdown") else ""
    line = (f"conversion {'PASSED' if report.passed else 'FAILED'}: "
            + ", ".join(f"{r.target} {'pass' if r.passed else 'FAIL'}" for r in report.rows))
    if not report.passed:
        line += next((f"; {r.target}: {r.diagnosis['summary']}" for r in report.failed_rows
                      if r.diagnosis and r.diagnosis.get("summary")), "")
        line += f"; kept: {', '.join(report.kept)}" if report.kept else "; nothing kept"
        line += "; the training succeeded"
    return line + (f"; report: {where}" if where else "")


def register_after_training(spec: JobSpec, run_id: str | None, tracking_uri: str | None,
                            conversion: dict | None = None) -> None:
    """The spec's `register:` step (MLflow version + the registry's dev/ project): trainer.promotion.
    `conversion`: the report of the job's conversion, whose verdict registration heeds."""
    from trainer.promotion.registration import after_training

    after_training(spec, run_id, tracking_uri, conversion_failed=bool(conversion) and conversion["status"] != "PASSED")


def retry_announcer(max_failures: int):
    """A Ray Train callback (run by the controller) that says, when a worker group failed and is
    restarted, which attempt comes next and why: "trainer: attempt 2 of 3: ValueError: ..."
    (the lowest failed rank's error). Nothing after the last attempt: the failure says it all."""
    from ray.train.v2.api.callback import UserCallback

    class RetryAnnouncer(UserCallback):
        def __init__(self):
            self.failures = 0

        def after_exception(self, run_context, worker_exceptions):
            self.failures += 1
            if self.failures > max_failures or not worker_exceptions:
                return
            err = worker_exceptions[min(worker_exceptions)]
            err = getattr(err, "_base_exc", err)      # Ray Train's UserExceptionWithTraceback
            print(retry_line(self.failures + 1, max_failures + 1, f"{type(err).__name__}: {first_line(err)}"),
                  flush=True)

    return RetryAnnouncer()


def main() -> int:
    """The Ray job entrypoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    spec = JobSpec.model_validate_json(os.environ[ENV_SPEC])
    run_id = os.environ.get(ENV_RUN_ID)
    tracking_uri = os.environ.get(ENV_TRACKING_URI)
    job_id = os.environ.get(ENV_JOB_ID, spec.name)
    workdir = Path.cwd()
    if spec.sweep is not None:      # many trials of the same function: trainer.runners.sweep
        import importlib

        # By name, as runners are (base.RUNNERS): the sweep driver builds on this module.
        return importlib.import_module(SWEEP_DRIVER).main(spec, job_id, run_id, tracking_uri, workdir, _STARTED)
    runner = get_runner(spec.framework)
    tune_ray_train()
    timing = {"entrypoint": _STARTED}
    run_config = RunConfig(
        name=job_id, storage_path=checkpoint_storage(spec),
        failure_config=FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
        callbacks=[retry_announcer(spec.failure.max_failures)] if spec.failure.max_failures else None)
    loop_config = {"spec": spec.model_dump_json(), "run_id": run_id, "tracking_uri": tracking_uri,
                   "workdir": str(workdir), "job_id": job_id, "driver_started": _STARTED}
    status = "FAILED"
    failure = None
    cancelled: list = []
    recorder = None
    forwarded, expected = ForwardedLines(), None
    try:
        _record_cancel(cancelled)
        if run_id is None and tracking_uri:
            run_id = _own_run(spec, job_id, tracking_uri, workdir)
            loop_config["run_id"] = run_id
        if run_id and tracking_uri:
            recorder = record.Recorder(spec, job_id, run_id, tracking_uri, _STARTED, workdir).capture()
        loop_config["data_path"] = pinned_data(spec, workdir, run_id, tracking_uri, os.environ.get(ENV_DATA_DIGEST))
        print(f"job {job_id}: {spec.workers} {spec.framework} worker(s) on "
              f"{spec.resources.accelerator} nodes; MLflow run {run_id}", flush=True)
        trainer = without_dataset_manager(runner.ray_trainer(worker_loop, loop_config, scaling_config(spec), run_config))
        _record_cancel(cancelled, connect=True)
        release_orphans()       # a group a previous job left reserved would hold our workers back
        timing["connected"] = time.time()
        telemetry.driver_started(job_id, _STARTED)
        if recorder is not None:
            _preload_mlflow(tracking_uri, run_id)
            recorder.start()
        forwarded.install()     # over the recorder's tee: closed before it
        result = trainer.fit()
        timing["fit_done"] = time.time()
        expected = last_lines(job_id, spec.workers, result)
        preload.wait()      # the conversion and registration below import MLflow themselves
        timing["mlflow_imported"] = preload.imported_at()
        _prune_checkpoints(result, spec.checkpoint.keep)
        _leave_vanished_cwd()
        conversion = convert_after_training(spec, run_id, tracking_uri)
        timing["converted"] = time.time()
        register_after_training(spec, run_id, tracking_uri, conversion)
        status = "FINISHED"
        return 0
    except TrainerError as e:
        failure = driver_failure(e, workdir)
        _print_failure(failure)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Exception as e:
        traceback.print_exc()
        failure = driver_failure(e, workdir)
        _print_failure(failure)
        print(f"error: {failure_line(failure)}", file=sys.stderr, flush=True)
        return 1
    except SystemExit as e:
        return cancel_exit_code(e, cancelled)
    finally:
        _leave_vanished_cwd()
        try:
            if expected and not cancelled:
                forwarded.wait_for(expected)    # last, so conversion and registration gave it their time
                timing["lines_in"] = time.time()
        finally:    # a SIGTERM (`trainer cancel`) in the wait still ends the run, KILLED
            forwarded.close()
            if recorder is not None:
                recorder.finish("KILLED" if cancelled else status)
            if run_id:
                _close(spec, job_id, run_id, tracking_uri, "KILLED" if cancelled else status, failure)
        timing["closed"] = time.time()
        # One line for benchmarks/runner.py and anyone asking where a job's time went.
        print(TIMING_PREFIX + json.dumps(timing), flush=True)


def cancel_exit_code(err: SystemExit, cancelled: list) -> int:
    """A driver's SystemExit: raised again unless it is `trainer cancel`'s (`_record_cancel`),
    whose code is returned, not raised, so that once the runs are closed (the driver's `finally`)
    the entrypoint ends the process at once (os._exit, at the end of this file). Raised, the
    interpreter's teardown (Ray's atexit hooks, Tune's threads) could hang until the supervisor's
    SIGKILL, STOP_WAIT_S after the SIGTERM (measured: 14.4 s for a job, two on a loaded host;
    15 s for a sweep, its trials' actors writing to their runs meanwhile)."""
    if not cancelled:
        raise err
    return err.code if isinstance(err.code, int) else 1


def last_lines(job_id: str, workers: int, result) -> list:
    """What the driver must have seen in its log before it ends (trainer.runners.forwarded):
    rank 0's progress line of the report its last checkpoint came with (`result.metrics`), and
    every rank's end, where each reaches the log. Ray's driver folds alike lines of different
    processes (RAY_DEDUP_LOGS, on for jobs; a sweep's driver turns it off): with several workers,
    all `worker_end` lines but the first can be held back for seconds, so only rank 0's
    progress line is waited for then."""
    out: list = [Reported(None, dict(result.metrics), "the job")] if getattr(result, "metrics", None) else []
    if workers == 1 or os.environ.get("RAY_DEDUP_LOGS", "").lower() in ("0", "false"):
        out.append(Ended(job_id, workers, "the job"))
    return out


def _preload_mlflow(tracking_uri: str, run_id: str) -> None:
    """Import MLflow and open the run's store on one thread while fit() waits on the workers
    (trainer.tracking.preload). Nothing before fit() needs MLflow any more: the run exists (the
    client made it) and the data digest came in the environment; the recorder's thread, the
    conversion and the run's close wait for the import. Closing the run after fit() then costs one
    write, not seconds of import and store setup (MLflow caches the store per process)."""
    def open_store():
        from trainer.tracking.runs import client

        client(tracking_uri).get_run(run_id)

    preload.start(open_store)


def _record_cancel(cancelled: list, connect: bool = False) -> None:
    """`trainer cancel` (Ray's stop_job) SIGTERMs this driver: exit the way Ray's own driver
    handler does (SystemExit, so `finally` runs) but append to `cancelled`, so the run ends
    KILLED, not FAILED. ray.init() replaces the handler, so with `connect` this connects first
    (what fit() would do) and installs it again. Called right before fit(), after the framework's
    trainer is built, which keeps the order of imports and connection fit() had (the one try that
    connected before building it had its driver die importing torch: oneMKL "Cannot load
    libtorch_cpu.so"; not reproduced outside a job)."""
    import signal

    if connect:
        import ray

        if not ray.is_initialized():
            ray.init()

    def on_sigterm(signum, frame):
        cancelled.append(signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _prune_checkpoints(result, keep: int) -> None:
    """Storage holds at most `keep` checkpoints once the job is over (see trainer.checkpoints.prune)."""
    try:
        from trainer.checkpoints import prune

        keep_names = {Path(c.path).name for c, _ in (result.best_checkpoints or [])}
        deleted = prune(result.path, result.filesystem, keep_names, keep)
        if deleted:
            print(f"removed {len(deleted)} checkpoint(s) no restart registered: {', '.join(deleted)}", flush=True)
    except Exception as e:  # noqa: BLE001 - a leftover folder must not fail a finished job
        from trainer.errors import first_line

        print(f"warning: could not prune checkpoints: {first_line(e)}", file=sys.stderr, flush=True)


def _own_run(spec: JobSpec, job_id: str, tracking_uri: str, workdir: Path) -> str:
    """A job submitted without a run (a RayJob applied with kubectl from `trainer k8s render`)
    records itself: the run of its job id if a previous attempt made one, else a new run."""
    from trainer.data import fingerprint
    from trainer.tracking.runs import find_run, start_run

    found = find_run(tracking_uri, spec.experiment, job_id)
    if found:
        return found
    try:
        fp = fingerprint(spec.data.path, workdir) if spec.data else None
    except TrainerError:
        fp = None
    return start_run(spec, job_id, tracking_uri, os.environ.get("RAY_ADDRESS", "ray"), fp)


def _leave_vanished_cwd() -> None:
    """When several Ray nodes share one host they share the unpacked working_dir, and a node's
    agent may delete it once that node's last worker exits, while this driver still sits in it.
    MLflow resolves paths against the cwd, so step out of a folder that no longer exists."""
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(tempfile.gettempdir())


def _close(spec: JobSpec, job_id: str, run_id: str, tracking_uri: str, status: str, failure: dict | None) -> None:
    """End the run with its story: the failure (tags + artifact) and the description's outcome
    and conversion verdict. Recording is best effort; closing the run is not."""
    from trainer.tracking.runs import conversion_report, describe, finish_run, record_job_failure, set_description

    outcome = {"FINISHED": "succeeded", "FAILED": "failed", "KILLED": "cancelled"}[status]
    try:
        if failure is not None and status == "FAILED":
            record_job_failure(tracking_uri, run_id, failure)
        report = conversion_report(tracking_uri, run_id) if spec.convert is not None else None
        set_description(tracking_uri, run_id, describe(spec, job_id, outcome=outcome,
                                                       failure=failure if status == "FAILED" else None,
                                                       conversion=conversion_summary(report)))
    except Exception as e:  # noqa: BLE001 - the run still ends with the right status
        print(f"warning: could not record the outcome in the MLflow run: {first_line(e)}", file=sys.stderr, flush=True)
    finish_run(tracking_uri, run_id, status)


def conversion_summary(report: dict | None) -> dict | None:
    """A conversion report (report.json as a dict) as the summary shows it: per target the
    verdict, the key parity figure, the size and where the artifact is (path and URI)."""
    if not report:
        return None
    from converters.parity import key_figure

    out_dir = report.get("out_dir") or ""
    uri = report.get("artifact_uri")
    passed = report.get("status") == "PASSED"
    kept = set(report.get("kept") or [])      # a report written before `kept`: all or nothing
    targets = []
    for row in report.get("rows", []):
        here = passed or row["target"] in kept
        targets.append({"target": row["target"], "verdict": "pass" if row["passed"] else "FAIL",
                        "figure": key_figure(row), "criterion": row["criterion"], "size_bytes": row["size_bytes"],
                        "path": f"{out_dir}/{row['artifact']}" if out_dir and here else None,
                        "uri": f"{uri}/{row['artifact']}" if uri and here else None,
                        "diagnosis": (row.get("diagnosis") or {}).get("summary") if not row["passed"] else None})
    files = report.get("files") or {}
    return {"status": report.get("status"), "targets": targets, "output": out_dir or None,
            "report": f"{out_dir}/{files.get('markdown', 'report.md')}" if out_dir else None,
            "report_uri": f"{uri}/{files.get('markdown', 'report.md')}" if uri else None,
            "plot_uri": f"{uri}/{files.get('plot', 'report.png')}" if uri else None}


def run_in_process(spec: JobSpec, workdir: Path, run_id: str | None, tracking_uri: str | None,
                   checkpoint_root: Path, job_id: str | None = None) -> None:
    """`trainer run --local`: the same function, world size 1, no Ray. A failure is recorded on
    the run as for a Ray job and re-raised as a JobError saying what failed in the user's terms
    (a TrainerError is re-raised as it is; a parity miss is the conversion's verdict, not a
    failure: see convert_after_training)."""
    status = "FAILED"
    failure = None
    try:
        _train(spec, LocalSession(checkpoint_root, spec.checkpoint.keep), workdir, run_id, tracking_uri)
        conversion = convert_after_training(spec, run_id, tracking_uri)
        register_after_training(spec, run_id, tracking_uri, conversion)
        status = "FINISHED"
    except TrainerError as e:
        failure = driver_failure(e, workdir)
        raise
    except Exception as e:
        failure = driver_failure(e, workdir)
        raise JobError(f"training failed: {failure_line(failure)}", failure=failure) from e
    finally:
        if run_id:
            _close(spec, job_id or spec.name, run_id, tracking_uri, status, failure)


if __name__ == "__main__":
    code = main()
    # Everything is flushed and the run is closed: skip the interpreter's teardown of torch and
    # Ray's atexit hooks, which kept a finished job RUNNING for seconds (benchmarks/README.md).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
