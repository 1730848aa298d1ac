"""The contract between a job's client and its driver, in one place.

The client (`trainer.api`, the KubeRay render, the benchmarks) hands the driver
(`python -m trainer.runners.job`) its work through environment variables; the driver and rank 0
answer with prefixed JSON lines in the job's log; both sides name the job's MLflow run in the Ray
job's metadata and the RayJob's annotations. Each name is defined here once, with its parser.
Pure: no Ray, no MLflow, nothing of trainer above the bottom layer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

# ---------------------------------------------------------------- the driver's environment

ENV_SPEC = "TRAINER_SPEC"                    # the job spec, as JSON
ENV_RUN_ID = "TRAINER_RUN_ID"                # the MLflow run the client opened (absent: the driver opens one)
ENV_JOB_ID = "TRAINER_JOB_ID"                # the Ray submission id / RayJob name
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"     # the store, without credentials
# The sha256 of the job's data the client recorded in the run at submit (trainer.data.pin checks it
# before training): the driver need not read the run (nor import MLflow) before connecting to Ray.
ENV_DATA_DIGEST = "TRAINER_DATA_DIGEST"

DRIVER_MODULE = "trainer.runners.job"


def driver_entrypoint(python: str = "python") -> str:
    """The Ray job's entrypoint: the job driver under `python` (a runtime's venv, or an image's)."""
    return f"{python} -m {DRIVER_MODULE}"


# Never uploaded with the job's code (gitwildmatch patterns relative to the project; the job's zip is made
# without them, trainer.scheduling.upload): tool caches, and files that hold secrets (keys, tokens, credentials).
# SSH keys by their names (id_rsa...), not `id_*`, which would drop an `id_map.py` without a word.
UPLOAD_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
                   ".mypy_cache", "mlruns", "mlartifacts", "mlflow.db", ".trainer", "*.egg-info",
                   "node_modules", ".ipynb_checkpoints", ".device", ".whl", ".gl",
                   ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", ".netrc", ".pypirc", ".git-credentials",
                   "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh/", ".aws/", ".kube/", ".gnupg/",
                   "**/.docker/config.json"]


ENV_STOP_WAIT, STOP_WAIT_S = "RAY_JOB_STOP_WAIT_TIME_S", "15"


def job_runtime_env(spec_json: str, *, job_id: str, tracking_uri: str, run_id: str | None = None,
                    working_dir: str | Path | None = None, excludes: list[str] | None = None,
                    python: str | None = None, extra_env: dict[str, str] | None = None,
                    data_digest: str | None = None) -> dict:
    """A job's Ray runtime env: the driver's variables (the run id only when the client opened
    the run, with the data digest it recorded there), the code to upload and what to leave out,
    the interpreter (a local cluster runs the runtime's venv; an image has `python`), and
    `extra_env` (TRAINER_HOME, forwarded credentials, Ray settings)."""
    # RAY_JOB_STOP_WAIT_TIME_S: a cancel SIGTERMs the driver and SIGKILLs it this long after (Ray's
    # default, 3 s, is read by the job's supervisor, which runs with these variables). The driver
    # ends its runs on the way out (the job's KILLED, a sweep's open trials), which on a loaded
    # 2-core host can take more than 3 s; a driver ends as soon as they are closed (~2 s here).
    env = {ENV_SPEC: spec_json, ENV_JOB_ID: job_id, ENV_TRACKING_URI: tracking_uri, "PYTHONUNBUFFERED": "1",
           ENV_STOP_WAIT: STOP_WAIT_S}
    if run_id:
        env[ENV_RUN_ID] = run_id
        if data_digest:
            env[ENV_DATA_DIGEST] = data_digest
    if json.loads(spec_json).get("sweep"):
        # Ray's driver folds lines of different processes that differ only in their numbers
        # ("[repeated 2x across cluster]"): a sweep's trials print alike, and each trial's lines
        # must all reach the log (`trainer logs SWEEP --trial N`).
        env["RAY_DEDUP_LOGS"] = "0"
    env.update(extra_env or {})
    out: dict = {"env_vars": env}
    if working_dir is not None:
        out["working_dir"] = str(working_dir)
    if excludes is not None:
        out["excludes"] = list(excludes)
    if python is not None:
        out["py_executable"] = str(python)
    return out


