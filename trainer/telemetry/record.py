"""The job's own metrics, recorded through Ray's metrics API (`ray.util.metrics`) so each node's
metrics port exports them with Ray's: the driver and the Ray Train workers call the functions
below (trainer.runners.job, trainer.context, trainer.tracking.metrics).

Recording never stops training: outside a Ray job (`trainer run --local`, unit tests) every call
is a no-op, and a failure of Ray's metrics API is logged once (trainer.log) and recording stops.
Per-step calls are cheap: rank 0's progress is put into the gauges at most once a second.
"""
from __future__ import annotations

import logging
import threading
import time

from trainer.telemetry import catalog, gpu

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
GPU_SAMPLE_INTERVAL_S = 5.0
MAX_VALUE_KEYS = 20          # trainer_job_value keys per job: a report with hundreds of keys stays bounded

_lock = threading.Lock()
_objects: dict[str, object] = {}
_broken = False
_job: str | None = None
_rank: int | None = None
_progress = {"last": 0.0, "reports": 0, "step": None, "values": {}}
_gpu_thread: threading.Thread | None = None


def _enabled() -> bool:
    if _broken:
        return False
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _metric(name: str):
    with _lock:
        found = _objects.get(name)
        if found is None:
            from ray.util import metrics as ray_metrics

            m = catalog.get(name)
            if m.kind == "counter":
                found = ray_metrics.Counter(m.ray_name, description=m.help, tag_keys=m.labels)
            elif m.kind == "gauge":
                found = ray_metrics.Gauge(m.ray_name, description=m.help, tag_keys=m.labels)
            else:
                found = ray_metrics.Histogram(m.ray_name, description=m.help, boundaries=list(m.buckets),
                                              tag_keys=m.labels)
            _objects[name] = found
        return found


def _record(name: str, value: float, **tags: str) -> None:
    """Set a gauge, add to a counter or observe a histogram value; `job` comes from `bind`."""
    global _broken
    if not _enabled():
        return
    tags = {"trainer_job": _job or "unknown", **{k: str(v) for k, v in tags.items()}}
    try:
        m = _metric(name)
        kind = catalog.get(name).kind
        if kind == "counter":
            m.inc(value, tags=tags)
        elif kind == "gauge":
            m.set(value, tags=tags)
        else:
            m.observe(value, tags=tags)
    except Exception:   # noqa: BLE001 - metrics must not stop a job: said once in trainer.log, then off
        _broken = True
        log.warning("recording the metric %s failed; no more trainer metrics from this process", name,
                    exc_info=True)


def bind(job: str | None, rank: int | None = None) -> None:
    """The job (and rank) this process records for: the `trainer_job` label of every metric."""
    global _job, _rank
    _job, _rank = job, rank


# ---------------------------------------------------------------- the driver
def driver_started(job: str, at: float) -> None:
    bind(job)
    _record("trainer_job_start_time_seconds", at)


def converted(targets, report) -> None:
    """A `convert:` step's outcome: each target converted or failed; each report row's parity."""
    rows = list(getattr(report, "rows", None) or [])
    built = {r.target.split("@", 1)[0] for r in rows}
    for target in targets:
        _record("trainer_conversions_total", 1, target=target, outcome="ok" if target in built else "failed")
    for r in rows:
        _record("trainer_parity_checks_total", 1, target=r.target, outcome="passed" if r.passed else "failed")


# ---------------------------------------------------------------- the workers
def worker_started(job: str | None, driver_started_at: float | None) -> None:
    """A Ray Train worker begins: rank 0 marks the group's start (and its placement time);
    every rank samples its GPUs, where NVML finds any."""
    if not _enabled():
        return
    try:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
    except Exception:   # noqa: BLE001 - not a Ray Train worker after all: record nothing, train anyway
        log.warning("no Ray Train context in this worker; it records no trainer metrics", exc_info=True)
        return
    bind(job, rank)
    if rank == 0:
        now = time.time()
        _record("trainer_job_training_start_time_seconds", now)
        _record("trainer_job_worker_group_starts_total", 1)
        if driver_started_at:
            _record("trainer_job_placement_seconds", max(0.0, now - float(driver_started_at)))
    start_gpu_sampler()


def restored(fallback: bool) -> None:
    if _rank == 0:
        _record("trainer_job_restores_total", 1, outcome="fallback" if fallback else "latest")


def reported(step: int, values: dict[str, float]) -> None:
    """Rank 0's ctx.report: step, report count and the values, into the gauges once a second."""
    if _rank != 0 or not _enabled():
        return
    p = _progress
    p["reports"] += 1
    p["step"] = step
    p["values"].update(values)
    now = time.monotonic()
    if now - p["last"] < PROGRESS_INTERVAL_S:
        return
    p["last"] = now
    flush_progress()


def flush_progress() -> None:
    p = _progress
    if p["reports"]:
        _record("trainer_job_reports_total", p["reports"])
        p["reports"] = 0
    if p["step"] is not None:
        _record("trainer_job_step", p["step"])
    for key in sorted(p["values"])[:MAX_VALUE_KEYS]:
        _record("trainer_job_value", p["values"][key], key=key)
    p["values"] = {}


def checkpoint_written(seconds: float, size_bytes: int | None, ok: bool) -> None:
    if _rank != 0:
        return
    _record("trainer_checkpoint_writes_total", 1, outcome="ok" if ok else "failed")
    if ok:
        _record("trainer_checkpoint_write_seconds", seconds)
        if size_bytes is not None:
            _record("trainer_checkpoint_size_bytes", size_bytes)


def tracking_pending(values: int) -> None:
    _record("trainer_tracking_pending_values", values)


def tracking_flushed(seconds: float, ok: bool) -> None:
    _record("trainer_tracking_flushes_total", 1, outcome="ok" if ok else "failed")
    if ok:
        _record("trainer_tracking_flush_seconds", seconds)


def start_gpu_sampler(interval_s: float = GPU_SAMPLE_INTERVAL_S) -> str | None:
    """Sample this worker's GPUs every `interval_s` on a daemon thread. Returns why not, when
    there is nothing to sample (no NVML, no GPU given to this worker): then no GPU series exists
    at all - absent, not zeros."""
    global _gpu_thread
    if _gpu_thread is not None:
        return None
    sampler, reason = gpu.open_sampler()
    if sampler is None:
        return reason

    def loop():
        while True:
            try:
                samples = sampler.sample()
            except Exception:   # noqa: BLE001 - NVML lost the GPU (driver reset, Xid): said once, sampling stops
                log.warning("sampling the GPUs failed; no more GPU metrics from this worker", exc_info=True)
                return
            for s in samples:
                tags = {"rank": _rank if _rank is not None else "", "gpu": s.index}
                _record("trainer_gpu_utilization_ratio", s.utilization_ratio, **tags)
                _record("trainer_gpu_memory_used_bytes", s.memory_used_bytes, **tags)
                if s.power_watts is not None:
                    _record("trainer_gpu_power_watts", s.power_watts, **tags)
            time.sleep(interval_s)

    _gpu_thread = threading.Thread(target=loop, name="trainer-gpu-metrics", daemon=True)
    _gpu_thread.start()
    return None
