"""A sweep in MLflow: the job's run is the parent (search space, scheduler, best trial), each trial
a child run (`mlflow.parentRunId`, so the UI nests it) with its params, curves, and how it ended:
`trainer.trial_status` completed | stopped early | failed | cancelled, and `trainer.trial_reason`.
The parent holds `sweep/trials.png`, every trial's metric against its trial number.

Child runs carry no `trainer.job_id` tag: that tag means "the run of this Ray job" (reconcile,
`find_run`); a trial is found by `trainer.sweep_id` + `trainer.trial_id`."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from trainer.credentials import redact, redact_text
from trainer.protocol import ANSI_ESCAPE, RAY_SOURCE, parse_event
from trainer.tracking.runs import (MAX_PARAM_LEN, TAG_FRAMEWORK, TAG_JOB_NAME, TAG_NOTE, _mlflow_errors, _quoted,
                                   client, record_job_failure)

TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP_ID = "trainer.sweep_id"
TAG_TRIAL_ID = "trainer.trial_id"
TAG_TRIAL_STATUS = "trainer.trial_status"
TAG_TRIAL_REASON = "trainer.trial_reason"
# Set by the trial's rank-0 worker when the job's function returned (trainer.runners.sweep): the
# one proof that a trial ran to its end. Its Train run can return without an error mid-training
# when it is torn down from outside (Tune stopping the trial of a cancelled sweep).
TAG_TRIAL_RETURNED = "trainer.trial_function_returned"
TAG_BEST_RUN = "trainer.sweep.best_run_id"
TAG_SWEEP = "trainer.sweep"                 # on the parent: the sweep section, as JSON
PLOT_ARTIFACT = "sweep/trials.png"
TRIALS_ARTIFACT = "sweep/trials.json"

COMPLETED, STOPPED, FAILED, CANCELLED = "completed", "stopped early", "failed", "cancelled"
# What each outcome is as an MLflow run status: a trial ASHA stopped did what it was asked.
MLFLOW_STATUS = {COMPLETED: "FINISHED", STOPPED: "FINISHED", FAILED: "FAILED", CANCELLED: "KILLED"}


def trial_number(trial_id: str) -> int:
    """Tune's trial ids end in the trial's index (`a1b2c_00003`): trial 3."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def trial_states(uri: str, parent_run_id: str, metric: str, space: list[str]) -> list[dict]:
    """The recorded trials as `trainer status` shows a sweep: [{"trial", "state", "value" (the
    metric's last value), "epoch" (the step of that value: the epoch the trial reached), "params"
    (the sampled ones), "reason", "run_id"}]. A trial whose run is still open is "running"."""
    rows = []
    mlc = client(uri)
    for t in trial_runs(uri, parent_run_id):
        with _mlflow_errors(f"cannot read the {metric!r} history of trial run {t['run_id']} from {redact(uri)}"):
            history = mlc.get_metric_history(t["run_id"], metric) if metric in t["metrics"] else []
        state = t["outcome"] or ("running" if t["status"] == "RUNNING" else t["status"].lower())
        rows.append({"trial": t["trial"], "state": state, "value": t["metrics"].get(metric),
                     "epoch": max((m.step for m in history), default=None),
                     "params": {k: _param(t["params"][k]) for k in space if k in t["params"]},
                     "reason": t["reason"], "run_id": t["run_id"]})
    return rows