# ---------------------------------------------------------------- the job's log lines

PROGRESS_PREFIX = "TRAINER_PROGRESS "   # rank 0, per report: {"step", "metrics", "time"}
FAILURE_PREFIX = "TRAINER_FAILURE "     # a worker's (or the driver's) failure record
TIMING_PREFIX = "TRAINER_TIMING "       # the driver, last: where its time went (entrypoint, connected, ...)
# Every worker, when it starts and ends: {"event": "worker_start"|"worker_end", "time", "rank", "node", "group",
# ...}; the driver reads them as Ray forwards them and keeps the job's timeline in its run (trainer.tracking.record).
EVENT_PREFIX = "TRAINER_EVENT "


SWEEP_PREFIX = "TRAINER_SWEEP "         # a sweep's driver, per trial event: counts and the best so far


def sweep_line(state: dict) -> str:
    """{"total", "running", "done", "stopped", "failed", "metric", "best", "best_trial", "time"}."""
    return SWEEP_PREFIX + json.dumps(state)


def parse_sweep(line: str) -> dict | None:
    """The event in a sweep driver's progress line of the job's log, or None."""
    return _after(line, SWEEP_PREFIX)


def _after(line: str, prefix: str) -> dict | None:
    idx = line.find(prefix)
    if idx < 0:
        return None
    try:
        found = json.loads(line[idx + len(prefix):])
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def event_line(event: str, time: float, **fields) -> str:
    return EVENT_PREFIX + json.dumps({"event": event, "time": time, **fields}, default=str)


def parse_event(line: str) -> dict | None:
    """The event in a worker's event line (behind Ray's prefix), or None."""
    return _after(line, EVENT_PREFIX)


def progress_line(step: int, metrics: dict, time: float) -> str:
    return PROGRESS_PREFIX + json.dumps({"step": step, "metrics": metrics, "time": time})


# The Ray Train controller, when a worker group failed and will be restarted (a person's line,
# kept by `LogFilter` and shown by `submit --wait`): "trainer: attempt 2 of 3: ValueError: ...".
RETRY_PREFIX = "trainer: attempt "


def retry_line(attempt: int, attempts: int, reason: str) -> str:
    return f"{RETRY_PREFIX}{attempt} of {attempts}: {reason}"


def parse_retry(line: str) -> str | None:
    """"attempt 2 of 3: <reason>" from a retry line of the job's log (behind Ray's prefix), or None."""
    idx = line.find(RETRY_PREFIX)
    return None if idx < 0 else line[idx + len("trainer: "):].strip()


def parse_progress(line: str) -> dict | None:
    """The event in a rank-0 progress line of the job's logs, or None."""
    return _after(line, PROGRESS_PREFIX)


def failure_from_logs(text: str) -> dict | None:
    """The failure line the job driver (or a worker) printed in the job's log with the lowest
    rank, or None."""
    found = None
    for line in text.splitlines():
        record = _after(line, FAILURE_PREFIX)
        if record is not None and (found is None or (record.get("rank") or 0) < (found.get("rank") or 0)):
            found = record
    return found


def timing_from_logs(text: str) -> dict:
    """The driver's timing line ({"entrypoint": t, "connected": t, ...}), or {} when absent."""
    found: dict = {}
    for line in text.splitlines():
        if line.startswith(TIMING_PREFIX):
            found = _after(line, TIMING_PREFIX) or found
    return found


# ---------------------------------------------------------------- names on the job

# The Ray job's metadata (`trainer.api.submit` writes them, `Job.get` reads them).
META_RUN_ID = "run_id"
META_TRACKING_URI = "tracking_uri"
META_NAME = "name"
META_SPEC = "spec"

