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

from trainer.context import LocalSession, RayTrainSession
from trainer.errors import SpecError, TrainerError, first_line
from trainer.runners.base import get_runner, tune_ray_train
from trainer.spec import JobSpec

_STARTED = time.time()   # the entrypoint's first line (imports above included: they are its cost)
TIMING_PREFIX = "TRAINER_TIMING "

# What `trainer.api.submit` hands the driver through the Ray job's environment.
ENV_SPEC = "TRAINER_SPEC"
ENV_RUN_ID = "TRAINER_RUN_ID"
ENV_JOB_ID = "TRAINER_JOB_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"


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


def _train(spec: JobSpec, session, workdir: Path, run_id: str | None, tracking_uri: str | None) -> None:
    runner = get_runner(spec.framework)
    ctx = runner.make_context(spec, session, run_id=run_id, tracking_uri=tracking_uri,
                              data_path=_data_path(spec, workdir))
    fn = load_function(spec, workdir)
    ok = False
    try:
        fn(ctx)
        ok = True
    finally:
        ctx.close(success=ok)


def worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker (one per rank)."""
    spec = JobSpec.model_validate_json(config["spec"])
    workdir = Path(config["workdir"]) if Path(config["workdir"]).is_dir() else Path.cwd()
    _train(spec, RayTrainSession(), workdir, config.get("run_id"), config.get("tracking_uri"))


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


def convert_after_training(spec: JobSpec, run_id: str | None, tracking_uri: str | None) -> None:
    """The spec's `convert:` step; a parity miss fails the job (the report is logged first)."""
    if spec.convert is None or run_id is None:
        return
    from converters.api import convert_run

    p = spec.convert.parity
    print(f"converting the trained model to {', '.join(spec.convert.targets)}", flush=True)
    report = convert_run(run_id, spec.convert.targets, source=get_runner(spec.framework).frontend,
                         edge=spec.convert.edge, atol=p.atol, rtol=p.rtol,
                         min_agreement=p.min_agreement, max_accuracy_drop=p.max_accuracy_drop,
                         tracking_uri=tracking_uri)
    print(report.to_markdown(), flush=True)


def register_after_training(spec: JobSpec, run_id: str | None, tracking_uri: str | None) -> None:
    """The spec's `register:` step (MLflow version + the registry's dev/ project): trainer.promotion."""
    from trainer.promotion.registration import after_training

    after_training(spec, run_id, tracking_uri)


def main() -> int:
    """The Ray job entrypoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from trainer.tracking.runs import finish_run

    spec = JobSpec.model_validate_json(os.environ[ENV_SPEC])
    run_id = os.environ.get(ENV_RUN_ID)
    tracking_uri = os.environ.get(ENV_TRACKING_URI)
    job_id = os.environ.get(ENV_JOB_ID, spec.name)
    workdir = Path.cwd()
    runner = get_runner(spec.framework)
    tune_ray_train()
    timing = {"entrypoint": _STARTED}
    run_config = RunConfig(
        name=job_id, storage_path=checkpoint_storage(spec),
        failure_config=FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep))
    loop_config = {"spec": spec.model_dump_json(), "run_id": run_id, "tracking_uri": tracking_uri,
                   "workdir": str(workdir)}
    status = "FAILED"
    cancelled: list = []
    try:
        _record_cancel(cancelled)
        if run_id is None and tracking_uri:
            run_id = _own_run(spec, job_id, tracking_uri, workdir)
            loop_config["run_id"] = run_id
        print(f"job {job_id}: {spec.workers} {spec.framework} worker(s) on "
              f"{spec.resources.accelerator} nodes; MLflow run {run_id}", flush=True)
        trainer = runner.ray_trainer(worker_loop, loop_config, scaling_config(spec), run_config)
        _record_cancel(cancelled, connect=True)
        timing["connected"] = time.time()
        if run_id and tracking_uri:
            _open_store_in_background(tracking_uri, run_id)
        result = trainer.fit()
        timing["fit_done"] = time.time()
        _prune_checkpoints(result, spec.checkpoint.keep)
        _leave_vanished_cwd()
        convert_after_training(spec, run_id, tracking_uri)
        timing["converted"] = time.time()
        register_after_training(spec, run_id, tracking_uri)
        status = "FINISHED"
        return 0
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Exception as e:
        traceback.print_exc()
        print(f"error: training failed: {type(e).__name__}" + (f": {first_line(e)}" if str(e).strip() else ""),
              file=sys.stderr, flush=True)
        return 1
    finally:
        _leave_vanished_cwd()
        if run_id:
            finish_run(tracking_uri, run_id, "KILLED" if cancelled else status)
        timing["closed"] = time.time()
        # One line for benchmarks/runner.py and anyone asking where a job's time went.
        print(TIMING_PREFIX + json.dumps(timing), flush=True)


def _open_store_in_background(tracking_uri: str, run_id: str) -> None:
    """Import MLflow and open the run's store on a daemon thread while fit() waits on the
    workers: closing the run after fit() then costs one write, not seconds of import and store
    setup (MLflow caches the store per process)."""
    import threading

    def warm():
        try:
            from trainer.tracking.runs import client

            client(tracking_uri).get_run(run_id)
        except Exception:  # noqa: BLE001 - only a head start: finish_run reports a real problem
            pass

    threading.Thread(target=warm, daemon=True, name="trainer-open-store").start()


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


def run_in_process(spec: JobSpec, workdir: Path, run_id: str | None, tracking_uri: str | None,
                   checkpoint_root: Path) -> None:
    """`trainer run --local`: the same function, world size 1, no Ray."""
    from trainer.tracking.runs import finish_run

    status = "FAILED"
    try:
        _train(spec, LocalSession(checkpoint_root, spec.checkpoint.keep), workdir, run_id, tracking_uri)
        convert_after_training(spec, run_id, tracking_uri)
        register_after_training(spec, run_id, tracking_uri)
        status = "FINISHED"
    finally:
        if run_id:
            finish_run(tracking_uri, run_id, status)


if __name__ == "__main__":
    code = main()
    # Everything is flushed and the run is closed: skip the interpreter's teardown of torch and
    # Ray's atexit hooks, which kept a finished job RUNNING for seconds (benchmarks/README.md).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