def _param(text: str):
    """A param as the trial's config held it (MLflow keeps the JSON text)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# A worker's start line names its Ray Train run: `<sweep id>-<Tune trial id>` for a trial's.
_TRIAL_RUN = re.compile(r"_(\d{5,})$")   # Tune: `<uuid prefix>_<index, 5 digits>`


class TrialLines:
    """Sorts a sweep's log (the driver's output, every trial's workers' lines forwarded into it
    behind Ray's `(RayTrainWorker pid=..., ip=...)` prefix) by trial. A trial's worker says which
    Ray Train run it belongs to in its start event (trainer.tracking.record.announce_worker): from
    then on that process's lines are the trial's; its earlier lines wait for that event.

    `feed(line)` returns the lines it can place now, as (trial, line): trial None for the
    driver's own lines (and Ray's actors')."""

    def __init__(self):
        self._owner: dict[str, int] = {}           # "pid@ip" -> trial
        self._waiting: dict[str, list[str]] = {}    # a RayTrainWorker's lines before its start event

    def feed(self, line: str) -> list[tuple[int | None, str]]:
        found = RAY_SOURCE.match(ANSI_ESCAPE.sub("", line))
        if found is None:
            return [(None, line)]
        source = found.group("source")
        pid = re.search(r"\bpid=(\d+)", source).group(1)
        ip = re.search(r"\bip=([^,\s]+)", source)
        key = f"{pid}@{ip.group(1) if ip else ''}"
        event = parse_event(line)
        if event is not None and event.get("event") == "worker_start" and str(event.get("pid")) == pid:
            tail = _TRIAL_RUN.search(str(event.get("train_run") or ""))
            if tail:
                self._owner[key] = int(tail.group(1))
        trial = self._owner.get(key)
        if trial is not None:
            return [(trial, held) for held in self._waiting.pop(key, [])] + [(trial, line)]
        if source.startswith("RayTrainWorker"):
            self._waiting.setdefault(key, []).append(line)
            return []
        return [(None, line)]

    def rest(self) -> list[tuple[int | None, str]]:
        """The lines of workers that never said their trial (the driver's, as far as anyone can tell)."""
        out = [(None, line) for lines in self._waiting.values() for line in lines]
        self._waiting.clear()
        return out


def split_log(text: str) -> dict[int | None, list[str]]:
    """A sweep's whole log by trial (None: the driver's), each in its order."""
    splitter, out = TrialLines(), {}
    for line in text.splitlines():
        for trial, placed in splitter.feed(line):
            out.setdefault(trial, []).append(placed)
    for trial, placed in splitter.rest():
        out.setdefault(trial, []).append(placed)
    return out


def record_sweep(uri: str, parent_run_id: str, sweep: dict) -> None:
    """The parent's params: the search space and the scheduler as the spec wrote them."""
    from mlflow.entities import Param, RunTag

    params = {"sweep.metric": sweep["metric"], "sweep.mode": sweep["mode"], "sweep.trials": sweep["trials"],
              "sweep.concurrency": sweep["concurrency"], "sweep.seed": sweep.get("seed"),
              "sweep.scheduler": sweep.get("scheduler") or "none"}
    params.update({f"sweep.space.{k}": v for k, v in sweep["space"].items()})
    with _mlflow_errors(f"cannot record the sweep in MLflow run {parent_run_id} in {redact(uri)}"):
        client(uri).log_batch(parent_run_id, params=[
            Param(k, redact_text(v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN])
            for k, v in params.items()], tags=[RunTag(TAG_SWEEP, json.dumps(sweep)[:MAX_PARAM_LEN])])


def find_trial_run(uri: str, parent_run_id: str, trial_id: str) -> str | None:
    mlc = client(uri)
    parent = mlc.get_run(parent_run_id)
    found = mlc.search_runs([parent.info.experiment_id], max_results=1,
                            filter_string=f"tags.`{TAG_PARENT}` = '{_quoted(parent_run_id)}' and "
                                          f"tags.`{TAG_TRIAL_ID}` = '{_quoted(trial_id)}'")
    return found[0].info.run_id if found else None