# The RayJob's annotations and labels (`trainer.scheduling.rayjob` writes them).
ANNOTATION_RUN_ID = "trainer.io/run-id"
ANNOTATION_TRACKING_URI = "trainer.io/tracking-uri"
LABEL_JOB_NAME = "trainer.io/job-name"
LABEL_FRAMEWORK = "trainer.io/framework"
# The Ray node label of a worker node running in a runtime image's container (`cluster up --image`).
LABEL_NODE_IMAGE = "trainer.io/image"


# ---------------------------------------------------------------- the job's log, for a person

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Ray's prefix on a line forwarded from a worker process: "(RayTrainWorker pid=123, ip=10.0.0.2) ".
RAY_SOURCE = re.compile(r"^\((?P<source>[^()]*\bpid=\d+[^()]*)\) ?")
PROTOCOL_PREFIXES = (PROGRESS_PREFIX, FAILURE_PREFIX, TIMING_PREFIX, EVENT_PREFIX, SWEEP_PREFIX)
# Our dependencies' log lines, by their formats: Python logging as Ray and MLflow set it up
# ("2026-12-06 01:58:55,956\tINFO job_manager.py:581 -- ...", "2026/12/06 01:58:55 WARNING mlflow...: ..."),
# the default "WARNING:absl:...", glog/absl ("W1206 01:58:55.123 123 file.cc:12] ...", Ray's
# "[2026-12-06 02:00:27,326 W 28026 28193] file.cc:12: ..."), and Python's warnings module
# ("/path/x.py:12: UserWarning: ..."). Errors stay: they may say why a job failed.
DEPENDENCY_LINE = re.compile(
    r"^(?:\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?\s+(?:DEBUG|INFO|WARNING|WARN)\b"
    r"|(?:DEBUG|INFO|WARNING):[\w.]+:"
    r"|[IWD]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]"
    r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWD] \d+ \d+\]"
    r"|\S+\.py:\d+: \w*Warning: )")
# Ray Train's own actors, and what its worker-side logger says on every run.
RAY_ACTORS = ("TrainController", "PlacementGroupCleaner", "SynchronizationActor", "AutoscalingCoordinator",
              "PreemptionWatcher", "TrainStateActor")
RAY_TRAIN_NOTES = re.compile(r"^(?:Setting up process group for: |Moving model to device: |Wrapping provided model in "
                             r"|Reporting training result \d+: |Checkpoint successfully created at: )")
DUPLICATE_WINDOW = 8


