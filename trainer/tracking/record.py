"""A job's MLflow run as its complete record, written as the job goes, so that it outlives the
cluster (a local `cluster down`, a KubeRay RayCluster deleted after its job) and lets the job be
run again exactly (`trainer inspect`, `trainer rerun`).

What the job's driver (`trainer.runners.job`) keeps in its run, under `record/`:

- `driver.log.gz`: the driver's output, which holds every worker's lines as Ray forwards them
  (each behind its `(RayTrainWorker pid=..., ip=...)` prefix): capped at its first LOG_HEAD_BYTES
  and last LOG_TAIL_BYTES (older lines rotate out of the tail), with a line saying what was cut;
  gzip-compressed; rewritten every FLUSH_EVERY_S seconds while the job runs, and at its end.
- `timeline.json`: the events (submitted, driver started, each worker group's start with its
  nodes, each restore, each restart with its reason, end), where it ran (nodes and their labels,
  the runtime and its lock digest, Python and Ray versions), and the cost (CPU- and GPU-seconds
  from the worker groups' lifetimes).
- `spec.json`: the resolved spec, whole (the `trainer.spec` tag is cut at MLflow's tag size).
- the code Ray received (the job's unpacked working_dir), as a zip stored ONCE per content digest
  in the `trainer-code` experiment (one run per digest, artifact `code.zip`); the job's run names
  it by `trainer.code_digest` and `trainer.code_run`.

The data digest is the run's dataset (recorded at submit, `trainer.tracking.runs.start_run`); the
failure record is the run's `trainer.failure.*` tags and `failure/failure.json` (the driver's
`_close`). Workers tell the driver they started and ended with `trainer.protocol.event_line`.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.credentials import redact_text
from trainer.errors import TrackingError, TrainerError, first_line
from trainer.protocol import event_line, parse_event, parse_retry
from trainer.tracking import preload

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainer.spec import JobSpec

log = logging.getLogger(__name__)

RECORD_DIR = "record"
LOG_ARTIFACT = f"{RECORD_DIR}/driver.log.gz"
TIMELINE_ARTIFACT = f"{RECORD_DIR}/timeline.json"
SPEC_ARTIFACT = f"{RECORD_DIR}/spec.json"

CODE_EXPERIMENT = "trainer-code"
CODE_ARTIFACT = "code.zip"
TAG_CODE_DIGEST = "trainer.code_digest"
TAG_CODE_RUN = "trainer.code_run"
TAG_RERUN_OF = "trainer.rerun_of"
TAG_CPU_SECONDS = "trainer.cost.cpu_seconds"
TAG_GPU_SECONDS = "trainer.cost.gpu_seconds"

LOG_HEAD_BYTES = 256 * 1024
LOG_TAIL_BYTES = 4 * 2**20
FLUSH_EVERY_S = 15.0
# Not part of the code a job ran: what Python writes next to the sources once they are imported.
_NOT_CODE = ("__pycache__",)
_CODE_FORMAT = b"trainer-code-digest/1\0"

WORKER_START = "worker_start"
WORKER_END = "worker_end"


# ---------------------------------------------------------------- the log, capped

def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} GiB"


class CappedLog:
    """A log kept within `head + tail` bytes: its first lines up to `head`, then its last lines up
    to `tail` (the oldest rotate out); the lines in between are counted, and `text()` says where
    and how much was cut."""

    def __init__(self, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES):
        self.head_cap, self.tail_cap = head, tail
        self.head: list[str] = []
        self.tail: deque[str] = deque()
        self.head_bytes = self.tail_bytes = 0
        self.cut_lines = self.cut_bytes = 0
        self.total_bytes = 0
        self.version = 0          # changes with every line: the flusher skips an unchanged log

    def add(self, line: str) -> None:
        if len(line) > self.tail_cap:
            line = line[:self.tail_cap // 2] + f" [trainer: line cut at {_size(self.tail_cap // 2)}]"
        n = len(line.encode("utf-8", "replace")) + 1
        self.version += 1
        self.total_bytes += n
        if not self.tail and self.head_bytes + n <= self.head_cap:
            self.head.append(line)
            self.head_bytes += n
            return
        self.tail.append(line)
        self.tail_bytes += n
        while self.tail_bytes > self.tail_cap and len(self.tail) > 1:
            old = self.tail.popleft()
            size = len(old.encode("utf-8", "replace")) + 1
            self.tail_bytes -= size
            self.cut_lines += 1
            self.cut_bytes += size

    def text(self) -> str:
        lines = list(self.head)
        if self.cut_lines:
            lines.append(f"[trainer: {self.cut_lines} lines ({_size(self.cut_bytes)}) cut here: a job's recorded log "
                         f"keeps its first {_size(self.head_cap)} and its last {_size(self.tail_cap)}]")
        lines.extend(self.tail)
        return "".join(f"{line}\n" for line in lines)


class LineTee:
    """A stream that writes through to the real one and hands each complete line to `on_line`
    (outside its lock: Ray's log thread and the program print at once)."""

    def __init__(self, real, on_line):
        self._real, self._on_line, self._partial = real, on_line, ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            written = self._real.write(text)
            self._partial += text
            if "\n" in self._partial:
                *lines, self._partial = self._partial.split("\n")
            elif len(self._partial) > LOG_TAIL_BYTES:    # no newline for megabytes: keep it as a line
                lines, self._partial = [self._partial], ""
            else:
                return written
        for line in lines:
            self._on_line(line)
        return written

    def drain(self) -> None:
        if self._partial:
            self._on_line(self._partial)
            self._partial = ""

    def __getattr__(self, name):
        return getattr(self._real, name)


# ---------------------------------------------------------------- the timeline and the cost

def groups_of(events: list[dict], ended_at: float | None) -> list[dict]:
    """The worker groups in the workers' events, in the order they started: {"group" (1, 2, ...),
    "start", "end", "ranks", "nodes"}. A group ends when its last worker said so, else when the
    next group started, else when the job ended (None while it runs)."""
    found: dict[str, dict] = {}
    for ev in sorted(events, key=lambda e: e.get("time") or 0):
        if ev.get("event") not in (WORKER_START, WORKER_END):
            continue
        key = str(ev.get("group"))
        g = found.get(key)
        if g is None:
            if ev["event"] != WORKER_START:
                continue
            g = found[key] = {"start": ev["time"], "end": None, "ranks": [], "nodes": [], "ended": set()}
        if ev["event"] == WORKER_START:
            g["start"] = min(g["start"], ev["time"])
            if ev.get("rank") not in g["ranks"]:
                g["ranks"].append(ev.get("rank"))
            if ev.get("node") and ev["node"] not in g["nodes"]:
                g["nodes"].append(ev["node"])
        else:
            g["ended"].add(ev.get("rank"))
            g["end"] = max(g["end"] or 0, ev["time"])
    ordered = sorted(found.values(), key=lambda g: g["start"])
    out = []
    for i, g in enumerate(ordered):
        end = g["end"] if g["end"] is not None and g["ended"] >= set(g["ranks"]) else None
        if end is None and i + 1 < len(ordered):
            end = ordered[i + 1]["start"]
        if end is None:
            end = g["end"] if g["end"] is not None else ended_at
        out.append({"group": i + 1, "start": g["start"], "end": end, "ranks": sorted(r for r in g["ranks"]
                                                                                    if r is not None),
                    "nodes": g["nodes"]})
    return out


def cost_of(groups: list[dict], workers: int, cpus_per_worker: float, gpus_per_worker: float,
            now: float | None = None) -> dict:
    """CPU- and GPU-seconds the worker groups held: each group's lifetime times what its workers
    reserved (a group still running counts up to `now`)."""
    seconds = 0.0
    for g in groups:
        end = g["end"] if g["end"] is not None else now
        if end is not None:
            seconds += max(0.0, end - g["start"])
    return {"cpu_seconds": round(seconds * workers * cpus_per_worker, 1),
            "gpu_seconds": round(seconds * workers * gpus_per_worker, 1), "worker_groups": len(groups)}


# ---------------------------------------------------------------- the code, by digest

def code_files(folder: Path) -> list[tuple[str, Path]]:
    """The files of the job's unpacked code (relative POSIX path, path), sorted; bytecode caches
    written once it ran are not code."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_CODE)
        for name in files:
            p = Path(root) / name
            if name.endswith(".pyc") or not stat.S_ISREG(p.lstat().st_mode):
                continue
            out.append((p.relative_to(folder).as_posix(), p))
    return sorted(out)


def code_digest(folder: Path) -> str:
    """sha256 of the code's relative paths and bytes (framed as trainer.data frames data)."""
    digest = hashlib.sha256(_CODE_FORMAT)
    for rel, p in code_files(folder):
        data = p.read_bytes()
        name = rel.encode("utf-8", "surrogateescape")
        digest.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def zip_code(folder: Path, dest: Path) -> Path:
    """The code as a zip whose bytes depend on its content only (sorted, fixed times)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, p in code_files(folder):
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(p, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, p.read_bytes())
    return dest


def store_code(mlc: "MlflowClient", uri: str, folder: Path) -> tuple[str, str]:
    """(digest, code run id): the code in `folder` kept once per digest in CODE_EXPERIMENT."""
    from trainer.tracking.runs import TAG_NOTE, experiment_id

    digest = code_digest(folder)
    exp = experiment_id(mlc, CODE_EXPERIMENT, uri)
    found = mlc.search_runs([exp], filter_string=f"tags.`{TAG_CODE_DIGEST}` = '{digest}' and "
                                                 f"attributes.status = 'FINISHED'", max_results=1)
    if found:
        return digest, found[0].info.run_id
    run = mlc.create_run(exp, run_name=f"code-{digest[:12]}",
                         tags={TAG_CODE_DIGEST: digest,
                               TAG_NOTE: "The code a job's cluster received, kept once per content digest "
                                         "(trainer rerun submits it again)."})
    try:
        with tempfile.TemporaryDirectory(prefix="trainer-code-") as tmp:
            mlc.log_artifact(run.info.run_id, str(zip_code(folder, Path(tmp) / CODE_ARTIFACT)))
    except BaseException:
        mlc.set_terminated(run.info.run_id, status="FAILED")
        raise
    mlc.set_terminated(run.info.run_id, status="FINISHED")
    return digest, run.info.run_id


def fetch_code(uri: str, run_id: str, dest_root: Path) -> Path:
    """The code run `run_id` ran, unpacked under `dest_root/<digest>` (once per digest), checked
    against its recorded digest. TrackingError when the run has none or it does not match."""
    from trainer.tracking.runs import client

    mlc = client(uri)
    tags = mlc.get_run(run_id).data.tags
    digest, code_run = tags.get(TAG_CODE_DIGEST), tags.get(TAG_CODE_RUN)
    if not digest or not code_run:
        raise TrackingError(f"MLflow run {run_id} has no recorded code (its driver did not record it: a job "
                            f"submitted before trainer kept code, or one that never started)")
    dest, complete = dest_root / digest, dest_root / f"{digest}.complete"   # the marker is not code
    if complete.is_file() and dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory(prefix="trainer-code-", dir=dest_root.parent if dest_root.parent.is_dir()
                                     else None) as tmp:
        got = Path(mlc.download_artifacts(code_run, CODE_ARTIFACT, tmp))
        unpacked = Path(tmp) / "code"
        with zipfile.ZipFile(got) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts:
                    raise TrackingError(f"the code of MLflow run {run_id} holds an unsafe path {name!r}; not unpacked")
            zf.extractall(unpacked)
        now = code_digest(unpacked)
        if now != digest:
            raise TrackingError(f"the code of MLflow run {run_id} does not match its recorded digest "
                                f"({now[:12]}, recorded {digest[:12]}): not running it")
        dest_root.mkdir(parents=True, exist_ok=True)
        if dest.exists() and not complete.is_file():
            shutil.rmtree(dest)             # a copy cut short: unpacked again
        try:
            os.replace(unpacked, dest)
        except OSError:
            if not complete.is_file():      # not another process's finished copy
                raise
        complete.write_text(digest)
    return dest


# ---------------------------------------------------------------- the driver's recorder

class Recorder:
    """Kept by the job's driver from its first line to its last: tees the driver's output into a
    CappedLog, turns the workers' event lines and the controller's restart lines into the
    timeline, and writes the record into the run every FLUSH_EVERY_S seconds on a daemon thread
    (and at `finish`). Recording is best effort: a store that fails is said once in the job's log,
    and the job goes on."""

    def __init__(self, spec: "JobSpec", job_id: str, run_id: str, uri: str, started: float, workdir: Path):
        self.spec, self.job_id, self.run_id, self.uri, self.workdir = spec, job_id, run_id, uri, workdir
        self.log = CappedLog()
        self.events: list[dict] = [{"event": "driver_started", "time": started, "host": socket.gethostname()}]
        self.where: dict = {}
        self.ended_at: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._written: tuple = ()
        self._warned = False
        self._thread: threading.Thread | None = None
        self._streams: tuple = ()

    # -- capture
    def capture(self) -> "Recorder":
        """Tee the driver's output into the log from here on. Needs no MLflow: the caller can
        capture from its first line and `start` the writing thread once MLflow is on its way."""
        if not self._streams:
            self._streams = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = LineTee(sys.stdout, self._line), LineTee(sys.stderr, self._line)
        return self

    def start(self) -> "Recorder":
        """Capture (if not yet) and start the thread that writes the record into the run."""
        if not preload.started():
            # MLflow imported here, in the caller's thread, before the recorder's thread uses it:
            # two threads importing MLflow at once can hand one of them a half-initialised
            # protobuf module (trainer.tracking.preload), which failed sweeps' drivers. A caller
            # that started the preload thread has every MLflow use wait for it instead.
            from mlflow import MlflowClient  # noqa: F401

        self.capture()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trainer-record")
        self._thread.start()
        return self

    def _line(self, line: str) -> None:
        with self._lock:
            self.log.add(line)
            event = parse_event(line)
            if event is not None and event.get("event") in (WORKER_START, WORKER_END):
                self._worker_event(event)
                return
            retry = parse_retry(line)
            if retry and not any(e.get("event") == "restart" and e.get("reason") == retry for e in self.events):
                self.events.append({"event": "restart", "time": time.time(), "reason": retry})

    def _worker_event(self, event: dict) -> None:
        if any(e.get("event") == event["event"] and e.get("rank") == event.get("rank")
               and e.get("group") == event.get("group") for e in self.events):
            return        # forwarded twice (several Ray nodes on one host)
        self.events.append(event)
        if event["event"] == WORKER_START and event.get("restored"):
            if event.get("rank") == 0:
                self.events.append({"event": "restore", "time": event["time"], "checkpoint": event["restored"],
                                    "fell_back": event.get("fell_back")})

    def event(self, name: str, **fields) -> None:
        with self._lock:
            self.events.append({"event": name, "time": time.time(), **fields})

    # -- writing
    def snapshot(self) -> dict:
        """The timeline document (timeline.json) as of now."""
        with self._lock:
            events = sorted(self.events, key=lambda e: e.get("time") or 0)
        groups = groups_of(events, self.ended_at)
        res = self.spec.resources
        cost = cost_of(groups, self.spec.workers, res.cpus_per_worker, res.gpus_per_worker,
                       now=self.ended_at or time.time())
        nodes: dict[str, dict] = {}
        for e in events:
            if e.get("event") == WORKER_START and e.get("node"):
                n = nodes.setdefault(e["node"], {"node": e["node"], "labels": e.get("labels") or {}, "ranks": []})
                if e.get("rank") not in n["ranks"]:
                    n["ranks"].append(e.get("rank"))
        for n in nodes.values():
            n["ranks"].sort(key=lambda r: -1 if r is None else r)
        timeline = [e for e in events if e.get("event") not in (WORKER_START, WORKER_END)]
        timeline += [{"event": "group_started", "time": g["start"], "group": g["group"], "ranks": g["ranks"],
                      "nodes": g["nodes"]} for g in groups]
        timeline += [{"event": "group_ended", "time": g["end"], "group": g["group"]}
                     for g in groups if g["end"] is not None]
        timeline.sort(key=lambda e: e.get("time") or 0)
        return {"job_id": self.job_id, "events": timeline, "worker_events": [e for e in events if e.get("event") in
                                                                             (WORKER_START, WORKER_END)],
                "groups": groups, "where": {**self.where, "nodes": list(nodes.values())}, "cost": cost}

    def flush(self) -> None:
        from trainer.tracking.runs import client

        with self._lock:
            log_version = self.log.version
            text = self.log.text() if (log_version,) != self._written[:1] else None
        doc = self.snapshot()
        doc_text = json.dumps(doc, default=str, indent=1)
        if text is None and self._written[1:] == (doc_text,):
            return
        mlc = client(self.uri)
        with tempfile.TemporaryDirectory(prefix="trainer-record-") as tmp:
            if text is not None:
                (Path(tmp) / "driver.log.gz").write_bytes(gzip.compress(text.encode("utf-8", "replace"), 6))
            (Path(tmp) / "timeline.json").write_text(doc_text)
            mlc.log_artifacts(self.run_id, tmp, RECORD_DIR)
        self._written = (log_version, doc_text)

    def _first(self) -> None:
        """Once, off the job's path: when it was submitted, where the driver runs, the spec, the code."""
        from trainer.tracking.runs import client

        mlc = client(self.uri)
        run = mlc.get_run(self.run_id)
        with self._lock:
            self.events.append({"event": "submitted", "time": (run.info.start_time or 0) / 1000})
        self.where = _where(self.spec)
        with tempfile.TemporaryDirectory(prefix="trainer-record-") as tmp:
            (Path(tmp) / "spec.json").write_text(redact_text(self.spec.model_dump_json(exclude_none=True, indent=1)))
            mlc.log_artifacts(self.run_id, tmp, RECORD_DIR)
        if run.data.tags.get(TAG_CODE_DIGEST) is None:
            digest, code_run = store_code(mlc, self.uri, self.workdir)
            mlc.set_tag(self.run_id, TAG_CODE_DIGEST, digest)
            mlc.set_tag(self.run_id, TAG_CODE_RUN, code_run)

    def _run(self) -> None:
        try:
            self._first()
        except Exception as e:  # noqa: BLE001 - the job goes on; its record says less
            self._warn("the spec and code", e)
        while not self._stopped:
            self._wake.wait(FLUSH_EVERY_S)
            if self._stopped:
                return
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - the next flush tries again
                self._warn("the log and timeline", e)

    def _warn(self, what: str, err: BaseException) -> None:
        log.warning("recording %s of job %s in MLflow run %s failed", what, self.job_id, self.run_id, exc_info=err)
        if not self._warned:
            self._warned = True
            real = self._streams[1] if self._streams else sys.stderr
            real.write(f"warning: could not record {what} in the MLflow run: {first_line(err)}\n")
            real.flush()

    def finish(self, status: str) -> None:
        """The job's end: the last lines, the end event and the cost, written before the run closes."""
        self._stopped = True
        self._wake.set()
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, LineTee):
                tee.drain()
        if self._streams:
            sys.stdout, sys.stderr = self._streams
        if self._thread is not None:
            self._thread.join(timeout=30)     # the code snapshot, if it is still being written
        self.ended_at = time.time()
        self.event("ended", status=status)
        try:
            self.flush()
            cost = self.snapshot()["cost"]
            from trainer.tracking.runs import client

            mlc = client(self.uri)
            mlc.set_tag(self.run_id, TAG_CPU_SECONDS, str(cost["cpu_seconds"]))
            mlc.set_tag(self.run_id, TAG_GPU_SECONDS, str(cost["gpu_seconds"]))
        except Exception as e:  # noqa: BLE001 - the run still closes with its status
            self._warn("the log and timeline", e)