def start_trial_run(uri: str, parent_run_id: str, sweep_id: str, trial_id: str, params: dict) -> str:
    """The trial's child run (the one it has already, after a restart of its actor), with its params."""
    from mlflow.entities import Param

    with _mlflow_errors(f"cannot create the run of trial {trial_id} in {redact(uri)}"):
        found = find_trial_run(uri, parent_run_id, trial_id)
        if found:
            return found
        mlc = client(uri)
        parent = mlc.get_run(parent_run_id)
        number = trial_number(trial_id)
        shown = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in params.items())
        run = mlc.create_run(parent.info.experiment_id, run_name=f"{sweep_id}-trial-{number:02d}", tags={
            TAG_PARENT: parent_run_id, TAG_SWEEP_ID: sweep_id, TAG_TRIAL_ID: trial_id,
            TAG_JOB_NAME: parent.data.tags.get(TAG_JOB_NAME, ""), TAG_FRAMEWORK: parent.data.tags.get(TAG_FRAMEWORK, ""),
            TAG_NOTE: redact_text(f"Trial {number} of sweep `{sweep_id}`: {shown}.")[:MAX_PARAM_LEN]})
        mlc.log_batch(run.info.run_id, params=[
            Param(k, redact_text(v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN]) for k, v in params.items()])
        return run.info.run_id


def end_trial(uri: str, run_id: str, outcome: str, reason: str, failure: dict | None = None) -> None:
    """Close a trial's run with its outcome (COMPLETED, STOPPED, FAILED, CANCELLED) and why."""
    with _mlflow_errors(f"cannot close the trial run {run_id} in {redact(uri)}"):
        mlc = client(uri)
        if failure is not None:
            record_job_failure(uri, run_id, failure)
        mlc.set_tag(run_id, TAG_TRIAL_STATUS, outcome)
        mlc.set_tag(run_id, TAG_TRIAL_REASON, redact_text(reason)[:MAX_PARAM_LEN])
        mlc.set_terminated(run_id, status=MLFLOW_STATUS[outcome])


def mark_function_returned(uri: str, run_id: str) -> None:
    """The trial's function returned on rank 0: it ran every epoch it was asked to."""
    with _mlflow_errors(f"cannot record the end of trial run {run_id} in {redact(uri)}"):
        client(uri).set_tag(run_id, TAG_TRIAL_RETURNED, "true")


def function_returned(uri: str, run_id: str) -> bool:
    with _mlflow_errors(f"cannot read the trial run {run_id} from {redact(uri)}"):
        return client(uri).get_run(run_id).data.tags.get(TAG_TRIAL_RETURNED) == "true"


def trial_runs(uri: str, parent_run_id: str) -> list[dict]:
    """The sweep's trials as recorded: [{"trial", "trial_id", "run_id", "status", "outcome",
    "reason", "params", "metrics"}], by trial number."""
    with _mlflow_errors(f"cannot read the trials of sweep run {parent_run_id} from {redact(uri)}"):
        mlc = client(uri)
        parent = mlc.get_run(parent_run_id)
        found = mlc.search_runs([parent.info.experiment_id], max_results=10_000,
                                filter_string=f"tags.`{TAG_PARENT}` = '{_quoted(parent_run_id)}'")
    out = [{"trial": trial_number(r.data.tags.get(TAG_TRIAL_ID, "")), "trial_id": r.data.tags.get(TAG_TRIAL_ID),
            "run_id": r.info.run_id, "status": r.info.status, "outcome": r.data.tags.get(TAG_TRIAL_STATUS),
            "reason": r.data.tags.get(TAG_TRIAL_REASON), "params": dict(r.data.params),
            "metrics": dict(r.data.metrics)} for r in found]
    return sorted(out, key=lambda t: t["trial"])