class LogFilter:
    """A job's log as a person reads it (`trainer logs`, a notebook): the user's lines and ours,
    without the protocol lines above, ANSI colour codes (unless `keep_ansi`: a terminal), Ray's
    and MLflow's log lines, Ray Train's actors' chatter, or lines forwarded twice.

    Forwarded twice: several Ray nodes on one host each forward a worker's output, so the same line
    arrives twice from one process. A repeated line is not proof of that (a user may print "done"
    every epoch), so a source counts as forwarded twice only once one of its protocol lines, unique
    by construction (each carries its time), has arrived twice; from then on an exact repeat of one
    of that source's last DUPLICATE_WINDOW lines is dropped, each line pairing with one repeat
    (a line printed twice and forwarded twice shows twice). Lines with no Ray prefix (the driver's)
    are never dropped as duplicates.

    `feed(line)` returns the line to show, or None."""

    def __init__(self, keep_ansi: bool = False):
        self.keep_ansi = keep_ansi
        self._recent: dict[str, list[tuple[str, bool]]] = {}
        self._doubled: set[str] = set()
        self._after_warning = False

    def feed(self, line: str) -> str | None:
        plain = ANSI_ESCAPE.sub("", line)
        found = RAY_SOURCE.match(plain)
        source, text = (found.group("source"), plain[found.end():]) if found else (None, plain)
        if source is not None and self._repeated(source, text):
            return None
        after_warning, self._after_warning = self._after_warning, False
        if text.startswith(PROTOCOL_PREFIXES):
            return None
        actor = source.split(" ", 1)[0] if source else None
        if text.startswith("trainer: "):
            return line if self.keep_ansi else plain      # ours, wherever it runs (the controller's retry line)
        if actor in RAY_ACTORS or RAY_TRAIN_NOTES.match(text):
            return None
        if DEPENDENCY_LINE.match(text):
            # Python's warnings module quotes the offending source line next, indented.
            self._after_warning = "Warning: " in text
            return None
        if after_warning and text[:1].isspace():
            return None
        return line if self.keep_ansi else plain

    def _repeated(self, source: str, text: str) -> bool:
        """Whether this line is the second forward of one of the source's last lines: each
        earlier line pairs with at most one repeat, so a line printed twice and forwarded twice
        shows twice."""
        recent = self._recent.setdefault(source, [])
        unpaired = next((i for i, (seen, paired) in enumerate(recent) if seen == text and not paired), None)
        if unpaired is not None and text.startswith(PROTOCOL_PREFIXES):
            self._doubled.add(source)
        if unpaired is not None and source in self._doubled:
            recent[unpaired] = (text, True)
            return True
        recent.append((text, False))
        del recent[:-DUPLICATE_WINDOW]
        return False

    def text(self, text: str) -> str:
        """A whole log, filtered."""
        kept = [shown for shown in map(self.feed, text.splitlines()) if shown is not None]
        return "".join(f"{shown}\n" for shown in kept)


# ---------------------------------------------------------------- what the model needs on a device

# `ctx.save_model(..., preprocessing=, class_names=)` logs them to the run as this artifact; the
# converters carry them into an edge bundle's manifest (`preprocessing`, `labels`), whose runner
# applies the preprocessing (`run.py --preprocess`) and names its top-k classes.
MODEL_INFO_ARTIFACT = "model_info/model_info.json"
PREPROCESSING_KEYS = ("scale", "mean", "std", "channel_axis")


def model_info(preprocessing: dict | None = None, class_names=None, *, what: str = "ctx.save_model") -> dict:
    """{"preprocessing": ..., "class_names": ...} checked (ValueError naming what is wrong):
    preprocessing {scale: number, mean/std: number or list of numbers, channel_axis: int}, what a
    bundle's runner applies as `(x * scale - mean) / std`; class_names a list of strings, index =
    the model's output class."""
    if preprocessing is not None:
        if not isinstance(preprocessing, dict) or not preprocessing:
            raise ValueError(f"{what}: preprocessing must be a dict like {{'scale': 1/16}}, got {preprocessing!r}")
        unknown = sorted(set(preprocessing) - set(PREPROCESSING_KEYS))
        if unknown:
            raise ValueError(f"{what}: preprocessing keys are {', '.join(PREPROCESSING_KEYS)}; "
                             f"unknown: {', '.join(map(str, unknown))}")
        out = {}
        for key, value in preprocessing.items():
            values = value if isinstance(value, (list, tuple)) and key in ("mean", "std") else [value]
            number = (int,) if key == "channel_axis" else (int, float)
            if not values or not all(isinstance(v, number) and not isinstance(v, bool) and v == v
                                     and abs(v) != float("inf") for v in values):
                raise ValueError(f"{what}: preprocessing {key} must be "
                                 f"{'an int' if key == 'channel_axis' else 'a finite number (or a list of them)'}, "
                                 f"got {value!r}")
            out[key] = list(values) if isinstance(value, (list, tuple)) else value
        preprocessing = out
    if class_names is not None:
        names = list(class_names) if isinstance(class_names, (list, tuple)) else None
        if not names or not all(isinstance(n, str) and n and len(n) <= 200 for n in names):
            raise ValueError(f"{what}: class_names must be a non-empty list of strings (index = class), "
                             f"got {class_names!r:.100}")
        class_names = names
    return {"preprocessing": preprocessing, "class_names": class_names}