def _where(spec: "JobSpec") -> dict:
    """Where the driver runs and with what: host, Python, Ray, the runtime and its lock's digest."""
    out: dict = {"driver": socket.gethostname(), "python": sys.version.split()[0],
                 "runtime": spec.runtime_name, "accelerator": spec.resources.accelerator}
    ray = sys.modules.get("ray")          # the driver has it; importing it here would cost seconds
    if ray is not None:
        out["ray"] = ray.__version__
        if ray.is_initialized():
            out["ray_package"] = (ray.get_runtime_context().runtime_env or {}).get("working_dir")
    try:
        from trainer.runtimes import lock_digest

        out["lock_sha256"] = lock_digest(spec.runtime_name)
    except (TrainerError, OSError) as e:
        out["lock_sha256"] = None
        log.info("no lock digest for runtime %s: %s", spec.runtime_name, e)
    return out


def announce_worker(event: str, rank: int | None, restore_point=None) -> None:
    """A Ray Train worker's start or end, as an event line the driver records (`Recorder`):
    its node (address, id, labels), its worker group (the group's placement group), and on start
    the checkpoint it resumed from."""
    import ray
    import ray.train

    rc = ray.get_runtime_context()
    fields: dict = {"rank": rank, "group": rc.get_placement_group_id(), "pid": os.getpid(),
                    "node": f"{ray.util.get_node_ip_address()} ({rc.get_node_id()[:8]})",
                    # A sweep's trial is its own Ray Train run, named `<sweep id>-<trial id>`:
                    # how `trainer logs SWEEP --trial N` knows this process's lines (sweeps.TrialLines).
                    "train_run": ray.train.get_context().get_experiment_name()}
    if event == WORKER_START:
        try:
            fields["labels"] = {k: v for k, v in (rc.get_node_labels() or {}).items()
                                if not k.startswith("ray.io/node")}
        except AttributeError:          # an older Ray
            fields["labels"] = {}
        if restore_point is not None and getattr(restore_point, "name", None):
            fields["restored"] = restore_point.name
            fields["fell_back"] = bool(getattr(restore_point, "skipped", None))
    print(event_line(event, time.time(), **fields), flush=True)


