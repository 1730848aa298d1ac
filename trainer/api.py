"""The Python API: what the CLI, notebooks, CI and benchmarks call.

    import trainer
    job = trainer.submit("examples/digits/torch.yaml", config={"epochs": 5})
    job.wait()
    job.metrics()          # pandas DataFrame from MLflow
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer.errors import JobError
from trainer.spec import JobSpec, load_spec
from trainer.state import JobState

ENV_ADDRESS = "TRAINER_ADDRESS"


# ---------------------------------------------------------------- clusters

def resolve_address(address: str | None) -> str | None:
    """An explicit address, else $TRAINER_ADDRESS, else None (= the embedded local cluster)."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if address and "://" not in address:
        address = f"http://{address}"
    return address


def cluster_up(nodes: list[str] | None = None, progress: Callable[[str], None] | None = None):
    """Start the local cluster (or reuse it). `nodes` are `ACCEL:CPUS[:GPUS]` strings."""
    from trainer.cluster.local import LocalCluster, NodeSpec

    specs = [NodeSpec.parse(n) for n in nodes] if nodes else None
    return LocalCluster().up(specs, progress=progress)


def cluster_down() -> int:
    from trainer.cluster.local import LocalCluster

    return LocalCluster().down()


def cluster_status(address: str | None = None) -> dict:
    """Nodes (labels, total and free resources) of the given cluster or the local one."""
    from trainer.cluster.inventory import nodes
    from trainer.cluster.local import LocalCluster

    address = resolve_address(address)
    if address is None:
        state = LocalCluster().state()
        if state is None:
            return {"running": False, "address": None, "nodes": []}
        address = state.dashboard_url
    return {"running": True, "address": address, "nodes": [n.to_dict() for n in nodes(address)]}


def _cluster_address(address: str | None, progress=None) -> tuple[str, bool]:
    """(dashboard address, is_local). Starts the local cluster when no address is given."""
    address = resolve_address(address)
    if address is not None:
        return address, False
    state, _ = cluster_up(progress=progress)
    return state.dashboard_url, True


# ---------------------------------------------------------------- jobs

@dataclass
class Job:
    """A submitted job: a Ray job plus the MLflow run that records it."""

    id: str
    address: str
    run_id: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def get(cls, job_id: str, address: str | None = None) -> "Job":
        address = resolve_address(address) or _local_address()
        from trainer.scheduling.ray_jobs import RayJobs

        info = RayJobs(address).info(job_id)
        meta = info.metadata or {}
        return cls(id=job_id, address=address, run_id=meta.get("run_id"),
                   tracking_uri=meta.get("tracking_uri"), name=meta.get("name"),
                   spec=json.loads(meta.get("spec", "{}")))

    def _jobs(self):
        from trainer.scheduling.ray_jobs import RayJobs

        return RayJobs(self.address)

    def status(self) -> JobState:
        state = self._jobs().state(self.id)
        if state.is_terminal:
            self._close_run(state)
        return state

    def info(self) -> dict:
        info = self._jobs().info(self.id)
        state = JobState.from_ray(info.status)
        out = {"job_id": self.id, "status": state.value, "name": self.name, "address": self.address,
               "run_id": self.run_id, "tracking_uri": self.tracking_uri, "message": info.message,
               "start_time": _seconds(info.start_time), "end_time": _seconds(info.end_time)}
        if out["start_time"]:
            out["wall_time_s"] = round((out["end_time"] or time.time()) - out["start_time"], 1)
        return out

    def logs(self) -> str:
        return self._jobs().logs(self.id)

    def follow(self, poll_s: float = 1.0) -> Iterator[str]:
        """New log lines as they appear, until the job ends."""
        jobs, seen = self._jobs(), 0
        while True:
            state = jobs.state(self.id)
            text = jobs.logs(self.id)
            if len(text) > seen:
                chunk, seen = text[seen:], len(text)
                yield from chunk.splitlines()
            if state.is_terminal:
                return
            time.sleep(poll_s)

    def progress(self, poll_s: float = 1.0) -> Iterator[dict]:
        """Progress events ({"step", "metrics", "time"}) printed by rank 0, until the job ends."""
        last = 0.0
        for line in self.follow(poll_s):
            event = parse_progress(line)
            # Several Ray nodes on one host can forward the same worker line twice.
            if event is not None and event.get("time", 0) > last:
                last = event.get("time", 0)
                yield event

    def wait(self, timeout: float | None = None, poll_s: float = 1.0) -> JobState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.status()
            if state.is_terminal:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {self.id} still {state.value} after {timeout:g}s")
            time.sleep(poll_s)

    def cancel(self) -> JobState:
        """Stop the job; returns its state once Ray has stopped it."""
        self._jobs().stop(self.id)
        return self.wait(timeout=120)

    def metrics(self):
        """Every metric the job logged, as a pandas DataFrame (key, step, value, timestamp)."""
        from trainer.tracking.runs import metrics_frame

        if not self.run_id:
            raise JobError(f"job {self.id} has no MLflow run")
        return metrics_frame(self.tracking_uri, self.run_id)

    def final_metrics(self) -> dict[str, float]:
        from trainer.tracking.runs import client

        if not self.run_id:
            return {}
        return dict(client(self.tracking_uri).get_run(self.run_id).data.metrics)

    def _close_run(self, state: JobState) -> None:
        """A cancelled or killed driver cannot close its run: do it from here."""
        if not self.run_id:
            return
        from trainer.tracking.runs import finish_run, run_status

        try:
            current = run_status(self.tracking_uri, self.run_id)
            # A cancel is authoritative: the driver may have ended the run FAILED on its way out.
            if current == "RUNNING" or (state is JobState.CANCELLED and current != "KILLED"):
                finish_run(self.tracking_uri, self.run_id, state.mlflow_status)
        except Exception:
            pass  # tracking unreachable: the job's state is still right


