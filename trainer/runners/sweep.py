"""A sweep: the job's own function, many times, over a search space of `config` values (Ray Tune).

The job driver (`trainer.runners.job.main`) hands a spec with `sweep:` to `main` here. Tune runs
the trials (its search, `max_concurrent_trials`, ASHA); each trial is a Tune function trainable
(`trial`) that builds the framework's Ray Train trainer around `worker_loop`, exactly as a job's
driver does, with Tune's `TuneReportCallback` (Ray Train V2's way of running a Train run inside a
Tune trial): what `ctx.report` persists with a checkpoint reaches Tune, so ASHA compares trials on
the metric reported at checkpoints, and a trial's lost worker is restarted from its checkpoint by
Ray Train (`failure.max_failures`), as for a job.

MLflow (trainer.tracking.sweeps): the job's run is the parent, each trial a child run. After the
trials, the best completed trial's run goes through `convert:` and `register:` as a job's run does.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from trainer.cluster.reservations import held_by, live_actors, release, release_orphans
from trainer.errors import JobError, TrainerError, first_line
from trainer.protocol import sweep_line
from trainer.spec import JobSpec

# A trial's actor only waits on its Train run (the controller and workers hold the resources): it
# reserves no CPU, so `concurrency` trials' workers fit where `concurrency` jobs' would. Tune refuses
# an empty request, so it asks for a token of memory (which every node, the CPU-less head too, has).
TRIAL_ACTOR_RESOURCES = {"CPU": 0, "memory": 2**20}
PROGRESS_EVERY_S = 2.0
ACTORS_GONE_WAIT_S = 30.0


def search_space(spec: JobSpec) -> dict:
    """The sweep's space as Tune's domains, over the spec's `config` (fixed values stay)."""
    from ray import tune

    space: dict = {}
    for key, domain in spec.sweep.space.items():
        kind, value = next(iter(domain.describe().items()))
        if kind == "choice":
            space[key] = tune.choice(value)
        elif kind == "uniform":
            space[key] = tune.uniform(*value)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*value)
        else:   # int: both ends included (tune.randint excludes the upper one)
            space[key] = tune.randint(value[0], value[1] + 1)
    return space


def trial_spec(spec: JobSpec, sampled: dict) -> JobSpec:
    """One trial's spec: the job's, with the sampled values in `config`, and no sweep, convert or
    register (those are the sweep's, done once for the best trial)."""
    config = {**spec.config, **{k: _plain(v) for k, v in sampled.items()}}
    return spec.model_copy(update={"config": config, "sweep": None, "convert": None, "register": None})


def _plain(value):
    """numpy scalars from Tune's sampling as the JSON values a config holds."""
    return value.item() if hasattr(value, "item") else value


def trial(config: dict, setup: dict) -> None:
    """A Tune trial (runs in the trial's actor): the job's function through Ray Train, recorded
    in its own child run. Raises when training failed (Tune then marks the trial ERROR)."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainer.runners.base import get_runner, tune_ray_train, without_dataset_manager
    from trainer.runners.job import driver_failure, retry_announcer, scaling_config
    from trainer.tracking import sweeps
    from trainer.tracking.runs import failure_line

    spec = JobSpec.model_validate_json(setup["spec"])
    one = trial_spec(spec, config)
    trial_id = tune.get_context().get_trial_id()
    uri, parent = setup["tracking_uri"], setup["run_id"]
    run_id = sweeps.start_trial_run(uri, parent, setup["job_id"], trial_id, dict(one.config)) if uri and parent else None
    tune_ray_train()
    callbacks = [TuneReportCallback()]
    if spec.failure.max_failures:
        callbacks.append(retry_announcer(spec.failure.max_failures))
    run_config = RunConfig(
        name=f"{setup['job_id']}-{trial_id}", storage_path=setup["storage"],
        failure_config=FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep), callbacks=callbacks)
    loop_config = {"spec": one.model_dump_json(), "run_id": run_id, "tracking_uri": uri,
                   "workdir": setup["workdir"], "job_id": setup["job_id"], "driver_started": time.time(),
                   "data_path": setup.get("data_path")}
    trainer = without_dataset_manager(
        get_runner(spec.framework).ray_trainer(trial_worker_loop, loop_config, scaling_config(one), run_config))
    try:
        trainer.fit()
    except Exception as e:
        failure = driver_failure(e, Path(setup["workdir"]))
        if run_id and _still_running(uri, run_id):      # the driver may have closed it (a cancel)
            sweeps.end_trial(uri, run_id, sweeps.FAILED, failure_line(failure), failure=failure)
        raise JobError(f"trial {sweeps.trial_number(trial_id)} failed: {failure_line(failure)}") from None
    if run_id:
        end_after_fit(uri, run_id, trial_id)


def trial_worker_loop(config: dict) -> None:
    """A trial's Ray Train worker: the job's worker loop, then, on rank 0, the mark that the
    function returned (what `end_after_fit` takes as proof that the trial ran to its end)."""
    from ray import train

    from trainer.runners.job import worker_loop
    from trainer.tracking import sweeps

    worker_loop(config)
    if config.get("run_id") and config.get("tracking_uri") and train.get_context().get_world_rank() == 0:
        sweeps.mark_function_returned(config["tracking_uri"], config["run_id"])


def end_after_fit(uri: str, run_id: str, trial_id: str) -> None:
    """A trial whose Train run returned without an error: completed if its function returned on
    rank 0. Without that mark, the run was torn down from outside mid-training (Tune stops the
    trials of a cancelled sweep, and Ray Train's controller can then end its run without an
    error): that trial did not complete. Its run is left for the driver, which knows why it
    ended (a cancel: KILLED, "cancelled"), and the trial fails in Tune's eyes, not "completed"."""
    from trainer.tracking import sweeps

    if sweeps.function_returned(uri, run_id):
        sweeps.end_trial(uri, run_id, sweeps.COMPLETED, "ran to its end")
        return
    raise JobError(f"trial {sweeps.trial_number(trial_id)} ended before its function returned: its "
                   f"training was stopped from outside (the sweep cancelled, or its workers lost)")