# ---------------------------------------------------------------- reading the record

PRICES_FILE = "prices.yaml"


def priced(cost: dict | None) -> dict | None:
    """The cost with money, when $TRAINER_HOME/prices.yaml gives a price per CPU-hour and GPU-hour
    (optional): `{currency: USD, cpu_hour: 0.04, gpu_hour: 2.5}`."""
    from trainer.home import trainer_home

    path = trainer_home() / PRICES_FILE
    if not cost or not path.is_file():
        return cost
    import yaml

    try:
        prices = yaml.safe_load(path.read_text()) or {}
        amount = (cost["cpu_seconds"] * float(prices.get("cpu_hour", 0))
                  + cost["gpu_seconds"] * float(prices.get("gpu_hour", 0))) / 3600
    except (yaml.YAMLError, TypeError, ValueError, AttributeError) as e:
        raise TrackingError(f"{path}: expected a mapping like {{currency: USD, cpu_hour: 0.04, gpu_hour: 2.5}} "
                            f"({type(e).__name__})") from None
    return {**cost, "price": round(amount, 4), "currency": str(prices.get("currency", ""))}


def recorded_cost(tags: dict) -> dict | None:
    """The cost the driver recorded in the run's tags (priced when a price table is set), or None."""
    if TAG_CPU_SECONDS not in tags:
        return None
    try:
        cost = {"cpu_seconds": float(tags[TAG_CPU_SECONDS]), "gpu_seconds": float(tags.get(TAG_GPU_SECONDS, 0))}
    except ValueError:
        return None
    return priced(cost)


