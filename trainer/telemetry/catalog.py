"""Every metric trainer exports, in one table: its name, type, unit, labels and who emits it.

Two emitters, one naming scheme (`trainer_` prefix, base units, `_total` counters):
- `job`: the job's driver and Ray Train workers, through Ray's own metrics API
  (`ray.util.metrics`, trainer.telemetry.record). Ray exports them on each node's metrics port
  as `ray_<name>`; the scrape config renames `ray_trainer_*` back to `trainer_*`
  (trainer.monitoring.prometheus.RAY_RELABEL), so rules and dashboards use the names below.
  Ray adds its own labels (WorkerId, NodeAddress, SessionName, Component).
- `exporter`: what lives outside jobs (the cluster's job list, promotions), served by
  `trainer monitor`'s exporter (trainer.monitoring.exporter) on 127.0.0.1.

A counter's name here is its exported name (with `_total`); Ray appends `_total` itself, so the
in-job counter is created with the name without it (`Metric.ray_name`).
"""
from __future__ import annotations

from dataclasses import dataclass

# Seconds: from a fraction of a second (a checkpoint, a flush) to an hour (a placement, a run).
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str                 # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    source: str               # job | exporter
    buckets: tuple[float, ...] = ()

    @property
    def ray_name(self) -> str:
        """The name given to ray.util.metrics (Ray adds `_total` to a counter)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


def _m(name, kind, help, labels=(), source="job", buckets=()) -> Metric:
    return Metric(name, kind, help, tuple(labels), source, tuple(buckets) or (SECONDS_BUCKETS if kind == "histogram"
                                                                               else ()))


METRICS: tuple[Metric, ...] = (
    # -- the job's lifecycle (driver and rank 0)
    _m("trainer_job_start_time_seconds", "gauge",
       "Unix time the job's driver started (present while the driver runs).", ["trainer_job"]),
    _m("trainer_job_training_start_time_seconds", "gauge",
       "Unix time the current worker group started training (present while rank 0 runs).", ["trainer_job"]),
    _m("trainer_job_placement_seconds", "histogram",
       "From the driver's start to the worker group training: the wait for placement and worker start.", ["trainer_job"]),
    _m("trainer_job_worker_group_starts_total", "counter",
       "Worker group starts of the job (the first one and every restart).", ["trainer_job"]),
    _m("trainer_job_restores_total", "counter",
       "Worker group starts that resumed from a checkpoint, by which one (latest, fallback).", ["trainer_job", "outcome"]),
    # -- progress (rank 0)
    _m("trainer_job_step", "gauge", "The last step rank 0 reported.", ["trainer_job"]),
    _m("trainer_job_reports_total", "counter", "ctx.report calls of rank 0 (their rate is the step rate).", ["trainer_job"]),
    _m("trainer_job_value", "gauge", "The last value rank 0 reported for each key (loss, accuracy, ...).",
       ["trainer_job", "key"]),
    # -- checkpoints (rank 0)
    _m("trainer_checkpoint_write_seconds", "histogram", "Time to write and persist one checkpoint.", ["trainer_job"]),
    _m("trainer_checkpoint_size_bytes", "gauge", "Size of the last checkpoint written.", ["trainer_job"]),
    _m("trainer_checkpoint_writes_total", "counter", "Checkpoint writes, by outcome (ok, failed).",
       ["trainer_job", "outcome"]),
    # -- tracking (every rank's MLflow channel)
    _m("trainer_tracking_pending_values", "gauge", "Metric values held back, not yet sent to MLflow.", ["trainer_job"]),
    _m("trainer_tracking_flush_seconds", "histogram", "Time of one send of metric values to MLflow.", ["trainer_job"]),
    _m("trainer_tracking_flushes_total", "counter", "Sends of metric values to MLflow, by outcome (ok, failed).",
       ["trainer_job", "outcome"]),
    # -- conversion after training (the driver)
    _m("trainer_conversions_total", "counter", "Conversions of a trained model, by target and outcome.",
       ["trainer_job", "target", "outcome"]),
    _m("trainer_parity_checks_total", "counter", "Parity checks of a converted model, by target and outcome.",
       ["trainer_job", "target", "outcome"]),
    # -- GPUs (every worker, only where NVML finds a GPU: absent otherwise, never zeros)
    _m("trainer_gpu_utilization_ratio", "gauge", "GPU busy fraction over the last sample period (0-1).",
       ["trainer_job", "rank", "gpu"]),
    _m("trainer_gpu_memory_used_bytes", "gauge", "GPU memory in use.", ["trainer_job", "rank", "gpu"]),
    _m("trainer_gpu_power_watts", "gauge", "GPU power draw.", ["trainer_job", "rank", "gpu"]),
    # -- outside jobs (the exporter)
    _m("trainer_jobs", "gauge", "Jobs trainer submitted to the cluster, by state.", ["state"], "exporter"),
    _m("trainer_job_state", "gauge", "1 for each job's current state (PENDING, RUNNING, ...).",
       ["trainer_job", "name", "state"], "exporter"),
    _m("trainer_job_queued_seconds", "gauge",
       "How long each PENDING job has waited since submission.", ["trainer_job", "name"], "exporter"),
    _m("trainer_job_duration_seconds", "histogram", "Wall time of finished jobs, submission to end, by state.",
       ["state"], "exporter"),
    _m("trainer_promotions_total", "counter",
       "Promotions recorded in MLflow, by target environment and outcome (promoted, not_in_registry, "
       "registry_unreachable).", ["environment", "outcome"], "exporter"),
    _m("trainer_exporter_source_up", "gauge", "1 when the exporter could read a source (cluster, mlflow).",
       ["source"], "exporter"),
)

BY_NAME = {m.name: m for m in METRICS}


def get(name: str) -> Metric:
    return BY_NAME[name]