def _still_running(uri: str, run_id: str) -> bool:
    from trainer.tracking.runs import run_status

    return run_status(uri, run_id) == "RUNNING"


def recorder(spec: JobSpec, uri: str | None, parent: str | None, cancelled: list | None = None):
    """The driver's Tune callback: counts trials (running, done, stopped early, failed), keeps the
    best value of the metric so far, prints the sweep's progress line, and closes the runs of the
    trials ASHA stopped (their actors are stopped mid-training: they never close them) and of the
    trials whose actor died."""
    from ray import tune

    from trainer.tracking import sweeps

    sweep = spec.sweep
    better = (lambda a, b: a > b) if sweep.mode == "max" else (lambda a, b: a < b)

    class SweepRecorder(tune.Callback):
        def __init__(self):
            # trial_id -> {"trial", "outcome", "last", "reports", "config", "result": its last, numbers only}
            self.trials: dict[str, dict] = {}
            self.best: tuple[float, int] | None = None
            self._printed = 0.0
            self.missing_metric: str | None = None

        def _entry(self, trial) -> dict:
            return self.trials.setdefault(trial.trial_id, {"trial": sweeps.trial_number(trial.trial_id),
                                                           "outcome": None, "last": None, "reports": 0,
                                                           "config": dict(trial.config)})

        def on_trial_start(self, iteration, trials, trial, **info):
            self._entry(trial)
            self._progress(force=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            entry = self._entry(trial)
            if sweep.metric not in result:
                reported = sorted(k for k in result if not k.startswith(("checkpoint", "training_iteration",
                                                                         "time_", "timestamp", "date", "done",
                                                                         "trial_", "pid", "hostname", "node_ip",
                                                                         "config", "iterations_since", "experiment")))
                self.missing_metric = (f"sweep.metric {sweep.metric!r} is not among the metrics the function "
                                       f"reports with a checkpoint ({', '.join(reported) or 'none'})")
                raise JobError(self.missing_metric)
            value = float(result[sweep.metric])
            entry["last"], entry["reports"] = value, entry["reports"] + 1
            entry["result"] = {k: v for k, v in result.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if self.best is None or better(value, self.best[0]):
                self.best = (value, entry["trial"])
            self._progress()

        def on_trial_complete(self, iteration, trials, trial, **info):
            entry = self._entry(trial)
            run_id = sweeps.find_trial_run(uri, parent, trial.trial_id) if uri and parent else None
            recorded = None
            if run_id:
                from trainer.tracking.runs import client

                recorded = client(uri).get_run(run_id).data.tags.get(sweeps.TAG_TRIAL_STATUS)
            if recorded == sweeps.COMPLETED:
                entry["outcome"] = sweeps.COMPLETED
            elif cancelled:     # Tune stops the running trials on its way out: not ASHA's doing
                entry["outcome"] = sweeps.CANCELLED
                if run_id:
                    sweeps.end_trial(uri, run_id, sweeps.CANCELLED, "the sweep was cancelled")
            else:
                entry["outcome"] = sweeps.STOPPED
                if run_id:
                    last = f"{sweep.metric} {entry['last']:.4g}" if entry["last"] is not None else "no metric yet"
                    sweeps.end_trial(uri, run_id, sweeps.STOPPED,
                                     f"ASHA stopped it after {entry['reports']} report(s) ({last}): below "
                                     f"the cutoff of its rung")
            self._progress(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            entry = self._entry(trial)
            entry["outcome"] = sweeps.FAILED
            run_id = sweeps.find_trial_run(uri, parent, trial.trial_id) if uri and parent else None
            if run_id:
                from trainer.tracking.runs import client

                if client(uri).get_run(run_id).info.status == "RUNNING":   # its actor died before saying why
                    error = trial.get_error()
                    reason = first_line(error) if error else "the trial's process died"
                    sweeps.end_trial(uri, run_id, sweeps.FAILED, reason)
            self._progress(force=True)

        def counts(self) -> dict:
            outcomes = [t["outcome"] for t in self.trials.values()]
            best = self.best
            return {"total": sweep.trials, "running": outcomes.count(None),
                    "done": outcomes.count(sweeps.COMPLETED), "stopped": outcomes.count(sweeps.STOPPED),
                    "failed": outcomes.count(sweeps.FAILED), "metric": sweep.metric,
                    "best": best[0] if best else None, "best_trial": best[1] if best else None}

        def _progress(self, force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - self._printed < PROGRESS_EVERY_S:
                return
            self._printed = now
            print(sweep_line({**self.counts(), "time": time.time()}), flush=True)

    return SweepRecorder()


def last_rung(spec: JobSpec) -> int:
    """ASHA's max_t: its rungs lie at grace_period * reduction_factor**k <= max_t. One Tune
    iteration is one persisted checkpoint; a rung at a trial's last one would stop the trial
    after its training but before `ctx.save_model`, so the rungs end before it (the spec
    refuses a grace period that leaves no room), and with stop_last_trials=False nothing stops
    a trial for reaching max_t. 100 when the spec does not say how many epochs."""
    epochs = spec.config.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or "epochs" in spec.sweep.space:
        return 100
    return max(spec.sweep.asha.grace_period, epochs // spec.checkpoint.every_epochs - 1)


def tuner(spec: JobSpec, setup: dict, callback):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    sweep = spec.sweep
    asha = sweep.asha
    if asha is not None:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=last_rung(spec),
                                  grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
                                  stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(trial, setup=setup), TRIAL_ACTOR_RESOURCES)
    return tune.Tuner(
        trainable, param_space=search_space(spec),
        # The concurrency goes to the searcher: Tune ignores max_concurrent_trials when given one.
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.trials,
                                    scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(max_concurrent=sweep.concurrency,
                                                                     random_state=sweep.seed)),
        run_config=tune.RunConfig(name=setup["job_id"], storage_path=setup["storage"], verbose=0,
                                  callbacks=[callback], failure_config=tune.FailureConfig(max_failures=0)))


def last_lines(trials: dict[str, dict], job_id: str, workers: int, last_steps: dict[int, int]) -> list:
    """What the driver must have seen in its log before it ends (trainer.runners.forwarded): a
    completed trial's workers' ends (its Train run is `<job id>-<trial id>`, see `trial`), a
    stopped trial's progress line of the last step its MLflow run has (`last_steps`, by trial),
    else of the last result Tune got (its actor was killed: no end). A failed or cancelled
    trial's lines are not waited for: its end is no one's expectation."""
    from trainer.runners.forwarded import Ended, Printed, Reported
    from trainer.tracking import sweeps

    out: list = []
    for trial_id, t in trials.items():
        if t["outcome"] == sweeps.COMPLETED:
            out.append(Ended(f"{job_id}-{trial_id}", workers, f"trial {t['trial']}"))
        elif t["outcome"] == sweeps.STOPPED and t["trial"] in last_steps:
            out.append(Printed(t["trial"], last_steps[t["trial"]], f"trial {t['trial']}"))
        elif t["outcome"] == sweeps.STOPPED and t.get("result"):
            out.append(Reported(t["trial"], t["result"], f"trial {t['trial']}"))
    return out


def stopped_last_steps(uri: str, run_id: str, metric: str) -> dict[int, int]:
    """The last step of `metric` each trial ASHA stopped has in MLflow, by trial (its workers
    are gone by now: release_placement_groups waited for them); {} when MLflow cannot say."""
    from trainer.tracking import sweeps

    try:
        states = sweeps.trial_states(uri, run_id, metric, [])
    except TrainerError as e:
        print(f"warning: {first_line(e)}", file=sys.stderr, flush=True)
        return {}
    return {t["trial"]: t["epoch"] for t in states if t["state"] == sweeps.STOPPED and t["epoch"] is not None}


def choose_best(spec: JobSpec, trials: dict[str, dict]) -> dict | None:
    """The completed trial with the best last value of the metric (a trial ASHA stopped has no
    model to convert), or None."""
    done = [t for t in trials.values() if t["outcome"] == "completed" and t["last"] is not None]
    if not done:
        return None
    pick = max if spec.sweep.mode == "max" else min
    return pick(done, key=lambda t: t["last"])


def release_placement_groups(wait_for_actors: bool = True) -> list[str]:
    """Remove the placement groups this job still holds once its trials are over; their ids.

    A trial's Train controller killed (ASHA stops the trial, Tune tears it down) while its worker
    group's placement group is being created can leave that group reserved with no owner, after
    the job too (trainer.cluster.reservations). Released here, the next job need not find it: only
    this job's groups are touched."""
    import ray

    if not ray.is_initialized():     # Tune failed before it connected: nothing was reserved
        return []
    ours = ray.get_runtime_context().get_job_id()
    try:
        # Tune has killed the trial actors, but their controllers die after them, and one may
        # still create its group in between (seen 1 ms after `fit` returned): wait for them first.
        # Not on a cancel: the trials were not torn down then, and the driver has STOP_WAIT_S to end.
        deadline = time.monotonic() + (ACTORS_GONE_WAIT_S if wait_for_actors else 0)
        while live_actors(ray.get_runtime_context().job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        held = held_by(ours)
        release(held)
    except Exception as e:      # in a `finally`: the trials' own outcome is the error to report
        print(f"could not release this job's placement groups: {first_line(e)}", file=sys.stderr, flush=True)
        return []
    if held:
        print(f"released {len(held)} placement group(s) the trials left reserved", flush=True)
    return held


def _note_cancel_time(timing: dict) -> None:
    """Wrap the SIGTERM handler job._record_cancel installed: note when the cancel came (trials
    whose runs say they failed after it were torn down by it)."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        timing.setdefault("cancelled", time.time())
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def main(spec: JobSpec, job_id: str, run_id: str | None, tracking_uri: str | None, workdir: Path,
         started: float) -> int:
    """The sweep's driver (in the Ray job): the trials, then the best one's convert and register.
    Returns the exit code, like `trainer.runners.job.main`."""
    from trainer.runners import job
    from trainer.runners.forwarded import ForwardedLines
    from trainer.tracking import record, sweeps
    from trainer.tracking.runs import failure_line

    status, failure = "FAILED", None
    cancelled: list = []
    run_record = None
    forwarded = ForwardedLines()
    callback, tuned = None, False
    timing = {"entrypoint": started}
    sweep = spec.sweep
    try:
        job._record_cancel(cancelled)
        if run_id is None and tracking_uri:
            run_id = job._own_run(spec, job_id, tracking_uri, workdir)
        if run_id and tracking_uri:
            run_record = record.Recorder(spec, job_id, run_id, tracking_uri, started, workdir).start()
            sweeps.record_sweep(tracking_uri, run_id, sweep.model_dump(mode="json", by_alias=True,
                                                                         exclude_none=True) | {
                "space": {k: d.describe() for k, d in sweep.space.items()},
                "scheduler": {"asha": sweep.asha.model_dump()} if sweep.asha else "none"})
        setup = {"spec": spec.model_dump_json(), "job_id": job_id, "run_id": run_id, "tracking_uri": tracking_uri,
                 "workdir": str(workdir), "storage": job.checkpoint_storage(spec),
                 "data_path": job.pinned_data(spec, workdir, run_id, tracking_uri)}
        scheduler = (f"ASHA (grace period {sweep.asha.grace_period}, reduction factor {sweep.asha.reduction_factor})"
                     if sweep.asha else "no early stopping")
        print(f"sweep {job_id}: {sweep.trials} trials, {sweep.concurrency} at a time, {scheduler}; "
              f"{sweep.mode} {sweep.metric}; MLflow run {run_id}", flush=True)
        # The recorder checks that results carry the metric, and names those they do carry; Tune's
        # own check (which would come first) names neither the spec's field nor the metrics.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        callback = recorder(spec, tracking_uri, run_id, cancelled)
        tune = tuner(spec, setup, callback)
        job._record_cancel(cancelled, connect=True)
        release_orphans()
        _note_cancel_time(timing)
        timing["connected"] = time.time()
        forwarded.install()     # over the recorder's tee: closed before it
        try:
            try:
                tune.fit()
            finally:
                release_placement_groups(wait_for_actors=not cancelled)
        except Exception as e:
            if callback.missing_metric:
                raise JobError(callback.missing_metric) from None
            if "did not include the specified metric" in str(e):
                raise JobError(f"sweep.metric {sweep.metric!r} is not a metric the function reports with a "
                               f"checkpoint: {first_line(e)}") from None
            raise
        timing["fit_done"] = time.time()
        tuned = True
        counts = callback.counts()
        print(f"sweep {job_id}: {counts['done']} completed, {counts['stopped']} stopped early, "
              f"{counts['failed']} failed", flush=True)
        best = choose_best(spec, callback.trials)
        if best is None:
            raise JobError(f"no trial of sweep {job_id} completed ({counts['stopped']} stopped early, "
                           f"{counts['failed']} failed): see the trials' runs under MLflow run {run_id}")
        best_run = None
        if run_id and tracking_uri:
            recorded = sweeps.trial_runs(tracking_uri, run_id)
            best_run = next(t for t in recorded if t["trial"] == best["trial"])
            sweeps.record_best(tracking_uri, run_id, sweep.metric,
                               {"trial": best["trial"], "run_id": best_run["run_id"], "value": best["last"],
                                "params": {k: _plain(v) for k, v in best["config"].items()},
                                "metrics": best_run["metrics"]}, recorded)
        shown = ", ".join(f"{k}={_plain(v):.4g}" if isinstance(_plain(v), float) else f"{k}={_plain(v)}"
                          for k, v in best["config"].items())
        print(f"best: trial {best['trial']} ({shown}): {sweep.metric} {best['last']:.4g}"
              + (f"; MLflow run {best_run['run_id']}" if best_run else ""), flush=True)
        if best_run:
            best_spec = trial_spec(spec, best["config"]).model_copy(
                update={"convert": spec.convert, "register": spec.register})
            conversion = job.convert_after_training(best_spec, best_run["run_id"], tracking_uri)
            timing["converted"] = time.time()
            job.register_after_training(best_spec, best_run["run_id"], tracking_uri, conversion)
        status = "FINISHED"
        return 0
    except TrainerError as e:
        failure = job.driver_failure(e, workdir)
        job._print_failure(failure)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Exception as e:
        traceback.print_exc()
        failure = job.driver_failure(e, workdir)
        job._print_failure(failure)
        print(f"error: {failure_line(failure)}", file=sys.stderr, flush=True)
        return 1
    except SystemExit as e:
        return job.cancel_exit_code(e, cancelled)
    finally:
        job._leave_vanished_cwd()
        try:
            if tuned and not cancelled:
                # Last, so the best trial's conversion above gave Ray's forwarding its time.
                steps = stopped_last_steps(tracking_uri, run_id, sweep.metric) if run_id and tracking_uri else {}
                forwarded.wait_for(last_lines(callback.trials, job_id, spec.workers, steps))
                timing["lines_in"] = time.time()
        finally:    # a SIGTERM (`trainer cancel`) in the wait still closes the runs, KILLED
            forwarded.close()
            if run_record is not None:
                run_record.finish("KILLED" if cancelled else status)
            if run_id and tracking_uri:
                outcome = "KILLED" if cancelled else status
                try:
                    sweeps.settle_trials(tracking_uri, run_id)
                    if outcome != "FINISHED":
                        closed = sweeps.close_open_trials(tracking_uri, run_id, f"sweep {job_id} ended {outcome}",
                                                          cancelled_at=timing.get("cancelled") if cancelled else None)
                        if closed:
                            print(f"sweep {job_id}: {closed} trial run(s) still open closed KILLED", flush=True)
                except TrainerError as e:
                    print(f"warning: could not close the open trial runs: {first_line(e)}", file=sys.stderr,
                          flush=True)
                job._close(spec, job_id, run_id, tracking_uri, outcome, failure)
        timing["closed"] = time.time()
        from trainer.protocol import TIMING_PREFIX

        print(TIMING_PREFIX + json.dumps(timing), flush=True)