def parse_progress(line: str) -> dict | None:
    """The event in a rank-0 progress line of the job's logs, or None."""
    from trainer.context import PROGRESS_PREFIX

    idx = line.find(PROGRESS_PREFIX)
    if idx < 0:
        return None
    try:
        return json.loads(line[idx + len(PROGRESS_PREFIX):])
    except ValueError:
        return None


def _seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms else None


def _local_address() -> str:
    from trainer.cluster.local import LocalCluster

    state = LocalCluster().state()
    if state is None:
        raise JobError("no local cluster is running and no --address/TRAINER_ADDRESS is set")
    return state.dashboard_url


def _job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _load(spec: str | Path | dict | JobSpec, set: list[str] | None, overrides: dict) -> tuple[JobSpec, Path]:
    if isinstance(spec, JobSpec):
        spec = spec.model_dump(exclude_none=True)
    spec_obj, workdir = load_spec(spec, set)
    if overrides:
        merged = _deep_merge(spec_obj.model_dump(exclude_none=True), overrides)
        spec_obj, _ = load_spec(merged)
    return spec_obj, workdir


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def submit(spec: str | Path | dict | JobSpec, wait: bool = False, *, address: str | None = None,
           set: list[str] | None = None, progress: Callable[[str], None] | None = None,
           **overrides) -> Job:
    """Validate, preflight and submit a job; returns the Job (finished if `wait`).

    `set` takes `dotted.key=value` strings (as `--set` on the CLI); keyword overrides are merged
    into the spec (`config={"lr": 0.1}`, `workers=4`). Nothing is submitted when a check fails.
    """
    from trainer.cluster.inventory import nodes
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import UPLOAD_EXCLUDES, check_placement, check_spec, check_tracking
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    uri = runs.tracking_uri(spec_obj)
    address_given = resolve_address(address)
    check_tracking(uri, local_cluster=address_given is None)
    dashboard, local = _cluster_address(address, progress)
    check_placement(spec_obj, nodes(dashboard, free=False))

    job_id = _job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, dashboard, checked.fingerprint)
    env = {"TRAINER_SPEC": spec_obj.model_dump_json(), "TRAINER_RUN_ID": run_id, "TRAINER_JOB_ID": job_id,
           "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    if local:
        from trainer.home import trainer_home

        env["TRAINER_HOME"] = str(trainer_home())
    # Locally the job runs under the runtime's venv; on a cluster, the runtime's image has `python`.
    python = str(interpreter) if local else "python"
    runtime_env = {"working_dir": str(workdir), "excludes": UPLOAD_EXCLUDES, "env_vars": env}
    if local:
        runtime_env["py_executable"] = python
    try:
        RayJobs(dashboard).submit(
            job_id=job_id, entrypoint=f"{python} -m trainer.runners.job", runtime_env=runtime_env,
            metadata={"run_id": run_id, "tracking_uri": uri, "name": spec_obj.name,
                      "spec": spec_obj.model_dump_json(exclude_none=True)})
    except Exception:
        runs.finish_run(uri, run_id, "FAILED")
        raise
    job = Job(id=job_id, address=dashboard, run_id=run_id, tracking_uri=uri, name=spec_obj.name,
              spec=spec_obj.model_dump(exclude_none=True))
    if wait:
        job.wait()
    return job


def list_jobs(address: str | None = None) -> list[dict]:
    from trainer.scheduling.ray_jobs import RayJobs

    address = resolve_address(address) or _local_address()
    out = []
    for info in RayJobs(address).list():
        meta = info.metadata or {}
        out.append({"job_id": info.submission_id, "name": meta.get("name"),
                    "status": JobState.from_ray(info.status).value, "run_id": meta.get("run_id"),
                    "start_time": _seconds(info.start_time), "end_time": _seconds(info.end_time)})
    return sorted(out, key=lambda j: j["start_time"] or 0)


@dataclass
class LocalRun:
    run_id: str
    tracking_uri: str
    wall_time_s: float
    metrics: dict[str, float]


def run_local(spec: str | Path | dict | JobSpec, *, set: list[str] | None = None, **overrides) -> LocalRun:
    """Run the job's function in this process (world size 1, no Ray), tracked in MLflow."""
    from trainer.home import trainer_home
    from trainer.runners.job import run_in_process
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import check_spec
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    if interpreter.parent.parent.resolve() != Path(sys.prefix).resolve():
        return _run_local_in(interpreter, spec_obj, workdir)
    uri = runs.tracking_uri(spec_obj)
    job_id = "local-" + _job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, "local", checked.fingerprint)
    started = time.monotonic()
    run_in_process(spec_obj, workdir, run_id, uri, trainer_home() / "local" / job_id)
    metrics = dict(runs.client(uri).get_run(run_id).data.metrics)
    return LocalRun(run_id, uri, round(time.monotonic() - started, 1), metrics)