def close_open_trials(uri: str, parent_run_id: str, reason: str, cancelled_at: float | None = None) -> int:
    """A sweep that ended: every trial run still RUNNING ends KILLED (`cancelled`); with
    `cancelled_at` (the cancel's time, s), so does a trial that failed after it (its workers were
    torn down by the cancel: not a failure of its own). Returns how many."""
    closed = 0
    mlc = client(uri)
    for t in trial_runs(uri, parent_run_id):
        torn_down = False
        if cancelled_at is not None and t["outcome"] == FAILED:
            end = mlc.get_run(t["run_id"]).info.end_time
            torn_down = end is None or end / 1000 >= cancelled_at
        if t["status"] == "RUNNING" or torn_down:
            end_trial(uri, t["run_id"], CANCELLED, reason)
            closed += 1
    return closed


def settle_trials(uri: str, parent_run_id: str) -> int:
    """Every trial run whose outcome is recorded ends with that outcome's status again: a worker
    of a trial ASHA stopped can still be saving its model when the driver closes the trial's run,
    and MLflow's `start_run` (under `log_model`) leaves the run RUNNING. Returns how many."""
    settled = 0
    for t in trial_runs(uri, parent_run_id):
        if t["outcome"] in MLFLOW_STATUS and t["status"] != MLFLOW_STATUS[t["outcome"]]:
            with _mlflow_errors(f"cannot close the trial run {t['run_id']} in {redact(uri)}"):
                client(uri).set_terminated(t["run_id"], status=MLFLOW_STATUS[t["outcome"]])
            settled += 1
    return settled


def record_best(uri: str, parent_run_id: str, metric: str, best: dict, trials: list[dict]) -> None:
    """The parent's answer: the best trial (tag, params `best.<key>`, metric `best_<metric>`) and
    the best trial's final metrics under their own names (what the job summary shows); the
    trials table (`sweep/trials.json`) and the trials-vs-metric plot (`sweep/trials.png`)."""
    from mlflow.entities import Metric, Param, RunTag

    with _mlflow_errors(f"cannot record the best trial in MLflow run {parent_run_id} in {redact(uri)}"):
        mlc = client(uri)
        import time

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in best["metrics"].items()]
        metrics.append(Metric(f"best_{metric}", best["value"], now, 0))
        params = [Param(f"best.{k}", redact_text(v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN])
                  for k, v in best["params"].items()]
        params.append(Param("best.trial", str(best["trial"])))
        mlc.log_batch(parent_run_id, metrics=metrics, params=params,
                      tags=[RunTag(TAG_BEST_RUN, best["run_id"])])
        mlc.log_text(parent_run_id, json.dumps(trials, indent=2, default=str), TRIALS_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            plot_trials(trials, metric, best, Path(tmp) / "trials.png")
            mlc.log_artifact(parent_run_id, str(Path(tmp) / "trials.png"), "sweep")


def plot_trials(trials: list[dict], metric: str, best: dict | None, path: Path) -> Path:
    """Each trial's last `metric` against its trial number, coloured by outcome (a scatter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {COMPLETED: "tab:green", STOPPED: "tab:orange", FAILED: "tab:red", CANCELLED: "tab:gray"}
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for outcome, colour in colours.items():
        points = [(t["trial"], t["metrics"][metric]) for t in trials
                  if t.get("outcome") == outcome and metric in t["metrics"]]
        if points:
            ax.scatter(*zip(*points), c=colour, label=outcome)
    if best is not None:
        ax.scatter([best["trial"]], [best["value"]], s=200, facecolors="none", edgecolors="black", label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{len(trials)} trials: last {metric} reported")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep_of(uri: str, run_id: str) -> dict | None:
    """The sweep section recorded on a parent run (its `trainer.sweep` tag), or None for a job."""
    with _mlflow_errors(f"cannot read MLflow run {run_id} from {redact(uri)}"):
        tags = client(uri).get_run(run_id).data.tags
    return json.loads(tags[TAG_SWEEP]) if TAG_SWEEP in tags else None


def best_run(uri: str, run_id: str) -> str | None:
    with _mlflow_errors(f"cannot read MLflow run {run_id} from {redact(uri)}"):
        return client(uri).get_run(run_id).data.tags.get(TAG_BEST_RUN)