def find_run(uri: str, ref: str):
    """The MLflow run `ref` names: a run id, else the run tagged with job id `ref` (the newest),
    across every experiment. TrackingError when none does."""
    from trainer.tracking.runs import TAG_JOB_ID, _quoted, client

    mlc = client(uri)
    if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref):
        try:
            return mlc.get_run(ref)
        except Exception as e:  # noqa: BLE001 - not a run id after all: try it as a job id
            log.info("%s is not a run id in %s: %s", ref, uri, first_line(e))
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    for start in range(0, len(experiments), 100):
        found = mlc.search_runs(experiments[start:start + 100], filter_string=f"tags.`{TAG_JOB_ID}` = '{_quoted(ref)}'",
                                max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            return found[0]
    raise TrackingError(f"no MLflow run for {ref!r} in the store {redact_text(uri)} (neither a run id nor a "
                        f"job id trainer recorded there)")


def read_record(uri: str, run_id: str) -> dict:
    """{"timeline": timeline.json or None, "log": the recorded log text or None, "spec": spec.json or None}."""
    preload.wait()
    from mlflow.exceptions import MlflowException

    from trainer.tracking.runs import client

    mlc = client(uri)
    out: dict = {"timeline": None, "log": None, "spec": None}
    with tempfile.TemporaryDirectory(prefix="trainer-record-") as tmp:
        try:
            names = {f.path for f in mlc.list_artifacts(run_id, RECORD_DIR)}
        except (MlflowException, OSError) as e:
            log.info("no record in run %s: %s", run_id, first_line(e))
            return out
        if TIMELINE_ARTIFACT in names:
            out["timeline"] = json.loads(Path(mlc.download_artifacts(run_id, TIMELINE_ARTIFACT, tmp)).read_text())
        if LOG_ARTIFACT in names:
            data = Path(mlc.download_artifacts(run_id, LOG_ARTIFACT, tmp)).read_bytes()
            out["log"] = gzip.decompress(data).decode("utf-8", "replace")
        if SPEC_ARTIFACT in names:
            out["spec"] = json.loads(Path(mlc.download_artifacts(run_id, SPEC_ARTIFACT, tmp)).read_text())
    return out