def _run_local_in(interpreter: Path, spec: JobSpec, workdir: Path) -> LocalRun:
    """`run_local` under another runtime's interpreter (the job's framework is not installed in
    this one, e.g. tensorflow from the main venv): the child's output streams through."""
    import subprocess
    import tempfile

    from trainer.home import repo_root

    code = ("import dataclasses, json, sys\n"
            "from trainer.api import run_local\n"
            "from trainer.errors import TrainerError\n"
            "try:\n"
            "    result = run_local(json.loads(sys.argv[1]))\n"
            "except TrainerError as e:\n"
            "    print(f'error: {e}', file=sys.stderr)\n"
            "    sys.exit(e.exit_code)\n"
            "open(sys.argv[2], 'w').write(json.dumps(dataclasses.asdict(result)))\n")
    path = os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="trainer-local-") as tmp:
        result = Path(tmp) / "result.json"
        # cwd = the workdir: a spec given as a dict is resolved against the cwd.
        proc = subprocess.run([str(interpreter), "-c", code, spec.model_dump_json(exclude_none=True), str(result)],
                              cwd=workdir, env=env)
        if proc.returncode != 0 or not result.is_file():
            raise JobError(f"local run in the {spec.runtime_name} runtime ({interpreter}) failed with exit code "
                           f"{proc.returncode}; its output is above")
        return LocalRun(**json.loads(result.read_text()))
